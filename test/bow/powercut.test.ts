import fs from "node:fs";
import path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { DeviceRegistry } from "../../daemon/device/registry.js";
import { DmError } from "../../daemon/core/errors.js";
import type { Sector } from "../../daemon/core/units.js";
import { LogFlag } from "../../daemon/targets/log-writes/format.js";
import { restoreCheckpoint } from "../../daemon/targets/bow/restore.js";
import { LogReader } from "../../tools/replay-log/log-reader.js";
import { makeRegistry, tempDir } from "../helpers/registry.js";
import { createBow, discard, firstDifference, pattern, rng, setState, write } from "./helpers.js";
import { MemRawDevice } from "./workload.js";
import { trimmedBlocks, trimmedSet } from "./fixtures/trim-plan.js";

/**
 * Power cuts, not process kills: bow runs on top of a log-writes device, so every write and flush that reached
 * the "disk" is recorded in order. Replaying the log gives the disk as a power cut would have left it: all
 * writes before the last completed flush, plus any subset of the writes after it. For every such state we
 * tried, tsdm bow-restore must give back the checkpoint on every block in use — which holds only if bow
 * made backup data, log entry and new data durable in that order, flushing between them.
 */
const S = (n: number) => n as Sector;
let reg: DeviceRegistry;
let tmp: ReturnType<typeof tempDir>;
beforeEach(() => {
  reg = makeRegistry();
  tmp = tempDir("tsdm-bow-powercut-");
});
afterEach(async () => {
  for (const d of [...reg.list()].reverse()) await reg.remove(d).catch(() => undefined);
  tmp.cleanup();
});

interface Op {
  kind: "write" | "discard" | "flush";
  sector: number;
  data?: Buffer;
  count: number;
}

function readLog(logPath: string): Op[] {
  const r = LogReader.open(logPath);
  const ops: Op[] = [];
  try {
    for (let e = r.next(); e; e = r.next()) {
      const unit = r.sectorSize / 512;
      const sector = Number(e.header.sector) * unit;
      const count = Number(e.header.nrSectors) * unit;
      if (e.header.flags & LogFlag.DISCARD) ops.push({ kind: "discard", sector, count });
      else if (count > 0) {
        const data = Buffer.alloc(e.dataBytes);
        r.readData(e.dataPos, data, e.dataBytes);
        ops.push({ kind: "write", sector, count, data: data.subarray(0, count * 512) });
      }
      if (e.header.flags & (LogFlag.FLUSH | LogFlag.FUA)) ops.push({ kind: "flush", sector: 0, count: 0 });
    }
  } finally {
    r.close();
  }
  return ops;
}

function apply(img: Buffer, op: Op): void {
  if (op.kind === "write") op.data!.copy(img, op.sector * 512);
  else if (op.kind === "discard") img.fill(0, op.sector * 512, (op.sector + op.count) * 512);
}

describe("bow: power cut at any point (log-writes replay)", () => {
  for (const blockSize of [4096, 512]) {
    it(`${blockSize}-byte blocks: every flushed prefix, plus random subsets of the unflushed writes, rolls back exactly`, async () => {
      const sectors = 4096;
      const spb = blockSize / 512;
      const base = path.join(tmp.dir, "base.img");
      const log = path.join(tmp.dir, "log.img");
      const init = Buffer.alloc(sectors * 512);
      for (let s = 0; s < sectors; s++) pattern(1, 4000 + s).copy(init, s * 512);
      fs.writeFileSync(base, init);
      fs.writeFileSync(log, "");
      fs.truncateSync(log, 64 << 20);
      const lw = reg.create({ name: "lw" });
      await lw.load([{ start: S(0), length: S(sectors), type: "log-writes", params: `${base} ${log}` }], false);
      await lw.resume({ noflush: false });
      const seed = blockSize;
      const dev = await createBow(reg, "bow", `${reg.mapperDir}/lw`, sectors, `1 block_size:${blockSize}`);
      for (const [a, n] of trimmedBlocks(seed, sectors / spb)) await discard(dev, a * spb, n * spb);
      await setState(dev, "1");
      const r = rng(seed);
      const writer = async (w: number) => {
        for (let i = 0; i < 12; i++) {
          const start = Math.floor(r() * sectors);
          const count = Math.min(sectors - start, 1 + Math.floor(r() * 24));
          try {
            if (r() < 0.1) await discard(dev, start, count);
            else await write(dev, start, pattern(count, w * 100 + i));
          } catch (err) {
            if (!(err instanceof DmError && err.errno === "ENOSPC")) throw err;
          }
        }
      };
      await Promise.all([0, 1, 2].map(writer));
      await reg.remove(dev);
      await reg.remove(lw);

      const ops = readLog(log);
      const flushes = ops.filter((o) => o.kind === "flush").length;
      expect(flushes).toBeGreaterThan(20);
      const free = trimmedSet(seed, sectors / spb);
      const inUse = Array.from({ length: sectors / spb }, (_, b) => b).filter((b) => !free.has(b));
      const check = async (img: Buffer, what: string) => {
        const d = new MemRawDevice(Buffer.from(img));
        const res = await restoreCheckpoint(d);
        expect(["restored", "no-magic"], what).toContain(res.kind);
        expect(firstDifference(d.image, init, blockSize, inUse), what).toBe(-1);
      };

      const durable = Buffer.from(init); // the disk as of the last completed flush
      let pending: Op[] = []; // writes since then, in completion order
      const pick = rng(seed + 1);
      let states = 0;
      for (const [i, op] of ops.entries()) {
        if (op.kind !== "flush") {
          pending.push(op);
          continue;
        }
        // A power cut before this flush completed: the durable image plus some of the pending writes.
        await check(durable, `flushed prefix before op ${i}`);
        const all = Buffer.from(durable);
        for (const p of pending) apply(all, p);
        await check(all, `all pending writes before op ${i}`);
        for (let k = 0; k < 3 && pending.length > 1; k++) {
          const some = Buffer.from(durable);
          for (const p of pending) if (pick() < 0.5) apply(some, p);
          await check(some, `a subset of pending writes before op ${i}`);
          states++;
        }
        for (const p of pending) apply(durable, p);
        pending = [];
        states += 2;
      }
      for (const p of pending) apply(durable, p);
      await check(durable, "the end of the log");
      expect(states).toBeGreaterThan(40);
    });
  }
});
