import fs from "node:fs";
import type { BlockDevice } from "../../../io/block-device.js";
import { flushBio } from "../../../io/bio.js";
import { DmError } from "../../../core/errors.js";
import type { Sector } from "../../../core/units.js";
import { crc32cRaw } from "./crc32c.js";

/** persistent-data metadata blocks are 4 KiB (8 sectors), whatever the device's own block size. */
export const MD_BLOCK_SIZE = 4096;
export const MD_BLOCK_SECTORS = 8;

/** A metadata block number (index of a 4 KiB block on the metadata device), distinct from data sectors. */
export type MetaBlock = number;

/**
 * How one kind of block is stamped and checked: a CRC32C at offset 0 over bytes 4..4095 xor a per-type salt, and
 * the block's own location at `blocknrOffset` (the kernel's dm_block_validator).
 */
export interface BlockValidator {
  readonly name: string;
  readonly salt: number;
  readonly blocknrOffset: number;
}

export const SUPERBLOCK_VALIDATOR: BlockValidator = { name: "superblock", salt: 146538381, blocknrOffset: 8 };
export const BTREE_NODE_VALIDATOR: BlockValidator = { name: "btree_node", salt: 121107, blocknrOffset: 8 };
export const ARRAY_BLOCK_VALIDATOR: BlockValidator = { name: "array_block", salt: 595846735, blocknrOffset: 16 };
export const SM_BITMAP_VALIDATOR: BlockValidator = { name: "sm_bitmap", salt: 240779, blocknrOffset: 8 };
export const SM_INDEX_VALIDATOR: BlockValidator = { name: "sm_index", salt: 160478, blocknrOffset: 8 };

export function blockChecksum(buf: Buffer, salt: number): number {
  return (crc32cRaw(0xffffffff, buf, 4, MD_BLOCK_SIZE) ^ salt) >>> 0;
}

/** prepare_for_write: stamp location and checksum. */
export function stampBlock(buf: Buffer, b: MetaBlock, v: BlockValidator): void {
  buf.writeBigUInt64LE(BigInt(b), v.blocknrOffset);
  buf.writeUInt32LE(blockChecksum(buf, v.salt), 0);
}

/** The kernel's check: blocknr first (ENOTBLK), then checksum (EILSEQ). Corruption is EIO-class for callers. */
export function checkBlock(buf: Buffer, b: MetaBlock, v: BlockValidator): void {
  checkBlockNr(buf, b, v);
  checkChecksum(buf, b, v);
}

/** A block failed its validator: which check, on which block (the offline tools word these as 0.9.0 does). */
export class BlockCheckError extends DmError {
  constructor(
    readonly check: "blocknr" | "checksum",
    readonly validator: BlockValidator,
    readonly block: MetaBlock,
    message: string,
    /** The checksum was right (for a blocknr failure; the tools test the checksum first). */
    readonly checksumOk = check === "blocknr",
  ) {
    super(check === "blocknr" ? "ENOTBLK" : "EILSEQ", message);
  }
}

export function checkBlockNr(buf: Buffer, b: MetaBlock, v: BlockValidator): void {
  const nr = buf.readBigUInt64LE(v.blocknrOffset);
  if (nr === BigInt(b)) return;
  const sumOk = blockChecksum(buf, v.salt) === buf.readUInt32LE(0);
  throw new BlockCheckError("blocknr", v, b, `${v.name} ${b}: bad block nr ${nr}${sumOk ? "" : " (and bad checksum)"}`, sumOk);
}

export function checkChecksum(buf: Buffer, b: MetaBlock, v: BlockValidator): void {
  const want = blockChecksum(buf, v.salt);
  const got = buf.readUInt32LE(0);
  if (want !== got) throw new BlockCheckError("checksum", v, b, `${v.name} ${b}: bad checksum (stored 0x${got.toString(16)}, computed 0x${want.toString(16)})`);
}

/** Raw 4 KiB block I/O on a metadata device. */
export interface MetaIo {
  readonly nrBlocks: number;
  read(b: MetaBlock): Promise<Buffer>;
  write(b: MetaBlock, buf: Buffer): Promise<void>;
  flush(): Promise<void>;
  close?(): Promise<void>;
}

/** Metadata on a tsdm BlockDevice (what the target uses): reads and writes are bios; flush is a flush bio. */
export class DeviceMetaIo implements MetaIo {
  readonly nrBlocks: number;
  constructor(private readonly dev: BlockDevice) {
    this.nrBlocks = Math.floor(dev.size / MD_BLOCK_SECTORS);
  }
  async read(b: MetaBlock): Promise<Buffer> {
    const data = Buffer.alloc(MD_BLOCK_SIZE);
    await this.dev.submit({ op: "read", sector: (b * MD_BLOCK_SECTORS) as Sector, count: MD_BLOCK_SECTORS as Sector, data, fua: false });
    return data;
  }
  write(b: MetaBlock, buf: Buffer): Promise<void> {
    return this.dev.submit({ op: "write", sector: (b * MD_BLOCK_SECTORS) as Sector, count: MD_BLOCK_SECTORS as Sector, data: buf, fua: false });
  }
  flush(): Promise<void> {
    return this.dev.submit(flushBio());
  }
}

/** Metadata in a file or block device opened directly (the offline tools). */
export class FileMetaIo implements MetaIo {
  private constructor(
    private readonly fd: number,
    readonly nrBlocks: number,
  ) {}

  static open(path: string, writable: boolean): FileMetaIo {
    const fd = fs.openSync(path, writable ? "r+" : "r");
    try {
      const st = fs.fstatSync(fd);
      let size = st.size;
      if (st.isBlockDevice()) {
        // Regular stat reports 0 for block devices; seeking to the end gives the size without the addon.
        size = sizeBySeek(fd);
      } else if (!st.isFile()) throw new Error(`${path}: Not a block device or regular file`);
      return new FileMetaIo(fd, Math.floor(size / MD_BLOCK_SIZE));
    } catch (e) {
      fs.closeSync(fd);
      throw e;
    }
  }

  read(b: MetaBlock): Promise<Buffer> {
    const buf = Buffer.alloc(MD_BLOCK_SIZE);
    return new Promise((resolve, reject) =>
      fs.read(this.fd, buf, 0, MD_BLOCK_SIZE, b * MD_BLOCK_SIZE, (err, n) => {
        if (err) return reject(err);
        if (n < MD_BLOCK_SIZE) buf.fill(0, n);
        resolve(buf);
      }),
    );
  }
  write(b: MetaBlock, buf: Buffer): Promise<void> {
    return new Promise((resolve, reject) => fs.write(this.fd, buf, 0, MD_BLOCK_SIZE, b * MD_BLOCK_SIZE, (err) => (err ? reject(err) : resolve())));
  }
  flush(): Promise<void> {
    return new Promise((resolve, reject) => fs.fdatasync(this.fd, (err) => (err ? reject(err) : resolve())));
  }
  async close(): Promise<void> {
    fs.closeSync(this.fd);
  }
}

function sizeBySeek(fd: number): number {
  // fs has no lseek; read the size from /sys via the device number instead.
  const st = fs.fstatSync(fd);
  const major = Number(((BigInt(st.rdev) >> 8n) & 0xfffn) | ((BigInt(st.rdev) >> 32n) & ~0xfffn));
  const minor = Number((BigInt(st.rdev) & 0xffn) | ((BigInt(st.rdev) >> 12n) & ~0xffn));
  const sectors = Number(fs.readFileSync(`/sys/dev/block/${major}:${minor}/size`, "utf8").trim());
  return sectors * 512;
}
