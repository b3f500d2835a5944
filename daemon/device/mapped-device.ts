import type { Bio } from "../io/bio.js";
import { flushBio } from "../io/bio.js";
import { DmError } from "../core/errors.js";
import type { Sector } from "../core/units.js";
import type { DestroyOptions, SuspendOptions } from "../targets/target.js";
import { Table, type TableEnv, type TableLineSpec } from "./table.js";

export const DM_MAJOR = 253;

export interface DeviceIdentity {
  name: string;
  uuid: string;
  readonly minor: number;
}

export interface DeviceHooks {
  /** The table environment (device opener, logger) for tables loaded into this device. */
  tableEnv(dev: MappedDevice, readOnly: boolean): TableEnv;
  /** Called on every state change worth an event on the watch stream. */
  changed(dev: MappedDevice, kind: DeviceChange): void;
  /** The last opener went away (deferred remove can proceed). */
  lastClose(dev: MappedDevice): void;
}

export type DeviceChange = "loaded" | "cleared" | "suspended" | "resumed" | "target_event" | "settings";

/**
 * A mapped device (struct mapped_device): a live and an inactive table slot, suspend/resume with an I/O gate,
 * an event counter, and an open count. All bios for the device pass through submit().
 */
export class MappedDevice {
  live: Table | undefined;
  inactive: Table | undefined;
  suspended = false;
  eventNr = 0;
  openCount = 0;
  deferredRemove = false;
  readOnly: boolean;
  readAhead = 256;
  /**
   * A table has been loaded successfully at least once: Linux registers the device's disk (dm-N) at the first
   * table load and keeps it until remove, so only from then on does the device have a block device name.
   */
  diskAdded = false;
  /** Set when the device could not be brought back after a restart; I/O fails with EIO. */
  errorState = "";

  private inflight = 0;
  private drained: (() => void) | undefined;
  private held: { resolve: () => void; reject: (e: Error) => void }[] = [];
  private eventWaiters: (() => void)[] = [];
  /** Serialises control operations (load/suspend/resume/remove) on this device. */
  private control: Promise<unknown> = Promise.resolve();

  constructor(
    readonly id: DeviceIdentity,
    readOnly: boolean,
    private readonly hooks: DeviceHooks,
  ) {
    this.readOnly = readOnly;
  }

  get name(): string {
    return this.id.name;
  }
  get uuid(): string {
    return this.id.uuid;
  }
  get minor(): number {
    return this.id.minor;
  }
  get size(): Sector {
    return (this.live?.size ?? 0) as Sector;
  }
  get logicalBlockSize(): number {
    return this.live?.logicalBlockSize ?? 512;
  }
  /** io_opt in bytes (0: no preference). */
  get optimalIoBytes(): number {
    return this.live?.optimalIoBytes ?? 0;
  }

  /** Run control operations on this device one at a time, in call order. */
  serialize<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.control.then(fn, fn);
    this.control = run.catch(() => undefined);
    return run;
  }

  // ---- I/O path ----

  /** Submit a bio addressed to the whole device. Held while suspended; fails without a live table. */
  submit(bio: Bio): Promise<void> {
    const live = this.live;
    if (this.suspended || live === undefined) return this.submitSlow(bio);
    if (bio.op !== "read" && bio.op !== "flush" && this.readOnly) return Promise.reject(new DmError("EPERM", "device is read-only"));
    if (bio.sector + bio.count > live.size) return Promise.reject(new DmError("EINVAL", "I/O beyond the end of the device"));
    this.inflight++;
    return live.map(bio).finally(() => this.ioDone());
  }

  private async submitSlow(bio: Bio): Promise<void> {
    if (this.suspended) await new Promise<void>((resolve, reject) => this.held.push({ resolve, reject }));
    if (this.live === undefined) throw new DmError("EIO", this.errorState || "device has no live table");
    return this.submit(bio);
  }

  private ioDone(): void {
    if (--this.inflight === 0 && this.drained) {
      const d = this.drained;
      this.drained = undefined;
      d();
    }
  }

  private waitForInflight(): Promise<void> {
    if (this.inflight === 0) return Promise.resolve();
    return new Promise((resolve) => (this.drained = resolve));
  }

  // ---- open count ----

  open(): void {
    this.openCount++;
  }

  close(): void {
    if (this.openCount > 0 && --this.openCount === 0) this.hooks.lastClose(this);
  }

  // ---- tables ----

  /** load/reload: construct into the inactive slot, replacing (and destroying) a previous inactive table. */
  async load(lines: readonly TableLineSpec[], readOnly: boolean, opts: { restoring?: boolean } = {}): Promise<void> {
    const table = await Table.load(lines, { ...this.hooks.tableEnv(this, readOnly), restoring: opts.restoring });
    const old = this.inactive;
    this.inactive = table;
    this.diskAdded = true;
    await old?.destroy();
    this.hooks.changed(this, "loaded");
  }

  async clear(): Promise<void> {
    const old = this.inactive;
    this.inactive = undefined;
    await old?.destroy();
    this.hooks.changed(this, "cleared");
  }

  // ---- suspend / resume ----

  async suspend(opts: SuspendOptions): Promise<void> {
    if (this.suspended) return;
    const live = this.live;
    await live?.presuspend(opts);
    this.suspended = true; // new bios are held from here on
    await this.waitForInflight();
    if (live && !opts.noflush) {
      // What lock_fs + the flush of dirty data would give a kernel user: everything acknowledged is on disk.
      await Promise.all(live.devices().map((d) => d.submit(flushBio()).catch(() => undefined)));
    }
    try {
      await live?.postsuspend(opts);
    } catch (err) {
      await live?.resume().catch(() => undefined);
      this.releaseHeld();
      throw err;
    }
    this.hooks.changed(this, "suspended");
  }

  /** resume: swap in the inactive table if there is one, then let held and new I/O flow. */
  async resume(opts: SuspendOptions): Promise<void> {
    const next = this.inactive;
    if (next) {
      if (!this.suspended) await this.suspend(opts);
      await next.preresume();
      const old = this.live;
      this.live = next;
      this.inactive = undefined;
      this.readOnly = next.readOnly;
      await old?.destroy().catch(() => undefined);
    } else if (!this.suspended) {
      return; // nothing to do: resuming an active device without an inactive table succeeds
    } else {
      await this.live?.preresume();
    }
    await this.live?.resume();
    this.releaseHeld();
    this.hooks.changed(this, "resumed");
  }

  private releaseHeld(): void {
    this.suspended = false;
    const held = this.held;
    this.held = [];
    for (const h of held) h.resolve();
  }

  /**
   * Tear the device down (dm_destroy): suspend the live table so targets write what they must, then destroy
   * both tables. Held bios fail with ENXIO. `opts.shutdown`: the daemon is stopping, the tables come back on restart.
   */
  async destroy(opts?: DestroyOptions): Promise<void> {
    if (this.live && !this.suspended) await this.suspend({ noflush: false }).catch(() => undefined);
    const held = this.held;
    this.held = [];
    for (const h of held) h.reject(new DmError("ENXIO", "device removed"));
    const tables = [this.live, this.inactive];
    this.live = undefined;
    this.inactive = undefined;
    let first: unknown;
    for (const t of tables) await t?.destroy(opts).catch((e) => (first ??= e));
    for (const w of this.eventWaiters) w();
    this.eventWaiters = [];
    if (first) throw first;
  }

  /** dmsetup --readahead N (set) or +N (raise to at least N). */
  setReadAhead(sectors: number, minimum: boolean): void {
    const next = minimum ? Math.max(this.readAhead, sectors) : sectors;
    if (next === this.readAhead) return;
    this.readAhead = next;
    this.hooks.changed(this, "settings");
  }

  // ---- events ----

  raiseEvent(): void {
    this.eventNr = (this.eventNr + 1) >>> 0;
    const waiters = this.eventWaiters;
    this.eventWaiters = [];
    for (const w of waiters) w();
    this.hooks.changed(this, "target_event");
  }

  /** Resolves once the event number differs from `eventNr` (or the device goes away). */
  waitEvent(eventNr: number, signal?: AbortSignal): Promise<void> {
    if (this.eventNr !== eventNr) return Promise.resolve();
    return new Promise((resolve) => {
      const done = (): void => resolve();
      this.eventWaiters.push(done);
      signal?.addEventListener("abort", () => {
        this.eventWaiters = this.eventWaiters.filter((w) => w !== done);
        resolve();
      });
    });
  }

  /** Submit a message to the live table (dm's target_message). */
  async message(sector: Sector, argv: string[]): Promise<string | void> {
    if (!this.live) throw new DmError("EINVAL", "no live table");
    return this.live.message(sector, argv);
  }
}
