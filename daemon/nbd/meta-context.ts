import type { MappedDevice } from "../device/mapped-device.js";
import { SECTOR_SIZE, type Sector } from "../core/units.js";

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
 * base:allocation: holes and known-zero runs as the live table's targets report them (a file's holes under
 * linear, all of a zero target); everything else is allocated data, which is always a safe answer.
 */
export const baseAllocation: MetaContextProvider = {
  namespace: "base",
  names: () => ["base:allocation"],
  select: (_dev, name) => (name === "base:allocation" ? allocation : undefined),
};

const allocation: MetaContext = {
  name: "base:allocation",
  async blockStatus(dev, offset, length) {
    const table = dev.live;
    if (!table) return [{ length, flags: 0 }];
    const runs = await table.allocation((offset / SECTOR_SIZE) as Sector, (length / SECTOR_SIZE) as Sector);
    return runs.map((r) => ({ length: r.count * SECTOR_SIZE, flags: (r.hole ? STATE_HOLE : 0) | (r.zero ? STATE_ZERO : 0) }));
  },
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
