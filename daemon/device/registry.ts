import { EventEmitter } from "node:events";
import path from "node:path";
import type { Bio } from "../io/bio.js";
import type { BlockDevice } from "../io/block-device.js";
import { FileDevice } from "../io/file-device.js";
import { blockDevicePath } from "../io/block-path.js";
import { dataRun, type AllocationRun } from "../io/allocation.js";
import { DmError } from "../core/errors.js";
import type { Sector } from "../core/units.js";
import { DM_MAJOR, MappedDevice, type DeviceChange, type DeviceHooks } from "./mapped-device.js";
import type { TableEnv, TableLineSpec } from "./table.js";
import type { DestroyOptions } from "../targets/target.js";
import type { Logger } from "../core/log.js";

export type DeviceRefSpec = { name: string } | { uuid: string } | { major: number; minor: number };

export type RegistryEvent =
  | { kind: "created" | "removed" | DeviceChange; device: MappedDevice }
  | { kind: "renamed"; device: MappedDevice; oldName: string };

/**
 * Something outside the registry that holds mapped devices: the node manager, which attaches them to kernel
 * block devices. remove() asks it whether the device is in use through it, and has it let go first.
 */
export interface ExternalHolder {
  /** Opens of `dev` that are the holder's own plumbing (the NBD sessions behind an attached node). */
  ownOpens(dev: MappedDevice): number;
  /** Why `dev` is in use through the holder (its kernel node is mounted or open), or undefined. */
  busyReason(dev: MappedDevice): Promise<string | undefined>;
  /** Let go of `dev` before it is destroyed (detach its node); fails with EBUSY if it became busy. */
  release(dev: MappedDevice): Promise<void>;
}

const NAME_MAX = 127;
const UUID_MAX = 128;
const MINOR_MAX = (1 << 20) - 1;

/**
 * The device registry: names, uuids and minors of every mapped device, with the kernel's uniqueness rules
 * (dm-ioctl.c's hash tables). Emits "event" (RegistryEvent) for the watch stream, the NBD server and the
 * node manager.
 */
export class DeviceRegistry extends EventEmitter {
  private readonly byName = new Map<string, MappedDevice>();
  private readonly byUuid = new Map<string, MappedDevice>();
  private readonly byMinor = new Map<number, MappedDevice>();
  /** Create fails with ENOSPC beyond this many devices (a bound on what one client can make the daemon hold). */
  readonly maxDevices: number;
  /** Mapper node directory, for /dev/mapper/NAME device arguments. */
  readonly mapperDir: string;

  constructor(
    private readonly log: Logger,
    opts: { devDir?: string; maxDevices?: number } = {},
  ) {
    super();
    this.mapperDir = path.join(opts.devDir ?? "/dev", "mapper");
    this.maxDevices = opts.maxDevices ?? 4096;
  }

  // ---- lookup ----

  list(): MappedDevice[] {
    return [...this.byName.values()].sort((a, b) => Buffer.compare(Buffer.from(a.name), Buffer.from(b.name)));
  }

  find(ref: DeviceRefSpec): MappedDevice | undefined {
    if ("name" in ref) return this.byName.get(ref.name);
    if ("uuid" in ref) return this.byUuid.get(ref.uuid);
    return ref.major === DM_MAJOR ? this.byMinor.get(ref.minor) : undefined;
  }

  get(ref: DeviceRefSpec): MappedDevice {
    const d = this.find(ref);
    if (!d) throw new DmError("ENXIO", `no such device: ${describeRef(ref)}`);
    return d;
  }

  // ---- lifecycle ----

  /** dev_create: a new device with no table. EBUSY when the name or uuid is taken or the minor is in use. */
  create(opts: { name: string; uuid?: string; readOnly?: boolean; minor?: number }): MappedDevice {
    validateName(opts.name);
    const uuid = opts.uuid ?? "";
    if (uuid.length > UUID_MAX) throw new DmError("EINVAL", `uuid too long`);
    if (this.byName.has(opts.name)) throw new DmError("EBUSY", `device ${opts.name} already exists`);
    if (this.byName.size >= this.maxDevices) throw new DmError("ENOSPC", `device limit reached (${this.maxDevices}; tsdmd --max-devices)`);
    if (uuid && this.byUuid.has(uuid)) throw new DmError("EBUSY", `uuid ${uuid} is already in use`);
    let minor = opts.minor;
    if (minor !== undefined) {
      if (minor > MINOR_MAX) throw new DmError("EINVAL", `minor ${minor} out of range`);
      if (this.byMinor.has(minor)) throw new DmError("EBUSY", `minor ${minor} is already in use`);
    } else {
      minor = 0;
      while (this.byMinor.has(minor)) minor++;
    }
    const dev = new MappedDevice({ name: opts.name, uuid, minor }, opts.readOnly ?? false, this.hooks);
    this.byName.set(dev.name, dev);
    if (uuid) this.byUuid.set(uuid, dev);
    this.byMinor.set(minor, dev);
    this.emitEvent({ kind: "created", device: dev });
    return dev;
  }

  /**
   * dev_remove. An open device fails with EBUSY, unless `deferred` (removed at last close); with `force` the
   * table is first replaced by `error` so that openers see I/O errors (dmsetup remove --force). `shutdown`: the
   * daemon is stopping and restores the device on its next start (targets skip their end-of-life writes).
   */
  async remove(dev: MappedDevice, opts: { force?: boolean; deferred?: boolean; shutdown?: boolean } = {}): Promise<{ deferred: boolean }> {
    return dev.serialize(async () => {
      const opens = this.userOpenCount(dev);
      const busy = opens > 0 ? `is open (${opens})` : await this.externalHolder?.busyReason(dev);
      if (busy) {
        if (opts.deferred) {
          dev.deferredRemove = true;
          return { deferred: true };
        }
        if (opts.force && dev.live) {
          await dev.load([{ start: 0 as Sector, length: dev.size, type: "error", params: "" }], dev.readOnly);
          await dev.resume({ noflush: true });
        }
        throw new DmError("EBUSY", `device ${dev.name} ${busy}`);
      }
      await this.externalHolder?.release(dev);
      await this.destroy(dev, { shutdown: opts.shutdown });
      return { deferred: false };
    });
  }

  /** The node manager, when kernel block devices are attached to mapped devices (daemon/attach). */
  private externalHolder: ExternalHolder | undefined;

  setExternalHolder(holder: ExternalHolder | undefined): void {
    this.externalHolder = holder;
  }

  /** Opens by users (NBD clients, stacked devices), not counting the attached kernel node's own NBD sessions. */
  userOpenCount(dev: MappedDevice): number {
    return Math.max(0, dev.openCount - (this.externalHolder?.ownOpens(dev) ?? 0));
  }

  private async destroy(dev: MappedDevice, opts?: DestroyOptions): Promise<void> {
    this.byName.delete(dev.name);
    if (dev.uuid) this.byUuid.delete(dev.uuid);
    this.byMinor.delete(dev.minor);
    try {
      await dev.destroy(opts);
    } finally {
      this.emitEvent({ kind: "removed", device: dev });
    }
  }

  /** A failed create must leave nothing behind: remove without the open checks. */
  async discard(dev: MappedDevice): Promise<void> {
    if (this.byName.get(dev.name) === dev) await this.destroy(dev);
  }

  rename(dev: MappedDevice, newName: string): void {
    validateName(newName);
    if (this.byName.has(newName)) throw new DmError("EBUSY", `device ${newName} already exists`);
    const oldName = dev.name;
    this.byName.delete(oldName);
    dev.id.name = newName;
    this.byName.set(newName, dev);
    // The kernel raises an event on rename of a device with a live table.
    if (dev.live) dev.raiseEvent();
    this.emitEvent({ kind: "renamed", device: dev, oldName });
  }

  setUuid(dev: MappedDevice, uuid: string): void {
    if (dev.uuid) throw new DmError("EINVAL", `device ${dev.name} already has a uuid`);
    if (!uuid || uuid.length > UUID_MAX) throw new DmError("EINVAL", `invalid uuid`);
    if (this.byUuid.has(uuid)) throw new DmError("EBUSY", `uuid ${uuid} is already in use`);
    dev.id.uuid = uuid;
    this.byUuid.set(uuid, dev);
    // dev_rename raises the table event for --setuuid as for a new name (device with a live table).
    if (dev.live) dev.raiseEvent();
    this.emitEvent({ kind: "renamed", device: dev, oldName: dev.name });
  }

  // ---- underlying devices ----

  /**
   * dm_get_device for tables of `holder`: another tsdm device (name, /dev/mapper/NAME or 253:minor), a block
   * device (path or major:minor) or a regular file. A table may not reference its own device, directly or
   * through a chain.
   */
  async openDevice(spec: string, mode: "r" | "rw", holder: MappedDevice): Promise<BlockDevice> {
    const target = this.resolveDmDevice(spec);
    if (target) {
      if (target === holder || this.dependsOn(target, holder)) throw new DmError("EINVAL", `table for ${holder.name} cannot reference itself (${spec})`);
      if (!target.live) throw new DmError("ENXIO", `${spec} has no live table`);
      return new StackedDevice(target, mode === "r" || target.readOnly);
    }
    const mm = /^(\d+):(\d+)$/.exec(spec);
    const p = mm ? blockDevicePath(Number(mm[1]), Number(mm[2])) : spec;
    if (!path.isAbsolute(p)) throw new DmError("EINVAL", `${spec}: not an absolute path, major:minor or tsdm device name`);
    return FileDevice.open(p, mode === "r");
  }

  private resolveDmDevice(spec: string): MappedDevice | undefined {
    const mm = /^(\d+):(\d+)$/.exec(spec);
    if (mm) return Number(mm[1]) === DM_MAJOR ? this.byMinor.get(Number(mm[2])) : undefined;
    if (!spec.includes("/")) return this.byName.get(spec);
    if (path.dirname(spec) === this.mapperDir) return this.byName.get(path.basename(spec));
    return undefined;
  }

  private dependsOn(dev: MappedDevice, on: MappedDevice, seen = new Set<MappedDevice>()): boolean {
    if (seen.has(dev)) return false;
    seen.add(dev);
    for (const t of [dev.live, dev.inactive]) {
      for (const d of t?.devices() ?? []) {
        if (d instanceof StackedDevice && (d.device === on || this.dependsOn(d.device, on, seen))) return true;
      }
    }
    return false;
  }

  // ---- plumbing ----

  private emitEvent(ev: RegistryEvent): void {
    this.emit("event", ev);
  }

  private readonly hooks: DeviceHooks = {
    tableEnv: (dev, readOnly): TableEnv => ({
      deviceName: dev.name,
      readOnly,
      openDevice: (spec, mode) => this.openDevice(spec, readOnly ? "r" : mode, dev),
      raiseEvent: () => dev.raiseEvent(),
      log: (level, message, fields) => this.log[level](message, { device: dev.name, ...fields }),
    }),
    changed: (dev, kind) => this.emitEvent({ kind, device: dev }),
    lastClose: (dev) => {
      if (dev.deferredRemove && this.byName.get(dev.name) === dev) {
        void this.remove(dev, { deferred: true }).catch((err) => this.log.error("deferred remove failed", { device: dev.name, error: String(err) }));
      }
    },
  };
}

/** Another tsdm device used as an underlying device (stacking). Holding it counts as an open. */
export class StackedDevice implements BlockDevice {
  readonly devno: { major: number; minor: number };
  readonly label: string;
  readonly kernelName: string;
  readonly dmName: string;
  private closed = false;

  constructor(
    readonly device: MappedDevice,
    readonly readOnly: boolean,
  ) {
    this.devno = { major: DM_MAJOR, minor: device.minor };
    this.label = `${DM_MAJOR}:${device.minor}`;
    this.kernelName = `dm-${device.minor}`;
    this.dmName = device.name;
    device.open();
  }

  get size(): Sector {
    return this.device.size;
  }
  get logicalBlockSize(): number {
    return this.device.logicalBlockSize;
  }

  submit(bio: Bio): Promise<void> {
    return this.device.submit(bio);
  }

  allocation(sector: Sector, count: Sector): Promise<AllocationRun[]> {
    const live = this.device.live;
    return live ? live.allocation(sector, count) : Promise.resolve([dataRun(count)]);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.device.close();
  }
}

function validateName(name: string): void {
  if (name.length === 0) throw new DmError("EINVAL", "empty device name");
  if (Buffer.byteLength(name) > NAME_MAX) throw new DmError("EINVAL", `name too long`);
  if (name.includes("/")) throw new DmError("EINVAL", `name ${name} contains "/"`);
  if (name === "control" || name === "." || name === "..") throw new DmError("EINVAL", `name ${name} is reserved`);
}

function describeRef(ref: DeviceRefSpec): string {
  if ("name" in ref) return ref.name;
  if ("uuid" in ref) return `uuid ${ref.uuid}`;
  return `${ref.major}:${ref.minor}`;
}
