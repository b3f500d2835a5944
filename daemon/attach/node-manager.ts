import fs from "node:fs";
import { DmError, fromSystemError, type Errno } from "../core/errors.js";
import type { Logger } from "../core/log.js";
import { sectorsToBytes } from "../core/units.js";
import type { MappedDevice } from "../device/mapped-device.js";
import type { DeviceRegistry, ExternalHolder, RegistryEvent } from "../device/registry.js";
import { releaseRecordedLoop } from "./fuse-loop.js";
import { blockDeviceBusy, blockOpeners, kernelClaim } from "./kernel-dev.js";
import { MapperNodes } from "./mapper-nodes.js";
import { AttachRecords, bootId, diskseqOf, type AttachRecord } from "./records.js";
import { chooseAttacher } from "./select.js";
import { releaseRecordedUblk } from "./ublk.js";
import type { AttachMethod, AttachMode, Attacher, Attachment, ExportRef } from "./types.js";

export interface NodeManagerOptions {
  registry: DeviceRegistry;
  /** --attach: auto picks ublk > nbd > fuse by what this kernel offers; none attaches nothing. */
  mode: AttachMode;
  /** The NBD export the kernel side connects to (the daemon's own unix socket, export = device name). */
  exportOf(dev: MappedDevice): ExportRef;
  /** Private working directory (FUSE mount points); created 0700. */
  runDir: string;
  log: Logger;
  /** Use this attacher instead of choosing one (tests). */
  attacher?: Attacher;
  /** Interval for noticing that a node with a deferred remove was unmounted (ms). Default 1000. */
  deferredPollMs?: number;
  /** Where attachments are recorded so that a start after a crash can undo them (records.ts); unset: not recorded. */
  recordDir?: string;
}

/** The kernel view of one mapped device, for `info` (major:minor of the real block device). */
export interface NodeInfo {
  /** The kernel block device (/dev/loop3, /dev/nbd0, /dev/ublkb0). */
  path: string;
  major: number;
  minor: number;
  method: AttachMethod;
  /** $DM_DEV_DIR/mapper/NAME. */
  node: string;
}

interface Entry {
  attachment: Attachment;
  /** Name the mapper node was made under (follows renames). */
  name: string;
}

/**
 * Keeps one kernel block device and one $DM_DEV_DIR/mapper/NAME node per mapped device with a live table:
 * attaches on resume, follows renames and resizes, detaches before removal (refusing with EBUSY while the
 * node is mounted or open), repairs nodes on `mknodes`, and detaches everything on stop.
 *
 * Work for one device runs in event order on its own queue; settle(dev) waits for it, the way dmsetup waits
 * for udev before returning.
 */
export class NodeManager implements ExternalHolder {
  readonly method: AttachMethod | undefined;
  readonly nodes: MapperNodes;
  private readonly attacher: Attacher | undefined;
  private readonly entries = new Map<MappedDevice, Entry>();
  private readonly queues = new Map<MappedDevice, Promise<void>>();
  /** The last attach failure per device, with the sequence number of the attempt (see checkAttached). */
  private readonly failures = new Map<MappedDevice, { message: string; errno: Errno; seq: number }>();
  private syncSeq = 0;
  private readonly log: Logger;
  private readonly records: AttachRecords | undefined;
  private readonly bootId = bootId();
  private deferredTimer: NodeJS.Timeout | undefined;
  private stopped = false;

  private constructor(
    private readonly opts: NodeManagerOptions,
    attacher: Attacher | undefined,
  ) {
    this.log = opts.log;
    this.attacher = attacher;
    this.method = attacher?.method;
    this.nodes = new MapperNodes(opts.registry.mapperDir, opts.log);
    this.records = opts.recordDir ? new AttachRecords(opts.recordDir, opts.log) : undefined;
  }

  /** Choose the attach method, clean up after a crashed predecessor, attach devices that already have tables. */
  static async start(opts: NodeManagerOptions): Promise<NodeManager> {
    let attacher = opts.attacher;
    if (!attacher && opts.mode !== "none") {
      fs.mkdirSync(opts.runDir, { recursive: true, mode: 0o700 });
      const choice = chooseAttacher(opts.mode, { runDir: fs.realpathSync(opts.runDir), log: opts.log });
      if ("error" in choice) {
        // auto means "whatever works here": a machine with none of the paths still serves NBD exports.
        if (opts.mode !== "auto") throw new DmError("ENODEV", choice.error);
        opts.log.warn("no kernel attach method available; devices are served as NBD exports only", { why: choice.error });
      } else {
        attacher = choice.attacher;
        opts.log.info("kernel block devices attach via " + attacher.method, { method: attacher.method, why: choice.why });
      }
    }
    const mgr = new NodeManager(opts, attacher);
    // Undo what a crashed predecessor left, before anything is attached: its nodes may point at kernel
    // devices that are free now and about to be handed to other devices.
    await mgr.undoRecorded();
    await attacher?.cleanupStale?.();
    if (attacher) mgr.sweepStaleNodes();
    opts.registry.on("event", mgr.onEvent);
    opts.registry.setExternalHolder(mgr);
    if (attacher) {
      for (const dev of opts.registry.list()) if (dev.live) mgr.background(dev, () => mgr.sync(dev));
      await Promise.all(opts.registry.list().map((d) => mgr.settle(d)));
      mgr.deferredTimer = setInterval(() => mgr.checkDeferred(), opts.deferredPollMs ?? 1000);
      mgr.deferredTimer.unref();
    }
    return mgr;
  }

  // ---- what the API asks ----

  nodeFor(dev: MappedDevice): NodeInfo | undefined {
    const e = this.entries.get(dev);
    if (!e) return undefined;
    const n = e.attachment.node;
    return { path: n.path, major: n.major, minor: n.minor, method: n.method, node: this.nodes.pathOf(e.name) };
  }

  /** The last attach failure of `dev` (shown in logs/info), if its node is missing because of one. */
  failureOf(dev: MappedDevice): string | undefined {
    return this.hasNode(dev) ? undefined : this.failures.get(dev)?.message;
  }

  /** For checkAttached(): attach attempts queued after this point are the caller's. */
  attachEpoch(): number {
    return this.syncSeq;
  }

  /**
   * After create/resume, as dmsetup makes the node after the ioctl: resolves once `dev` has its node (or needs
   * none), else throws why not (DmError, op "attach"). A resume that queued no attempt of its own (it changed
   * nothing) retries a failed attach once.
   */
  async checkAttached(dev: MappedDevice, epoch: number): Promise<void> {
    await this.settle(dev);
    if (!this.wantsNode(dev) || this.hasNode(dev)) return;
    let f = this.failures.get(dev);
    if (!f || f.seq <= epoch) {
      const seq = ++this.syncSeq;
      await this.enqueue(dev, () => this.sync(dev, seq));
      f = this.failures.get(dev);
    }
    if (!this.wantsNode(dev) || this.hasNode(dev)) return;
    const why = f?.message ?? "not attached";
    throw new DmError(f?.errno ?? "EIO", `${this.nodes.pathOf(dev.name)}: mknod for ${dev.name} failed: cannot attach a kernel block device via ${this.method}: ${why}`, "attach");
  }

  private wantsNode(dev: MappedDevice): boolean {
    return this.attacher !== undefined && !this.stopped && this.opts.registry.find({ name: dev.name }) === dev && dev.live !== undefined && dev.size > 0;
  }

  private hasNode(dev: MappedDevice): boolean {
    const e = this.entries.get(dev);
    return e !== undefined && e.name === dev.name && this.nodes.isCorrect(dev.name, e.attachment.node.major, e.attachment.node.minor);
  }

  /** Wait until node work queued for `dev` so far is done (call after create/resume/rename before replying). */
  settle(dev: MappedDevice): Promise<void> {
    return this.queues.get(dev) ?? Promise.resolve();
  }

  /**
   * Openers of the kernel node, for `info`'s open count, by the rule remove's EBUSY uses: each process with it
   * open, plus 1 while it is mounted or stacked on (an exclusive claim alone counts 1). The /proc scan is
   * shared by every device of one call (ls/info of all devices scan once): see openersNow().
   */
  nodeOpeners(dev: MappedDevice): number {
    const e = this.entries.get(dev);
    if (!e) return 0;
    const n = e.attachment.node;
    const procs = this.openersNow().get(`${n.major}:${n.minor}`) ?? 0;
    const claim = kernelClaim(n);
    if (!claim) return procs;
    return claim.startsWith("is in use") ? Math.max(1, procs) : procs + 1;
  }

  private openerScan: Map<string, number> | undefined;

  /** One /proc scan per event-loop turn: a call that reports many devices does it once, the next call anew. */
  private openersNow(): Map<string, number> {
    if (!this.openerScan) {
      this.openerScan = blockOpeners();
      setImmediate(() => (this.openerScan = undefined));
    }
    return this.openerScan;
  }

  ownOpens(dev: MappedDevice): number {
    return this.entries.get(dev)?.attachment.nbdSessions ?? 0;
  }

  async busyReason(dev: MappedDevice): Promise<string | undefined> {
    await this.settle(dev);
    const e = this.entries.get(dev);
    if (!e) return undefined;
    const why = blockDeviceBusy(e.attachment.node);
    return why && `(attached as ${e.attachment.node.path}) ${why}`;
  }

  /** Detach `dev`'s node before the registry destroys it; EBUSY if it is mounted or open. */
  release(dev: MappedDevice): Promise<void> {
    return this.enqueue(dev, async () => {
      const e = this.entries.get(dev);
      if (!e) return;
      const why = blockDeviceBusy(e.attachment.node);
      if (why) throw new DmError("EBUSY", `device ${dev.name} (attached as ${e.attachment.node.path}) ${why}`);
      await this.detach(dev, e);
    });
  }

  /**
   * mknodes: make the nodes of `devices` (default: all) match their attachments, attach devices whose attach
   * failed before, and (for a full repair) remove nodes of tsdm-attached majors that belong to no device.
   */
  async repair(devices?: MappedDevice[]): Promise<void> {
    const devs = devices ?? this.opts.registry.list();
    await Promise.all(
      devs.map((dev) =>
        this.enqueue(dev, async () => {
          const e = this.entries.get(dev);
          if (e) {
            if (e.name !== dev.name) {
              this.nodes.remove(e.name, e.attachment.node);
              e.name = dev.name;
              await this.record(e);
            }
            this.nodes.ensure(dev.name, e.attachment.node.major, e.attachment.node.minor);
          } else {
            await this.sync(dev);
          }
        }),
      ),
    );
    if (!devices) this.sweepStaleNodes();
  }

  /** Detach every device (daemon stop). A node still mounted is detached lazily and reported. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.deferredTimer) clearInterval(this.deferredTimer);
    this.opts.registry.off("event", this.onEvent);
    this.opts.registry.setExternalHolder(undefined);
    const devs = [...new Set([...this.entries.keys(), ...this.queues.keys()])];
    await Promise.all(
      devs.map((dev) =>
        this.enqueue(dev, async () => {
          const e = this.entries.get(dev);
          if (!e) return;
          const why = blockDeviceBusy(e.attachment.node);
          if (why) this.log.error("daemon stopping while a node is in use; its I/O will fail", { device: dev.name, node: e.attachment.node.path, why });
          await this.detach(dev, e);
        }, true),
      ),
    );
    if (this.attacher) this.sweepStaleNodes();
  }

  /**
   * Nodes of loop/nbd majors in the mapper directory that belong to no attachment of ours: left by a crash,
   * by a node that could not be removed, or pointing at a kernel device that is now another device's. The
   * mapper directory is this daemon's (one tsdmd per DM_DEV_DIR). ublk disks use blkext (259), shared with
   * NVMe and others: those are left alone (records cover them).
   */
  sweepStaleNodes(): void {
    const ours = new Set([...this.entries.values()].map((e) => `${e.name}\0${e.attachment.node.major}:${e.attachment.node.minor}`));
    const attachMajors = kernelMajors(["loop", "nbd"]);
    for (const [name, d] of this.nodes.list()) {
      if (!attachMajors.has(d.major) || ours.has(`${name}\0${d.major}:${d.minor}`)) continue;
      this.log.info("removing stale node", { path: this.nodes.pathOf(name), devno: `${d.major}:${d.minor}` });
      try {
        this.nodes.remove(name, d);
      } catch (err) {
        this.log.error("cannot remove stale node", { path: this.nodes.pathOf(name), error: String(err) });
      }
    }
  }

  /** Remove every node an earlier run recorded, detach its loop devices (fuse), delete its ublk devices; see records.ts. */
  private async undoRecorded(): Promise<void> {
    for (const rec of this.records?.list() ?? []) {
      try {
        this.nodes.removeAt(rec.node, rec.kernel);
      } catch (err) {
        this.log.error("cannot remove the node of a previous run", { path: rec.node, error: String(err) });
      }
      if ((await releaseRecordedLoop(rec, this.log)) && (await releaseRecordedUblk(rec, this.log))) await this.records!.drop(rec.kernel.path);
    }
  }

  /** Write `e`'s record (before its node is made: no node without a record). */
  private async record(e: Entry): Promise<void> {
    if (!this.records) return;
    const n = e.attachment.node;
    const rec: AttachRecord = {
      device: e.name,
      method: n.method,
      node: this.nodes.pathOf(e.name),
      kernel: { path: n.path, major: n.major, minor: n.minor },
      diskseq: diskseqOf(n.path.replace(/^.*\//, "")),
      bootId: this.bootId,
      pid: process.pid,
      ublkCookie: e.attachment.ublkCookie,
    };
    await this.records.put(rec).catch((err) => this.log.error("cannot record attachment; a crash would leave its node behind", { device: e.name, error: String(err) }));
  }

  // ---- event handling ----

  private readonly onEvent = (ev: RegistryEvent): void => {
    const dev = ev.device;
    switch (ev.kind) {
      case "resumed":
        if (this.attacher) {
          const seq = ++this.syncSeq;
          this.background(dev, () => this.sync(dev, seq));
        }
        break;
      case "renamed":
        this.background(dev, async () => {
          const e = this.entries.get(dev);
          if (!e || e.name === dev.name) return;
          this.nodes.remove(e.name, e.attachment.node);
          e.name = dev.name;
          await this.record(e);
          this.nodes.ensure(dev.name, e.attachment.node.major, e.attachment.node.minor);
        });
        break;
      case "removed":
        // Normally release() has detached already; this covers removals that bypass it (failed creates).
        this.background(dev, async () => {
          const e = this.entries.get(dev);
          if (e) await this.detach(dev, e);
          this.failures.delete(dev);
        });
        break;
      default:
        break;
    }
  };

  /** Bring `dev`'s attachment in line with its live table: attach, re-attach after a resize, or leave it. */
  private async sync(dev: MappedDevice, seq = ++this.syncSeq): Promise<void> {
    if (!this.attacher || this.stopped) return;
    if (!this.opts.registry.find({ name: dev.name }) || !dev.live) return;
    const sizeBytes = sectorsToBytes(dev.size) as number;
    const e = this.entries.get(dev);
    if (e) {
      if (e.attachment.sizeBytes === sizeBytes && e.attachment.readOnly === dev.readOnly) {
        this.nodes.ensure(dev.name, e.attachment.node.major, e.attachment.node.minor);
        return;
      }
      const why = blockDeviceBusy(e.attachment.node);
      if (why) {
        this.log.warn("device changed size or mode while its node is in use; the node keeps the old geometry until it is free and `mknodes` runs", { device: dev.name, node: e.attachment.node.path, why });
        return;
      }
      await this.detach(dev, e);
    }
    if (sizeBytes === 0) return;
    try {
      const attachment = await this.attacher.attach({
        device: dev,
        export: this.opts.exportOf(dev),
        sizeBytes,
        logicalBlockSize: dev.logicalBlockSize,
        readOnly: dev.readOnly,
      });
      // The device may have been renamed or removed while we attached.
      if (this.stopped || !this.opts.registry.find({ name: dev.name }) || this.opts.registry.find({ name: dev.name }) !== dev) {
        await attachment.detach();
        return;
      }
      const entry = { attachment, name: dev.name };
      this.entries.set(dev, entry);
      await this.record(entry);
      this.nodes.ensure(dev.name, attachment.node.major, attachment.node.minor);
      this.failures.delete(dev);
      this.log.info("device attached", { device: dev.name, method: attachment.node.method, blockDevice: attachment.node.path, devno: `${attachment.node.major}:${attachment.node.minor}` });
    } catch (err) {
      const e = err instanceof DmError ? err : fromSystemError(err, "");
      const message = err instanceof Error ? err.message : String(err); // the attacher's own words, no prefix
      this.failures.set(dev, { message, errno: e.errno, seq });
      this.log.error("attach failed", { device: dev.name, method: this.attacher.method, error: message });
    }
  }

  private async detach(dev: MappedDevice, e: Entry): Promise<void> {
    this.nodes.remove(e.name, e.attachment.node);
    await e.attachment.detach();
    this.entries.delete(dev);
    await this.records?.drop(e.attachment.node.path).catch((err) => this.log.warn("cannot drop attach record", { error: String(err) }));
    this.log.info("device detached", { device: dev.name, blockDevice: e.attachment.node.path });
  }

  /** A deferred remove waits for the node to be unmounted/closed: the kernel would remove at last close. */
  private checkDeferred(): void {
    for (const dev of this.entries.keys()) {
      if (!dev.deferredRemove || this.queues.has(dev)) continue;
      if (this.opts.registry.userOpenCount(dev) > 0 || blockDeviceBusy(this.entries.get(dev)!.attachment.node)) continue;
      void this.opts.registry.remove(dev, { deferred: true }).catch((err) => this.log.error("deferred remove failed", { device: dev.name, error: String(err) }));
    }
  }

  /** enqueue() for event handlers: failures are logged by the queue, nobody awaits the result. */
  private background(dev: MappedDevice, fn: () => Promise<void>): void {
    this.enqueue(dev, fn).catch(() => undefined);
  }

  /** Run `fn` after every earlier job of `dev`; the returned promise settles with `fn`. */
  private enqueue(dev: MappedDevice, fn: () => Promise<void>, evenIfStopped = false): Promise<void> {
    const prev = this.queues.get(dev) ?? Promise.resolve();
    const run = prev.then(() => (this.stopped && !evenIfStopped ? undefined : fn()));
    const tail = run.catch((err) => this.log.error("node work failed", { device: dev.name, error: String(err) }));
    this.queues.set(dev, tail);
    void tail.then(() => {
      if (this.queues.get(dev) === tail) this.queues.delete(dev);
    });
    return run;
  }
}

/** Block majors of the drivers tsdm attaches through, from /proc/devices. */
function kernelMajors(names: readonly string[]): Set<number> {
  const out = new Set<number>();
  try {
    let inBlock = false;
    for (const line of fs.readFileSync("/proc/devices", "utf8").split("\n")) {
      if (line.startsWith("Block devices:")) inBlock = true;
      else if (line.startsWith("Character devices:")) inBlock = false;
      else if (inBlock) {
        const m = /^\s*(\d+)\s+(\S+)/.exec(line);
        if (m && names.includes(m[2]!)) out.add(Number(m[1]));
      }
    }
  } catch {
    /* no procfs */
  }
  return out;
}
