import fs from "node:fs";
import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DmError } from "../../daemon/core/errors.js";
import type { Bio } from "../../daemon/io/bio.js";
import type { DeviceRegistry } from "../../daemon/device/registry.js";
import { makeFile, makeRegistry, tempDir } from "../helpers/registry.js";
import { caught, discard, flush, line, pattern, readBio, writeBio } from "./helpers.js";

/**
 * dm-flakey's down-phase rules (flakey_map / flakey_end_io in 6.12) as an independent model, checked against the
 * target for random feature sets and random bios: which bios fail with EIO, which are dropped, which reach the
 * device, and exactly which byte is corrupted.
 */
let reg: DeviceRegistry;
let tmp: ReturnType<typeof tempDir>;
let file: string;
const OFFSET = 64;
const BYTES = (OFFSET + 1024) * 512;
const disk0 = pattern(BYTES, 31);
beforeAll(() => {
  reg = makeRegistry();
  tmp = tempDir();
  file = makeFile(tmp.dir, "f", BYTES);
});
afterAll(async () => {
  for (const d of reg.list()) await reg.remove(d).catch(() => undefined);
  tmp.cleanup();
});

const REQ_FUA = 1 << 17;

const features = fc
  .record({
    errorReads: fc.oneof({ weight: 1, arbitrary: fc.constant(true) }, { weight: 2, arbitrary: fc.constant(false) }),
    writes: fc.constantFrom("none", "drop_writes", "error_writes"),
    corrupt: fc.option(
      fc.record({ byte: fc.oneof(fc.integer({ min: 1, max: 9000 }), fc.integer({ min: 1, max: 600 })), dir: fc.constantFrom("r", "w"), value: fc.integer({ min: 0, max: 255 }), flags: fc.constantFrom(0, 1, REQ_FUA, REQ_FUA | 1) }),
      { nil: undefined, freq: 4 },
    ),
  })
  .filter((f) => !(f.writes !== "none" && f.corrupt?.dir === "w"));

const bio = fc.oneof(
  fc.record({ op: fc.constantFrom("read", "write"), sector: fc.nat({ max: 1000 }), count: fc.integer({ min: 1, max: 16 }), fua: fc.boolean() }),
  fc.record({ op: fc.constantFrom("flush", "discard"), sector: fc.nat({ max: 1000 }), count: fc.integer({ min: 1, max: 16 }), fua: fc.constant(false) }),
);

describe("flakey: down-phase behaviour matches the kernel's rules for any feature set", () => {
  it("EIO / dropped / passed / corrupted exactly as the model says", async () => {
    await fc.assert(
      fc.asyncProperty(features, bio, fc.oneof({ weight: 4, arbitrary: fc.constant(true) }, { weight: 1, arbitrary: fc.constant(false) }), async (f, b, down) => {
        fs.writeFileSync(file, disk0);
        const words: string[] = [];
        if (f.errorReads) words.push("error_reads");
        if (f.writes !== "none") words.push(f.writes);
        if (f.corrupt) words.push("corrupt_bio_byte", `${f.corrupt.byte}`, f.corrupt.dir, `${f.corrupt.value}`, `${f.corrupt.flags}`);
        const dev = reg.create({ name: "fp" });
        try {
          await dev.load([line(0, 1024, "flakey", `${file} ${OFFSET} ${down ? "0 1" : "1 0"} ${words.length} ${words.join(" ")}`)], false);
          await dev.resume({ noflush: false });

          // The model.
          const none = !f.errorReads && f.writes === "none" && !f.corrupt;
          const errorReads = f.errorReads || none;
          const errorWrites = f.writes === "error_writes" || none;
          const isRead = b.op === "read";
          const opf = (isRead ? 0 : 1) | (b.fua ? REQ_FUA : 0);
          const matches = f.corrupt !== undefined && (opf & f.corrupt.flags) === f.corrupt.flags;
          const len = b.count * 512;
          const at = (OFFSET + b.sector) * 512;
          let expectEio = false;
          let reaches = true; // does a write-like bio reach the device?
          let corruptAt = -1;
          if (down) {
            if (isRead) {
              expectEio = errorReads;
              if (!expectEio && matches && f.corrupt!.dir === "r" && f.corrupt!.byte - 1 < len) corruptAt = f.corrupt!.byte - 1;
            } else if (f.writes === "drop_writes") reaches = false;
            else if (errorWrites) [expectEio, reaches] = [true, false];
            else if (b.op === "write" && matches && f.corrupt!.dir === "w" && f.corrupt!.byte - 1 < len) corruptAt = f.corrupt!.byte - 1;
          }

          const payload = pattern(len, 5);
          const request: Bio =
            b.op === "read" ? readBio(b.sector, b.count, b.fua) : b.op === "write" ? writeBio(b.sector, payload, b.fua) : b.op === "flush" ? flush() : discard(b.sector, b.count);
          const err = await caught(dev.submit(request));
          if (expectEio) {
            expect(err).toBeInstanceOf(DmError);
            expect((err as DmError).errno).toBe("EIO");
          } else expect(err).toBeUndefined();

          const disk = fs.readFileSync(file);
          if (b.op === "read") {
            expect(disk.equals(disk0)).toBe(true);
            if (!expectEio) {
              const want = Buffer.from(disk0.subarray(at, at + len));
              if (corruptAt >= 0) want[corruptAt] = f.corrupt!.value;
              expect(request.data!.equals(want)).toBe(true);
            }
          } else if (b.op === "write") {
            expect(payload.equals(pattern(len, 5))).toBe(true); // the caller's buffer is never modified
            const want = Buffer.from(disk0);
            if (reaches) {
              payload.copy(want, at);
              if (corruptAt >= 0) want[at + corruptAt] = f.corrupt!.value;
            }
            expect(disk.equals(want)).toBe(true);
          } else if (b.op === "discard") {
            const want = Buffer.from(disk0);
            if (reaches) want.fill(0, at, at + len);
            expect(disk.equals(want)).toBe(true);
          } else {
            expect(disk.equals(disk0)).toBe(true);
          }
        } finally {
          await reg.remove(dev);
        }
      }),
      { numRuns: 250 },
    );
  });
});
