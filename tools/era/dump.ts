import fs from "node:fs";
import { readEraArray, readerTm, readSuperblock, readWritesets } from "../../daemon/targets/era/inspect.js";
import { LineWriter, processIo, type ToolIo, toolPrelude } from "./options.js";
import { openMetadata } from "./open.js";

const USAGE = ["Usage: era_dump [options] {device|file}", "Options:", "  {-h|--help}", "  {-o <xml file>}", "  {-V|--version}", "  {--repair}", "  {--logical}", ""].join("\n");

/** The uuid field as era_dump prints it: bytes up to the first NUL. */
function uuidText(uuid: Buffer): string {
  const end = uuid.indexOf(0);
  return uuid.subarray(0, end < 0 ? uuid.length : end).toString("latin1");
}

const xmlAttr = (s: string): string => s.replace(/&/g, "&amp;").replace(/"/g, "&quot;").replace(/</g, "&lt;").replace(/>/g, "&gt;");

/** `tsdm era dump`: era_dump 0.9.0's XML (every writeset bit, every era-array entry); --logical folds writesets in. */
export async function runDump(argv: string[], streams: ToolIo = processIo()): Promise<number> {
  const pre = toolPrelude("era dump", USAGE, argv, { output: { short: "o", arg: true }, repair: { arg: false }, logical: { arg: false } }, streams);
  if (typeof pre === "number") return pre;
  const { opts, path } = pre;
  const repair = opts.has("repair");
  const output = opts.get("output");
  try {
    const io = openMetadata(path);
    try {
      const sb = await readSuperblock(io, 0);
      const tm = readerTm(io);
      const damage = (e: unknown): never => {
        throw new Error(`metadata contains errors (run era_check for details).\nperhaps you wanted to run with --repair ?`, { cause: e });
      };
      const writesets = await readWritesets(tm, sb.writesetTreeRoot).catch((e) => (repair ? [] : damage(e)));
      const eras = await readEraArray(tm, sb.eraArrayRoot).catch((e) => (repair ? new Uint32Array(0) : damage(e)));
      const w = (typeof output === "string" ? new LineWriter(fs.createWriteStream(output), true) : new LineWriter(streams.stdout));
      if (w.line(`<superblock uuid="${xmlAttr(uuidText(sb.uuid))}" block_size="${sb.dataBlockSize}" nr_blocks="${sb.nrBlocks}" current_era="${sb.currentEra}">`)) await w.flush();
      if (opts.has("logical")) {
        // 0.9.0 keeps the first (oldest) archived era that has the bit, then takes it only if above the array's.
        const exceptions = new Map<number, number>();
        for (const ws of writesets) for (let b = 0; b < ws.bits.length; b++) if (ws.bits[b] && !exceptions.has(b)) exceptions.set(b, ws.era);
        if (w.line("  <era_array>")) await w.flush();
        for (let b = 0; b < eras.length; b++) {
          const x = exceptions.get(b);
          if (w.line(`    <era block="${b}" era="${x !== undefined && x > eras[b]! ? x : eras[b]}"/>`)) await w.flush();
        }
        if (w.line("  </era_array>")) await w.flush();
      } else {
        for (const ws of writesets) {
          if (w.line(`  <writeset era="${ws.era}" nr_bits="${ws.nrBits}">`)) await w.flush();
          for (let b = 0; b < ws.bits.length; b++) if (w.line(`    <bit block="${b}" value="${ws.bits[b] ? "true" : "false"}"/>`)) await w.flush();
          if (w.line("  </writeset>")) await w.flush();
        }
        if (w.line("  <era_array>")) await w.flush();
        for (let b = 0; b < eras.length; b++) if (w.line(`    <era block="${b}" era="${eras[b]}"/>`)) await w.flush();
        if (w.line("  </era_array>")) await w.flush();
      }
      if (w.line("</superblock>")) await w.flush();
      await w.end();
    } finally {
      await io.close();
    }
    return 0;
  } catch (e) {
    streams.stderr.write(`${(e as Error).message}\n`);
    return 1;
  }
}
