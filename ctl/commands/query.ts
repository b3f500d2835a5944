/** Commands that report: info (long and -c), table, status, deps, ls, targets, version, nbd-uri. */
import { spawn } from "node:child_process";
import type { DeviceInfo, TableLine } from "../../gen/tsdm/v1/tsdm.js";
import { formatConciseDevice } from "../concise.js";
import { Failed, type Ctx, type ResolvedDevice } from "../context.js";
import { ioctlErrorLine } from "../errno.js";
import {
  formatDepsLine,
  formatDriverVersion,
  formatLibraryVersion,
  formatLsLine,
  formatLsTargetLine,
  formatTargetLine,
  formatTargetText,
  hideKeys,
} from "../format.js";
import { drawTree, parseTreeOptions, treeRoots, TreeOptionError } from "../tree.js";
import { usageText } from "../usage.js";
import { blkdevname, buildTree, forAll, notExists, reportObject, type Handler, type RunState } from "./common.js";


export async function reportRow(ctx: Ctx, st: RunState, d: DeviceInfo): Promise<void> {
  const report = st.report!;
  const needs = new Set([...report.needs(), ...(st.selection?.needs ?? [])]);
  const o = await reportObject(ctx, needs, d);
  if (st.selection && !st.selection.test(o)) return;
  const checked = report.check(o);
  for (const l of checked.lines) ctx.err(l);
  if (!checked.ok) throw new Failed();
  report.addRow(o);
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

export async function displayInfo(ctx: Ctx, st: RunState, d: DeviceInfo): Promise<void> {
  if (st.report) await reportRow(ctx, st, d);
  else ctx.out(ctx.infoBlock(d));
  // Not in dmsetup's block (scripts parse it byte for byte): a device in an error state says so on stderr.
  if (d.errorState) ctx.err(`${ctx.displayName(d.name)}: ${d.errorState}`);
}

export const info: Handler = async (ctx, args, st) => {
  if (args.length === 0 && !ctx.deviceBySwitch) {
    await forAll(ctx, false, (d) => displayInfo(ctx, st, d));
    return;
  }
  const dev = await ctx.device(args[0]);
  const res = await ctx.rpc("info", dev.target, (api) => api.getInfo({ device: dev.ref, inactive: ctx.sw.inactive }), { onError: notExists(ctx) });
  await displayInfo(ctx, st, res.device!);
};

/** table and status: dmsetup's _status(). */
export function tableOrStatus(kind: "table" | "status"): Handler {
  type Res = { device?: DeviceInfo; lines: TableLine[] };
  const fetch = (ctx: Ctx, ref: ResolvedDevice["ref"]): Promise<Res> => {
    const req = { device: ref, inactive: ctx.sw.inactive, noflush: ctx.sw.noflush };
    return kind === "table" ? ctx.tsdm.getTable(req) : ctx.tsdm.getStatus(req);
  };
  const one = async (ctx: Ctx, st: RunState, given: string | undefined, dev: ResolvedDevice, fetched?: Promise<Res>): Promise<void> => {
    const res =
      kind === "table"
        ? await ctx.rpc("table", dev.target, () => fetched ?? fetch(ctx, dev.ref))
        : await ctx.rpc("status", dev.target, () => fetched ?? fetch(ctx, dev.ref), { onError: notExists(ctx) });
    const d = res.device!;
    const label = given ?? ctx.displayName(d.name);
    const concise = kind === "table" && ctx.sw.concise;
    const lines: Array<TableLine | undefined> = res.lines.length ? res.lines : [undefined];
    let matched = false;
    let text = "";
    for (const l of lines) {
      if (ctx.sw.target !== undefined && (!l || l.targetType !== ctx.sw.target)) continue;
      if (!matched && !concise && ctx.sw.verbose) text += ctx.infoBlock(d);
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
      const byName = (d: DeviceInfo): ResolvedDevice => ({ ref: { by: { $case: "name", value: d.name } }, target: { name: d.name } });
      await forAll<Res>(
        ctx,
        false,
        (d, fetched) => one(ctx, st, ctx.displayName(d.name), byName(d), fetched),
        (d) => fetch(ctx, byName(d).ref),
      );
      return;
    }
    const dev = await ctx.device(args[0]);
    await one(ctx, st, args[0], dev);
  };
}

export const deps: Handler = async (ctx, args, st) => {
  const one = async (given: string | undefined, dev: ResolvedDevice): Promise<void> => {
    const res = await ctx.rpc("deps", dev.target, (api) => api.getDeps({ device: dev.ref, inactive: ctx.sw.inactive }));
    const label = given ?? ctx.displayName(res.device!.name);
    let text = ctx.sw.verbose ? ctx.infoBlock(res.device!) : "";
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

export const ls: Handler = async (ctx, _args, st) => {
  const sw = ctx.sw;
  if (sw.target !== undefined || sw.exec !== undefined) {
    await forAll(ctx, false, async (d) => {
      const types = sw.inactive ? d.inactiveTargetTypes : d.liveTargetTypes;
      const matches = sw.target === undefined || types.includes(sw.target);
      if (!matches) return;
      if (sw.exec === undefined || sw.verbose) ctx.out(formatLsTargetLine(ctx.displayName(d.name), d.major, d.minor));
      if (sw.exec !== undefined) await execFor(ctx, d.name);
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
    // A device that never had a table has no disk: dmsetup cannot name it and prints its number.
    if (!d.diskAdded) ctx.out(formatLsLine(name, { major: d.major, minor: d.minor }));
    else if (st.devNameType === "blkdevname") ctx.out(formatLsLine(name, blkdevname(d)));
    else if (st.devNameType === "devname") ctx.out(formatLsLine(name, name));
    else ctx.out(formatLsLine(name, { major: d.major, minor: d.minor }));
  });
};

// ---------------------------------------------------------------------------------------------------------
// targets / version / help / nbd-uri

export const targets: Handler = async (ctx) => {
  const res = await ctx.rpc("versions", { name: "" }, (api) => api.listTargets({}));
  ctx.out(res.targets.map(formatTargetLine).join(""));
};

export const targetVersion: Handler = async (ctx, args) => {
  const name = args[0]!;
  const res = await ctx.rpc("target-version", { name }, (api) => api.listTargets({}));
  const t = res.targets.find((x) => x.name === name);
  if (!t) return ctx.fail(ioctlErrorLine("target-version", { name }, "EINVAL"));
  ctx.out(formatTargetLine(t));
};

export const version: Handler = async (ctx) => {
  ctx.out(formatLibraryVersion());
  const res = await ctx.rpc("version", { name: "" }, (api) => api.getVersion({}));
  ctx.out(formatDriverVersion(res.driverVersion));
};

export const help: Handler = async (ctx) => {
  ctx.io.stderr.write(usageText());
};

export const nbdUri: Handler = async (ctx, args) => {
  const dev = await ctx.device(args[0]);
  const res = await ctx.rpc("info", dev.target, (api) => api.getNbdUri({ device: dev.ref }), { onError: notExists(ctx) });
  ctx.out(`${res.uri}\n`);
};


/** splitname: LVM's vg-lv-layer split of a name (no daemon involved). */
export const splitname: Handler = async (_ctx, args, st) => {
  st.report!.addRow({
    name: args[0]!,
    mangledName: args[0]!,
    unmangledName: args[0]!,
    uuid: "",
    mangledUuid: "",
    unmangledUuid: "",
    readAhead: 0,
    blkdevname: "",
    diskAdded: true,
    major: 0,
    minor: 0,
    liveTable: false,
    inactiveTable: false,
    suspended: false,
    readOnly: false,
    openCount: 0,
    targetCount: 0,
    eventNr: 0,
    subsystem: args[1] ?? "LVM",
  });
};
