import { readerTm } from "../../daemon/targets/era/inspect.js";
import { decodeWriteset, WRITESET_VALUE_SIZE } from "../../daemon/targets/era/superblock.js";
import { outputWriter, processIo, type ToolIo, toolPrelude } from "./options.js";
import { openMetadata } from "./open.js";
import { readBitsetTolerant, readToolSuperblock, ToolError, walkArrayTolerant, walkTreeTolerant } from "./walk.js";

const USAGE = [
  "Usage: era_invalidate [options] --written-since <era> {device|file}",
  "Options:",
  "  {-h|--help}",
  "  {-o <xml file>}",
  "  {--metadata-snapshot}",
  "  {-V|--version}",
  "",
].join("\n");

const BAD_CAST = "bad lexical cast: source type value could not be interpreted as target";

/** boost::lexical_cast<uint32_t>: an optional sign, digits that fit in 32 bits; a minus wraps (-1 is 4294967295). */
export function parseEra(text: string): number | undefined {
  const m = /^([+-]?)([0-9]+)$/.exec(text);
  if (!m) return undefined;
  const n = Number(m[2]);
  if (n > 0xffffffff) return undefined;
  return m[1] === "-" ? (0x1_0000_0000 - n) % 0x1_0000_0000 : n;
}

/**
 * `tsdm era invalidate --written-since N`: the blocks written in era N or later, as era_invalidate's <blocks>
 * XML. With --metadata-snapshot the snapshot's trees are read (0.9.0 read the live ones by mistake, issue #192).
 */
export async function runInvalidate(argv: string[], streams: ToolIo = processIo()): Promise<number> {
  const pre = toolPrelude("era_invalidate", USAGE, argv, {
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
  const since = typeof sinceText === "string" ? parseEra(sinceText) : undefined;
  if (since === undefined) {
    streams.stderr.write(`${BAD_CAST}\n`);
    return 1;
  }
  try {
    const io = openMetadata(path, "era_invalidate");
    try {
      let sb = await readToolSuperblock(io);
      if (opts.has("metadata-snapshot")) {
        if (!sb.metadataSnap) throw new ToolError("no metadata snapshot taken.");
        sb = await readToolSuperblock(io, sb.metadataSnap);
      }
      const tm = readerTm(io);
      // 0.9.0 looks the era array up first (its errors surface as they are), then walks the writesets.
      const hits: Uint8Array[] = [new Uint8Array(sb.nrBlocks)];
      await walkArrayTolerant(
        tm,
        sb.eraArrayRoot,
        4,
        sb.nrBlocks,
        (first, ab) => {
          for (let s = 0; s < ab.nr && first + s < sb.nrBlocks; s++) if (ab.buf.readUInt32LE(ab.offset(s)) >= since) hits[0]![first + s] = 1;
        },
        (d) => {
          throw new ToolError(d.desc);
        },
      );
      const damaged = (): never => {
        throw new ToolError("metadata contains errors (run era_check for details).");
      };
      await walkTreeTolerant(
        tm,
        sb.writesetTreeRoot,
        WRITESET_VALUE_SIZE,
        2 ** 32,
        async (era, value) => {
          if (era < since) return;
          const ws = decodeWriteset(value);
          const t = await readBitsetTolerant(tm, ws.root, ws.nrBits);
          if (t.missing.length) damaged();
          hits.push(t.bits);
        },
        damaged,
      );
      const w = outputWriter(opts.get("output"), streams);
      const len = Math.max(...hits.map((h) => h.length));
      const hit = (b: number): boolean => hits.some((h) => b < h.length && h[b] === 1);
      if (w.line("<blocks>")) await w.flush();
      for (let b = 0; b < len; ) {
        if (!hit(b)) {
          b++;
          continue;
        }
        let e = b + 1;
        while (e < len && hit(e)) e++;
        if (w.line(e - b === 1 ? `  <block block="${b}"/>` : `  <range begin="${b}" end = "${e}"/>`)) await w.flush();
        b = e;
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
