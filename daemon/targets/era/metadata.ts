import { DmError } from "../../core/errors.js";
import { MD_BLOCK_SECTORS, type MetaBlock, type MetaIo, SUPERBLOCK_VALIDATOR } from "./pdata/block.js";
import * as btree from "./pdata/btree.js";
import { PArray } from "./pdata/array.js";
import { PBitset } from "./pdata/bitset.js";
import { MetadataSpaceMap } from "./pdata/space-map.js";
import { TransactionManager } from "./pdata/transaction-manager.js";
import type { BlockRange } from "./ranges.js";
import {
  decodeSuperblock,
  decodeWriteset,
  encodeSuperblock,
  encodeWriteset,
  type EraSuperblock,
  isAllZero,
  MAX_ERA,
  WRITESET_VALUE_SIZE,
  type Writeset,
} from "./superblock.js";

const ERA_VALUE_SIZE = 4;
const ZERO_ERA = Buffer.alloc(ERA_VALUE_SIZE);
/** Era-array entries written per digest step before yielding to I/O (the kernel's INSERTS_PER_STEP). */
export const DIGEST_BITS_PER_STEP = 100;

/** Where the digest is in the oldest archived writeset: the next bit to look at. */
interface DigestState {
  era: number;
  root: MetaBlock;
  nrBits: number;
  pos: number;
}

/** What one digest step did. */
export type DigestResult = "idle" | "progress" | "removed";

/**
 * dm-era's metadata (struct era_metadata): the superblock fields, the current writeset, the writeset tree of
 * archived eras and the era array, over a copy-on-write transaction manager. Not thread-safe: the target
 * serialises every call (the kernel's single worker).
 */
export class EraMetadata {
  readonly tm: TransactionManager;
  readonly bitset: PBitset;
  readonly eraArray: PArray;
  readonly wsType: btree.ValueType;

  dataBlockSize: number;
  nrBlocks: number;
  currentEra: number;
  currentWriteset: Writeset;
  writesetTreeRoot: MetaBlock;
  eraArrayRoot: MetaBlock;
  metadataSnap: MetaBlock;
  /** The writeset tree may hold eras still to be digested into the era array. */
  archivedWritesets: boolean;
  private digest: DigestState | undefined;
  /** The open transaction holds digest progress (it rides along with the next commit, as in the kernel). */
  digestDirty = false;
  /** The superblock image of the last commit (copied by take_metadata_snap). */
  private committedImage: Buffer | undefined;

  private constructor(tm: TransactionManager, sb: Omit<EraSuperblock, "flags" | "blocknr" | "magic" | "uuid" | "version" | "smRoot" | "smRootBytes" | "metadataBlockSize">) {
    this.tm = tm;
    this.bitset = new PBitset(tm);
    this.eraArray = new PArray(tm, ERA_VALUE_SIZE);
    this.wsType = {
      size: WRITESET_VALUE_SIZE,
      inc: (v) => tm.inc(decodeWriteset(v).root),
      dec: (v) => this.bitset.del(decodeWriteset(v).root),
    };
    this.dataBlockSize = sb.dataBlockSize;
    this.nrBlocks = sb.nrBlocks;
    this.currentEra = sb.currentEra;
    this.currentWriteset = { ...sb.currentWriteset };
    this.writesetTreeRoot = sb.writesetTreeRoot;
    this.eraArrayRoot = sb.eraArrayRoot;
    this.metadataSnap = sb.metadataSnap;
    this.archivedWritesets = true;
  }

  /**
   * Open the metadata on `io`, formatting it when block 0 is all zeroes and `mayFormat` is set. The stored data
   * block size must equal `dataBlockSize` (kernel: changing it is not supported).
   */
  static async open(io: MetaIo, dataBlockSize: number, mayFormat = true): Promise<EraMetadata> {
    if (io.nrBlocks < 1) throw new DmError("EINVAL", "metadata device too small");
    const b0 = await io.read(0);
    if (isAllZero(b0)) {
      if (!mayFormat) throw new DmError("EINVAL", "metadata device is not formatted");
      return EraMetadata.format(io, dataBlockSize);
    }
    const sb = decodeSuperblock(b0, 0);
    if (sb.dataBlockSize !== dataBlockSize) {
      throw new DmError("EINVAL", `changing the data block size (from ${sb.dataBlockSize} to ${dataBlockSize}) is not supported`);
    }
    if (sb.metadataBlockSize !== MD_BLOCK_SECTORS) throw new DmError("EINVAL", `unsupported metadata block size ${sb.metadataBlockSize}`);
    const tm = new TransactionManager(io);
    await MetadataSpaceMap.open(tm, sb.smRoot);
    const md = new EraMetadata(tm, sb);
    md.committedImage = b0;
    return md;
  }

  private static async format(io: MetaIo, dataBlockSize: number): Promise<EraMetadata> {
    const tm = new TransactionManager(io);
    MetadataSpaceMap.create(tm, io.nrBlocks);
    const md = new EraMetadata(tm, {
      dataBlockSize,
      nrBlocks: 0,
      currentEra: 0,
      currentWriteset: { nrBits: 0, root: 0 },
      writesetTreeRoot: btree.emptyTree(tm, WRITESET_VALUE_SIZE),
      eraArrayRoot: 0,
      metadataSnap: 0,
    });
    md.eraArrayRoot = md.eraArray.empty();
    md.archivedWritesets = false;
    await md.commit();
    return md;
  }

  /** Commits made through this object (a cheap "has anything changed" for caches). */
  commitCount = 0;

  /** metadata_commit: space map, dirty blocks, FLUSH, superblock, FLUSH. */
  async commit(): Promise<void> {
    this.commitCount++;
    this.digestDirty = false;
    await this.tm.commit((smRootBytes) => {
      const image = encodeSuperblock({
        smRootBytes,
        dataBlockSize: this.dataBlockSize,
        nrBlocks: this.nrBlocks,
        currentEra: this.currentEra,
        currentWriteset: this.currentWriteset,
        writesetTreeRoot: this.writesetTreeRoot,
        eraArrayRoot: this.eraArrayRoot,
        metadataSnap: this.metadataSnap,
      });
      this.committedImage = image;
      return image;
    });
  }

  get totalMetadataBlocks(): number {
    return this.tm.sm.nrBlocks;
  }
  /** The kernel's used count: committed allocations plus this transaction's (allocated_this_transaction). */
  get usedMetadataBlocks(): number {
    return this.tm.sm.nrUsedInTransaction;
  }

  /** Set the blocks of `ranges` in the on-disk current writeset; returns how many were clear. */
  async markWritten(ranges: readonly BlockRange[]): Promise<number> {
    if (this.currentWriteset.root === 0) throw new DmError("EIO", "no current writeset");
    let newly = 0;
    for (const r of ranges) {
      const x = await this.bitset.setRange(this.currentWriteset.root, r.first, r.last);
      this.currentWriteset.root = x.root;
      newly += x.newlySet;
    }
    return newly;
  }

  /** metadata_era_archive: the current writeset goes into the writeset tree under the current era. */
  async archive(): Promise<void> {
    if (this.currentWriteset.root === 0) return;
    const r = await btree.insert(this.tm, this.writesetTreeRoot, this.currentEra, encodeWriteset(this.currentWriteset), this.wsType);
    this.writesetTreeRoot = r.root;
    this.currentWriteset = { nrBits: this.currentWriteset.nrBits, root: 0 };
    this.archivedWritesets = true;
  }

  /** metadata_era_rollover: archive, then a new empty writeset for the next era. Refuses to wrap the era. */
  async rollover(): Promise<void> {
    if (this.currentEra >= MAX_ERA) throw new DmError("EOVERFLOW", `era ${this.currentEra} is the last one; refusing to wrap to 0`);
    await this.archive();
    const root = await this.bitset.create(this.nrBlocks);
    this.currentWriteset = { nrBits: this.nrBlocks, root };
    this.currentEra++;
  }

  /** Grow or shrink the era array (preresume). */
  async resize(nrBlocks: number): Promise<void> {
    this.eraArrayRoot = await this.eraArray.resize(this.eraArrayRoot, this.nrBlocks, nrBlocks, ZERO_ERA);
    this.nrBlocks = nrBlocks;
    this.digest = undefined;
  }

  /**
   * One step of the digest: transcribe the next set bits (at most DIGEST_BITS_PER_STEP, from one bitset block)
   * of the oldest archived writeset into the era array; a writeset fully transcribed leaves the tree ("removed").
   * "idle" when there is nothing left to digest.
   */
  async digestStep(): Promise<DigestResult> {
    if (!this.digest) {
      const low = await btree.lowest(this.tm, this.writesetTreeRoot);
      if (!low) {
        this.archivedWritesets = false;
        return "idle";
      }
      const ws = decodeWriteset(low.value);
      this.digest = { era: low.key, root: ws.root, nrBits: Math.min(ws.nrBits, this.nrBlocks), pos: 0 };
    }
    const d = this.digest;
    if (d.pos < d.nrBits) {
      const { bits, next } = await this.bitset.scan(d.root, d.nrBits, d.pos, DIGEST_BITS_PER_STEP);
      if (bits.length) {
        this.digestDirty = true;
        this.eraArrayRoot = await this.eraArray.modify(this.eraArrayRoot, bits, (ab, slot) => ab.buf.writeUInt32LE(d.era >>> 0, ab.offset(slot)));
      }
      d.pos = next;
      if (d.pos < d.nrBits) return "progress";
    }
    this.digestDirty = true;
    this.writesetTreeRoot = (await btree.remove(this.tm, this.writesetTreeRoot, d.era, this.wsType)).root;
    this.digest = undefined;
    return "removed";
  }

  /** take_metadata_snap: rollover + commit, then a copy of the committed superblock sharing both trees. */
  async takeSnapshot(): Promise<void> {
    if (this.metadataSnap !== 0) throw new DmError("EINVAL", "metadata snapshot already exists");
    await this.rollover();
    await this.commit();
    const { b, buf } = this.tm.newBlock(SUPERBLOCK_VALIDATOR);
    this.committedImage!.copy(buf);
    this.tm.inc(this.writesetTreeRoot);
    this.tm.inc(this.eraArrayRoot);
    this.metadataSnap = b;
    await this.commit();
  }

  /** drop_metadata_snap: release the snapshot's trees and its superblock copy. */
  async dropSnapshot(): Promise<void> {
    if (this.metadataSnap === 0) throw new DmError("EINVAL", "no snapshot to drop");
    const loc = this.metadataSnap;
    const snap = decodeSuperblock(Buffer.from(await this.tm.read(loc, SUPERBLOCK_VALIDATOR)), loc);
    this.metadataSnap = 0;
    await btree.deleteTree(this.tm, snap.writesetTreeRoot, this.wsType);
    await this.eraArray.del(snap.eraArrayRoot);
    this.tm.dec(loc);
    await this.commit();
  }

  /**
   * The era of blocks [first, first+count) (clipped to nrBlocks), as logicalEras gives it, reading only the era
   * array blocks and writeset bitset blocks that hold the range: an NBD map request on a large device costs what
   * the request covers, not the device.
   */
  async logicalErasRange(first: number, count: number, includeCurrent: boolean): Promise<Uint32Array> {
    const end = Math.min(this.nrBlocks, first + count);
    const eras = new Uint32Array(Math.max(0, end - first));
    if (eras.length === 0) return eras;
    const per = this.eraArray.max;
    for (let idx = Math.floor(first / per); idx <= Math.floor((end - 1) / per); idx++) {
      const ab = await this.eraArray.readBlockAt(this.eraArrayRoot, idx);
      if (!ab) break;
      const upto = Math.min(end, idx * per + ab.nr);
      for (let b = Math.max(first, idx * per); b < upto; b++) eras[b - first] = ab.buf.readUInt32LE(ab.offset(b - idx * per));
    }
    for (const { era, ws } of await this.writesetsToFold(includeCurrent)) {
      await this.bitset.forEachSetBitIn(ws.root, first, Math.min(end, ws.nrBits), (b) => {
        if (era > eras[b - first]!) eras[b - first] = era;
      });
    }
    return eras;
  }

  /** The writesets not yet digested into the era array (archived ones, and the current one if asked). */
  private async writesetsToFold(includeCurrent: boolean): Promise<Array<{ era: number; ws: Writeset }>> {
    const sets: Array<{ era: number; ws: Writeset }> = [];
    await btree.walk(this.tm, this.writesetTreeRoot, (k, v) => void sets.push({ era: k, ws: decodeWriteset(v) }));
    if (includeCurrent && this.currentWriteset.root !== 0) sets.push({ era: this.currentEra, ws: this.currentWriteset });
    return sets;
  }

  /** Era of each block as the metadata knows it: max(era array, newest archived writeset with the bit). */
  async logicalEras(includeCurrent: boolean): Promise<Uint32Array> {
    const eras = new Uint32Array(this.nrBlocks);
    await this.eraArray.walkBlocks(this.eraArrayRoot, (first, ab) => {
      for (let s = 0; s < ab.nr && first + s < eras.length; s++) eras[first + s] = ab.buf.readUInt32LE(ab.offset(s));
    });
    for (const { era, ws } of await this.writesetsToFold(includeCurrent)) {
      await this.bitset.forEachSetBit(ws.root, Math.min(ws.nrBits, this.nrBlocks), (b) => {
        if (era > eras[b]!) eras[b] = era;
      });
    }
    return eras;
  }
}
