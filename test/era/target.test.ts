import fs from "node:fs";
import path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { DmError } from "../../daemon/core/errors.js";
import { DeviceRegistry } from "../../daemon/device/registry.js";
import { createLogger } from "../../daemon/core/log.js";
import type { Bio } from "../../daemon/io/bio.js";
import { EraTarget } from "../../daemon/targets/era/target.js";
import { EraMetadata } from "../../daemon/targets/era/metadata.js";
import { FileMetaIo, stampBlock, SUPERBLOCK_VALIDATOR } from "../../daemon/targets/era/pdata/block.js";
import { readSuperblock } from "../../daemon/targets/era/inspect.js";
import { makeFile, makeRegistry, tempDir } from "../helpers/registry.js";
import { expectDmError } from "../helpers/errors.js";
import {
  createEra,
  eraOf,
  expectEraCheckClean,
  expectRefCountsClean,
  invalidateSince,
  readBio,
  rng,
  run,
  S,
  statusOf,
  tsdm,
  writeBio,
} from "./helpers.js";

let reg: DeviceRegistry;
let tmp: ReturnType<typeof tempDir>;
beforeEach(() => {
  reg = makeRegistry();
  tmp = tempDir("tsdm-era-");
});
afterEach(async () => {
  for (const d of reg.list()) await reg.remove(d).catch(() => undefined);
  tmp.cleanup();
});

const eraTargetOf = (dev: { live?: unknown }): EraTarget => {
  const t = (dev.live as { entries: Array<{ target: unknown }> }).entries[0]!.target;
  if (!(t instanceof EraTarget)) throw new Error("not an era target");
  return t;
};

describe("era constructor (kernel rules)", () => {
  it.each([
    ["two arguments", (m: string, o: string) => `${m} ${o}`, /Invalid argument count/],
    ["four arguments", (m: string, o: string) => `${m} ${o} 8 8`, /Invalid argument count/],
    ["block size not a number", (m: string, o: string) => `${m} ${o} 8k`, /Error parsing block size/],
    ["block size negative", (m: string, o: string) => `${m} ${o} -8`, /Error parsing block size/],
    ["block size 0", (m: string, o: string) => `${m} ${o} 0`, /Invalid block size/],
    ["block size 12 (not a multiple of 8)", (m: string, o: string) => `${m} ${o} 12`, /Invalid block size/],
  ])("%s → EINVAL, metadata untouched", async (_what, params, text) => {
    const meta = makeFile(tmp.dir, "meta", 1 << 20);
    const origin = makeFile(tmp.dir, "origin", 1 << 20);
    const dev = reg.create({ name: "e" });
    await expectDmError(dev.load([{ start: S(0), length: S(2048), type: "era", params: params(meta, origin) }], false), "EINVAL", text);
    expect(fs.readFileSync(meta).every((b) => b === 0)).toBe(true);
  });

  it("devices are opened before the block size is parsed; a failed open is EINVAL, as era_ctr returns", async () => {
    const meta = makeFile(tmp.dir, "meta", 1 << 20);
    const origin = makeFile(tmp.dir, "origin", 1 << 20);
    const dev = reg.create({ name: "e" });
    const load = (params: string) => dev.load([{ start: S(0), length: S(2048), type: "era", params }], false);
    await expectDmError(load(`${tmp.dir}/nope ${origin} 8`), "EINVAL", /^era: Error opening metadata device \(/);
    await expectDmError(load(`${tmp.dir}/nope ${origin} bad`), "EINVAL", /^era: Error opening metadata device \(/);
    await expectDmError(load(`${meta} ${tmp.dir}/nope 12`), "EINVAL", /^era: Error opening data device \(/);
    await expectDmError(load(`${meta} ${origin} bad`), "EINVAL", /^era: Error parsing block size$/);
    expect(fs.readFileSync(meta).every((b) => b === 0)).toBe(true);
  });

  it("superblock checks in sb_check's order: blocknr ENOTBLK, magic EILSEQ, checksum EILSEQ, version EINVAL", async () => {
    const origin = makeFile(tmp.dir, "origin", 1 << 20);
    const good = makeFile(tmp.dir, "good", 1 << 20);
    await reg.remove(await createEra(reg, "g", good, origin, 2048, 8));
    const sb = fs.readFileSync(good).subarray(0, 4096);
    const variants: Array<[string, (b: Buffer) => void, string, RegExp]> = [
      ["blocknr", (b) => stampBlock(b, 7, SUPERBLOCK_VALIDATOR), "ENOTBLK", /bad block nr 7/],
      ["magic", (b) => (b.writeUInt32LE(1234, 32), stampBlock(b, 0, SUPERBLOCK_VALIDATOR)), "EILSEQ", /bad magic 1234/],
      ["checksum", (b) => void (b[300] ^= 1), "EILSEQ", /bad checksum/],
      ["version", (b) => (b.writeUInt32LE(2, 40), stampBlock(b, 0, SUPERBLOCK_VALIDATOR)), "EINVAL", /unsupported version 2/],
    ];
    for (const [what, damage, errno, text] of variants) {
      const meta = makeFile(tmp.dir, `meta-${what}`, 1 << 20);
      fs.copyFileSync(good, meta);
      const b = Buffer.from(sb);
      damage(b);
      fs.writeFileSync(meta, b, { flag: "r+" });
      const dev = reg.create({ name: `e-${what}` });
      await expectDmError(dev.load([{ start: S(0), length: S(2048), type: "era", params: `${meta} ${origin} 8` }], false), errno as "EINVAL", text);
      await reg.remove(dev);
    }
  });

  it("a block size that is not a power of two is accepted", async () => {
    const meta = makeFile(tmp.dir, "meta", 1 << 20);
    const origin = makeFile(tmp.dir, "origin", 24 * 512 * 10);
    const e = await createEra(reg, "e2", meta, origin, 240, 24);
    expect(statusOf(e)).toMatch(/^8 \d+\/256 1 -$/);
    expect(e.live!.lines("table")[0]!.params).toBe(`${meta} ${origin} 24`);
  });

  it("reopening with another block size is refused and changes nothing", async () => {
    const meta = makeFile(tmp.dir, "meta", 1 << 20);
    const origin = makeFile(tmp.dir, "origin", 1 << 20);
    const e = await createEra(reg, "e", meta, origin, 2048, 8);
    await reg.remove(e);
    const before = fs.readFileSync(meta);
    const dev = reg.create({ name: "f" });
    await expectDmError(
      dev.load([{ start: S(0), length: S(2048), type: "era", params: `${meta} ${origin} 16` }], false),
      "EINVAL",
      /Error reading metadata: changing the data block size \(from 8 to 16\) is not supported/,
    );
    expect(fs.readFileSync(meta).equals(before)).toBe(true);
  });

  it("garbage in block 0 is refused (not formatted over)", async () => {
    const meta = makeFile(tmp.dir, "meta", 1 << 20);
    const origin = makeFile(tmp.dir, "origin", 1 << 20);
    fs.writeFileSync(meta, Buffer.alloc(4096, 0x5a), { flag: "r+" });
    const dev = reg.create({ name: "e" });
    await expectDmError(dev.load([{ start: S(0), length: S(2048), type: "era", params: `${meta} ${origin} 8` }], false), "ENOTBLK", /Error reading metadata: superblock 0: bad block nr/);
    expect(fs.readFileSync(meta).subarray(0, 4096).every((b) => b === 0x5a)).toBe(true);
  });
});

describe("era messages, status and suspend/resume", () => {
  it("status fields, checkpoint, snapshots and their errors, as the kernel", async () => {
    const meta = makeFile(tmp.dir, "meta", 1 << 20);
    const origin = makeFile(tmp.dir, "origin", 1 << 20);
    const dev = await createEra(reg, "e", meta, origin, 2048, 8);
    expect(statusOf(dev)).toMatch(/^8 \d+\/256 1 -$/);
    await dev.message(S(0), ["checkpoint"]);
    expect(eraOf(dev)).toBe(2);
    await dev.message(S(0), ["CheckPoint"]);
    expect(eraOf(dev)).toBe(3);
    await expectDmError(dev.message(S(0), ["checkpoint", "now"]), "EINVAL", /Incorrect number of message arguments/);
    await expectDmError(dev.message(S(0), ["frobnicate"]), "EINVAL", /unsupported message 'frobnicate'/);
    await dev.message(S(0), ["take_metadata_snap"]);
    const st = statusOf(dev).split(" ");
    expect(st[2]).toBe("4");
    expect(Number(st[3])).toBeGreaterThan(0);
    await expectDmError(dev.message(S(0), ["take_metadata_snap"]), "EINVAL", /already exists/);
    expect(eraOf(dev)).toBe(4); // a refused snapshot does not roll over
    await dev.message(S(0), ["drop_metadata_snap"]);
    expect(statusOf(dev)).toMatch(/^8 \d+\/256 4 -$/);
    await expectDmError(dev.message(S(0), ["drop_metadata_snap"]), "EINVAL", /no snapshot/);
    await dev.suspend({ noflush: false });
    await expectDmError(dev.message(S(0), ["checkpoint"]), "EBUSY");
    await dev.resume({ noflush: false });
    expect(eraOf(dev)).toBe(5); // every resume rolls over
    await dev.suspend({ noflush: false });
    await dev.resume({ noflush: false });
    expect(eraOf(dev)).toBe(6);
    await reg.remove(dev);
    await expectEraCheckClean(meta);
    await expectRefCountsClean(meta);
  });

  it("used/total in the status match the space map the checker recounts", async () => {
    const meta = makeFile(tmp.dir, "meta", 2 << 20);
    const origin = makeFile(tmp.dir, "origin", 8 << 20);
    const dev = await createEra(reg, "e", meta, origin, 16384, 8);
    for (let i = 0; i < 20; i++) await dev.submit(writeBio(i * 64, 8));
    await dev.message(S(0), ["take_metadata_snap"]);
    const [, usedTotal] = statusOf(dev).split(" ");
    const [used, total] = usedTotal!.split("/").map(Number);
    expect(total).toBe(512);
    const { checkReferenceCounts } = await import("../../daemon/targets/era/inspect.js");
    const { FileMetaIo } = await import("../../daemon/targets/era/pdata/block.js");
    const io = FileMetaIo.open(meta, false);
    const r = await checkReferenceCounts(io);
    await io.close();
    expect(r.problems).toEqual([]);
    expect(r.nrAllocated).toBe(used);
  });

  it("a table reload onto the same metadata continues from what the old table committed", async () => {
    const meta = makeFile(tmp.dir, "meta", 1 << 20);
    const origin = makeFile(tmp.dir, "origin", 1 << 20);
    const dev = await createEra(reg, "e", meta, origin, 2048, 8);
    await dev.submit(writeBio(0, 8));
    await dev.message(S(0), ["checkpoint"]);
    await dev.submit(writeBio(80, 8)); // block 10 in era 2
    await dev.load([{ start: S(0), length: S(2048), type: "era", params: `${meta} ${origin} 8` }], false);
    await dev.resume({ noflush: false });
    expect(eraOf(dev)).toBe(3);
    await dev.submit(writeBio(160, 8)); // block 20 in era 3
    await dev.suspend({ noflush: false });
    expect(await invalidateSince(meta, 2)).toEqual([10, 20]);
    expect(await invalidateSince(meta, 1)).toEqual([0, 10, 20]);
    await expectEraCheckClean(meta);
    await expectRefCountsClean(meta);
  });

  it("an era target at a non-zero table start records blocks relative to the target (the kernel uses absolute sectors)", async () => {
    const meta = makeFile(tmp.dir, "meta", 1 << 20);
    const origin = makeFile(tmp.dir, "origin", 1 << 20);
    const head = makeFile(tmp.dir, "head", 1 << 20);
    const dev = reg.create({ name: "e" });
    await dev.load(
      [
        { start: S(0), length: S(2048), type: "linear", params: `${head} 0` },
        { start: S(2048), length: S(2048), type: "era", params: `${meta} ${origin} 8` },
      ],
      false,
    );
    await dev.resume({ noflush: false });
    await dev.submit(writeBio(2048 + 8 * 5, 8)); // the era target's block 5
    await dev.submit(writeBio(2040, 16)); // across the boundary: the era target's block 0
    await dev.suspend({ noflush: false });
    expect(await invalidateSince(meta, 1)).toEqual([0, 5]);
  });

  it("the origin sees the data; reads pass through", async () => {
    const meta = makeFile(tmp.dir, "meta", 1 << 20);
    const origin = makeFile(tmp.dir, "origin", 1 << 20, "pattern");
    const before = fs.readFileSync(origin);
    const dev = await createEra(reg, "e", meta, origin, 2048, 16);
    const r = readBio(5, 20);
    await dev.submit(r);
    expect(r.data!.equals(before.subarray(5 * 512, 25 * 512))).toBe(true);
    await dev.submit(writeBio(30, 3, 0x11));
    const after = fs.readFileSync(origin);
    expect(after.subarray(30 * 512, 33 * 512).every((b) => b === 0x11)).toBe(true);
    expect(after.subarray(0, 30 * 512).equals(before.subarray(0, 30 * 512))).toBe(true);
  });
});

describe("era workloads against thin-provisioning-tools 0.9.0", () => {
  for (const seed of [1, 2, 3]) {
    it(`random writes, discards, checkpoints and snapshots (seed ${seed})`, async () => {
      const rand = rng(seed);
      const blockSize = 8 * (1 + Math.floor(rand() * 4));
      const nrBlocks = 700 + Math.floor(rand() * 3000);
      const sectors = nrBlocks * blockSize - Math.floor(rand() * blockSize); // a partial last block counts
      const meta = makeFile(tmp.dir, "meta", 4 << 20);
      const origin = makeFile(tmp.dir, "origin", sectors * 512);
      const dev = await createEra(reg, "e", meta, origin, sectors, blockSize);
      const written = new Uint32Array(nrBlocks); // era in which each block was last written; 0 = never
      let era = eraOf(dev);
      let snapshot = false;
      const touch = (sector: number, count: number) => {
        for (let b = Math.floor(sector / blockSize); b <= Math.floor((sector + count - 1) / blockSize); b++) written[b] = era;
      };
      /** era_invalidate sees archived eras only: everything before the current era. */
      const expectInvalidate = async (since: number) => {
        const want: number[] = [];
        for (let b = 0; b < nrBlocks; b++) if (written[b]! >= since && written[b]! < era) want.push(b);
        expect(await invalidateSince(meta, since)).toEqual(since === 0 ? Array.from({ length: nrBlocks }, (_, i) => i) : want);
      };
      for (let step = 0; step < 40; step++) {
        const batch: Promise<void>[] = [];
        for (let i = 0; i < 1 + Math.floor(rand() * 20); i++) {
          const sector = Math.floor(rand() * sectors);
          const count = 1 + Math.floor(rand() * Math.min(sectors - sector, rand() < 0.2 ? 8 * blockSize : blockSize));
          const kind = rand();
          const bio: Bio =
            kind < 0.8 ? writeBio(sector, count) : kind < 0.9 ? { op: "discard", sector: S(sector), count: S(count), fua: false } : { op: "write_zeroes", sector: S(sector), count: S(count), fua: false };
          touch(sector, count);
          batch.push(dev.submit(bio));
        }
        await Promise.all(batch);
        const r = rand();
        if (r < 0.15) {
          await dev.message(S(0), ["checkpoint"]);
          era++;
          expect(eraOf(dev)).toBe(era);
        } else if (r < 0.25 && !snapshot) {
          await dev.message(S(0), ["take_metadata_snap"]);
          era++;
          snapshot = true;
          const since = 1 + Math.floor(rand() * era);
          await expectInvalidate(since);
          await expectEraCheckClean(meta);
        } else if (r < 0.3 && snapshot) {
          await dev.message(S(0), ["drop_metadata_snap"]);
          snapshot = false;
        } else if (r < 0.33) {
          await dev.suspend({ noflush: false });
          await expectRefCountsClean(meta);
          await dev.resume({ noflush: false });
          era++;
        }
      }
      await dev.suspend({ noflush: false }); // archives the current era
      era++; // everything written so far is now "before the current era" for the model
      for (const since of [0, 1, 2, Math.max(1, era - 5), era - 2, era - 1, era]) await expectInvalidate(since);
      await expectEraCheckClean(meta);
      await expectRefCountsClean(meta);
      const [ours, theirs, oursLogical, theirsLogical] = await Promise.all([
        tsdm(["era", "dump", meta]),
        run("era_dump", [meta]),
        tsdm(["era", "dump", "--logical", meta]),
        run("era_dump", ["--logical", meta]),
      ]);
      expect(theirs.code).toBe(0);
      expect(ours.stdout).toBe(theirs.stdout);
      expect(oursLogical.stdout).toBe(theirsLogical.stdout);
      expect((await tsdm(["era", "invalidate", "--written-since", "2", meta])).stdout).toBe((await run("era_invalidate", ["--written-since", "2", meta])).stdout);
      // Our own view (which also folds the digest in) agrees with the model for every block.
      await dev.resume({ noflush: false });
      const t = eraTargetOf(dev);
      const eras = await t.metadata.logicalEras(true);
      expect(Array.from(eras)).toEqual(Array.from(written));
    });
  }
});

describe("era metadata written by era_restore", () => {
  const XML = `<superblock uuid="" block_size="128" nr_blocks="100" current_era="5">
  <writeset era="3" nr_bits="100">
    <bit block="1" value="true"/>
  </writeset>
  <writeset era="4" nr_bits="100">
    <bit block="7" value="true"/>
    <bit block="50" value="true"/>
    <bit block="51" value="true"/>
  </writeset>
  <era_array>
    <era block="0" era="1"/>
    <era block="1" era="2"/>
    <era block="2" era="2"/>
    <era block="99" era="2"/>
  </era_array>
</superblock>
`;

  it("opens in tsdm, continues at era 6, digests, and the tools agree", async () => {
    const xml = path.join(tmp.dir, "in.xml");
    fs.writeFileSync(xml, XML);
    const meta = makeFile(tmp.dir, "meta", 4 << 20);
    expect((await run("era_restore", ["-i", xml, "-o", meta])).code).toBe(0);
    await expectRefCountsClean(meta);
    const origin = makeFile(tmp.dir, "origin", 100 * 128 * 512);
    const dev = reg.create({ name: "e" });
    await expectDmError(dev.load([{ start: S(0), length: S(12800), type: "era", params: `${meta} ${origin} 64` }], false), "EINVAL", /from 128 to 64/);
    const e = await createEra(reg, "e2", meta, origin, 12800, 128);
    expect(eraOf(e)).toBe(6);
    await e.submit(writeBio(5 * 128 + 3, 1));
    await e.submit(writeBio(51 * 128, 1));
    await e.suspend({ noflush: false });
    expect(await invalidateSince(meta, 6)).toEqual([5, 51]);
    expect(await invalidateSince(meta, 4)).toEqual([5, 7, 50, 51]);
    expect(await invalidateSince(meta, 3)).toEqual([1, 5, 7, 50, 51]);
    expect(await invalidateSince(meta, 2)).toEqual([1, 2, 5, 7, 50, 51, 99]);
    await expectEraCheckClean(meta);
    await expectRefCountsClean(meta);
    // Let the digest fold the old writesets into the era array, then check the result is unchanged.
    await e.resume({ noflush: false });
    const t = eraTargetOf(e);
    for (let i = 0; i < 200 && t.metadata.archivedWritesets; i++) await new Promise((r) => setTimeout(r, 5));
    await e.suspend({ noflush: false });
    const dump = await run("era_dump", [meta]);
    expect(dump.stdout).toMatch(/<era block="7" era="4"\/>/);
    expect(await invalidateSince(meta, 3)).toEqual([1, 5, 7, 50, 51]);
    await expectRefCountsClean(meta);
  });
});

describe("era metadata device full", () => {
  it("a write that cannot be recorded fails with EIO; what was acknowledged stays recorded and consistent", async () => {
    // 24 metadata blocks: room for the format and a few eras over a 40000-block origin.
    const meta = makeFile(tmp.dir, "meta", 24 * 4096);
    const blockSize = 8;
    const nrBlocks = 40000;
    const origin = makeFile(tmp.dir, "origin", nrBlocks * blockSize * 512);
    const logs: Array<{ level: string; msg: string }> = [];
    reg = new DeviceRegistry(createLogger({ write: (l) => void logs.push(JSON.parse(l)) }));
    const dev = await createEra(reg, "e", meta, origin, nrBlocks * blockSize, blockSize);
    const acked: number[] = [];
    let failure: unknown;
    for (let i = 0; i < 400 && !failure; i++) {
      const b = (i * 977) % nrBlocks;
      try {
        await dev.submit(writeBio(b * blockSize, 1));
        acked.push(b);
      } catch (e) {
        failure = e;
      }
      if (i % 40 === 39 && !failure) await dev.message(S(0), ["checkpoint"]).catch((e) => (failure = e));
    }
    expect(failure).toBeInstanceOf(DmError);
    expect(["EIO", "ENOSPC"]).toContain((failure as DmError).errno);
    expect(String((failure as Error).message)).toMatch(/metadata device full/);
    // The operator is told, in the log, what is wrong and what to do.
    expect(logs.filter((l) => l.level === "error").map((l) => l.msg)).toContainEqual(expect.stringMatching(/^era: metadata device full: .*drop_metadata_snap.*larger device/));
    const st = statusOf(dev);
    const [used, total] = st.split(" ")[1]!.split("/").map(Number);
    expect(total).toBe(24);
    expect(used).toBeLessThanOrEqual(24);
    // Committed metadata is intact: the tools accept it and every acknowledged write is in it.
    await expectEraCheckClean(meta);
    await expectRefCountsClean(meta);
    const t = eraTargetOf(dev);
    const eras = await t.metadata.logicalEras(true);
    for (const b of acked) expect(eras[b]).toBeGreaterThan(0);
    await expectDmError(dev.message(S(0), ["take_metadata_snap"]), "ENOSPC", /metadata device full/);
    await expectEraCheckClean(meta);
    await expectRefCountsClean(meta);
  });
});

describe("era metadata device nearly full", () => {
  it("writes keep being recorded while the digest of archived eras has no room (16-block metadata)", async () => {
    const meta = makeFile(tmp.dir, "meta", 16 * 4096);
    const origin = makeFile(tmp.dir, "origin", 1 << 20);
    const dev = await createEra(reg, "e", meta, origin, 2048, 8);
    await dev.submit(writeBio(0, 8));
    await dev.submit(writeBio(8, 8));
    await dev.message(S(0), ["checkpoint"]);
    for (let round = 0; round < 3; round++) {
      for (let b = 2 + 20 * round; b < 22 + 20 * round; b++) {
        await dev.submit(writeBio(b * 8, 8));
        await new Promise((r) => setImmediate(r)); // let digest steps run between the writes
      }
      const [used, total] = statusOf(dev).split(" ")[1]!.split("/").map(Number);
      expect(total).toBe(16);
      expect(used).toBeLessThanOrEqual(total);
      await dev.message(S(0), ["checkpoint"]);
    }
    await dev.suspend({ noflush: false });
    expect(await invalidateSince(meta, 1)).toEqual(Array.from({ length: 62 }, (_, i) => i));
    expect(await invalidateSince(meta, 3)).toEqual(Array.from({ length: 40 }, (_, i) => 22 + i));
    expect(await invalidateSince(meta, 4)).toEqual(Array.from({ length: 20 }, (_, i) => 42 + i));
    await expectEraCheckClean(meta);
    await expectRefCountsClean(meta);
  });

  it("status counts the open transaction's allocations, as the kernel's allocated_this_transaction does", async () => {
    const meta = makeFile(tmp.dir, "meta", 4 << 20);
    const io = FileMetaIo.open(meta, true);
    try {
      const md = await EraMetadata.open(io, 8, true);
      await md.resize(200_000);
      await md.rollover();
      await md.markWritten([{ first: 0, last: 199_999 }]);
      await md.rollover(); // archives a writeset with every bit set
      await md.commit();
      const committed = (await readSuperblock(io)).smRoot.nrAllocated;
      expect(md.usedMetadataBlocks).toBe(committed);
      expect(await md.digestStep()).toBe("progress"); // 100 bits: copies an era-array block and its btree path
      expect(md.usedMetadataBlocks).toBeGreaterThan(committed);
      expect(md.usedMetadataBlocks).toBe(committed + md.tm.dirtyCount);
      await md.commit();
      expect(md.usedMetadataBlocks).toBe((await readSuperblock(io)).smRoot.nrAllocated);
    } finally {
      await io.close();
    }
    await expectRefCountsClean(meta);
  });
});

describe("era metadata and origin sizes", () => {
  it("a metadata device too small to format is refused and left untouched", async () => {
    const origin = makeFile(tmp.dir, "origin", 1 << 20);
    for (const [bytes, text] of [
      [2048, /metadata device too small/],
      [4 * 4096, /metadata device full \(4 blocks/],
    ] as const) {
      const meta = makeFile(tmp.dir, `meta${bytes}`, bytes);
      const dev = reg.create({ name: `e${bytes}` });
      const err = await dev.load([{ start: S(0), length: S(2048), type: "era", params: `${meta} ${origin} 8` }], false).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(DmError);
      expect((err as DmError).message).toMatch(text);
      expect(fs.readFileSync(meta).every((b) => b === 0)).toBe(true);
    }
  });

  it("growing and shrinking the table resizes the era array; the tools follow", async () => {
    const meta = makeFile(tmp.dir, "meta", 2 << 20);
    const origin = makeFile(tmp.dir, "origin", 4 << 20);
    const dev = await createEra(reg, "e", meta, origin, 2048, 8); // 256 blocks
    await dev.submit(writeBio(8 * 200, 8));
    const reload = async (sectors: number) => {
      await dev.load([{ start: S(0), length: S(sectors), type: "era", params: `${meta} ${origin} 8` }], false);
      await dev.resume({ noflush: false });
    };
    await reload(8192); // 1024 blocks
    await dev.submit(writeBio(8 * 1000, 8));
    await dev.suspend({ noflush: false });
    expect((await run("era_dump", [meta])).stdout).toMatch(/nr_blocks="1024"/);
    expect(await invalidateSince(meta, 1)).toEqual([200, 1000]);
    await expectEraCheckClean(meta);
    await expectRefCountsClean(meta);
    await dev.resume({ noflush: false });
    const t = eraTargetOf(dev);
    for (let i = 0; i < 400 && t.metadata.archivedWritesets; i++) await new Promise((r) => setTimeout(r, 5));
    expect(t.metadata.archivedWritesets).toBe(false); // digested: block 1000's era now lives in the era array
    await reload(8 * 300 + 4); // 301 blocks, the last one partial
    await dev.submit(writeBio(8 * 300, 4));
    await dev.suspend({ noflush: false });
    expect((await run("era_dump", [meta])).stdout).toMatch(/nr_blocks="301"/);
    // The shrink dropped the era array's tail, and with it block 1000 (as the kernel's array_resize does).
    expect(await invalidateSince(meta, 1)).toEqual([200, 300]);
    await expectEraCheckClean(meta);
    await expectRefCountsClean(meta);
  });
});

describe("era counter limit", () => {
  it("the era never wraps past 0xFFFFFFFF: checkpoint and resume are refused, nothing changes", async () => {
    const xml = path.join(tmp.dir, "max.xml");
    fs.writeFileSync(xml, `<superblock uuid="" block_size="8" nr_blocks="16" current_era="4294967294">\n  <era_array>\n    <era block="3" era="4294967294"/>\n  </era_array>\n</superblock>\n`);
    const meta = makeFile(tmp.dir, "meta", 1 << 20);
    expect((await run("era_restore", ["-i", xml, "-o", meta])).code).toBe(0);
    const origin = makeFile(tmp.dir, "origin", 16 * 4096);
    const dev = await createEra(reg, "e", meta, origin, 128, 8);
    expect(eraOf(dev)).toBe(0xffffffff);
    await dev.submit(writeBio(8 * 5, 8));
    await expectDmError(dev.message(S(0), ["checkpoint"]), "EOVERFLOW", /refusing to wrap/);
    await expectDmError(dev.message(S(0), ["take_metadata_snap"]), "EOVERFLOW", /refusing to wrap/);
    expect(statusOf(dev)).toMatch(/ 4294967295 -$/);
    await dev.suspend({ noflush: false });
    await expectDmError(dev.resume({ noflush: false }), "EOVERFLOW", /refusing to wrap/);
    expect(await invalidateSince(meta, 4294967295)).toEqual([5]);
    await expectEraCheckClean(meta);
    await expectRefCountsClean(meta);
  });
});

describe("era metadata device failing", () => {
  it("metadata I/O errors fail the writes that need a commit; acknowledged writes survive; a reload recovers", async () => {
    const metaFile = makeFile(tmp.dir, "meta", 1 << 20);
    const origin = makeFile(tmp.dir, "origin", 1 << 20);
    // The metadata sits on another tsdm device, so its table can be swapped for `error` underneath the era target.
    const m = reg.create({ name: "m" });
    await m.load([{ start: S(0), length: S(2048), type: "linear", params: `${metaFile} 0` }], false);
    await m.resume({ noflush: false });
    const dev = await createEra(reg, "e", "m", origin, 2048, 8);
    await dev.submit(writeBio(8 * 3, 8));
    await dev.submit(writeBio(8 * 4, 8));
    await m.load([{ start: S(0), length: S(2048), type: "error", params: "" }], false);
    await m.resume({ noflush: false });
    await dev.submit(writeBio(8 * 3, 8)); // already recorded in this era: passes straight through
    await expectDmError(dev.submit(writeBio(8 * 9, 8)), "EIO", /metadata commit failed/);
    expect(statusOf(dev)).toBe("Error"); // the last commit could not even be re-read
    await expectDmError(dev.submit(writeBio(8 * 10, 8)), "EIO");
    // Metadata back; a new era table picks up the last commit.
    await m.load([{ start: S(0), length: S(2048), type: "linear", params: `${metaFile} 0` }], false);
    await m.resume({ noflush: false });
    await dev.load([{ start: S(0), length: S(2048), type: "era", params: `m ${origin} 8` }], false);
    await dev.resume({ noflush: false });
    await dev.submit(writeBio(8 * 11, 8));
    await reg.remove(dev);
    await reg.remove(m);
    expect(await invalidateSince(metaFile, 1)).toEqual([3, 4, 11]);
    await expectEraCheckClean(metaFile);
    await expectRefCountsClean(metaFile);
  });
});
