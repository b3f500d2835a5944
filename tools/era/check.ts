import { checkReferenceCounts, readerTm } from "../../daemon/targets/era/inspect.js";
import type { MetaIo } from "../../daemon/targets/era/pdata/block.js";
import { decodeWriteset, type EraSuperblock, WRITESET_VALUE_SIZE } from "../../daemon/targets/era/superblock.js";
import { processIo, type ToolIo, toolPrelude } from "./options.js";
import { openMetadata } from "./open.js";
import { readBitsetTolerant, readToolSuperblock, superblockProblems, walkArrayTolerant, walkTreeTolerant } from "./walk.js";

const USAGE = ["Usage: era_check [options] {device|file}", "Options:", "  {-q|--quiet}", "  {-h|--help}", "  {-V|--version}", "  {--super-block-only}", "  {--check-space-map}", ""].join("\n");

/**
 * `tsdm era check`: what era_check 0.9.0 verifies (superblock; writeset tree and its bitsets; era array with no
 * era above the current one), reported in its words on stderr, exit 0 or 1. Every problem is reported, not
 * only the first. Where 0.9.0 aborts (rc 134) printing a damaged range with an unknown end, the range is printed
 * whole and the exit code is 1. --super-block-only stops after the superblock (0.9.0 ignored it);
 * --check-space-map also recounts every reference against the space map.
 */
export async function runCheck(argv: string[], streams: ToolIo = processIo()): Promise<number> {
  const pre = toolPrelude("era_check", USAGE, argv, {
    quiet: { short: "q", arg: false },
    "super-block-only": { arg: false },
    "check-space-map": { arg: false },
  }, streams);
  if (typeof pre === "number") return pre;
  const { opts, path } = pre;
  const quiet = opts.has("quiet");
  const out = (depth: number, msg: string): void => {
    if (!quiet) streams.stderr.write(`${"  ".repeat(depth)}${msg}\n`);
  };
  let io: MetaIo;
  try {
    io = openMetadata(path, "era_check");
  } catch (e) {
    out(0, (e as Error).message);
    return 1;
  }
  try {
    out(0, "examining superblock");
    let sb: EraSuperblock;
    try {
      sb = await readToolSuperblock(io);
    } catch (e) {
      out(1, "superblock is corrupt");
      out(2, (e as Error).message);
      return 1;
    }
    const problems = superblockProblems(sb);
    for (const p of problems) {
      out(1, "superblock is invalid");
      out(2, p);
    }
    if (problems.length) return 1;
    if (opts.has("super-block-only")) return 0;
    let failed = false;
    const tm = readerTm(io);
    await walkTreeTolerant(
      tm,
      sb.writesetTreeRoot,
      WRITESET_VALUE_SIZE,
      2 ** 32,
      async (era, value) => {
        const ws = decodeWriteset(value);
        for (const m of (await readBitsetTolerant(tm, ws.root, ws.nrBits)).missing) {
          failed = true;
          out(0, "damaged writeset");
          out(1, "missing bits");
          out(1, `Era: ${era}`);
          out(1, `Missing bits: [${m.begin}, ${m.end})`);
        }
      },
      (d) => {
        failed = true;
        out(0, "missing eras from writeset tree");
        out(1, d.desc);
        out(1, `Effected eras: [${d.begin}, ${d.end})`);
      },
    );
    await walkArrayTolerant(
      tm,
      sb.eraArrayRoot,
      4,
      sb.nrBlocks,
      (first, ab) => {
        for (let s = 0; s < ab.nr && first + s < sb.nrBlocks; s++) {
          const era = ab.buf.readUInt32LE(ab.offset(s));
          if (era <= sb.currentEra) continue;
          failed = true;
          out(0, "invalid era in era array");
          out(1, "era too great");
          out(1, `block: ${first + s}, era: ${era}`);
        }
      },
      (d) => {
        failed = true;
        out(0, "missing eras from era array");
        out(1, d.desc);
        out(1, `Effected eras: [${d.begin}, ${d.end})`);
      },
    );
    if (opts.has("check-space-map")) {
      out(0, "examining space map reference counts");
      const r = await checkReferenceCounts(io);
      for (const msg of r.problems.slice(0, 50)) out(1, msg);
      if (r.problems.length > 50) out(1, `... and ${r.problems.length - 50} more`);
      if (r.problems.length) failed = true;
    }
    return failed ? 1 : 0;
  } catch (e) {
    out(0, (e as Error).message);
    return 1;
  } finally {
    await io.close?.();
  }
}
