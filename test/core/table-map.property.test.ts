import fs from "node:fs";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Sector } from "../../daemon/core/units.js";
import type { DeviceRegistry } from "../../daemon/device/registry.js";
import { makeFile, makeRegistry, tempDir } from "../helpers/registry.js";

/**
 * Bios against multi-target tables, checked against a flat model: a table of `linear` and `zero` segments over
 * one backing file, then random writes and reads that start anywhere (at a target's first sector, inside one,
 * across several). Every byte must land where the table says, and read back from there.
 */
const S = (n: number) => n as Sector;
const BACKING_SECTORS = 4096;

let reg: DeviceRegistry;
let tmp: ReturnType<typeof tempDir>;
let file: string;
let round = 0;
beforeAll(() => {
  reg = makeRegistry();
  tmp = tempDir();
  file = makeFile(tmp.dir, "backing", BACKING_SECTORS * 512);
});
afterAll(async () => {
  for (const d of reg.list()) await reg.remove(d).catch(() => undefined);
  tmp.cleanup();
});

type Segment = { length: number; kind: "linear"; offset: number } | { length: number; kind: "zero" };

const segment: fc.Arbitrary<Segment> = fc.oneof(
  { weight: 3, arbitrary: fc.record({ length: fc.integer({ min: 1, max: 64 }), kind: fc.constant("linear" as const), offset: fc.integer({ min: 0, max: BACKING_SECTORS - 64 }) }) },
  { weight: 1, arbitrary: fc.record({ length: fc.integer({ min: 1, max: 16 }), kind: fc.constant("zero" as const) }) },
);

/** Where device sector `s` lives: a backing sector, or nowhere (zero target). */
function place(segments: readonly Segment[], s: number): number | undefined {
  let start = 0;
  for (const g of segments) {
    if (s < start + g.length) return g.kind === "linear" ? g.offset + (s - start) : undefined;
    start += g.length;
  }
  throw new Error(`sector ${s} outside the table`);
}

describe("table mapping (model)", () => {
  it("every sector of every bio goes to the backing sector the table maps it to", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(segment, { minLength: 1, maxLength: 6 }),
        fc.array(fc.record({ at: fc.nat(), len: fc.integer({ min: 1, max: 48 }), atStart: fc.boolean(), fill: fc.integer({ min: 1, max: 255 }) }), { minLength: 1, maxLength: 12 }),
        async (segments, ios) => {
          const size = segments.reduce((n, g) => n + g.length, 0);
          const starts = segments.map((_, i) => segments.slice(0, i).reduce((n, g) => n + g.length, 0));
          const name = `m${round++}`;
          const dev = reg.create({ name });
          await dev.load(
            segments.map((g, i) => ({ start: S(starts[i]!), length: S(g.length), type: g.kind, params: g.kind === "linear" ? `${file} ${g.offset}` : "" })),
            false,
          );
          await dev.resume({ noflush: false });
          try {
            // The model: what each device sector reads back as (0 = zeroes), sector by sector.
            const backing = fs.readFileSync(file);
            const fd = fs.openSync(file, "r");
            try {
              for (const io of ios) {
                const sector = io.atStart ? starts[io.at % starts.length]! : io.at % size;
                const count = Math.min(io.len, size - sector);
                const data = Buffer.alloc(count * 512, io.fill);
                await dev.submit({ op: "write", sector: S(sector), count: S(count), data, fua: false });
                for (let k = 0; k < count; k++) {
                  const b = place(segments, sector + k);
                  if (b !== undefined) backing.fill(io.fill, b * 512, (b + 1) * 512);
                }
                // On the backing file, exactly where the model says.
                const onDisk = Buffer.alloc(backing.length);
                fs.readSync(fd, onDisk, 0, onDisk.length, 0);
                expect(onDisk.equals(backing)).toBe(true);
              }
              // Read the whole device back, in bios that start at every target boundary too.
              for (const start of [0, ...starts, Math.floor(size / 2)]) {
                const count = size - start;
                if (count <= 0) continue;
                const data = Buffer.alloc(count * 512, 0xee);
                await dev.submit({ op: "read", sector: S(start), count: S(count), data, fua: false });
                for (let k = 0; k < count; k++) {
                  const b = place(segments, start + k);
                  const want = b === undefined ? Buffer.alloc(512) : backing.subarray(b * 512, (b + 1) * 512);
                  expect(data.subarray(k * 512, (k + 1) * 512).equals(want), `device sector ${start + k}`).toBe(true);
                }
              }
            } finally {
              fs.closeSync(fd);
            }
          } finally {
            await reg.remove(dev);
          }
        },
      ),
      { numRuns: Number(process.env.FUZZ_RUNS ?? 60) },
    );
  });
});
