import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DmError } from "../../daemon/core/errors.js";
import type { MappedDevice } from "../../daemon/device/mapped-device.js";
import type { DeviceRegistry } from "../../daemon/device/registry.js";
import { makeFile, makeRegistry, tempDir } from "../helpers/registry.js";
import { S, discard, line, liveDevice, pattern, readBio, writeBio } from "../targets/helpers.js";

/**
 * Hostile `dmsetup message` input for every target type: random words (the targets' own keywords mixed with
 * numbers, huge and odd strings) sent to a live device. A message either succeeds or fails with a DmError;
 * afterwards the device still reports its status and serves data exactly, and it tears down cleanly.
 * FUZZ_RUNS raises the number of cases (default 40 per target type).
 */
const RUNS = Number(process.env.FUZZ_RUNS ?? 40);
const SECTORS = 4096;

let reg: DeviceRegistry;
let tmp: ReturnType<typeof tempDir>;
let round = 0;
beforeAll(() => {
  reg = makeRegistry();
  tmp = tempDir();
});
afterAll(async () => {
  for (const d of reg.list()) await reg.remove(d).catch(() => undefined);
  tmp.cleanup();
});

/** A fresh device of each type over fresh files (targets keep state: era metadata, bow's log, the write log). */
const tables: Record<string, (n: number) => ReturnType<typeof line>[]> = {
  linear: (n) => [line(0, SECTORS, "linear", `${makeFile(tmp.dir, `lin${n}`, SECTORS * 512)} 0`)],
  zero: () => [line(0, SECTORS, "zero")],
  striped: (n) => [line(0, SECTORS, "striped", `2 8 ${makeFile(tmp.dir, `s${n}a`, SECTORS * 256)} 0 ${makeFile(tmp.dir, `s${n}b`, SECTORS * 256)} 0`)],
  flakey: (n) => [line(0, SECTORS, "flakey", `${makeFile(tmp.dir, `fl${n}`, SECTORS * 512)} 0 3600 0`)],
  delay: (n) => [line(0, SECTORS, "delay", `${makeFile(tmp.dir, `dl${n}`, SECTORS * 512)} 0 0`)],
  "log-writes": (n) => [line(0, SECTORS, "log-writes", `${makeFile(tmp.dir, `lw${n}`, SECTORS * 512)} ${makeFile(tmp.dir, `lwlog${n}`, 16 << 20)}`)],
  era: (n) => [line(0, SECTORS, "era", `${makeFile(tmp.dir, `em${n}`, 4 << 20)} ${makeFile(tmp.dir, `eo${n}`, SECTORS * 512)} 8`)],
  bow: (n) => [line(0, SECTORS, "bow", makeFile(tmp.dir, `bow${n}`, SECTORS * 512))],
};

const word = fc.oneof(
  { weight: 6, arbitrary: fc.constantFrom("mark", "checkpoint", "take_metadata_snap", "drop_metadata_snap", "state", "ranges", "MARK", "Checkpoint") },
  { weight: 4, arbitrary: fc.constantFrom("0", "1", "2", "3", "-1", "+1", "01", "1x", "4294967295", "4294967296", "18446744073709551616", "") },
  { weight: 2, arbitrary: fc.string({ maxLength: 12 }) },
  { weight: 1, arbitrary: fc.string({ unit: "binary", maxLength: 8 }) },
  { weight: 1, arbitrary: fc.constantFrom("x".repeat(4096), "é".repeat(300), "\0", "a b", "\\", "dm-log-writes-end") },
);
const message = fc.array(word, { minLength: 1, maxLength: 5 });

/** A write at a random place, read back: the device serves data exactly (zero reads zeroes). */
async function roundTrip(dev: MappedDevice, type: string, at: number, seed: number): Promise<void> {
  const data = pattern(8 * 512, seed);
  await dev.submit(writeBio(at, data));
  const back = readBio(at, 8);
  await dev.submit(back);
  expect(back.data!.equals(type === "zero" ? Buffer.alloc(data.length) : data), `${type}: data after messages`).toBe(true);
}

describe("message fuzz over every target type", () => {
  for (const type of Object.keys(tables)) {
    it(`${type}: any message succeeds or fails with a DmError, and the device keeps serving data`, async () => {
      await fc.assert(
        fc.asyncProperty(fc.array(message, { minLength: 1, maxLength: 6 }), fc.nat({ max: SECTORS / 8 - 2 }), async (messages, block) => {
          const n = round++;
          const dev = await liveDevice(reg, `msg${n}`, tables[type]!(n));
          try {
            // bow: free space (a trim in state 0) so that "state 1" can succeed and state 1 writes can back up.
            if (type === "bow") await dev.submit(discard(SECTORS / 2, SECTORS / 2));
            for (const argv of messages) {
              try {
                const reply = await dev.message(S(0), argv);
                expect(reply === undefined || typeof reply === "string").toBe(true);
              } catch (err) {
                if (!(err instanceof DmError)) throw new Error(`${type}: message ${JSON.stringify(argv)} threw ${String(err)}, not a DmError`);
              }
              expect(() => dev.live!.lines("info")).not.toThrow();
              expect(() => dev.live!.lines("table")).not.toThrow();
            }
            // In the part bow never uses for backups while the checkpoint holds it.
            await roundTrip(dev, type, 8 + block * 8 < SECTORS / 2 ? 8 + block * 8 : 8, n);
          } finally {
            await reg.remove(dev);
          }
        }),
        { numRuns: RUNS },
      );
    });
  }
});
