import type { MappedDevice } from "../device/mapped-device.js";

/**
 * NBD metadata contexts (NBD_OPT_SET_META_CONTEXT / NBD_CMD_BLOCK_STATUS), pluggable: a provider owns one
 * namespace and may resolve parametric names (as qemu's "qemu:dirty-bitmap:<name>"), so that a later
 * "blocks written since era N" context can be added by registering one more provider.
 */

/** One block-status descriptor: `length` bytes (a multiple of 512) with context-defined `flags`. */
export interface Extent {
  length: number;
  flags: number;
}

export interface MetaContext {
  /** The full name as the client selected it ("base:allocation"). */
  readonly name: string;
  /**
   * Describe [offset, offset+length) in bytes (both multiples of 512, inside the device). Return at least one
   * extent covering a prefix of the range, never more than the range; with `reqOne` exactly one.
   */
  blockStatus(dev: MappedDevice, offset: number, length: number, reqOne: boolean): Extent[] | Promise<Extent[]>;
}

export interface MetaContextProvider {
  /** The namespace without the colon ("base"). */
  readonly namespace: string;
  /** Context names this provider offers for `dev` when listing (parametric providers list a representative set). */
  names(dev: MappedDevice): string[];
  /** Resolve an exact context name for `dev`, or undefined when not offered. */
  select(dev: MappedDevice, name: string): MetaContext | undefined;
}

/** NBD_STATE_HOLE / NBD_STATE_ZERO of base:allocation. */
export const STATE_HOLE = 1;
export const STATE_ZERO = 2;

/**
 * base:allocation. The target interface has no way to ask where a device is sparse, so every extent is
 * reported as allocated data (flags 0), which the spec names as always safe: clients just copy everything.
 */
export const baseAllocation: MetaContextProvider = {
  namespace: "base",
  names: () => ["base:allocation"],
  select: (_dev, name) => (name === "base:allocation" ? allocatedEverywhere : undefined),
};

const allocatedEverywhere: MetaContext = {
  name: "base:allocation",
  blockStatus: (_dev, _offset, length) => [{ length, flags: 0 }],
};

export class MetaContextRegistry {
  private readonly providers = new Map<string, MetaContextProvider>();

  constructor(providers: readonly MetaContextProvider[] = [baseAllocation]) {
    for (const p of providers) this.register(p);
  }

  register(p: MetaContextProvider): void {
    if (this.providers.has(p.namespace)) throw new Error(`meta context namespace ${p.namespace}: already registered`);
    this.providers.set(p.namespace, p);
  }

  /**
   * NBD_OPT_LIST_META_CONTEXT: no queries lists everything; "ns:" lists the whole namespace; anything else is
   * an exact name.
   */
  list(dev: MappedDevice, queries: readonly string[]): string[] {
    if (queries.length === 0) return [...this.providers.values()].flatMap((p) => p.names(dev));
    const out: string[] = [];
    for (const q of queries) {
      const colon = q.indexOf(":");
      if (colon < 0) continue;
      const p = this.providers.get(q.slice(0, colon));
      if (!p) continue;
      if (colon === q.length - 1) out.push(...p.names(dev));
      else if (p.select(dev, q)) out.push(q);
    }
    return [...new Set(out)];
  }

  /** NBD_OPT_SET_META_CONTEXT: exact names only (a bare namespace selects nothing), duplicates dropped. */
  select(dev: MappedDevice, queries: readonly string[]): MetaContext[] {
    const out = new Map<string, MetaContext>();
    for (const q of queries) {
      const colon = q.indexOf(":");
      if (colon <= 0 || colon === q.length - 1 || out.has(q)) continue;
      const ctx = this.providers.get(q.slice(0, colon))?.select(dev, q);
      if (ctx) out.set(q, ctx);
    }
    return [...out.values()];
  }
}
