import fs from "node:fs";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DmError } from "../../daemon/core/errors.js";
import type { DeviceRegistry } from "../../daemon/device/registry.js";
import type { MappedDevice } from "../../daemon/device/mapped-device.js";
import { makeFile, makeRegistry, tempDir } from "../helpers/registry.js";
import { line, liveDevice, openFds, pattern, readBio, tableOf, writeBio } from "./helpers.js";

/**
 * Property tests for the constructors' argument parsing: whatever the table line says, a load either succeeds
 * (and the table the target prints loads back to the same table) or fails with a DmError (EINVAL, or ENOENT for
 * a missing device) and changes nothing. Never another exception type, never a leaked descriptor.
 */
let reg: DeviceRegistry;
let tmp: ReturnType<typeof tempDir>;
let files: string[];
let missing: string;
let dev: MappedDevice;
beforeAll(async () => {
  reg = makeRegistry();
  tmp = tempDir();
  files = [0, 1, 2].map((i) => makeFile(tmp.dir, `f${i}`, 1 << 20));
  missing = `${tmp.dir}/missing`;
  dev = await liveDevice(reg, "prop", [line(0, 8, "zero")]);
});
afterAll(async () => {
  for (let i = 0; i < 2; i++) for (const d of reg.list()) await reg.remove(d).catch(() => undefined);
  tmp.cleanup();
});

const numbers = fc.oneof(
  fc.nat({ max: 4096 }).map(String),
  fc.constantFrom("0", "1", "8", "00", "08", "+8", "-1", "4294967295", "4294967296", "18446744073709551615", "18446744073709551616", "1e3", "0x10", " 1"),
  fc.bigInt({ min: 0n, max: 2n ** 70n }).map(String),
);
const words = fc.constantFrom("drop_writes", "error_writes", "error_reads", "corrupt_bio_byte", "random_read_corrupt", "random_write_corrupt", "DROP_WRITES", "r", "w", "R", "x", "\\", "#", "%s", "\u00e9");
const devices = () => fc.constantFrom(...files, missing, "253:999", "prop", "relative/path");
const token = () => fc.oneof({ weight: 4, arbitrary: numbers }, { weight: 3, arbitrary: words }, { weight: 2, arbitrary: devices() }, { weight: 1, arbitrary: fc.string({ minLength: 1, maxLength: 6 }).filter((s) => !/\s/.test(s)) });

const small = () => fc.oneof({ weight: 5, arbitrary: fc.nat({ max: 64 }).map(String) }, { weight: 1, arbitrary: numbers });
const goodDevice = () => fc.oneof({ weight: 6, arbitrary: fc.constantFrom(...files) }, { weight: 1, arbitrary: devices() });

/** A well-formed flakey feature: its words, as the kernel expects them. */
const feature = fc.oneof(
  fc.constantFrom(["drop_writes"], ["error_writes"], ["error_reads"], ["Error_Reads"]),
  fc.tuple(small(), fc.constantFrom("r", "w", "R", "x"), small(), small()).map((t) => ["corrupt_bio_byte", ...t]),
  fc.tuple(fc.constantFrom("random_read_corrupt", "random_write_corrupt"), fc.oneof(small(), fc.constantFrom("1000000000", "1000000001"))),
);

/** Argument lists shaped like each target's syntax (so that many get deep into the parser), plus pure noise. */
const shaped: Record<string, () => fc.Arbitrary<string[]>> = {
  striped: () =>
    fc
      .tuple(fc.integer({ min: 0, max: 4 }), fc.constantFrom("1", "2", "8", "12", "0", "7", "+4"), fc.integer({ min: -1, max: 1 }))
      .chain(([n, chunk, skew]) =>
        fc.array(fc.tuple(goodDevice(), small()), { minLength: Math.max(0, n + skew), maxLength: Math.max(0, n + skew) }).map((pairs) => [String(n), chunk, ...pairs.flat()]),
      ),
  flakey: () =>
    fc
      .tuple(goodDevice(), small(), small(), small(), fc.array(feature, { maxLength: 4 }), fc.integer({ min: -2, max: 2 }), fc.array(token(), { maxLength: 2 }))
      .map(([d, o, u, w, feats, skew, extra]) => {
        const words = feats.flat();
        return [d, o, u, w, String(Math.max(0, words.length + (skew === 2 ? 0 : skew))), ...words, ...extra];
      }),
  delay: () => fc.array(fc.tuple(goodDevice(), small(), small()), { minLength: 1, maxLength: 3 }).map((cls) => cls.flat()),
};

/** Load `params` as a one-line table of `type`; check the outcome is a success or a clean DmError. */
async function loadChecked(type: string, length: number, params: string): Promise<void> {
  const fds = openFds();
  const before = tableOf(dev);
  let err: unknown;
  try {
    await dev.load([line(0, length, type, params)], false);
  } catch (e) {
    err = e;
  }
  if (err === undefined) {
    // Accepted: what `table` prints must load again and print the same.
    const printed = dev.inactive!.lines("table")[0]!.params;
    await dev.clear();
    await dev.load([line(0, length, type, printed)], false);
    expect(dev.inactive!.lines("table")[0]!.params).toBe(printed);
    await dev.clear();
  } else {
    if (!(err instanceof DmError)) throw new Error(`${type} ${params}: threw ${String(err)} instead of a DmError`);
    expect(["EINVAL", "ENOENT", "ENXIO"]).toContain(err.errno);
    if (err.errno !== "EINVAL") expect(params.includes(missing) || params.includes("253:999") || params.includes("relative/path")).toBe(true);
    expect(dev.inactive).toBeUndefined();
  }
  expect(tableOf(dev)).toEqual(before);
  expect(openFds()).toBe(fds);
}

describe.each(["striped", "flakey", "delay"])("%s: arbitrary arguments never crash the constructor", (type) => {
  it("shaped and random argument lists load or fail with a DmError, leaving nothing behind", async () => {
    await fc.assert(
      fc.asyncProperty(fc.oneof(shaped[type]!(), fc.array(token(), { maxLength: 12 })), fc.constantFrom(1, 8, 96, 1024), async (args, length) => {
        await loadChecked(type, length, args.join(" "));
      }),
      { numRuns: 150 },
    );
  });
});

describe("flakey: the table is re-emitted as the kernel does for any valid feature set", () => {
  const features = fc
    .record({
      errorReads: fc.boolean(),
      writes: fc.constantFrom("none", "drop_writes", "error_writes"),
      corrupt: fc.option(fc.record({ byte: fc.integer({ min: 1, max: 0xffffffff }), dir: fc.constantFrom("r", "w"), value: fc.integer({ min: 0, max: 255 }), flags: fc.integer({ min: 0, max: 0xffffffff }) }), { nil: undefined }),
      rr: fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 1_000_000_000 })),
      rw: fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 1_000_000_000 })),
      upcase: fc.boolean(),
      seed: fc.nat(),
    })
    .filter((f) => !(f.writes !== "none" && f.corrupt?.dir === "w"));

  it("count, order and values match an independent model", async () => {
    await fc.assert(
      fc.asyncProperty(features, fc.integer({ min: 0, max: 1000 }), fc.integer({ min: 0, max: 1000 }), async (f, up, down) => {
        fc.pre(up + down > 0);
        const items: string[][] = [];
        if (f.errorReads) items.push(["error_reads"]);
        if (f.writes !== "none") items.push([f.writes]);
        if (f.corrupt) items.push(["corrupt_bio_byte", `${f.corrupt.byte}`, f.upcase ? f.corrupt.dir.toUpperCase() : f.corrupt.dir, `${f.corrupt.value}`, `${f.corrupt.flags}`]);
        if (f.rr) items.push(["random_read_corrupt", `${f.rr}`]);
        if (f.rw) items.push(["random_write_corrupt", `${f.rw}`]);
        // Any order is accepted.
        items.sort((a, b) => ((a[0]!.length * 31 + f.seed) % 7) - ((b[0]!.length * 31 + f.seed) % 7));
        const args = items.flat().map((w, i) => (f.upcase && i % 2 === 0 && /^[a-z_]+$/.test(w) ? w.toUpperCase() : w));
        await dev.load([line(0, 64, "flakey", `${files[0]} 3 ${up} ${down} ${args.length} ${args.join(" ")}`)], false);
        const printed = dev.inactive!.lines("table")[0]!.params;
        await dev.clear();

        const none = !f.errorReads && f.writes === "none" && !f.corrupt && !f.rr && !f.rw;
        const model: string[] = [];
        if (f.errorReads || none) model.push("error_reads");
        if (f.writes !== "none") model.push(f.writes);
        else if (none) model.push("error_writes");
        if (f.corrupt) model.push(`corrupt_bio_byte ${f.corrupt.byte} ${f.corrupt.dir} ${f.corrupt.value} ${f.corrupt.flags}`);
        if (f.rr) model.push(`random_read_corrupt ${f.rr}`);
        if (f.rw) model.push(`random_write_corrupt ${f.rw}`);
        const count = (f.errorReads || none ? 1 : 0) + (f.writes !== "none" || none ? 1 : 0) + (f.corrupt ? 5 : 0) + (f.rr ? 2 : 0) + (f.rw ? 2 : 0);
        expect(printed).toBe(`${files[0]} 3 ${up} ${down} ${count} ${model.join(" ")}`);
      }),
      { numRuns: 200 },
    );
  });
});

describe("striped: any geometry stores every sector where the kernel's mapping says", () => {
  it("random stripes, chunk, offsets and bios round-trip and land per the model", async () => {
    const geometry = fc.record({
      stripes: fc.integer({ min: 1, max: 3 }),
      chunk: fc.integer({ min: 1, max: 16 }),
      rows: fc.integer({ min: 1, max: 6 }),
      offsets: fc.array(fc.nat({ max: 64 }), { minLength: 3, maxLength: 3 }),
      bios: fc.array(fc.tuple(fc.nat(), fc.integer({ min: 1, max: 64 })), { minLength: 1, maxLength: 6 }),
    });
    await fc.assert(
      fc.asyncProperty(geometry, async (g) => {
        const len = g.stripes * g.chunk * g.rows;
        for (const f of files) fs.writeFileSync(f, Buffer.alloc(1 << 20));
        const s = reg.create({ name: "geo" });
        try {
          await s.load([line(0, len, "striped", `${g.stripes} ${g.chunk} ${files.slice(0, g.stripes).map((f, i) => `${f} ${g.offsets[i]}`).join(" ")}`)], false);
          await s.resume({ noflush: false });
          const image = Buffer.alloc(len * 512);
          for (const [i, [start, count]] of g.bios.entries()) {
            const sector = start % len;
            const n = Math.min(count, len - sector);
            const data = pattern(n * 512, i + 1);
            await s.submit(writeBio(sector, data));
            data.copy(image, sector * 512);
          }
          const back = readBio(0, len);
          await s.submit(back);
          expect(back.data!.equals(image)).toBe(true);
          const disks = files.map((f) => fs.readFileSync(f));
          for (let sector = 0; sector < len; sector++) {
            const c = Math.floor(sector / g.chunk);
            const stripe = c % g.stripes;
            const at = g.offsets[stripe]! + Math.floor(c / g.stripes) * g.chunk + (sector % g.chunk);
            expect(disks[stripe]!.subarray(at * 512, (at + 1) * 512).equals(image.subarray(sector * 512, (sector + 1) * 512))).toBe(true);
          }
        } finally {
          await reg.remove(s);
        }
      }),
      { numRuns: 40 },
    );
  });
});
