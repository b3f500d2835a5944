import { DmError } from "../../core/errors.js";
import { checkBlockNr, checkChecksum, MD_BLOCK_SECTORS, MD_BLOCK_SIZE, type MetaBlock, SUPERBLOCK_VALIDATOR } from "./pdata/block.js";
import { le64, readLe64 } from "./pdata/btree.js";
import { decodeSmRoot, type SpaceMapRoot } from "./pdata/space-map.js";

/** The era superblock (block 0), as dm-era-target.c's struct superblock_disk packs it. */
export const ERA_MAGIC = 2126579579;
export const ERA_VERSION = 1;
/** Eras are u32; the era after this one would wrap to 0 and break every "written since" comparison. */
export const MAX_ERA = 0xffffffff;

export interface Writeset {
  nrBits: number;
  /** Bitset root; 0 = none. */
  root: MetaBlock;
}

export interface EraSuperblock {
  flags: number;
  blocknr: MetaBlock;
  magic: number;
  uuid: Buffer;
  version: number;
  smRoot: SpaceMapRoot;
  smRootBytes: Buffer;
  dataBlockSize: number;
  metadataBlockSize: number;
  nrBlocks: number;
  currentEra: number;
  currentWriteset: Writeset;
  writesetTreeRoot: MetaBlock;
  eraArrayRoot: MetaBlock;
  metadataSnap: MetaBlock;
}

export function isAllZero(buf: Buffer): boolean {
  for (let i = 0; i < buf.length; i += 4) if (buf.readUInt32LE(i) !== 0) return false;
  return true;
}

/**
 * Decode and check a superblock read from `location` (0, or a metadata snapshot's copy) in the kernel's sb_check
 * order: blocknr (ENOTBLK), magic (EILSEQ), checksum (EILSEQ), version (EINVAL).
 */
export function decodeSuperblock(buf: Buffer, location: MetaBlock): EraSuperblock {
  checkBlockNr(buf, location, SUPERBLOCK_VALIDATOR);
  const magic = readLe64(buf, 32);
  if (magic !== ERA_MAGIC) throw new DmError("EILSEQ", `superblock: bad magic ${magic}`);
  checkChecksum(buf, location, SUPERBLOCK_VALIDATOR);
  const version = buf.readUInt32LE(40);
  if (version !== ERA_VERSION) throw new DmError("EINVAL", `superblock: unsupported version ${version}`);
  return unpackSuperblock(buf);
}

/** The fields, unchecked (the offline tools read damaged superblocks the way 0.9.0 does). */
export function unpackSuperblock(buf: Buffer): EraSuperblock {
  const smRootBytes = Buffer.from(buf.subarray(44, 76));
  const version = buf.readUInt32LE(40);
  return {
    flags: buf.readUInt32LE(4),
    blocknr: readLe64(buf, 8),
    magic: readLe64(buf, 32),
    uuid: Buffer.from(buf.subarray(16, 32)),
    version,
    smRoot: decodeSmRoot(smRootBytes),
    smRootBytes,
    dataBlockSize: buf.readUInt32LE(172),
    metadataBlockSize: buf.readUInt32LE(176),
    nrBlocks: buf.readUInt32LE(180),
    currentEra: buf.readUInt32LE(184),
    currentWriteset: { nrBits: buf.readUInt32LE(188), root: readLe64(buf, 192) },
    writesetTreeRoot: readLe64(buf, 200),
    eraArrayRoot: readLe64(buf, 208),
    metadataSnap: readLe64(buf, 216),
  };
}

/** Pack the fields the kernel writes; flags and uuid are written as zero, as the kernel does. Unstamped. */
export function encodeSuperblock(f: Omit<EraSuperblock, "flags" | "blocknr" | "magic" | "uuid" | "version" | "smRoot" | "metadataBlockSize">): Buffer {
  const buf = Buffer.alloc(MD_BLOCK_SIZE);
  buf.set(le64(ERA_MAGIC), 32);
  buf.writeUInt32LE(ERA_VERSION, 40);
  f.smRootBytes.copy(buf, 44, 0, 32);
  buf.writeUInt32LE(f.dataBlockSize, 172);
  buf.writeUInt32LE(MD_BLOCK_SECTORS, 176);
  buf.writeUInt32LE(f.nrBlocks, 180);
  buf.writeUInt32LE(f.currentEra >>> 0, 184);
  buf.writeUInt32LE(f.currentWriteset.nrBits, 188);
  buf.set(le64(f.currentWriteset.root), 192);
  buf.set(le64(f.writesetTreeRoot), 200);
  buf.set(le64(f.eraArrayRoot), 208);
  buf.set(le64(f.metadataSnap), 216);
  return buf;
}

/** Writeset-tree values: packed {le32 nr_bits, le64 bitset root}. */
export const WRITESET_VALUE_SIZE = 12;
export function encodeWriteset(ws: Writeset): Buffer {
  const b = Buffer.alloc(WRITESET_VALUE_SIZE);
  b.writeUInt32LE(ws.nrBits, 0);
  le64(ws.root).copy(b, 4);
  return b;
}
export const decodeWriteset = (v: Buffer): Writeset => ({ nrBits: v.readUInt32LE(0), root: readLe64(v, 4) });
