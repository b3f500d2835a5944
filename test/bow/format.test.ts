import { describe, expect, it } from "vitest";
import fc from "fast-check";
import { crc32Raw, checksumSeed, decodeEntry, decodeHeader, encodeEntry, encodeHeader, logCapacity, MAX_ENTRY_BYTES, MAGIC_BOW, MAGIC_WOB, HEADER_SIZE } from "../../daemon/targets/bow/format.js";
import { Relocations } from "../../daemon/targets/bow/relocations.js";

describe("bow on-disk format", () => {
  it.each([
    [Buffer.alloc(4096, 0), 0, 0x00000000],
    [Buffer.alloc(4096, 0), 1, 0x5ad8a92c],
    [Buffer.alloc(4096, 0xff), 0, 0x3648671b],
    [Buffer.alloc(512, 0), 5, 0x51b9b788],
    [Buffer.from("123456789"), 0, 0x2dfd2d88],
    [Buffer.from("123456789"), 0xffffffff, 0x340bc6d9],
    [Buffer.from(Array.from({ length: 4096 }, (_, i) => i & 0xff)), 2, 0xd03c72cb],
  ])("crc32_le test vector %#", (data, seed, want) => {
    expect(crc32Raw(seed, data)).toBe(want);
  });

  it("the raw CRC chains: one CRC over a ++ b equals the CRC of b seeded with the CRC of a", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), fc.uint8Array({ maxLength: 300 }), fc.nat({ max: 0xffffffff }), (a, b, seed) => {
        expect(crc32Raw(crc32Raw(seed, a), b)).toBe(crc32Raw(seed, Buffer.concat([a, b])));
      }),
    );
  });

  it("seeds with the source block number, not the sector", () => {
    expect(checksumSeed(80, 4096)).toBe(10);
    expect(checksumSeed(80, 1024)).toBe(40);
    expect(checksumSeed(80, 512)).toBe(80);
    expect(checksumSeed(2 ** 32 * 8 + 16, 4096)).toBe(2); // truncated to u32
  });

  it("header and entries are little-endian at the kernel's offsets", () => {
    const b = Buffer.alloc(4096);
    encodeHeader({ magic: MAGIC_BOW, headerVersion: 0x100, headerSize: 28, blockSize: 4096, count: 2, sequence: 7, sector0: 0x1_0000_0008 }, b);
    encodeEntry({ source: 16, dest: 24, size: 8192, checksum: 0xdeadbeef }, b, 1);
    expect(b.subarray(0, 4).toString("latin1")).toBe("BOW\0");
    expect(b.readUInt16LE(4)).toBe(0x100);
    expect(b.readUInt16LE(6)).toBe(28);
    expect(b.readUInt32LE(8)).toBe(4096);
    expect(b.readUInt32LE(12)).toBe(2);
    expect(b.readUInt32LE(16)).toBe(7);
    expect(b.readBigUInt64LE(20)).toBe(0x1_0000_0008n);
    expect(b.readBigUInt64LE(28 + 24)).toBe(16n);
    expect(b.readBigUInt64LE(28 + 24 + 8)).toBe(24n);
    expect(b.readUInt32LE(28 + 24 + 16)).toBe(8192);
    expect(b.readUInt32LE(28 + 24 + 20)).toBe(0xdeadbeef);
    expect(decodeHeader(b).sector0).toBe(0x1_0000_0008);
    expect(decodeEntry(b, HEADER_SIZE, 1)).toEqual({ source: 16, dest: 24, size: 8192, checksum: 0xdeadbeef });
    const wob = Buffer.alloc(4);
    wob.writeUInt32LE(MAGIC_WOB);
    expect(wob.toString("latin1")).toBe("WOB\0");
  });

  it("an entry a restore would reject is never encoded: u32 overflow with block_size, cut sizes, partial sectors", () => {
    const b = Buffer.alloc(4096);
    const entry = (size: number) => () => encodeEntry({ source: 8, dest: 16, size, checksum: 1 }, b, 0);
    for (const size of [4294963200, 2 ** 32 + 4096, MAX_ENTRY_BYTES + 512, 0, 256, 4097]) expect(entry(size), `size ${size}`).toThrow(RangeError);
    expect(b.equals(Buffer.alloc(4096))).toBe(true);
    entry(MAX_ENTRY_BYTES)();
    expect(decodeEntry(b, HEADER_SIZE, 0).size).toBe(MAX_ENTRY_BYTES);
    expect(4096 + MAX_ENTRY_BYTES).toBeLessThan(2 ** 32); // what vold checks, at the largest block size
  });

  it("log capacity: 169, 84, 41, 20 entries", () => {
    expect([4096, 2048, 1024, 512].map(logCapacity)).toEqual([169, 84, 41, 20]);
  });
});

describe("restore relocation overlay", () => {
  it("matches vold's worked example", () => {
    const r = new Relocations();
    r.relocate(50, 200, 8);
    r.relocate(0, 50, 8);
    expect([0, 7, 8, 50, 58].map((s) => r.phys(s))).toEqual([200, 207, 8, 200, 58]);
  });

  it("equals a per-sector model under random relocations", () => {
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.nat(120), fc.nat(120), fc.integer({ min: 1, max: 20 })), { maxLength: 25 }), (ops) => {
        const r = new Relocations();
        const model = Array.from({ length: 200 }, (_, i) => i);
        for (const [d, s, c] of ops) {
          r.relocate(d, s, c);
          const snap = model.slice();
          for (let i = 0; i < c; i++) model[d + i] = snap[s + i]!;
        }
        for (let i = 0; i < 200; i++) expect(r.phys(i)).toBe(model[i]);
      }),
    );
  });
});
