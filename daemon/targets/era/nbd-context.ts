import type { MappedDevice } from "../../device/mapped-device.js";
import type { Extent, MetaContext, MetaContextProvider } from "../../nbd/meta-context.js";
import { EraTarget } from "./target.js";

/**
 * NBD metadata context "tsdm-era:written-since:<N>": NBD_CMD_BLOCK_STATUS reports, per extent, whether the
 * origin blocks were written in era N or later (flag 1, like qemu's dirty bitmaps) or not (flag 0). Parts of a
 * device not under an era target are reported written: a backup client then copies them, which is safe.
 *
 * Incremental backup over NBD: `dmsetup message <dev> 0 checkpoint`, read the new era E' from the status, copy
 * every extent nbdinfo --map=tsdm-era:written-since:<E from the last run> reports with flag 1, keep E' for the
 * next run. Writes made while copying are in era ≥ E' and are picked up next time.
 */
export const ERA_CONTEXT_NAMESPACE = "tsdm-era";
const PREFIX = `${ERA_CONTEXT_NAMESPACE}:written-since:`;
export const STATE_WRITTEN = 1;
/** Extents per reply: enough for most requests, bounded so a reply stays small. */
const MAX_EXTENTS = 4096;

function eraTargets(dev: MappedDevice): Array<{ start: number; length: number; target: EraTarget }> {
  const table = dev.live;
  if (!table) return [];
  return table
    .targets()
    .filter((t) => t.target instanceof EraTarget)
    .map((t) => ({ start: t.start, length: t.length, target: t.target as EraTarget }));
}

export const eraWrittenSince: MetaContextProvider = {
  namespace: ERA_CONTEXT_NAMESPACE,
  names(dev) {
    const t = eraTargets(dev)[0];
    return t ? [`${PREFIX}${t.target.currentEra}`] : [];
  },
  select(dev, name) {
    if (!name.startsWith(PREFIX)) return undefined;
    const text = name.slice(PREFIX.length);
    if (!/^[0-9]+$/.test(text) || Number(text) > 0xffffffff) return undefined;
    if (eraTargets(dev).length === 0) return undefined;
    return writtenSince(name, Number(text));
  },
};

function writtenSince(name: string, since: number): MetaContext {
  return {
    name,
    async blockStatus(dev, offset, length, reqOne) {
      const table = dev.live;
      const end = offset + length;
      if (!table) return [{ length, flags: STATE_WRITTEN }];
      const out: Extent[] = [];
      const push = (len: number, flags: number): void => {
        const last = out[out.length - 1];
        if (last && last.flags === flags) last.length += len;
        else out.push({ length: len, flags });
      };
      let pos = offset;
      for (const t of table.targets()) {
        const tStart = t.start * 512;
        const tEnd = (t.start + t.length) * 512;
        if (tEnd <= pos) continue;
        if (pos >= end || out.length >= MAX_EXTENTS || (reqOne && out.length > 0)) break;
        const upto = Math.min(end, tEnd);
        if (!(t.target instanceof EraTarget)) {
          push(upto - pos, STATE_WRITTEN);
          pos = upto;
          continue;
        }
        const bsBytes = t.target.blockSize * 512;
        const b0 = Math.floor((pos - tStart) / bsBytes);
        const eras = await t.target.erasOf(b0, Math.ceil((upto - tStart) / bsBytes) - b0);
        while (pos < upto && out.length < MAX_EXTENTS) {
          const b = Math.floor((pos - tStart) / bsBytes);
          const stop = Math.min(upto, tStart + (b + 1) * bsBytes);
          push(stop - pos, (eras[b - b0] ?? 0) >= since ? STATE_WRITTEN : 0);
          pos = stop;
          if (reqOne && out.length > 1) break;
        }
      }
      if (reqOne) return [out[0]!];
      return out;
    },
  };
}
