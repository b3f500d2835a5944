import type { sendUnaryData, ServerUnaryCall, ServerWritableStream } from "@grpc/grpc-js";
import {
  WatchEventsResponse_Kind as Kind,
  type DeviceInfo,
  type DeviceMapperServiceServer,
  type DeviceRef,
  type TableLine,
  type WatchEventsRequest,
  type WatchEventsResponse,
} from "../../gen/tsdm/v1/tsdm.js";
import { DmError, type DmOp } from "../core/errors.js";
import type { Logger } from "../core/log.js";
import type { Sector } from "../core/units.js";
import { DM_MAJOR, type MappedDevice } from "../device/mapped-device.js";
import type { DeviceRefSpec, DeviceRegistry, RegistryEvent } from "../device/registry.js";
import type { TableLineSpec } from "../device/table.js";
import { splitArgs } from "../device/split-args.js";
import { targetTypes } from "../targets/index.js";
import { inStep, toServiceError } from "./status.js";

/** Driver version the daemon reports (≥ 4.27 so scripts' feature checks for deferred remove pass). */
export const DRIVER_VERSION = "4.48.0";

/** What the service needs to know about kernel block devices attached to mapped devices (native bridge). */
export interface NodeInfoSource {
  nodeFor(dev: MappedDevice): { path: string; major: number; minor: number; method: string } | undefined;
  /** EBUSY reason when the attached node is mounted or held open, else undefined. */
  busyReason?(dev: MappedDevice): Promise<string | undefined>;
  repair?(devices?: MappedDevice[]): Promise<void>;
  /** Resolves once node work for `dev` (attach, rename) is done: calls return with /dev/mapper/NAME in place, as dmsetup does after udev. */
  settle?(dev: MappedDevice): Promise<void>;
  /** 1 while the attached kernel node is mounted or held (part of `info`'s open count). */
  nodeOpeners?(dev: MappedDevice): number;
  /** Why `dev` has no node although it should (its last attach failed), for `info`'s error state. */
  failureOf?(dev: MappedDevice): string | undefined;
  /** A mark taken before create/resume, for checkAttached. */
  attachEpoch?(): number;
  /** After create/resume: the node is in place, or a DmError (op "attach") says why not. */
  checkAttached?(dev: MappedDevice, epoch: number): Promise<void>;
}

export interface ServiceOptions {
  registry: DeviceRegistry;
  version: string;
  /** The NBD URI of a device's export. */
  nbdUri(name: string): string;
  nodes?: NodeInfoSource;
  /** Make the device state durable (restart persistence); awaited before a mutating call is answered. */
  persist?: () => Promise<void>;
  /**
   * `resume` of a device whose tables could not be restored at start retries that restore (true), else
   * false for an ordinary resume (DeviceStateStore.retry).
   */
  retryRestore?: (dev: MappedDevice) => Promise<boolean>;
  /** Failed changes are logged with their reason, as the kernel's dm logs them to dmesg. */
  log?: Logger;
}

type Unary<Req, Res> = (call: ServerUnaryCall<Req, Res>, cb: sendUnaryData<Res>) => void;

const MUTATING_OPS = new Set<DmOp>(["create", "reload", "clear", "suspend", "resume", "remove", "remove_all", "rename"]);
/** Failures worth a log line: dmsetup prints only the errno, the reason is here (the kernel's is in dmesg). */
const LOGGED_FAILURES = new Set<DmOp>([...MUTATING_OPS, "message"]);

/**
 * Wrap an async handler: results go to the callback, DmErrors become gRPC statuses (api/status.ts). A mutating
 * call is answered only after the resulting device state is durable.
 */
function makeUnary(persist: (() => Promise<void>) | undefined, log: Logger | undefined) {
  return function unary<Req, Res>(op: DmOp, fn: (req: Req, call: ServerUnaryCall<Req, Res>) => Promise<Res>): Unary<Req, Res> {
    const settle = persist && MUTATING_OPS.has(op) ? persist : undefined;
    const logFailure = log && LOGGED_FAILURES.has(op) ? log : undefined;
    return (call, cb) => {
      const done = fn(call.request, call);
      const persisted = settle ? done.finally(() => settle().catch(() => undefined)) : done;
      persisted.then(
        (res) => cb(null, res),
        (err: unknown) => {
          if (err instanceof DmError) logFailure?.warn(`${err.op ?? op} failed`, { errno: err.errno, error: err.message });
          cb(toServiceError(err, op, err instanceof DmError ? devnoOf(err) : undefined) as never, null);
        },
      );
    };
  };
}

const devnoTag = new WeakMap<DmError, string>();
const devnoOf = (err: DmError): string | undefined => devnoTag.get(err);

export function refSpec(ref: DeviceRef | undefined): DeviceRefSpec {
  const by = ref?.by;
  if (!by) throw new DmError("EINVAL", "no device specified");
  switch (by.$case) {
    case "name":
      return { name: by.value };
    case "uuid":
      return { uuid: by.value };
    case "devno":
      return { major: by.value.major, minor: by.value.minor };
  }
}

/** RemoveDeviceRequest.retry: libdm's dm_task_retry_remove (25 tries, 200 ms apart). */
const REMOVE_RETRIES = 25;
const REMOVE_RETRY_DELAY_MS = 200;

function toLineSpecs(lines: readonly TableLine[]): TableLineSpec[] {
  // Values beyond 2^53 lose precision here; the table load refuses them all the same (MAX_DEVICE_SECTORS).
  return lines.map((l) => ({ start: Number(l.startSector) as Sector, length: Number(l.lengthSectors) as Sector, type: l.targetType, params: l.params }));
}

const toLines = (lines: readonly TableLineSpec[]): TableLine[] =>
  lines.map((l) => ({ startSector: BigInt(l.start), lengthSectors: BigInt(l.length), targetType: l.type, params: l.params }));

export function createService(opts: ServiceOptions): DeviceMapperServiceServer {
  const { registry } = opts;
  const unary = makeUnary(opts.persist, opts.log);

  const attachError = (dev: MappedDevice): string => {
    const why = opts.nodes?.failureOf?.(dev);
    return why ? `kernel block device not attached: ${why}` : "";
  };
  /** dmsetup create/resume fail when the device node cannot be made; so do these (the table change stays). */
  const attached = (dev: MappedDevice, epoch: number): Promise<void> =>
    opts.nodes?.checkAttached ? opts.nodes.checkAttached(dev, epoch) : (opts.nodes?.settle?.(dev) ?? Promise.resolve());

  const info = (dev: MappedDevice, inactive = false): DeviceInfo => {
    const node = opts.nodes?.nodeFor(dev);
    return {
      name: dev.name,
      uuid: dev.uuid,
      major: node?.major ?? DM_MAJOR,
      minor: node?.minor ?? dev.minor,
      suspended: dev.suspended,
      readOnly: dev.readOnly,
      liveTable: dev.live !== undefined,
      inactiveTable: dev.inactive !== undefined,
      openCount: registry.userOpenCount(dev) + (opts.nodes?.nodeOpeners?.(dev) ?? 0),
      eventNr: dev.eventNr,
      targetCount: (inactive ? dev.inactive?.targetCount : dev.live?.targetCount) ?? 0,
      deferredRemove: dev.deferredRemove,
      readAheadSectors: dev.readAhead,
      liveTargetTypes: dev.live?.targetTypes ?? [],
      sizeSectors: BigInt(dev.size),
      nbdExport: dev.name,
      attachedBlockDevice: node?.path ?? "",
      attachMethod: node?.method ?? "",
      errorState: dev.errorState || attachError(dev),
      inactiveTargetTypes: dev.inactive?.targetTypes ?? [],
      inactiveTargetCount: dev.inactive?.targetCount ?? 0,
      diskAdded: dev.diskAdded,
    };
  };

  /**
   * A device by name, uuid or number. `info` reports the attached kernel node's major:minor when there is one,
   * so -j/-m may name either that or the 253:minor tsdm number.
   */
  const find = (ref: DeviceRef | undefined): MappedDevice | undefined => {
    const spec = refSpec(ref);
    const dev = registry.find(spec);
    if (dev || !("major" in spec) || !opts.nodes) return dev;
    return registry.list().find((d) => {
      const n = opts.nodes!.nodeFor(d);
      return n !== undefined && n.major === spec.major && n.minor === spec.minor;
    });
  };
  const lookup = (ref: DeviceRef | undefined): MappedDevice => find(ref) ?? registry.get(refSpec(ref));

  return {
    createDevice: unary("create", async (req) => {
      const dev = registry.create({ name: req.name, uuid: req.uuid || undefined, readOnly: req.readOnly, minor: req.minor });
      setReadAhead(dev, req.readAhead);
      if (req.table.length === 0) return { device: info(dev) };
      const epoch = opts.nodes?.attachEpoch?.() ?? 0;
      try {
        await dev.serialize(async () => {
          await inStep("reload", dev.load(toLineSpecs(req.table), req.readOnly));
          await inStep("resume", dev.resume({ noflush: false }));
        });
        await attached(dev, epoch);
      } catch (err) {
        await registry.discard(dev).catch(() => undefined);
        if (err instanceof DmError) devnoTag.set(err, `${DM_MAJOR}:${dev.minor}`);
        throw err;
      }
      return { device: info(dev) };
    }),

    loadTable: unary("reload", async (req) => {
      const dev = lookup(req.device);
      await dev.serialize(() => dev.load(toLineSpecs(req.table), req.readOnly));
      return { device: info(dev) };
    }),

    clearTable: unary("clear", async (req) => {
      const dev = lookup(req.device);
      await dev.serialize(() => dev.clear());
      return { device: info(dev) };
    }),

    suspendDevice: unary("suspend", async (req) => {
      const dev = lookup(req.device);
      await dev.serialize(() => dev.suspend({ noflush: req.noflush }));
      return { device: info(dev) };
    }),

    resumeDevice: unary("resume", async (req) => {
      const dev = lookup(req.device);
      const epoch = opts.nodes?.attachEpoch?.() ?? 0;
      await dev.serialize(async () => {
        if (!(await opts.retryRestore?.(dev))) await dev.resume({ noflush: req.noflush });
      });
      setReadAhead(dev, req.readAhead);
      await attached(dev, epoch);
      return { device: info(dev) };
    }),

    removeDevice: unary("remove", async (req) => {
      const dev = lookup(req.device);
      for (let attempt = 1; ; attempt++) {
        try {
          const busy = await opts.nodes?.busyReason?.(dev);
          if (busy && !req.deferred) throw new DmError("EBUSY", busy);
          return await registry.remove(dev, { force: req.force, deferred: req.deferred });
        } catch (err) {
          if (!req.retry || attempt >= REMOVE_RETRIES || !(err instanceof DmError) || err.errno !== "EBUSY") throw err;
        }
        await new Promise((r) => setTimeout(r, REMOVE_RETRY_DELAY_MS));
      }
    }),

    removeAll: unary("remove_all", async (req) => {
      const removed: string[] = [];
      const remaining: string[] = [];
      // Devices stacked on others hold them open: remove from the top down, retrying while progress is made.
      let progress = true;
      while (progress) {
        progress = false;
        for (const dev of registry.list()) {
          if (dev.deferredRemove && registry.userOpenCount(dev) > 0) continue;
          const busy = await opts.nodes?.busyReason?.(dev);
          if (busy || registry.userOpenCount(dev) > 0) continue;
          await registry.remove(dev, { force: req.force }).then(
            () => {
              removed.push(dev.name);
              progress = true;
            },
            () => undefined,
          );
        }
      }
      for (const dev of registry.list()) {
        if (req.deferred && dev.openCount > 0) await registry.remove(dev, { deferred: true }).catch(() => undefined);
        remaining.push(`${dev.name}: open count ${dev.openCount}`);
      }
      return { removed, remaining };
    }),

    renameDevice: unary("rename", async (req) => {
      const dev = lookup(req.device);
      const change = req.change;
      if (!change) throw new DmError("EINVAL", "nothing to rename");
      if (change.$case === "newName") registry.rename(dev, change.value);
      else registry.setUuid(dev, change.value);
      await opts.nodes?.settle?.(dev);
      return { device: info(dev) };
    }),

    sendMessage: unary("message", async (req) => {
      const dev = lookup(req.device);
      const argv = splitArgs(req.message);
      if (argv.length === 0) throw new DmError("EINVAL", "Empty message received.");
      if (argv[0]!.startsWith("@")) return { reply: await coreMessage(dev, argv) };
      const sector = Number(req.sector);
      if (!Number.isSafeInteger(sector)) throw new DmError("EINVAL", "Target message sector outside device.");
      const reply = await dev.message(sector as Sector, argv);
      return { reply: reply ?? "" };
    }),

    getStatus: unary("status", async (req) => {
      const dev = lookup(req.device);
      const table = req.inactive ? dev.inactive : dev.live;
      return { device: info(dev, req.inactive), lines: toLines(table?.lines("info", { noflush: req.noflush }) ?? []) };
    }),

    getTable: unary("table", async (req) => {
      const dev = lookup(req.device);
      const table = req.inactive ? dev.inactive : dev.live;
      return { device: info(dev, req.inactive), lines: toLines(table?.lines("table") ?? []) };
    }),

    getInfo: unary("info", async (req) => {
      const dev = lookup(req.device);
      return { device: info(dev, req.inactive) };
    }),

    listDevices: unary("names", async () => ({ devices: registry.list().map((d) => info(d)) })),

    getDeps: unary("deps", async (req) => {
      const dev = lookup(req.device);
      const table = req.inactive ? dev.inactive : dev.live;
      // The kernel's table keeps its devices on a list it adds to at the head (dm_get_device), so DM_TABLE_DEPS
      // reports them newest first: the reverse of their first appearance in the table.
      const deps = [...(table?.devices() ?? [])].reverse().map((d) => ({
        major: d.devno.major,
        minor: d.devno.minor,
        name: d.kernelName,
        dmName: d.dmName ?? "",
      }));
      return { device: info(dev, req.inactive), deps };
    }),

    listTargets: unary("versions", async () => ({
      targets: targetTypes().map((t) => ({ name: t.name, major: t.version[0], minor: t.version[1], patch: t.version[2] })),
    })),

    getVersion: unary("version", async () => ({ driverVersion: DRIVER_VERSION, daemonVersion: opts.version })),

    waitEvent: unary("waitevent", async (req, call) => {
      const dev = lookup(req.device);
      const abort = new AbortController();
      call.on("cancelled", () => abort.abort());
      await dev.waitEvent(req.eventNr, abort.signal);
      return { device: info(dev) };
    }),

    setGeometry: unary("setgeometry", async (req) => {
      lookup(req.device);
      const g = req.geometry;
      const nums = g.map((s) => (/^[0-9]+$/.test(s) ? Number(s) : NaN));
      if (g.length !== 4 || nums.some((n) => !Number.isSafeInteger(n))) throw new DmError("EINVAL", "Unable to interpret geometry settings.");
      const [cyl, heads, sectors] = nums as [number, number, number, number];
      if (cyl > 65535 || heads > 255 || sectors > 255) throw new DmError("EINVAL", "Invalid geometry");
      return {};
    }),

    makeNodes: unary("mknodes", async (req) => {
      const devs = req.devices.length ? req.devices.map((r) => find(r)).filter((d): d is MappedDevice => !!d) : undefined;
      await opts.nodes?.repair?.(devs);
      return {};
    }),

    getNbdUri: unary("info", async (req) => ({ uri: opts.nbdUri(lookup(req.device).name) })),

    watchEvents: (call: ServerWritableStream<WatchEventsRequest, WatchEventsResponse>) => {
      const filter = call.request.name;
      const listener = (ev: RegistryEvent): void => {
        if (filter && ev.device.name !== filter && !(ev.kind === "renamed" && ev.oldName === filter)) return;
        call.write({ kind: KIND[ev.kind], device: info(ev.device), oldName: ev.kind === "renamed" ? ev.oldName : "" });
      };
      registry.on("event", listener);
      const stop = (): void => {
        registry.off("event", listener);
      };
      call.on("cancelled", stop);
      call.on("close", stop);
      call.on("error", stop);
    },
  };
}

const KIND: Record<RegistryEvent["kind"], Kind> = {
  created: Kind.KIND_CREATED,
  loaded: Kind.KIND_LOADED,
  cleared: Kind.KIND_CLEARED,
  suspended: Kind.KIND_SUSPENDED,
  resumed: Kind.KIND_RESUMED,
  removed: Kind.KIND_REMOVED,
  renamed: Kind.KIND_RENAMED,
  target_event: Kind.KIND_TARGET_EVENT,
  settings: Kind.KIND_SETTINGS,
};

/** dmsetup --readahead N (set) or +N (raise to at least N). */
function setReadAhead(dev: MappedDevice, ra: { sectors: number; minimum: boolean } | undefined): void {
  if (ra !== undefined) dev.setReadAhead(ra.sectors, ra.minimum);
}

/** Messages for the device-mapper core itself ("@" prefix). */
async function coreMessage(dev: MappedDevice, argv: string[]): Promise<string> {
  if (argv[0] === "@cancel_deferred_remove" && argv.length === 1) {
    dev.deferredRemove = false;
    return "";
  }
  throw new DmError("EINVAL", `Unsupported message sent to DM core: ${argv[0]}`);
}
