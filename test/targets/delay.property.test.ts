import fs from "node:fs";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { DeviceRegistry } from "../../daemon/device/registry.js";
import { makeFile, makeRegistry, tempDir } from "../helpers/registry.js";
import { flush, line, pattern, readBio, sleep, statusOf, writeBio } from "./helpers.js";

/**
 * dm-delay under random interleavings of writes, reads, flushes, suspend/resume and pauses: every write is on
 * the device by the time it is acknowledged, no bio is lost, every bio that was not released by a suspend waited
 * at least its class's delay, and the held counters return to "0 0 0".
 */
let reg: DeviceRegistry;
let tmp: ReturnType<typeof tempDir>;
let readFile: string;
let writeFile: string;
beforeAll(() => {
  reg = makeRegistry();
  tmp = tempDir();
  readFile = makeFile(tmp.dir, "r", 1 << 20);
  writeFile = makeFile(tmp.dir, "w", 1 << 20);
});
afterAll(async () => {
  for (const d of reg.list()) await reg.remove(d).catch(() => undefined);
  tmp.cleanup();
});

type Step = { op: "write"; block: number } | { op: "read"; block: number } | { op: "flush" } | { op: "suspend"; noflush: boolean } | { op: "pause"; ms: number };

const step: fc.Arbitrary<Step> = fc.oneof(
  { weight: 6, arbitrary: fc.record({ op: fc.constant("write" as const), block: fc.nat({ max: 31 }) }) },
  { weight: 3, arbitrary: fc.record({ op: fc.constant("read" as const), block: fc.nat({ max: 31 }) }) },
  { weight: 1, arbitrary: fc.constant({ op: "flush" as const }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant("suspend" as const), noflush: fc.boolean() }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant("pause" as const), ms: fc.integer({ min: 0, max: 15 }) }) },
);

describe("delay: random interleavings", () => {
  it("acknowledged writes are on disk, nothing is lost, delays are honoured, counters settle", async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(step, { minLength: 1, maxLength: 25 }), fc.constantFrom(1, 10, 30), fc.constantFrom(0, 5, 20), fc.constantFrom(0, 7), async (steps, readDelay, writeDelay, flushDelay) => {
        fs.writeFileSync(readFile, pattern(1 << 20, 77));
        fs.writeFileSync(writeFile, Buffer.alloc(1 << 20));
        const dev = reg.create({ name: "dp" });
        await dev.load([line(0, 256, "delay", `${readFile} 0 ${readDelay} ${writeFile} 512 ${writeDelay} ${writeFile} 0 ${flushDelay}`)], false);
        await dev.resume({ noflush: false });
        const image = Buffer.alloc(256 * 512);
        const pending: Promise<void>[] = [];
        let suspends = 0;
        const busy = new Set<number>(); // blocks with a write in flight: at most one at a time, so the model is exact
        try {
          for (const [i, s] of steps.entries()) {
            const t0 = performance.now();
            const suspendsBefore = suspends;
            // A bio may be released early only by a suspend that started after it was submitted.
            const waited = (delay: number) => (): void => {
              if (suspends === suspendsBefore) expect(performance.now() - t0).toBeGreaterThanOrEqual(delay);
            };
            if (s.op === "write") {
              if (busy.has(s.block)) continue;
              busy.add(s.block);
              const data = pattern(8 * 512, i + 1);
              data.copy(image, s.block * 8 * 512);
              pending.push(
                dev.submit(writeBio(s.block * 8, data)).then(() => {
                  waited(writeDelay)();
                  // Acknowledged means written.
                  const disk = fs.readFileSync(writeFile).subarray((512 + s.block * 8) * 512, (512 + s.block * 8 + 8) * 512);
                  expect(disk.equals(data)).toBe(true);
                  busy.delete(s.block);
                }),
              );
            } else if (s.op === "read") {
              const r = readBio(s.block * 8, 8);
              pending.push(
                dev.submit(r).then(() => {
                  waited(readDelay)();
                  expect(r.data!.equals(pattern(1 << 20, 77).subarray(s.block * 8 * 512, (s.block + 1) * 8 * 512))).toBe(true);
                }),
              );
            } else if (s.op === "flush") {
              pending.push(dev.submit(flush()).then(waited(flushDelay)));
            } else if (s.op === "suspend") {
              suspends++;
              await dev.suspend({ noflush: s.noflush });
              expect(statusOf(dev)).toEqual(["0 0 0"]);
              await dev.resume({ noflush: false });
            } else {
              await sleep(s.ms);
            }
          }
          await Promise.all(pending);
          expect(statusOf(dev)).toEqual(["0 0 0"]);
          const disk = fs.readFileSync(writeFile).subarray(512 * 512, (512 + 256) * 512);
          expect(disk.equals(image)).toBe(true);
        } finally {
          await reg.remove(dev);
        }
      }),
      { numRuns: 25 },
    );
  });
});
