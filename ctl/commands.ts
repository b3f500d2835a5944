import { spawn } from "node:child_process";
import fs from "node:fs";
import type { DeviceInfo, GetDepsResponse, TableLine } from "../gen/tsdm/v1/tsdm.js";
import type { DaemonError } from "./client.js";
import { parseConcise, formatConciseDevice } from "./concise.js";
import { Ctx, Failed, type ResolvedDevice } from "./context.js";
import { ioctlErrorLine, type IoctlTarget } from "./errno.js";
import {
  formatDepsLine,
  formatDriverVersion,
  formatInfoBlock,
  formatLibraryVersion,
  formatLsLine,
  formatLsTargetLine,
  formatTargetLine,
  formatTargetText,
  hideKeys,
  type DeviceView,
} from "./format.js";
import { mangleString, newNameForKernel, newUuidForKernel, nameForKernel, unmangleString, uuidForKernel, DM_NAME_LEN, DM_UUID_LEN } from "./mangle.js";
import { atoi } from "./options.js";
import type { FieldNeed, Report, ReportObject } from "./report.js";
import type { Selection } from "./select.js";
import { checkTypeNames, escapeParamsForKernel, parseTableText, TableParseError, type TableLineText } from "./table-text.js";
import { drawTree, parseTreeOptions, treeRoots, TreeOptionError, type TreeNode } from "./tree.js";
import { usageText } from "./usage.js";

/** How `deps` and `ls` name devices (-o devno|blkdevname|devname). */
export type DevNameType = "devno" | "blkdevname" | "devname";

/** Per-run state a handler may need beyond the context. */
export interface RunState {
  report?: Report;
  /** -S: only rows passing it are reported (or, for other commands, acted on). */
  selection?: Selection;
  devNameType: DevNameType;
  /** Whether this command runs over several devices (prefix `name: ` on table/status/deps lines). */
  multiple: boolean;
}

export type Handler = (ctx: Ctx, args: string[], st: RunState) => Promise<void>;

// ---------------------------------------------------------------------------------------------------------
// Helpers

const toWire = (lines: readonly TableLineText[]): TableLine[] =>
  lines.map((l) => ({ startSector: l.start, lengthSectors: l.length, targetType: l.type, params: escapeParamsForKernel(l.params) }));

/** The table for create/load: --table, else the file operand, else stdin (dmsetup's _parse_file). */
async function readTable(ctx: Ctx, file: string | undefined, tableText: string | undefined): Promise<TableLineText[]> {
  try {
    if (tableText !== undefined) return parseTableText(tableText, "", false);
    if (file !== undefined) {
      let text: string;
      try {
        text = fs.readFileSync(file, "utf8");
      } catch {
        ctx.fail(`Couldn't open '${file}' for reading.`);
      }
      return parseTableText(text, file, true);
    }
    return parseTableText(await ctx.readStdin(), "on stdin", true);
  } catch (e) {
    if (e instanceof TableParseError) ctx.fail(e.line);
    throw e;
  }
}

/** The device's kernel name as sent: for the rare case a command addressed it by uuid/devno. */
const showInfo = (ctx: Ctx, d: DeviceInfo | undefined): void => {
  if (d && ctx.sw.verbose) ctx.out(formatInfoBlock(ctx.view(d)));
};

function blkdevname(d: DeviceInfo): string {
  if (d.attachedBlockDevice) return d.attachedBlockDevice.slice(d.attachedBlockDevice.lastIndexOf("/") + 1);
  return `dm-${d.minor}`;
}

async function listAll(ctx: Ctx): Promise<DeviceInfo[]> {
  return (await ctx.rpc("names", { name: "" }, (api) => api.listDevices({}))).devices;
}

/** dmsetup's _process_all: run `fn` over every device; "No devices found" when there are none. */
async function forAll(ctx: Ctx, silent: boolean, fn: (d: DeviceInfo) => Promise<void>): Promise<void> {
  const devs = await listAll(ctx);
  if (devs.length === 0) {
    if (!silent) ctx.out("No devices found\n");
    return;
  }
  let ok = true;
  for (const d of devs) {
    try {
      await fn(d);
    } catch (e) {
      if (!(e instanceof Failed)) throw e;
      ok = false;
    }
  }
  if (!ok) throw new Failed();
}

// ---------------------------------------------------------------------------------------------------------
// create / load

interface CreateParams {
  name: string;
  uuid?: string;
  minor?: number;
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
    (api) => api.createDevice({ name, uuid: uuid ?? "", table: toWire(table), readOnly: p.readOnly, minor: p.minor }),
    { stepTarget: (op, e) => (op === "create" ? { name, uuid } : { name, devno: e.devno }) },
  );
  showInfo(ctx, res.device);
}

const create: Handler = async (ctx, args) => {
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
    minor: sw.major !== undefined ? sw.minor : undefined,
    readOnly: sw.readOnly,
    table: () => (sw.notable ? Promise.resolve(undefined) : readTable(ctx, args[1], sw.table)),
  });
};

const load: Handler = async (ctx, args) => {
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

const suspend: Handler = async (ctx, args) => {
  const dev = await ctx.device(args[0]);
  const res = await ctx.rpc("suspend", dev.target, (api) => api.suspendDevice({ device: dev.ref, noflush: ctx.sw.noflush, nolockfs: ctx.sw.nolockfs }));
  showInfo(ctx, res.device);
};

const resume: Handler = async (ctx, args) => {
  const dev = await ctx.device(args[0]);
  const res = await ctx.rpc("resume", dev.target, (api) => api.resumeDevice({ device: dev.ref, noflush: ctx.sw.noflush, nolockfs: ctx.sw.nolockfs }));
  showInfo(ctx, res.device);
};

const clear: Handler = async (ctx, args) => {
  const dev = await ctx.device(args[0]);
  const res = await ctx.rpc("clear", dev.target, (api) => api.clearTable({ device: dev.ref }));
  showInfo(ctx, res.device);
};

const RETRIES = 25;
const RETRY_DELAY_MS = 200;

async function removeOne(ctx: Ctx, dev: ResolvedDevice, opts: { force: boolean; deferred: boolean; retry: boolean }): Promise<void> {
  for (let attempt = 0; ; attempt++) {
    let busy = false;
    await ctx.rpc("remove", dev.target, (api) => api.removeDevice({ device: dev.ref, force: opts.force, deferred: opts.deferred }), {
      onError: (e: DaemonError) => {
        // dmsetup --force first reads the table and reloads it as `error`: on a missing device both fail.
        if (opts.force && e.errno === "ENXIO" && attempt === 0) {
          ctx.err(ioctlErrorLine("table", dev.target, "ENXIO"));
          ctx.err(ioctlErrorLine("reload", dev.target, "ENXIO"));
        }
        if (e.errno === "EBUSY" && opts.retry && attempt < RETRIES) {
          // libdm 1.02.185 logs the failure of every attempt.
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

const remove: Handler = async (ctx, args) => {
  const dev = await ctx.device(args[0]);
  await removeOne(ctx, dev, { force: ctx.sw.force, deferred: ctx.sw.deferred, retry: ctx.sw.retry });
};

const removeAll: Handler = async (ctx) => {
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

const wipeTable: Handler = async (ctx, args) => {
  const dev = await ctx.device(args[0]);
  await errorDevice(ctx, dev.ref, dev.target);
};

// ---------------------------------------------------------------------------------------------------------
// rename / message / wait / setgeometry / mknodes

const rename: Handler = async (ctx, args) => {
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

const message: Handler = async (ctx, args) => {
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

const wait: Handler = async (ctx, args) => {
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

const setgeometry: Handler = async (ctx, args) => {
  let rest = args;
  let dev: ResolvedDevice;
  if (ctx.deviceBySwitch) dev = await ctx.device(undefined);
  else {
    dev = await ctx.device(args[0]);
    rest = args.slice(1);
  }
  await ctx.rpc("setgeometry", dev.target, (api) => api.setGeometry({ device: dev.ref, geometry: rest.slice(0, 4) }));
};

const mknodes: Handler = async (ctx, args) => {
  if (args.length === 0) {
    await ctx.rpc("mknodes", { name: "" }, (api) => api.makeNodes({ devices: [] }));
    return;
  }
  const dev = await ctx.device(args[0]);
  await ctx.rpc("mknodes", dev.target, (api) => api.makeNodes({ devices: [dev.ref] }), { onError: (e) => (e.errno === "ENXIO" ? {} : undefined) });
};

// ---------------------------------------------------------------------------------------------------------
// info / table / status / deps / ls

/** INFO/STATUS of a missing device is not an ioctl error for libdm, just "Device does not exist." */
const notExists = (ctx: Ctx) => (e: DaemonError) => (e.errno === "ENXIO" || e.errno === "ENODEV" ? ctx.fail("Device does not exist.") : undefined);

async function depsOf(ctx: Ctx, d: DeviceInfo): Promise<GetDepsResponse> {
  return ctx.rpc("deps", { name: d.name }, (api) => api.getDeps({ device: { by: { $case: "name", value: d.name } }, inactive: ctx.sw.inactive }));
}

/** Every device with its deps, as the dependency tree the report's tree fields and `ls --tree` need. */
async function buildTree(ctx: Ctx): Promise<{ nodes: TreeNode[]; byName: Map<string, TreeNode> }> {
  const devs = await listAll(ctx);
  const byDevno = new Map<string, TreeNode>();
  const nodes: TreeNode[] = [];
  const byName = new Map<string, TreeNode>();
  const nodeFor = (major: number, minor: number, name: string, blk: string): TreeNode => {
    const key = `${major}:${minor}`;
    let n = byDevno.get(key);
    if (!n) {
      n = { name, major, minor, blkdevname: blk, uses: [], usedBy: [] };
      byDevno.set(key, n);
      nodes.push(n);
    }
    return n;
  };
  for (const d of devs) {
    const n = nodeFor(d.major, d.minor, ctx.displayName(d.name), blkdevname(d));
    n.name = ctx.displayName(d.name);
    n.info = { suspended: d.suspended, readOnly: d.readOnly, openCount: d.openCount, uuid: ctx.displayUuid(d.uuid) };
    byName.set(d.name, n);
  }
  for (const d of devs) {
    const n = byName.get(d.name)!;
    let deps: GetDepsResponse;
    try {
      deps = await depsOf(ctx, d);
    } catch (e) {
      if (e instanceof Failed) continue;
      throw e;
    }
    for (const dep of deps.deps) {
      const child = nodeFor(dep.major, dep.minor, "", dep.name);
      if (!n.uses.includes(child)) n.uses.push(child);
      if (!child.usedBy.includes(n)) child.usedBy.push(n);
    }
  }
  return { nodes, byName };
}

/** The report's view of one device, with deps and tree data fetched when `needs` asks for them. */
async function reportObject(ctx: Ctx, needs: Set<FieldNeed>, d: DeviceInfo): Promise<ReportObject> {
  const v = ctx.view(d);
  const mangled = (s: string, what: string, len: number): string => {
    try {
      return mangleString(s, what, len, ctx.mode);
    } catch {
      return s;
    }
  };
  const o: ReportObject = {
    name: v.name,
    mangledName: mangled(d.name, "name", DM_NAME_LEN),
    unmangledName: unmangleString(d.name, "name", ctx.mode).value,
    uuid: v.uuid,
    mangledUuid: d.uuid ? mangled(d.uuid, "UUID", DM_UUID_LEN) : "",
    unmangledUuid: d.uuid ? unmangleString(d.uuid, "UUID", ctx.mode).value : "",
    readAhead: d.readAheadSectors,
    blkdevname: blkdevname(d),
    major: d.major,
    minor: d.minor,
    liveTable: d.liveTable,
    inactiveTable: d.inactiveTable,
    suspended: d.suspended,
    readOnly: d.readOnly,
    openCount: v.openCount ?? -1,
    targetCount: v.targetCount,
    eventNr: d.eventNr,
  };
  if (needs.has("deps")) {
    const deps = await depsOf(ctx, d);
    o.deps = deps.deps.map((x) => ({ major: x.major, minor: x.minor, blkdevname: x.name }));
  }
  if (needs.has("tree")) {
    const tree = await buildTree(ctx);
    const n = tree.byName.get(d.name);
    o.usesNames = (n?.uses ?? []).filter((c) => c.name).map((c) => c.name);
    o.usedBy = (n?.usedBy ?? []).map((p) => ({ name: p.name, major: p.major, minor: p.minor }));
  }
  return o;
}

async function reportRow(ctx: Ctx, st: RunState, d: DeviceInfo): Promise<void> {
  const report = st.report!;
  const needs = new Set([...report.needs(), ...(st.selection?.needs ?? [])]);
  const o = await reportObject(ctx, needs, d);
  if (!st.selection || st.selection.test(o)) report.addRow(o);
}

/**
 * -S with a device command (remove, suspend, table, ...): dmsetup runs `info` over the devices and the
 * command on each selected one, in multi-device form.
 */
export async function runSelected(ctx: Ctx, args: string[], st: RunState, handler: Handler): Promise<void> {
  const selection = st.selection!;
  const visit = async (d: DeviceInfo): Promise<void> => {
    const o = await reportObject(ctx, selection.needs, d);
    if (selection.test(o)) await handler(ctx, [ctx.displayName(d.name)], { ...st, multiple: true });
  };
  if (args.length === 0 && !ctx.deviceBySwitch) return forAll(ctx, false, visit);
  const dev = await ctx.device(args[0]);
  const res = await ctx.rpc("info", dev.target, (api) => api.getInfo({ device: dev.ref, inactive: ctx.sw.inactive }), { onError: notExists(ctx) });
  await visit(res.device!);
}

async function displayInfo(ctx: Ctx, st: RunState, d: DeviceInfo): Promise<void> {
  if (st.report) await reportRow(ctx, st, d);
  else ctx.out(formatInfoBlock(ctx.view(d)));
}

const info: Handler = async (ctx, args, st) => {
  if (args.length === 0 && !ctx.deviceBySwitch) {
    await forAll(ctx, false, (d) => displayInfo(ctx, st, d));
    return;
  }
  const dev = await ctx.device(args[0]);
  const res = await ctx.rpc("info", dev.target, (api) => api.getInfo({ device: dev.ref, inactive: ctx.sw.inactive }), { onError: notExists(ctx) });
  await displayInfo(ctx, st, res.device!);
};

/** table and status: dmsetup's _status(). */
function tableOrStatus(kind: "table" | "status"): Handler {
  const one = async (ctx: Ctx, st: RunState, given: string | undefined, dev: ResolvedDevice): Promise<void> => {
    const req = { device: dev.ref, inactive: ctx.sw.inactive, noflush: ctx.sw.noflush };
    const res =
      kind === "table"
        ? await ctx.rpc("table", dev.target, (api) => api.getTable(req))
        : await ctx.rpc("status", dev.target, (api) => api.getStatus(req), { onError: notExists(ctx) });
    const d = res.device!;
    const label = given ?? ctx.displayName(d.name);
    const concise = kind === "table" && ctx.sw.concise;
    const lines: Array<TableLine | undefined> = res.lines.length ? res.lines : [undefined];
    let matched = false;
    let text = "";
    for (const l of lines) {
      if (ctx.sw.target !== undefined && (!l || l.targetType !== ctx.sw.target)) continue;
      if (!matched && !concise && ctx.sw.verbose) text += formatInfoBlock(ctx.view(d));
      if (!concise && st.multiple && !ctx.sw.verbose) text += `${label}: `;
      if (l && !concise) {
        const params = kind === "table" && !ctx.sw.showkeys ? hideKeys(l.targetType, l.params) : l.params;
        text += formatTargetText({ start: l.startSector, length: l.lengthSectors, type: l.targetType, params });
      }
      if (!concise) text += "\n";
      matched = true;
    }
    if (concise && matched) {
      const targets = res.lines
        .filter((l) => ctx.sw.target === undefined || l.targetType === ctx.sw.target)
        .map((l) => ({ start: l.startSector, length: l.lengthSectors, type: l.targetType, params: ctx.sw.showkeys ? l.params : hideKeys(l.targetType, l.params) }));
      text += `${ctx.conciseProduced ? ";" : ""}${formatConciseDevice(label, ctx.displayUuid(d.uuid), d.minor, d.readOnly, targets)}`;
      ctx.conciseProduced = true;
    }
    if (st.multiple && ctx.sw.verbose && matched && (!concise || ctx.sw.verbose > 1)) text += "\n";
    ctx.out(text);
  };
  return async (ctx, args, st) => {
    if (args.length === 0 && !ctx.deviceBySwitch) {
      await forAll(ctx, false, async (d) => {
        const name = ctx.displayName(d.name);
        await one(ctx, st, name, { ref: { by: { $case: "name", value: d.name } }, target: { name: d.name } });
      });
      return;
    }
    const dev = await ctx.device(args[0]);
    await one(ctx, st, args[0], dev);
  };
}

const deps: Handler = async (ctx, args, st) => {
  const one = async (given: string | undefined, dev: ResolvedDevice): Promise<void> => {
    const res = await ctx.rpc("deps", dev.target, (api) => api.getDeps({ device: dev.ref, inactive: ctx.sw.inactive }));
    const label = given ?? ctx.displayName(res.device!.name);
    let text = ctx.sw.verbose ? formatInfoBlock(ctx.view(res.device!)) : "";
    const items = res.deps.map((x) => {
      if (st.devNameType === "devno") return { major: x.major, minor: x.minor };
      if (st.devNameType === "devname" && x.dmName) return ctx.displayName(x.dmName);
      // the kernel name (loop0, dm-1); a file-backed device has none, the daemon names its path instead
      return x.name || { major: x.major, minor: x.minor };
    });
    text += formatDepsLine(items, st.multiple && !ctx.sw.verbose ? `${label}: ` : "");
    if (st.multiple && ctx.sw.verbose) text += "\n";
    ctx.out(text);
  };
  if (args.length === 0 && !ctx.deviceBySwitch) {
    await forAll(ctx, false, (d) => one(ctx.displayName(d.name), { ref: { by: { $case: "name", value: d.name } }, target: { name: d.name } }));
    return;
  }
  const dev = await ctx.device(args[0]);
  await one(args[0], dev);
};

/** Run `--exec CMD` with the device node appended (output passes through). */
function execFor(ctx: Ctx, name: string): Promise<void> {
  const words = (ctx.sw.exec ?? "").split(/[ \t\n\v\f\r]+/).filter(Boolean);
  if (words.length === 0) return Promise.reject(new Failed());
  return new Promise((resolve) => {
    const child = spawn(words[0]!, [...words.slice(1), `${ctx.dmDir}/${name}`], { stdio: ["inherit", "pipe", "pipe"] });
    child.stdout.on("data", (b: Buffer) => ctx.io.stdout.write(b));
    child.stderr.on("data", (b: Buffer) => ctx.io.stderr.write(b));
    child.on("error", () => resolve());
    child.on("close", () => resolve());
  });
}

const ls: Handler = async (ctx, _args, st) => {
  const sw = ctx.sw;
  if (sw.target !== undefined || sw.exec) {
    await forAll(ctx, false, async (d) => {
      const types = sw.inactive ? d.inactiveTargetTypes : d.liveTargetTypes;
      const matches = sw.target === undefined || types.includes(sw.target);
      if (!matches) return;
      if (!sw.exec || sw.verbose) ctx.out(formatLsTargetLine(ctx.displayName(d.name), d.major, d.minor));
      if (sw.exec) await execFor(ctx, d.name);
    });
    return;
  }
  if (sw.tree) {
    const tree = await buildTree(ctx);
    if (tree.nodes.length === 0) {
      ctx.out("No devices found\n");
      return;
    }
    const lang = ctx.env.LC_ALL || ctx.env.LC_CTYPE || ctx.env.LANG || "";
    const stdout = ctx.io.stdout as NodeJS.WriteStream;
    const cols = stdout.isTTY && stdout.columns > 3 ? stdout.columns - 3 : 80;
    let o;
    try {
      o = parseTreeOptions(sw.options, { utf: /utf-?8/i.test(lang), width: cols });
    } catch (e) {
      if (e instanceof TreeOptionError) ctx.fail(e.message);
      throw e;
    }
    if (o.symbols === "vt100") o.width = 80;
    ctx.out(drawTree(treeRoots(tree.nodes, o.inverted), o));
    return;
  }
  await forAll(ctx, false, async (d) => {
    const name = ctx.displayName(d.name);
    if (st.devNameType === "blkdevname") ctx.out(formatLsLine(name, blkdevname(d)));
    else if (st.devNameType === "devname") ctx.out(formatLsLine(name, name));
    else ctx.out(formatLsLine(name, { major: d.major, minor: d.minor }));
  });
};

// ---------------------------------------------------------------------------------------------------------
// targets / version / help / nbd-uri

const targets: Handler = async (ctx) => {
  const res = await ctx.rpc("versions", { name: "" }, (api) => api.listTargets({}));
  ctx.out(res.targets.map(formatTargetLine).join(""));
};

const targetVersion: Handler = async (ctx, args) => {
  const name = args[0]!;
  const res = await ctx.rpc("target-version", { name }, (api) => api.listTargets({}));
  const t = res.targets.find((x) => x.name === name);
  if (!t) return ctx.fail(ioctlErrorLine("target-version", { name }, "EINVAL"));
  ctx.out(formatTargetLine(t));
};

const version: Handler = async (ctx) => {
  ctx.out(formatLibraryVersion());
  const res = await ctx.rpc("version", { name: "" }, (api) => api.getVersion({}));
  ctx.out(formatDriverVersion(res.driverVersion));
};

const help: Handler = async (ctx) => {
  ctx.io.stderr.write(usageText());
};

const nbdUri: Handler = async (ctx, args) => {
  const dev = await ctx.device(args[0]);
  const res = await ctx.rpc("info", dev.target, (api) => api.getNbdUri({ device: dev.ref }), { onError: notExists(ctx) });
  ctx.out(`${res.uri}\n`);
};

/**
 * mangle: rename devices whose names are not in the form the mangling mode wants (dmsetup runs it with
 * name mangling off for its own lookups, so operands and list names are taken as stored).
 */
const mangle: Handler = async (ctx, args) => {
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

const unsupported =
  (what: string): Handler =>
  async (ctx) =>
    ctx.fail(`tsdmsetup: ${what} is not supported by tsdm.`);

export const HANDLERS: Record<string, Handler> = {
  help,
  create,
  remove,
  remove_all: removeAll,
  suspend,
  resume,
  load,
  reload: load,
  clear,
  wipe_table: wipeTable,
  rename,
  measure: unsupported("measure (IMA measurements)"),
  message,
  ls,
  info,
  deps,
  stats: unsupported("stats"),
  status: tableOrStatus("status"),
  table: tableOrStatus("table"),
  wait,
  mknodes,
  mangle,
  udevcreatecookie: unsupported("udev synchronisation"),
  udevreleasecookie: unsupported("udev synchronisation"),
  udevflags: unsupported("udev synchronisation"),
  udevcomplete: unsupported("udev synchronisation"),
  udevcomplete_all: unsupported("udev synchronisation"),
  udevcookies: unsupported("udev synchronisation"),
  "target-version": targetVersion,
  targets,
  version,
  setgeometry,
  splitname: unsupported("splitname"),
  "nbd-uri": nbdUri,
};

export type { DeviceView };
