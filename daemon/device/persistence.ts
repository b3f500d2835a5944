import fs from "node:fs";
import path from "node:path";
import type { Logger } from "../core/log.js";
import type { Sector } from "../core/units.js";
import type { MappedDevice } from "./mapped-device.js";
import type { DeviceRegistry, RegistryEvent } from "./registry.js";
import type { TableLineSpec } from "./table.js";

/**
 * Restart persistence: the devices, their tables (live and inactive) and their suspend state, kept in
 * <state-dir>/devices.json. Written atomically (temp file, fsync, rename, fsync of the directory) before a
 * control change is acknowledged, so a kill -9 at any point leaves either the old or the new state. Targets keep their own
 * on-disk state (era metadata, bow log, log-writes log) and recover it in their constructors.
 *
 * A device whose tables could not be restored (backing gone) keeps its saved tables here ("pending") and in
 * every later write, until the user loads a table, clears or removes it; restart or `resume` (retry())
 * brings them back once the backing returns.
 */
interface PersistedDevice {
  name: string;
  uuid: string;
  minor: number;
  readOnly: boolean;
  suspended: boolean;
  readAhead?: number;
  /** A table was once loaded (MappedDevice.diskAdded): kept for a device whose table was cleared since. */
  diskAdded?: boolean;
  live?: { readOnly: boolean; lines: PersistedLine[] };
  inactive?: { readOnly: boolean; lines: PersistedLine[] };
}

interface PersistedLine {
  start: number;
  length: number;
  type: string;
  params: string;
}

interface StateFile {
  version: 1;
  devices: PersistedDevice[];
}

const STATE_FILE = "devices.json";

export class DeviceStateStore {
  private readonly file: string;
  private listener: ((ev: RegistryEvent) => void) | undefined;
  private dirty = false;
  private writing: Promise<void> = Promise.resolve();
  /** Saved state of devices whose restore failed, until they are restored or the user replaces it. */
  private readonly pending = new Map<MappedDevice, PersistedDevice>();
  /** Devices being restored by retry(): their load events are not the user's. */
  private readonly retrying = new Set<MappedDevice>();

  constructor(
    private readonly stateDir: string,
    private readonly registry: DeviceRegistry,
    private readonly log: Logger,
  ) {
    this.file = path.join(stateDir, STATE_FILE);
  }

  /** Track registry changes from now on; commit() writes them. */
  start(): void {
    this.listener = (ev) => {
      if (ev.kind === "target_event") return;
      if ((ev.kind === "loaded" || ev.kind === "cleared" || ev.kind === "removed") && !this.retrying.has(ev.device) && this.pending.delete(ev.device)) {
        ev.device.errorState = ""; // the saved tables it described are forgotten
      }
      this.dirty = true;
      // Changes made outside an API call (a deferred remove at last close) are saved soon too.
      setImmediate(() => void this.commit().catch(() => undefined));
    };
    this.registry.on("event", this.listener);
  }

  /** Stop tracking (a daemon shutdown tears devices down but they must come back on the next start). */
  stop(): void {
    if (this.listener) this.registry.off("event", this.listener);
    this.listener = undefined;
  }

  /**
   * Write the current state if anything changed since the last write. The API awaits this before answering a
   * mutating call, so what a client was told is done survives a kill -9; concurrent calls share one write.
   * The I/O is asynchronous: fsync must not stall the NBD data path on the event loop.
   */
  commit(): Promise<void> {
    if (!this.dirty) return this.writing;
    this.writing = this.writing.then(async () => {
      if (!this.dirty) return;
      this.dirty = false;
      try {
        await this.write();
      } catch (err) {
        this.dirty = true;
        this.log.error("could not save device state", { file: this.file, error: String(err) });
        throw err;
      }
    });
    return this.writing;
  }

  private async write(): Promise<void> {
    const state: StateFile = { version: 1, devices: this.registry.list().map((d) => snapshot(d, this.pending.get(d))) };
    const tmp = `${this.file}.tmp`;
    const fh = await fs.promises.open(tmp, "w", 0o600);
    try {
      await fh.writeFile(JSON.stringify(state, null, 2) + "\n");
      await fh.sync();
    } finally {
      await fh.close();
    }
    await fs.promises.rename(tmp, this.file);
    const dir = await fs.promises.open(this.stateDir, "r");
    try {
      await dir.sync();
    } finally {
      await dir.close();
    }
  }

  /**
   * Bring back the saved devices. Devices are restored in dependency order (a device whose table names another
   * tsdm device comes after it). A device whose table cannot be constructed (backing file gone, metadata
   * unreadable) comes back without a live table, in an error state that `info`/`status` show, and I/O to it
   * fails with EIO.
   */
  async restore(): Promise<{ restored: string[]; failed: { name: string; error: string }[] }> {
    let state: StateFile;
    try {
      state = JSON.parse(fs.readFileSync(this.file, "utf8")) as StateFile;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return { restored: [], failed: [] };
      throw new Error(`cannot read ${this.file}: ${(err as Error).message}`);
    }
    const restored: string[] = [];
    const failed: { name: string; error: string }[] = [];
    for (const d of dependencyOrder(state.devices)) {
      const dev = this.registry.create({ name: d.name, uuid: d.uuid || undefined, readOnly: d.readOnly, minor: d.minor });
      if (d.readAhead !== undefined) dev.readAhead = d.readAhead;
      if (d.diskAdded) dev.diskAdded = true;
      try {
        if (d.live) {
          await dev.load(toSpecs(d.live.lines), d.live.readOnly, { restoring: true });
          await dev.resume({ noflush: false });
          if (d.suspended) await dev.suspend({ noflush: false });
        }
        if (d.inactive) await dev.load(toSpecs(d.inactive.lines), d.inactive.readOnly, { restoring: true });
        restored.push(d.name);
      } catch (err) {
        const message = err instanceof Error ? err.message : String(err);
        dev.errorState = `table could not be restored after restart: ${message}`;
        this.pending.set(dev, d);
        failed.push({ name: d.name, error: message });
        this.log.error("device restored in error state", { device: d.name, error: message });
      }
    }
    return { restored, failed };
  }

  /**
   * `resume` of a device whose restore failed: try again, as the restart would have (live table loaded and
   * resumed, inactive table loaded). Returns false if the device has nothing pending (an ordinary resume).
   * Call inside dev.serialize(). Throws the load's error if the backing is still not there.
   */
  async retry(dev: MappedDevice): Promise<boolean> {
    const saved = this.pending.get(dev);
    if (!saved) return false;
    this.retrying.add(dev);
    try {
      if (saved.live && !dev.live) {
        await dev.load(toSpecs(saved.live.lines), saved.live.readOnly, { restoring: true });
        await dev.resume({ noflush: false });
      }
      if (saved.inactive && !dev.inactive) await dev.load(toSpecs(saved.inactive.lines), saved.inactive.readOnly, { restoring: true });
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      dev.errorState = `table could not be restored after restart: ${message}`;
      throw err;
    } finally {
      this.retrying.delete(dev);
    }
    this.pending.delete(dev);
    dev.errorState = "";
    this.dirty = true;
    this.log.info("device restored", { device: dev.name });
    return true;
  }
}

/** What is saved for `dev`: its tables, or for a slot it could not restore, the saved one (`pending`). */
function snapshot(dev: MappedDevice, pending: PersistedDevice | undefined): PersistedDevice {
  return {
    name: dev.name,
    uuid: dev.uuid,
    minor: dev.minor,
    readOnly: dev.readOnly,
    suspended: dev.live || !pending ? dev.suspended : pending.suspended,
    readAhead: dev.readAhead,
    diskAdded: dev.diskAdded || undefined,
    live: dev.live ? { readOnly: dev.live.readOnly, lines: dev.live.spec.map(toPersisted) } : pending?.live,
    inactive: dev.inactive ? { readOnly: dev.inactive.readOnly, lines: dev.inactive.spec.map(toPersisted) } : pending?.inactive,
  };
}

const toPersisted = (l: TableLineSpec): PersistedLine => ({ start: l.start, length: l.length, type: l.type, params: l.params });
const toSpecs = (lines: PersistedLine[]): TableLineSpec[] =>
  lines.map((l) => ({ start: l.start as Sector, length: l.length as Sector, type: l.type, params: l.params }));

/** Devices referenced by name, /dev/mapper/NAME or 253:minor in another's table are restored first. */
function dependencyOrder(devices: PersistedDevice[]): PersistedDevice[] {
  const byName = new Map(devices.map((d) => [d.name, d]));
  const byMinor = new Map(devices.map((d) => [`253:${d.minor}`, d]));
  const out: PersistedDevice[] = [];
  const state = new Map<string, "visiting" | "done">();
  const visit = (d: PersistedDevice): void => {
    if (state.get(d.name)) return;
    state.set(d.name, "visiting");
    for (const t of [d.live, d.inactive]) {
      for (const l of t?.lines ?? []) {
        for (const word of l.params.split(/\s+/)) {
          const dep = byName.get(word) ?? byName.get(path.basename(word)) ?? byMinor.get(word);
          if (dep && dep !== d && (!word.includes("/") || word.includes("/mapper/"))) visit(dep);
        }
      }
    }
    state.set(d.name, "done");
    out.push(d);
  };
  for (const d of devices) visit(d);
  return out;
}
