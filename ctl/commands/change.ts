/** Commands that change devices: create, load, suspend, resume, clear, remove, rename, message, ... */
import type { DeviceInfo } from "../../gen/tsdm/v1/tsdm.js";
import type { DaemonError } from "../client.js";
import { parseConcise } from "../concise.js";
import { Failed, type ResolvedDevice, type Ctx } from "../context.js";
import { ioctlErrorLine, type IoctlTarget } from "../errno.js";
import { DM_NAME_LEN, DM_UUID_LEN, mangleString, nameForKernel, newNameForKernel, newUuidForKernel, unmangleString, uuidForKernel } from "../mangle.js";
import { atoi } from "../options.js";
import { checkTypeNames, parseTableText, TableParseError, type TableLineText } from "../table-text.js";
import { forAll, listAll, notExists, readTable, showInfo, toWire, type Handler } from "./common.js";

// ---------------------------------------------------------------------------------------------------------
// create / load

interface CreateParams {
  name: string;
  uuid?: string;
  minor?: number;
  /** -j/-m given: the create request carries the device number, and its error line shows it. */
  devno?: { major: number; minor: number };
  readOnly: boolean;
  table: () => Promise<TableLineText[] | undefined>;
}

async function createOne(ctx: Ctx, p: CreateParams): Promise<void> {
  if (p.name.includes("/")) ctx.fail(`Name "${p.name}" invalid. It contains "/".`);
  const name = ctx.check(() => nameForKernel(p.name, ctx.mode));
  const uuid = p.uuid !== undefined ? ctx.check(() => uuidForKernel(p.uuid!, ctx.mode)) : undefined;
  const table = (await p.table()) ?? [];
  try {
    checkTypeNames(table);
  } catch (e) {
    if (e instanceof TableParseError) ctx.fail(e.line);
    throw e;
  }
  const res = await ctx.rpc(
    "create",
    { name, uuid },
    (api) => api.createDevice({ name, uuid: uuid ?? "", table: toWire(table), readOnly: p.readOnly, minor: p.devno?.minor ?? p.minor, readAhead: readAheadOf(ctx) }),
    { stepTarget: (op, e) => (op === "create" ? { name, uuid, devno: p.devno } : { name, devno: e.devno }) },
  );
  showInfo(ctx, res.device);
}

export const create: Handler = async (ctx, args) => {
  const sw = ctx.sw;
  if (sw.concise) {
    if (args.length > 1) ctx.fail("dmsetup create --concise takes at most one argument");
    if (sw.table !== undefined || sw.minor !== undefined || sw.uuid !== undefined || sw.notable || sw.inactive) {
      ctx.fail("--concise is incompatible with --[no]table, --minor, --uuid and --inactive.");
    }
    const spec = args.length ? args[0]! : await ctx.readStdin();
    for (const item of parseConcise(spec)) {
      if (item.kind === "error") return ctx.fail(...item.lines);
      const d = item.device;
      if (d.flags !== "" && d.flags !== "ro" && d.flags !== "rw") ctx.fail(`Invalid flags parameter '${d.flags}' must be 'ro' or 'rw' or empty.`);
      await createOne(ctx, {
        name: d.name,
        uuid: d.uuid || undefined,
        minor: d.minor ? atoi(d.minor) : undefined,
        readOnly: d.flags === "ro",
        table: async () => {
          try {
            return parseTableText(d.table, "", false);
          } catch (e) {
            if (e instanceof TableParseError) ctx.fail(e.line);
            throw e;
          }
        },
      });
    }
    return;
  }
  if (args.length === 0) ctx.fail("Please provide a name for the new device.");
  await createOne(ctx, {
    name: args[0]!,
    uuid: sw.uuid,
    devno: sw.major !== undefined && sw.minor !== undefined ? { major: sw.major, minor: sw.minor } : undefined,
    readOnly: sw.readOnly,
    table: () => (sw.notable ? Promise.resolve(undefined) : readTable(ctx, args[1], sw.table)),
  });
};

export const load: Handler = async (ctx, args) => {
  if (ctx.sw.notable) ctx.fail("--notable only available when creating new device.");
  let rest = args;
  let name: string | undefined;
  if (!ctx.deviceBySwitch) {
    if (args.length === 0) ctx.fail("Please specify device.");
    name = args[0];
    rest = args.slice(1);
  } else if (args.length > 1) ctx.fail("Too many command line arguments.");
  const dev = await ctx.device(name);
  const table = await readTable(ctx, rest[0], ctx.sw.table);
  try {
    checkTypeNames(table);
  } catch (e) {
    if (e instanceof TableParseError) ctx.fail(e.line);
    throw e;
  }
  const res = await ctx.rpc("reload", dev.target, (api) => api.loadTable({ device: dev.ref, table: toWire(table), readOnly: ctx.sw.readOnly }));
  showInfo(ctx, res.device);
};

// ---------------------------------------------------------------------------------------------------------
// suspend / resume / clear / remove

export const suspend: Handler = async (ctx, args) => {
  const dev = await ctx.device(args[0]);
  const res = await ctx.rpc("suspend", dev.target, (api) => api.suspendDevice({ device: dev.ref, noflush: ctx.sw.noflush, nolockfs: ctx.sw.nolockfs }));
  showInfo(ctx, res.device);
};

export const resume: Handler = async (ctx, args) => {
  const dev = await ctx.device(args[0]);
  const res = await ctx.rpc("resume", dev.target, (api) => api.resumeDevice({ device: dev.ref, noflush: ctx.sw.noflush, nolockfs: ctx.sw.nolockfs, readAhead: readAheadOf(ctx) }));
  showInfo(ctx, res.device);
};

export const clear: Handler = async (ctx, args) => {
  const dev = await ctx.device(args[0]);
  const res = await ctx.rpc("clear", dev.target, (api) => api.clearTable({ device: dev.ref }));
  showInfo(ctx, res.device);
};

const RETRIES = 25;
const RETRY_DELAY_MS = 200;

async function removeOne(ctx: Ctx, dev: ResolvedDevice, opts: { force: boolean; deferred: boolean; retry: boolean }): Promise<void> {
  for (let attempt = 0; ; attempt++) {
    let busy = false;
    await ctx.rpc("remove", dev.target, (api) => api.removeDevice({ device: dev.ref, force: opts.force, deferred: opts.deferred, retry: false }), {
      onError: (e: DaemonError) => {
        // dmsetup --force first reads the table and reloads it as `error`: on a missing device both fail.
        if (opts.force && e.errno === "ENXIO" && attempt === 0) {
          ctx.err(ioctlErrorLine("table", dev.target, "ENXIO"));
          ctx.err(ioctlErrorLine("reload", dev.target, "ENXIO"));
        }
        if (e.errno === "EBUSY" && opts.retry && attempt < RETRIES - 1) {
          // libdm 1.02.185 logs the failure of every attempt: 25 lines in all, the last one the command's
          // failure (real dmsetup against Linux 6.12, dmsetup oracle).
          ctx.err(ioctlErrorLine(e.op ?? "remove", dev.target, e.errno));
          busy = true;
          return { deferred: false };
        }
        return undefined;
      },
    });
    if (!busy) return;
    await new Promise((r) => setTimeout(r, RETRY_DELAY_MS));
  }
}

export const remove: Handler = async (ctx, args) => {
  const dev = await ctx.device(args[0]);
  await removeOne(ctx, dev, { force: ctx.sw.force, deferred: ctx.sw.deferred, retry: ctx.sw.retry });
};

export const removeAll: Handler = async (ctx) => {
  const removeAllOnce = () => ctx.rpc("remove_all", { name: "" }, (api) => api.removeAll({ force: ctx.sw.force, deferred: ctx.sw.deferred }));
  await removeAllOnce();
  if (!ctx.sw.force) return;
  let left = await listAll(ctx);
  if (left.length === 0) return;
  // --force: turn what is still there into `error` devices (dmsetup's _error_device), then try again.
  for (const d of left) {
    const target = { name: d.name };
    const ref = { by: { $case: "name" as const, value: d.name } };
    try {
      await errorDevice(ctx, ref, target, d);
    } catch (e) {
      if (!(e instanceof Failed)) throw e;
    }
  }
  await removeAllOnce();
  left = await listAll(ctx);
  if (left.length) ctx.err(`Unable to remove ${left.length} device(s).`);
};

/** Replace a device's table by one `error` target of the same size, resumed without flushing. */
async function errorDevice(ctx: Ctx, ref: ResolvedDevice["ref"], target: IoctlTarget, known?: DeviceInfo): Promise<void> {
  const info = known ?? (await ctx.rpc("table", target, (api) => api.getTable({ device: ref, inactive: false }))).device;
  const size = info?.sizeSectors ?? 0n;
  await ctx.rpc("reload", target, (api) =>
    api.loadTable({ device: ref, table: [{ startSector: 0n, lengthSectors: size, targetType: "error", params: "" }], readOnly: ctx.sw.readOnly }),
  );
  try {
    await ctx.rpc("resume", target, (api) => api.resumeDevice({ device: ref, noflush: true, nolockfs: true }));
  } catch (e) {
    await ctx.tsdm.clearTable({ device: ref }).catch(() => undefined);
    throw e;
  }
}

export const wipeTable: Handler = async (ctx, args) => {
  const dev = await ctx.device(args[0]);
  await errorDevice(ctx, dev.ref, dev.target);
};

// ---------------------------------------------------------------------------------------------------------
// rename / message / wait / setgeometry / mknodes

export const rename: Handler = async (ctx, args) => {
  const dev = await ctx.device(args.length === 2 ? args[0] : undefined);
  const value = args[args.length - 1]!;
  const change = ctx.sw.setuuid
    ? { $case: "newUuid" as const, value: ctx.check(() => newUuidForKernel(value, ctx.mode)) }
    : { $case: "newName" as const, value: ctx.check(() => newNameForKernel(value, ctx.mode)) };
  await ctx.rpc("rename", dev.target, (api) => api.renameDevice({ device: dev.ref, change }));
};

const U64_MAX = (1n << 64n) - 1n;

/** strtoull(s, &end, 10) with dmsetup's checks: whole string, no overflow. */
function parseSector(s: string): bigint | undefined {
  const m = /^[ \t\n\v\f\r]*([+-]?)(\d+)$/.exec(s);
  if (!m) return undefined;
  const v = BigInt(m[2]!);
  if (v > U64_MAX) return undefined;
  return m[1] === "-" ? (U64_MAX + 1n - v) & U64_MAX : v;
}

export const message: Handler = async (ctx, args) => {
  let rest = args;
  let dev: ResolvedDevice;
  if (ctx.deviceBySwitch) dev = await ctx.device(undefined);
  else {
    dev = await ctx.device(args[0]);
    rest = args.slice(1);
  }
  const sector = parseSector(rest[0] ?? "");
  if (sector === undefined) return ctx.fail("Invalid sector.");
  const words = rest.slice(1);
  if (words.length === 0) ctx.err("No message supplied.");
  const res = await ctx.rpc("message", dev.target, (api) => api.sendMessage({ device: dev.ref, sector, message: words.join(" ") }));
  if (res.reply) ctx.out(res.reply.endsWith("\n") ? res.reply : `${res.reply}\n`);
};

export const wait: Handler = async (ctx, args) => {
  let rest = args;
  let name: string | undefined;
  if (!ctx.deviceBySwitch) {
    if (args.length === 0) ctx.fail("No device specified.");
    name = args[0];
    rest = args.slice(1);
  }
  const eventNr = rest.length ? atoi(rest[rest.length - 1]!) >>> 0 : 0;
  const dev = await ctx.device(name);
  const res = await ctx.rpc("waitevent", dev.target, (api) => api.waitEvent({ device: dev.ref, eventNr }));
  showInfo(ctx, res.device);
};

export const setgeometry: Handler = async (ctx, args) => {
  let rest = args;
  let dev: ResolvedDevice;
  if (ctx.deviceBySwitch) dev = await ctx.device(undefined);
  else {
    dev = await ctx.device(args[0]);
    rest = args.slice(1);
  }
  await ctx.rpc("setgeometry", dev.target, (api) => api.setGeometry({ device: dev.ref, geometry: rest.slice(0, 4) }));
};

export const mknodes: Handler = async (ctx, args) => {
  if (args.length === 0) {
    await ctx.rpc("mknodes", { name: "" }, (api) => api.makeNodes({ devices: [] }));
    return;
  }
  const dev = await ctx.device(args[0]);
  await ctx.rpc("mknodes", dev.target, (api) => api.makeNodes({ devices: [dev.ref] }), { onError: (e) => (e.errno === "ENXIO" ? {} : undefined) });
};

/**
 * mangle: rename devices whose names are not in the form the mangling mode wants (dmsetup runs it with
 * name mangling off for its own lookups, so operands and list names are taken as stored).
 */
export const mangle: Handler = async (ctx, args) => {
  const target = ctx.sw.manglename ?? "auto";
  const one = async (name: string, dev: ResolvedDevice): Promise<void> => {
    const res = await ctx.rpc("status", dev.target, (api) => api.getInfo({ device: dev.ref, inactive: false }), { onError: notExists(ctx) });
    const uuid = res.device!.uuid;
    if (target === "auto") {
      if (name.includes("\\x5cx")) ctx.fail(`The name "${name}" seems to be mangled more than once. Manual intervention required to rename the device.`);
      if (uuid.includes("\\x5cx")) ctx.fail(`The UUID "${uuid}" seems to be mangled more than once. Manual intervention required to correct the device UUID.`);
    }
    const convert = (s: string, what: string, len: number): string =>
      target === "none" ? unmangleString(s, what, "none").value : ctx.check(() => mangleString(s, what, len, "auto"));
    const newName = convert(res.device!.name, "name", DM_NAME_LEN);
    const newUuid = uuid ? convert(uuid, "UUID", DM_UUID_LEN) : "";
    if (uuid !== newUuid) ctx.fail(`${name}: ${uuid}: UUID in incorrect form. `, "Unable to change device UUID. The device must be deactivated first.");
    if (res.device!.name === newName) {
      ctx.out(`${name}: ${uuid || "[no UUID]"}: name ${uuid ? "and UUID " : ""}already in correct form\n`);
      return;
    }
    ctx.out(`${name}: renaming to ${newName}\n`);
    const value = ctx.check(() => newNameForKernel(newName, "none"));
    await ctx.rpc("rename", dev.target, (api) => api.renameDevice({ device: dev.ref, change: { $case: "newName", value } }));
  };
  if (args.length === 0 && !ctx.deviceBySwitch) {
    await forAll(ctx, false, (d) => one(d.name, { ref: { by: { $case: "name", value: d.name } }, target: { name: d.name } }));
    return;
  }
  const dev = await ctx.device(args[0]);
  await one(args[0] ?? dev.target.name, dev);
};

/** --readahead [+]N|auto|none as the API takes it (auto is the kernel's default of 256 sectors). */
function readAheadOf(ctx: Ctx): { sectors: number; minimum: boolean } | undefined {
  const ra = ctx.sw.readAhead;
  if (!ra) return undefined;
  if (ra.kind === "auto") return { sectors: 256, minimum: false };
  if (ra.kind === "none") return { sectors: 0, minimum: false };
  return { sectors: ra.sectors, minimum: ra.minimum };
}
