import fs from "node:fs";
import { blocksWrittenSince, readEraArray, readerTm, readSuperblock, readWritesets } from "../../daemon/targets/era/inspect.js";
import { LineWriter, processIo, type ToolIo, toolPrelude } from "./options.js";
import { openMetadata } from "./open.js";

const USAGE = ["Usage: era_invalidate [options] --written-since <era> {device|file}", "Options:", "  {-h|--help}", "  {-o <xml file>}", "  {-V|--version}", ""].join("\n");

/**
 * `tsdm era invalidate --written-since N`: the blocks written in era N or later, as era_invalidate's <blocks>
 * XML. With --metadata-snapshot the snapshot's trees are read (0.9.0 read the live ones by mistake, issue #192).
 */
export async function runInvalidate(argv: string[], streams: ToolIo = processIo()): Promise<number> {
  const pre = toolPrelude("era invalidate", USAGE, argv, {
    output: { short: "o", arg: true },
    "metadata-snapshot": { arg: false },
    "written-since": { arg: true },
  }, streams);
  if (typeof pre === "number") return pre;
  const { opts, path } = pre;
  const sinceText = opts.get("written-since");
  if (sinceText === undefined) {
    streams.stderr.write(`Please specify --written-since\n${USAGE}`);
    return 1;
  }
  if (typeof sinceText !== "string" || !/^[0-9]+$/.test(sinceText) || Number(sinceText) > 0xffffffff) {
    streams.stderr.write(`bad lexical cast: source type value could not be interpreted as target\n`);
    return 1;
  }
  const since = Number(sinceText);
  try {
    const io = openMetadata(path);
    try {
      let sb = await readSuperblock(io, 0);
      if (opts.has("metadata-snapshot")) {
        if (!sb.metadataSnap) throw new Error("no metadata snapshot taken.");
        sb = await readSuperblock(io, sb.metadataSnap);
      }
      const tm = readerTm(io);
      let blocks: number[];
      try {
        const writesets = await readWritesets(tm, sb.writesetTreeRoot);
        const eras = await readEraArray(tm, sb.eraArrayRoot);
        blocks = blocksWrittenSince(eras, writesets, sb.nrBlocks, since);
      } catch (e) {
        throw new Error("metadata contains errors (run era_check for details).", { cause: e });
      }
      const output = opts.get("output");
      const w = (typeof output === "string" ? new LineWriter(fs.createWriteStream(output), true) : new LineWriter(streams.stdout));
      if (w.line("<blocks>")) await w.flush();
      for (let i = 0; i < blocks.length; ) {
        const b = blocks[i]!;
        let e = b + 1;
        i++;
        while (i < blocks.length && blocks[i] === e) {
          e++;
          i++;
        }
        if (w.line(e - b === 1 ? `  <block block="${b}"/>` : `  <range begin="${b}" end = "${e}"/>`)) await w.flush();
      }
      if (w.line("</blocks>")) await w.flush();
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
