import { checkReferenceCounts, readEraArray, readerTm, readSuperblock, readWritesets } from "../../daemon/targets/era/inspect.js";
import { MD_BLOCK_SECTORS } from "../../daemon/targets/era/pdata/block.js";
import type { EraSuperblock } from "../../daemon/targets/era/superblock.js";
import { processIo, type ToolIo, toolPrelude } from "./options.js";
import { openMetadata } from "./open.js";

const USAGE = ["Usage: era_check [options] {device|file}", "Options:", "  {-q|--quiet}", "  {-h|--help}", "  {-V|--version}", "  {--super-block-only}", "  {--check-space-map}", ""].join("\n");

/**
 * `tsdm era check`: what era_check 0.9.0 verifies (superblock; writeset tree and its bitsets; era array with no
 * era above the current one), reported the same way on stderr, exit 0 or 1. --super-block-only stops after the
 * superblock (0.9.0 ignored it); --check-space-map also recounts every reference against the space map.
 */
export async function runCheck(argv: string[], streams: ToolIo = processIo()): Promise<number> {
  const pre = toolPrelude("era check", USAGE, argv, {
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
  let io;
  try {
    io = openMetadata(path);
  } catch (e) {
    out(0, (e as Error).message);
    return 1;
  }
  try {
    out(0, "examining superblock");
    if (io.nrBlocks < 1) {
      out(1, "superblock is corrupt");
      out(2, "Metadata device/file too small.  Is this binary metadata?");
      return 1;
    }
    let sb: EraSuperblock;
    try {
      sb = await readSuperblock(io, 0);
    } catch (e) {
      out(1, "superblock is corrupt");
      out(2, (e as Error).message);
      return 1;
    }
    const invalid = superblockProblem(sb, io.nrBlocks);
    if (invalid) {
      out(1, "superblock is invalid");
      out(2, invalid);
      return 1;
    }
    if (opts.has("super-block-only")) return 0;
    let failed = false;
    const tm = readerTm(io);
    try {
      await readWritesets(tm, sb.writesetTreeRoot);
    } catch (e) {
      failed = true;
      out(0, "damaged writeset tree");
      out(1, (e as Error).message);
    }
    try {
      const eras = await readEraArray(tm, sb.eraArrayRoot);
      for (let b = 0; b < eras.length; b++) {
        if (eras[b]! > sb.currentEra) {
          failed = true;
          out(0, "invalid era in era array");
          out(1, "era too great");
          out(1, `block: ${b}, era: ${eras[b]}`);
          break;
        }
      }
    } catch (e) {
      failed = true;
      out(0, "missing eras from era array");
      out(1, (e as Error).message);
    }
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
    await io.close();
  }
}

function superblockProblem(sb: EraSuperblock, nrMetadataBlocks: number): string | undefined {
  if (sb.metadataBlockSize !== MD_BLOCK_SECTORS) return `metadata block size is ${sb.metadataBlockSize}, expected ${MD_BLOCK_SECTORS}`;
  if (sb.blocknr >= nrMetadataBlocks) return "blocknr out of bounds";
  if (sb.writesetTreeRoot === 0 || sb.writesetTreeRoot >= nrMetadataBlocks) return "writeset tree root out of bounds";
  if (sb.eraArrayRoot === 0 || sb.eraArrayRoot >= nrMetadataBlocks) return "era array root out of bounds";
  if (sb.writesetTreeRoot === sb.eraArrayRoot) return "writeset tree root and era array root are the same block";
  return undefined;
}
