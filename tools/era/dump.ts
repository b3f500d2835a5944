import { readerTm } from "../../daemon/targets/era/inspect.js";
import type { TransactionManager } from "../../daemon/targets/era/pdata/transaction-manager.js";
import { decodeWriteset, type EraSuperblock, WRITESET_VALUE_SIZE } from "../../daemon/targets/era/superblock.js";
import { type LineWriter, outputWriter, processIo, type ToolIo, toolPrelude } from "./options.js";
import { openMetadata } from "./open.js";
import { readBitsetTolerant, readToolSuperblock, ToolError, walkArrayTolerant, walkTreeTolerant } from "./walk.js";

const USAGE = ["Usage: era_dump [options] {device|file}", "Options:", "  {-h|--help}", "  {-o <xml file>}", "  {-V|--version}", "  {--repair}", "  {--logical}", ""].join("\n");

const DAMAGED = "metadata contains errors (run era_check for details).\nperhaps you wanted to run with --repair ?";
const ERA_KEYS_END = 2 ** 32;

/** The uuid field as era_dump prints it: bytes up to the first NUL. */
function uuidText(uuid: Buffer): string {
  const end = uuid.indexOf(0);
  return uuid.subarray(0, end < 0 ? uuid.length : end).toString("latin1");
}

const xmlAttr = (s: string): string => s.replace(/&/g, "&amp;").replace(/"/g, "&quot;").replace(/</g, "&lt;").replace(/>/g, "&gt;");

/**
 * `tsdm era dump`: era_dump 0.9.0's XML (every writeset bit, every era-array entry); --logical folds writesets in.
 * Output streams as the metadata is walked, so damage stops it where 0.9.0 stops; --repair skips only the
 * damaged parts: a writeset with an unreadable bitset block loses that block's bits, the others print whole.
 */
export async function runDump(argv: string[], streams: ToolIo = processIo()): Promise<number> {
  const pre = toolPrelude("era_dump", USAGE, argv, { output: { short: "o", arg: true }, repair: { arg: false }, logical: { arg: false } }, streams);
  if (typeof pre === "number") return pre;
  const { opts, path } = pre;
  try {
    const io = openMetadata(path, "era_dump");
    try {
      const sb = await readToolSuperblock(io);
      const w = outputWriter(opts.get("output"), streams);
      try {
        await dump(readerTm(io), sb, w, opts.has("repair"), opts.has("logical"));
      } finally {
        await w.end();
      }
    } finally {
      await io.close();
    }
    return 0;
  } catch (e) {
    streams.stderr.write(`${(e as Error).message}\n`);
    return 1;
  }
}

async function dump(tm: TransactionManager, sb: EraSuperblock, w: LineWriter, repair: boolean, logical: boolean): Promise<void> {
  const line = async (s: string): Promise<void> => {
    if (w.line(s)) await w.flush();
  };
  const damaged = (): void => {
    if (!repair) throw new ToolError(DAMAGED);
  };
  await line(`<superblock uuid="${xmlAttr(uuidText(sb.uuid))}" block_size="${sb.dataBlockSize}" nr_blocks="${sb.nrBlocks}" current_era="${sb.currentEra}">`);
  // --logical: 0.9.0 keeps the first (oldest) archived era that has the bit, then takes it only if above the array's.
  const exceptions = new Map<number, number>();
  await walkTreeTolerant(
    tm,
    sb.writesetTreeRoot,
    WRITESET_VALUE_SIZE,
    ERA_KEYS_END,
    async (era, value) => {
      const ws = decodeWriteset(value);
      if (!logical) await line(`  <writeset era="${era}" nr_bits="${ws.nrBits}">`);
      const t = await readBitsetTolerant(tm, ws.root, ws.nrBits);
      let m = 0;
      for (let b = 0; b < ws.nrBits; b++) {
        const gap = t.missing[m];
        if (gap && b >= gap.begin) {
          damaged();
          b = gap.end - 1;
          m++;
          continue;
        }
        if (logical) {
          if (t.bits[b] && !exceptions.has(b)) exceptions.set(b, era);
        } else await line(`    <bit block="${b}" value="${t.bits[b] ? "true" : "false"}"/>`);
      }
      if (!logical) await line("  </writeset>");
    },
    damaged,
  );
  await line("  <era_array>");
  await walkArrayTolerant(
    tm,
    sb.eraArrayRoot,
    4,
    sb.nrBlocks,
    async (first, ab) => {
      for (let s = 0; s < ab.nr && first + s < sb.nrBlocks; s++) {
        const b = first + s;
        const era = ab.buf.readUInt32LE(ab.offset(s));
        const x = exceptions.get(b);
        await line(`    <era block="${b}" era="${x !== undefined && x > era ? x : era}"/>`);
      }
    },
    damaged,
  );
  await line("  </era_array>");
  await line("</superblock>");
}
