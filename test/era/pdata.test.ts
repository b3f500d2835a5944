import path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { DmError } from "../../daemon/core/errors.js";
import { crc32cStd } from "../../daemon/targets/era/pdata/crc32c.js";
import { BTREE_NODE_VALIDATOR, FileMetaIo } from "../../daemon/targets/era/pdata/block.js";
import * as btree from "../../daemon/targets/era/pdata/btree.js";
import { EraMetadata } from "../../daemon/targets/era/metadata.js";
import { readEraArray, readerTm, readWritesets } from "../../daemon/targets/era/inspect.js";
import { decodeWriteset, encodeWriteset } from "../../daemon/targets/era/superblock.js";
import { makeFile, tempDir } from "../helpers/registry.js";
import { expectEraCheckClean, expectRefCountsClean, rng } from "./helpers.js";

let tmp: ReturnType<typeof tempDir>;
const opened: FileMetaIo[] = [];
beforeEach(() => {
  tmp = tempDir("tsdm-pdata-");
});
afterEach(async () => {
  for (const io of opened.splice(0)) await io.close();
  tmp.cleanup();
});

async function fresh(bytes: number, dataBlockSize = 8): Promise<{ md: EraMetadata; file: string; io: FileMetaIo }> {
  const file = makeFile(tmp.dir, `meta-${opened.length}`, bytes);
  const io = FileMetaIo.open(file, true);
  opened.push(io);
  return { md: await EraMetadata.open(io, dataBlockSize), file, io };
}

describe("crc32c and block checksums", () => {
  it("standard CRC-32C check value and the kernel's salted form", () => {
    expect(crc32cStd(Buffer.from("123456789"))).toBe(0xe3069283);
    expect(crc32cStd(Buffer.alloc(32))).toBe(0x8a9136aa);
  });
});

describe("btree (writeset tree) against a model", () => {
  it("random inserts and removes across several levels, with snapshots sharing nodes", async () => {
    const { md, file } = await fresh(16 << 20);
    const rand = rng(7);
    md.currentEra = 1_000_000;
    await md.resize(10); // era_check 0.9.0 rejects an empty era array ("missing eras ... [1, 0)"), even era_restore's own
    const model = new Map<number, number>(); // era -> nr_bits
    const tm = md.tm;
    let snap = false;
    for (let round = 0; round < 12; round++) {
      const inserts = 150 + Math.floor(rand() * 250);
      for (let i = 0; i < inserts; i++) {
        const key = Math.floor(rand() * 5000);
        const nrBits = 1 + Math.floor(rand() * 200);
        const root = await md.bitset.create(nrBits);
        const r = await btree.insert(tm, md.writesetTreeRoot, key, encodeWriteset({ nrBits, root }), md.wsType);
        md.writesetTreeRoot = r.root;
        expect(r.inserted).toBe(!model.has(key));
        model.set(key, nrBits);
      }
      const keys = [...model.keys()];
      const removes = Math.floor(keys.length * (round % 3 === 2 ? 0.8 : 0.3));
      for (let i = 0; i < removes; i++) {
        const key = keys[Math.floor(rand() * keys.length)]!;
        const r = await btree.remove(tm, md.writesetTreeRoot, key, md.wsType);
        md.writesetTreeRoot = r.root;
        expect(r.removed).toBe(model.has(key));
        model.delete(key);
      }
      expect(await btree.lookup(tm, md.writesetTreeRoot, 999_999)).toBeUndefined();
      await md.commit();
      if (round % 4 === 1 && !snap) {
        // The snapshot's rollover archives the current writeset into the tree.
        if (md.currentWriteset.root !== 0) model.set(md.currentEra, md.currentWriteset.nrBits);
        await md.takeSnapshot();
        snap = true;
      } else if (round % 4 === 3 && snap) {
        await md.dropSnapshot();
        snap = false;
      }
      // The on-disk tree equals the model, passes the tools' shape rules, and every count is exact.
      const ws = await readWritesets(readerTm(FileMetaIo.open(file, false)), md.writesetTreeRoot);
      const sorted = [...model.entries()].sort((a, b) => a[0] - b[0]);
      expect(ws.map((w) => [w.era, w.nrBits])).toEqual(sorted);
      await expectRefCountsClean(file);
      await expectEraCheckClean(file);
    }
    // Lowest key, and deleting the whole tree releases every block it held.
    const low = await btree.lowest(tm, md.writesetTreeRoot);
    expect(low?.key).toBe(Math.min(...model.keys()));
    expect(decodeWriteset(low!.value).nrBits).toBe(model.get(low!.key));
    if (snap) await md.dropSnapshot();
    const before = md.usedMetadataBlocks;
    await btree.deleteTree(tm, md.writesetTreeRoot, md.wsType);
    md.writesetTreeRoot = btree.emptyTree(tm, 12);
    await md.commit();
    expect(md.usedMetadataBlocks).toBeLessThan(before);
    await expectRefCountsClean(file);
  });

  it("nodes are 3*floor(((4096-32)/(8+size))/3) entries, as the kernel and tools require", () => {
    expect(btree.maxEntriesFor(4)).toBe(336);
    expect(btree.maxEntriesFor(8)).toBe(252);
    expect(btree.maxEntriesFor(12)).toBe(201);
  });
});

describe("array (era array) against a model", () => {
  it("grow, shrink, set and snapshots; partial last blocks; shared full blocks", async () => {
    const { md, file } = await fresh(16 << 20);
    const rand = rng(11);
    md.currentEra = 1000;
    let model: number[] = [];
    for (const size of [0, 1, 1017, 1018, 1019, 5000, 2036, 60000, 3, 12345]) {
      await md.resize(size);
      model = model.slice(0, size);
      while (model.length < size) model.push(0);
      const sets = Math.min(size, 200);
      const idx = Array.from({ length: sets }, () => Math.floor(rand() * size)).sort((a, b) => a - b);
      const era = 1 + Math.floor(rand() * 999);
      const buf = Buffer.alloc(4);
      buf.writeUInt32LE(era);
      for (const i of idx) {
        md.eraArrayRoot = await md.eraArray.set(md.eraArrayRoot, i, buf);
        model[i] = era;
      }
      if (size > 0) expect((await md.eraArray.get(md.eraArrayRoot, size - 1)).readUInt32LE(0)).toBe(model[size - 1]);
      await md.commit();
      if (size === 5000) await md.takeSnapshot();
      if (size === 3) await md.dropSnapshot();
      const io = FileMetaIo.open(file, false);
      const got = Array.from(await readEraArray(readerTm(io), md.eraArrayRoot));
      expect(got).toEqual(model);
      await io.close();
      await expectRefCountsClean(file);
      if (size > 0) await expectEraCheckClean(file); // 0.9.0 rejects an empty era array
    }
  });
});

describe("bitset ranges against a model", () => {
  it("setRange counts newly set bits, copies nothing when all are set; scan and forEachSetBit see exactly the model", async () => {
    const { md, file } = await fresh(4 << 20);
    const rand = rng(5);
    const nrBits = 70_001; // three array blocks, the last partial
    let root = await md.bitset.create(nrBits);
    const model = new Uint8Array(nrBits);
    for (let i = 0; i < 60; i++) {
      const first = Math.floor(rand() * nrBits);
      const last = Math.min(nrBits - 1, first + Math.floor(rand() * (rand() < 0.2 ? 40_000 : 130)));
      let want = 0;
      for (let b = first; b <= last; b++) if (!model[b]) (want++, (model[b] = 1));
      const r = await md.bitset.setRange(root, first, last);
      expect(r.newlySet).toBe(want);
      if (want === 0) expect(r.root).toBe(root);
      root = r.root;
      if (i % 20 === 19) await md.commit();
    }
    const expected: number[] = [];
    for (let b = 0; b < nrBits; b++) if (model[b]) expected.push(b);
    const seen: number[] = [];
    await md.bitset.forEachSetBit(root, nrBits, (b) => void seen.push(b));
    expect(seen).toEqual(expected);
    const scanned: number[] = [];
    for (let pos = 0; pos < nrBits; ) {
      const { bits, next } = await md.bitset.scan(root, nrBits, pos, 100);
      expect(bits.length).toBeLessThanOrEqual(100);
      expect(next).toBeGreaterThan(pos);
      scanned.push(...bits);
      pos = next;
    }
    expect(scanned).toEqual(expected);
    md.currentWriteset = { nrBits, root };
    await md.commit();
    await expectRefCountsClean(file);
  });
});

describe("space map", () => {
  it("counts of 3 and more live in the ref-count tree and survive a reopen", async () => {
    const { md, file, io } = await fresh(8 << 20);
    await md.resize(32576 * 40); // a writeset of 40 full array blocks, all one shared block
    await md.rollover();
    await md.commit();
    const counts = md.tm.sm.snapshotCounts();
    expect(Math.max(...counts)).toBeGreaterThanOrEqual(39);
    const again = await EraMetadata.open(io, 8, false);
    expect(Array.from(again.tm.sm.snapshotCounts())).toEqual(Array.from(counts));
    await expectRefCountsClean(file);
    await expectEraCheckClean(file);
  });

  it("a block freed in a transaction is not reused before the commit", async () => {
    const { md } = await fresh(1 << 20);
    const tm = md.tm;
    const old = md.writesetTreeRoot;
    const s = await tm.shadow(old, BTREE_NODE_VALIDATOR);
    expect(s.b).not.toBe(old);
    expect(tm.count(old)).toBe(0);
    const fresh1 = new Set<number>();
    for (let i = 0; i < 100; i++) fresh1.add(tm.newBlock(BTREE_NODE_VALIDATOR).b);
    expect(fresh1.has(old)).toBe(false);
  });

  it("allocation past the end is ENOSPC with a clear message", async () => {
    const { md } = await fresh(16 * 4096);
    const err = await (async () => {
      for (let i = 0; i < 100; i++) md.tm.newBlock(BTREE_NODE_VALIDATOR);
    })().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DmError);
    expect((err as DmError).errno).toBe("ENOSPC");
    expect((err as DmError).message).toMatch(/metadata device full \(16 blocks/);
  });

  it("a fresh format has the kernel's layout: superblock, index, ref-count root, bitmaps, writeset tree, era array", async () => {
    const { md } = await fresh(4 << 20);
    const root = md.tm.sm.rootBytes();
    expect(btree.readLe64(root, 0)).toBe(1024);
    expect(btree.readLe64(root, 16)).toBe(1); // index block
    expect(btree.readLe64(root, 24)).toBe(2); // ref-count tree
    expect(md.writesetTreeRoot).toBe(4);
    expect(md.eraArrayRoot).toBe(5);
    expect(md.usedMetadataBlocks).toBe(6);
    expect(path.basename(tmp.dir)).toMatch(/pdata/);
  });
});
