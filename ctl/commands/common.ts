/** What every tsdmsetup command shares: run state, table reading, device listing, deps and the tree. */
import fs from "node:fs";
import type { DeviceInfo, GetDepsResponse, TableLine } from "../../gen/tsdm/v1/tsdm.js";
import type { DaemonError } from "../client.js";
import { Ctx, Failed } from "../context.js";
import { DM_NAME_LEN, DM_UUID_LEN, mangleString, unmangleString } from "../mangle.js";
import type { FieldNeed, Report, ReportObject } from "../report.js";
import type { Selection } from "../select.js";
import { escapeParamsForKernel, parseTableText, TableParseError, type TableLineText } from "../table-text.js";
import type { TreeNode } from "../tree.js";

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

export const toWire = (lines: readonly TableLineText[]): TableLine[] =>
  lines.map((l) => ({ startSector: l.start, lengthSectors: l.length, targetType: l.type, params: escapeParamsForKernel(l.params) }));

/** The table for create/load: --table, else the file operand, else stdin (dmsetup's _parse_file). */
export async function readTable(ctx: Ctx, file: string | undefined, tableText: string | undefined): Promise<TableLineText[]> {
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

/** With -v, the info block after a successful change (dmsetup's _display_info on the same task). */
export const showInfo = (ctx: Ctx, d: DeviceInfo | undefined): void => {
  if (d && ctx.sw.verbose) ctx.out(ctx.infoBlock(d));
};

/** The kernel block device name: the node the device is attached to (loop3, nbd0, ublkb0), else dm-MINOR. */
export function blkdevname(d: DeviceInfo): string {
  if (d.attachedBlockDevice) return d.attachedBlockDevice.slice(d.attachedBlockDevice.lastIndexOf("/") + 1);
  return `dm-${d.minor}`;
}

export async function listAll(ctx: Ctx): Promise<DeviceInfo[]> {
  return (await ctx.rpc("names", { name: "" }, (api) => api.listDevices({}))).devices;
}

/** Run `fetch` over the items at most `limit` at a time (one HTTP/2 connection multiplexes them). */
export function limited<I, T>(items: readonly I[], fetch: (item: I) => Promise<T>, limit = 32): Promise<T>[] {
  let active = 0;
  const waiting: Array<() => void> = [];
  const acquire = (): Promise<void> => {
    if (active < limit) {
      active++;
      return Promise.resolve();
    }
    return new Promise((r) => waiting.push(r));
  };
  const release = (): void => {
    const next = waiting.shift();
    if (next) next();
    else active--;
  };
  return items.map(async (item) => {
    await acquire();
    try {
      return await fetch(item);
    } finally {
      release();
    }
  });
}

/**
 * dmsetup's _process_all: run `fn` over every device (a failure does not stop the others, the command
 * fails at the end); "No devices found" when there are none. With `prefetch`, each device's request is
 * started ahead and handed to `fn`, which still reports its outcome in device order.
 */
export async function forAll<T = never>(
  ctx: Ctx,
  silent: boolean,
  fn: (d: DeviceInfo, fetched?: Promise<T>) => Promise<void>,
  prefetch?: (d: DeviceInfo) => Promise<T>,
): Promise<void> {
  const devs = await listAll(ctx);
  if (devs.length === 0) {
    if (!silent) ctx.out("No devices found\n");
    return;
  }
  const fetched = prefetch ? limited(devs, prefetch) : undefined;
  // Failures are reported when their turn comes; until then they must not count as unhandled.
  fetched?.forEach((p) => p.catch(() => undefined));
  let ok = true;
  for (const [i, d] of devs.entries()) {
    try {
      await fn(d, fetched?.[i]);
    } catch (e) {
      if (!(e instanceof Failed)) throw e;
      ok = false;
    }
  }
  if (!ok) throw new Failed();
}

// ---------------------------------------------------------------------------------------------------------
// info / table / status / deps / ls

/** INFO/STATUS of a missing device is not an ioctl error for libdm, just "Device does not exist." */
export const notExists = (ctx: Ctx) => (e: DaemonError) => (e.errno === "ENXIO" || e.errno === "ENODEV" ? ctx.fail("Device does not exist.") : undefined);

export async function depsOf(ctx: Ctx, d: DeviceInfo): Promise<GetDepsResponse> {
  return ctx.rpc("deps", { name: d.name }, (api) => api.getDeps({ device: { by: { $case: "name", value: d.name } }, inactive: ctx.sw.inactive }));
}

/** Every device with its deps, as the dependency tree the report's tree fields and `ls --tree` need. */
const trees = new WeakMap<Ctx, Promise<DepTree>>();

/** The dependency tree, built once per run as dmsetup does (the report asks for it per row). */
function wholeTree(ctx: Ctx): Promise<DepTree> {
  let t = trees.get(ctx);
  if (!t) trees.set(ctx, (t = buildTree(ctx)));
  return t;
}

export interface DepTree {
  nodes: TreeNode[];
  byName: Map<string, TreeNode>;
}

export async function buildTree(ctx: Ctx): Promise<DepTree> {
  const devs = await listAll(ctx);
  const byDevno = new Map<string, TreeNode>();
  const nodes: TreeNode[] = [];
  const byName = new Map<string, TreeNode>();
  const nodeFor = (major: number, minor: number, name: string, blk: string): TreeNode => {
    // file-backed devices have no device number (0:0): tell them apart by path
    const key = major === 0 && minor === 0 ? `file:${blk}` : `${major}:${minor}`;
    let n = byDevno.get(key);
    if (!n) {
      n = { name, major, minor, blkdevname: blk, uses: [], usedBy: [] };
      byDevno.set(key, n);
      nodes.push(n);
    }
    return n;
  };
  for (const d of devs) {
    // (no block device name for a device that never had a table: it has no disk)
    const n = nodeFor(d.major, d.minor, ctx.displayName(d.name), d.diskAdded ? blkdevname(d) : "");
    n.name = ctx.displayName(d.name);
    n.info = { suspended: d.suspended, readOnly: d.readOnly, openCount: d.openCount, uuid: ctx.displayUuid(d.uuid) };
    byName.set(d.name, n);
  }
  const allDeps = limited(devs, (d) => depsOf(ctx, d));
  allDeps.forEach((p) => p.catch(() => undefined));
  for (const [i, d] of devs.entries()) {
    const n = byName.get(d.name)!;
    let deps: GetDepsResponse;
    try {
      deps = await allDeps[i]!;
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
export async function reportObject(ctx: Ctx, needs: Set<FieldNeed>, d: DeviceInfo): Promise<ReportObject> {
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
    diskAdded: d.diskAdded,
    dmDirPath: `${ctx.dmDir}/${d.name}`,
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
    const tree = await wholeTree(ctx);
    const n = tree.byName.get(d.name);
    o.usesNames = (n?.uses ?? []).filter((c) => c.name).map((c) => c.name);
    o.usedBy = (n?.usedBy ?? []).map((p) => ({ name: p.name, major: p.major, minor: p.minor }));
  }
  return o;
}
