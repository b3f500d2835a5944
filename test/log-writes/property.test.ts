import fs from "node:fs";
import fc from "fast-check";
import { afterEach, beforeEach, expect, it } from "vitest";
import type { DeviceRegistry } from "../../daemon/device/registry.js";
import type { Bio } from "../../daemon/io/bio.js";
import { LogFlag, decodeEntry, encodeEntry, logBlocks, markEntry } from "../../daemon/targets/log-writes/format.js";
import { makeFile, makeRegistry, tempDir } from "../helpers/registry.js";
import { S, readLog } from "./helpers.js";

let reg: DeviceRegistry;
let tmp: ReturnType<typeof tempDir>;
beforeEach(() => {
  reg = makeRegistry();
  tmp = tempDir();
});
afterEach(async () => {
  for (const d of [...reg.list()].reverse()) await reg.remove(d).catch(() => undefined);
  tmp.cleanup();
});

it("entry headers round-trip for any field values", () => {
  fc.assert(
    fc.property(fc.nat(2 ** 40), fc.nat(2 ** 30), fc.integer({ min: 0, max: 31 }), fc.constantFrom(512, 4096), (sector, nr, flags, ss) => {
      const h = { sector: logBlocks(sector), nrSectors: logBlocks(nr), flags: flags & ~LogFlag.MARK, dataLen: 0 };
      expect(decodeEntry(encodeEntry(h, ss))).toEqual(h);
    }),
  );
  fc.assert(
    fc.property(fc.uint8Array({ minLength: 1, maxLength: 479 }), (text) => {
      const t = Buffer.from(text.map((b) => b || 1)); // no NUL inside a mark (dm arguments cannot carry one)
      expect(decodeEntry(encodeEntry(markEntry(t), 512)).mark).toEqual(t);
    }),
  );
});

type Op =
  | { kind: "write"; sector: number; count: number; fill: number; fua: boolean }
  | { kind: "discard"; sector: number; count: number }
  | { kind: "zeroes"; sector: number; count: number }
  | { kind: "flush" }
  | { kind: "checkpoint" };

const SECTORS = 512; // a 256 KiB device
const range = fc.integer({ min: 0, max: SECTORS - 1 }).chain((sector) => fc.record({ sector: fc.constant(sector), count: fc.integer({ min: 1, max: Math.min(32, SECTORS - sector) }) }));
const op: fc.Arbitrary<Op> = fc.oneof(
  { weight: 6, arbitrary: fc.record({ r: range, fill: fc.integer({ min: 1, max: 255 }), fua: fc.boolean() }).map(({ r, fill, fua }) => ({ kind: "write" as const, ...r, fill, fua })) },
  { weight: 1, arbitrary: range.map((r) => ({ kind: "discard" as const, ...r })) },
  { weight: 1, arbitrary: range.map((r) => ({ kind: "zeroes" as const, ...r })) },
  { weight: 2, arbitrary: fc.constant({ kind: "flush" as const }) },
  { weight: 1, arbitrary: fc.constant({ kind: "checkpoint" as const }) },
);

/** Apply the log's entries (up to `count`) to `image`, as replay does. */
function replayInto(image: Buffer, log: string, count?: number): void {
  const parsed = readLog(log, count);
  parsed.entries.forEach((e, i) => {
    const off = e.header.sector * parsed.sectorSize;
    const len = e.header.nrSectors * parsed.sectorSize;
    if (e.header.flags & LogFlag.DISCARD) image.fill(0, off, off + len);
    else if (len) parsed.payload[i]!.copy(image, off);
  });
}

/**
 * The kernel's ordering rules for requests submitted one after another (each completes before the next):
 * plain writes and discards wait in the unflushed list; a FUA write is logged at once; a flush logs the list then
 * itself; a mark is logged at once; removal logs the list then the end mark.
 */
function modelLog(ops: Op[]): string[] {
  const log: string[] = [];
  let unflushed: string[] = [];
  let marks = 0;
  for (const o of ops) {
    if (o.kind === "write" && o.fua) log.push(`fua${o.sector}+${o.count}:${o.fill}`);
    else if (o.kind === "write") unflushed.push(`w${o.sector}+${o.count}:${o.fill}`);
    else if (o.kind === "zeroes") unflushed.push(`w${o.sector}+${o.count}:0`);
    else if (o.kind === "discard") unflushed.push(`discard${o.sector}+${o.count}`);
    else {
      log.push(...unflushed, "flush");
      unflushed = [];
      if (o.kind === "checkpoint") log.push(`mark:m${marks++}`);
    }
  }
  return [...log, ...unflushed, "mark:dm-log-writes-end"];
}

function actualLog(log: string): string[] {
  const parsed = readLog(log);
  return parsed.entries.map((e, i) => {
    const h = e.header;
    if (h.flags & LogFlag.MARK) return `mark:${h.mark!.toString()}`;
    if (h.flags & LogFlag.FLUSH) return "flush";
    if (h.flags & LogFlag.DISCARD) return `discard${h.sector}+${h.nrSectors}`;
    const p = parsed.payload[i]!;
    expect(p.every((b) => b === p[0])).toBe(true);
    return `${h.flags & LogFlag.FUA ? "fua" : "w"}${h.sector}+${h.nrSectors}:${p[0]}`;
  });
}

/** Does a FUA write overtake an earlier, still unflushed request to the same sectors (the log then replays them in the other order)? */
function fuaOvertakes(ops: Op[]): boolean {
  let pending: { sector: number; count: number }[] = [];
  for (const o of ops) {
    if (o.kind === "flush" || o.kind === "checkpoint") pending = [];
    else if (o.kind === "write" && o.fua) {
      if (pending.some((p) => p.sector < o.sector + o.count && o.sector < p.sector + p.count)) return true;
    } else pending.push(o);
  }
  return false;
}

it("any sequence of writes, FUA, discards, write-zeroes, flushes and marks: the log matches the kernel's ordering model and replays to the device", async () => {
  let run = 0;
  let overtaken = 0;
  await fc.assert(
    fc.asyncProperty(fc.array(op, { minLength: 1, maxLength: 40 }), async (ops) => {
      const dir = `${tmp.dir}/${run++}`;
      fs.mkdirSync(dir);
      const data = makeFile(dir, "data", SECTORS * 512, "pattern");
      const seed = fs.readFileSync(data);
      const log = makeFile(dir, "log", 8 << 20);
      const dev = reg.create({ name: `p${run}` });
      await dev.load([{ start: S(0), length: S(SECTORS), type: "log-writes", params: `${data} ${log}` }], false);
      await dev.resume({ noflush: false });
      const snapshots: Buffer[] = [];
      for (const o of ops) {
        let bio: Bio;
        if (o.kind === "checkpoint") {
          await dev.submit({ op: "flush", sector: S(0), count: S(0), fua: false });
          await dev.message(S(0), ["mark", `m${snapshots.length}`]);
          snapshots.push(fs.readFileSync(data));
          continue;
        }
        if (o.kind === "flush") bio = { op: "flush", sector: S(0), count: S(0), fua: false };
        else if (o.kind === "write") bio = { op: "write", sector: S(o.sector), count: S(o.count), data: Buffer.alloc(o.count * 512, o.fill), fua: o.fua };
        else bio = { op: o.kind === "discard" ? "discard" : "write_zeroes", sector: S(o.sector), count: S(o.count), fua: false };
        await dev.submit(bio);
      }
      await reg.remove(dev);
      expect(actualLog(log)).toEqual(modelLog(ops));
      if (fuaOvertakes(ops)) {
        overtaken++;
        return; // a faithful kernel log replays such writes in log order, not device order
      }
      const img = Buffer.from(seed);
      replayInto(img, log);
      expect(img.equals(fs.readFileSync(data))).toBe(true);
      const parsed = readLog(log);
      const markIdx = parsed.entries.flatMap((e, i) => (e.header.mark && e.header.mark.toString() !== "dm-log-writes-end" ? [i] : []));
      markIdx.forEach((idx, k) => {
        const at = Buffer.from(seed);
        replayInto(at, log, idx + 1);
        expect(at.equals(snapshots[k]!), `mark m${k}`).toBe(true);
      });
    }),
    { numRuns: 30 },
  );
  expect(overtaken).toBeLessThan(30); // most runs check the images too
});
