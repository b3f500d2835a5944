import fs from "node:fs";
import type { Bio } from "./bio.js";
import type { BlockDevice } from "./block-device.js";
import { NOWAIT_UNSUPPORTED, native } from "./native.js";
import { claimBlockDevice, type BlockClaim } from "./block-claims.js";
import { onUserspaceBlockDevice } from "./backing-fs.js";
import { MAX_ALLOCATION_RUNS, dataRun, holeRun, pushRun, type AllocationRun } from "./allocation.js";
import { DmError, fromSystemError } from "../core/errors.js";
import { SECTOR_SIZE, type Sector } from "../core/units.js";

/**
 * A regular file or a kernel block device used as an underlying device. Reads and writes go through the page
 * cache (pread/pwrite on the libuv pool); FUA writes go through a second descriptor opened O_DSYNC so that only
 * that write waits for the disk; flush is fdatasync. Discards punch holes in files and become BLKDISCARD on
 * block devices. A block device is claimed exclusively while open, as dm does (block-claims.ts).
 *
 * Elsewhere, small reads and writes first try RWF_NOWAIT on the calling thread: what the page cache holds is
 * copied at once (the pool round trip is most of a 4 KiB request's latency), and what would wait (a page to
 * read from disk, a lock, dirty throttling, block allocation) goes to the pool as before. Files that refuse
 * RWF_NOWAIT (buffered writes on ext4) stop being tried, and files on file systems that userspace serves
 * (loop, nbd, ublk: maybe this daemon) never try it (backing-fs.ts).
 *
 * Files on tmpfs/ramfs are memory: a pread or pwrite of a few pages there costs a memcpy, while the round trip
 * through the libuv pool (queue, wake a worker, wake the loop) costs several times that in CPU and latency. Small
 * reads and writes to such files (up to SYNC_IO_MAX) are therefore done synchronously on the calling thread,
 * but a write only while no write of ours is on the pool: tmpfs serialises writes to a file on its inode lock,
 * so a small write behind a large one would hold the event loop for the whole large copy.
 */
export class FileDevice implements BlockDevice {
  readonly kernelName: string;
  private closed = false;
  /** Writes of this file running on the libuv pool (see the class comment). */
  private poolWrites = 0;
  /** RWF_NOWAIT is worth trying (cleared when the file refuses it). */
  private noWaitReads: boolean;
  private noWaitWrites: boolean;

  private constructor(
    readonly path: string,
    private readonly fd: number,
    private readonly syncFd: number,
    readonly isBlockDevice: boolean,
    readonly size: Sector,
    readonly logicalBlockSize: number,
    readonly devno: { major: number; minor: number },
    readonly readOnly: boolean,
    /** On tmpfs/ramfs: small I/O is done synchronously (see the class comment). */
    readonly memoryBacked: boolean,
    /** RWF_NOWAIT may be tried (see the class comment). */
    noWait: boolean,
    private readonly claim: BlockClaim | undefined,
  ) {
    this.kernelName = isBlockDevice ? blockDeviceName(path) : path;
    this.noWaitReads = this.noWaitWrites = noWait && !memoryBacked;
  }

  get label(): string {
    return this.isBlockDevice ? `${this.devno.major}:${this.devno.minor}` : this.path;
  }

  static open(path: string, readOnly: boolean): FileDevice {
    let fd = -1;
    let syncFd = -1;
    let claim: BlockClaim | undefined;
    try {
      const mode = readOnly ? fs.constants.O_RDONLY : fs.constants.O_RDWR;
      fd = fs.openSync(path, mode);
      const st = fs.fstatSync(fd);
      const isBlock = st.isBlockDevice();
      if (!st.isFile() && !isBlock) throw new DmError("EINVAL", `${path} is neither a regular file nor a block device`);
      if (isBlock) claim = claimBlockDevice(path, st.rdev);
      syncFd = readOnly ? -1 : fs.openSync(path, mode | fs.constants.O_DSYNC);
      const sizeBytes = isBlock ? Number(native.blkGetSize64(fd)) : st.size;
      const lbs = isBlock ? native.blkLogicalBlockSize(fd) : 512;
      const devno = isBlock ? { major: major(st.rdev), minor: minor(st.rdev) } : { major: 0, minor: 0 };
      const memoryBacked = !isBlock && isMemoryFs(path);
      // A block device's own page cache is served by its driver: the device itself must not be one of ours.
      const noWait = isBlock ? !onUserspaceBlockDevice(devno.major, devno.minor) : !onUserspaceBlockDevice(major(st.dev), minor(st.dev));
      return new FileDevice(path, fd, syncFd, isBlock, Math.floor(sizeBytes / 512) as Sector, lbs, devno, readOnly, memoryBacked, noWait, claim);
    } catch (err) {
      claim?.release();
      if (fd >= 0) fs.closeSync(fd);
      if (syncFd >= 0) fs.closeSync(syncFd);
      throw fromSystemError(err, `cannot open ${path}`);
    }
  }

  submit(bio: Bio): Promise<void> {
    if (this.closed) return Promise.reject(new DmError("ENXIO", `${this.path} is closed`));
    const pos = bio.sector * 512;
    switch (bio.op) {
      case "read": {
        const buf = bio.data!;
        if (buf.length > SYNC_IO_MAX) return readFully(this.fd, buf, pos);
        if (this.memoryBacked) return settle(readFullySync, this.fd, buf, pos);
        if (!this.noWaitReads) return readFully(this.fd, buf, pos);
        const n = noWait(native.preadNoWait, this.fd, buf, pos);
        if (n instanceof Error) return Promise.reject(n);
        if (n === buf.length) return DONE;
        if (n === 0) return (buf.fill(0), DONE); // past the end of the file, as readFully
        if (n === NOWAIT_UNSUPPORTED) this.noWaitReads = false;
        return n > 0 ? readFully(this.fd, buf.subarray(n), pos + n) : readFully(this.fd, buf, pos);
      }
      case "write": {
        if (this.readOnly) return Promise.reject(new DmError("EROFS", `${this.path} is read-only`));
        const buf = bio.data!;
        const fd = bio.fua ? this.syncFd : this.fd;
        if (buf.length <= SYNC_IO_MAX) {
          if (this.memoryBacked) {
            if (this.poolWrites === 0) return settle(writeFullySync, fd, buf, pos);
          } else if (this.noWaitWrites && !bio.fua) {
            // Not FUA: an O_DSYNC write has to wait for the disk. A locked inode is EAGAIN here, not a wait.
            const n = noWait(native.pwriteNoWait, fd, buf, pos);
            if (n instanceof Error) return Promise.reject(n);
            if (n === buf.length) return DONE;
            if (n === NOWAIT_UNSUPPORTED) this.noWaitWrites = false;
            if (n > 0) return this.poolWrite(fd, buf.subarray(n), pos + n);
          }
        }
        return this.poolWrite(fd, buf, pos);
      }
      case "flush":
        return new Promise((resolve, reject) => fs.fdatasync(this.fd, (err) => (err ? reject(err) : resolve())));
      case "discard":
        return this.finish(
          this.isBlockDevice ? native.blkDiscard(this.fd, pos, bio.count * SECTOR_SIZE) : native.punchHole(this.fd, pos, bio.count * SECTOR_SIZE),
          bio.fua,
        );
      case "write_zeroes": {
        const len = bio.count * SECTOR_SIZE; // not <<: a 2 GiB+ range would overflow 32-bit shifts
        const op = this.isBlockDevice
          ? native.blkZeroOut(this.fd, pos, len)
          : bio.noUnmap
            ? native.zeroRange(this.fd, pos, len).catch(() => writeZeroBuffers(this.fd, pos, len))
            : native.punchHole(this.fd, pos, len);
        return this.finish(op, bio.fua);
      }
    }
  }

  private poolWrite(fd: number, buf: Buffer, pos: number): Promise<void> {
    this.poolWrites++;
    return writeFully(fd, buf, pos).finally(() => this.poolWrites--);
  }

  /**
   * Holes and data of a regular file (SEEK_DATA / SEEK_HOLE), for block status. Hole edges are rounded inwards
   * to sectors: what is reported as a hole must read as zeroes. A block device cannot tell: all data.
   */
  allocation(sector: Sector, count: Sector): AllocationRun[] {
    const end = (sector + count) * SECTOR_SIZE;
    if (this.isBlockDevice) return [dataRun(count)];
    const runs: AllocationRun[] = [];
    let pos = sector * SECTOR_SIZE;
    while (pos < end && runs.length < MAX_ALLOCATION_RUNS) {
      const next = native.seekData(this.fd, pos);
      const dataAt = next < 0 ? end : Math.min(end, Math.floor(next / SECTOR_SIZE) * SECTOR_SIZE);
      if (dataAt > pos) pushRun(runs, holeRun(((dataAt - pos) / SECTOR_SIZE) as Sector));
      if (dataAt >= end) break;
      const hole = native.seekHole(this.fd, Math.max(dataAt, pos));
      const holeAt = hole < 0 ? end : Math.min(end, Math.ceil(hole / SECTOR_SIZE) * SECTOR_SIZE);
      const from = Math.max(dataAt, pos);
      pushRun(runs, dataRun(((holeAt - from) / SECTOR_SIZE) as Sector));
      pos = holeAt;
    }
    return runs;
  }

  private async finish(op: Promise<void>, fua: boolean): Promise<void> {
    await op;
    if (fua) await new Promise<void>((resolve, reject) => fs.fdatasync(this.fd, (err) => (err ? reject(err) : resolve())));
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.all([closeFd(this.fd), this.syncFd >= 0 ? closeFd(this.syncFd) : undefined]);
    this.claim?.release(); // once nothing of ours writes to the device any more
  }
}

const DONE = Promise.resolve();

/** Largest request done on the calling thread (memory-backed, RWF_NOWAIT): beyond it the copy itself is worth a worker. */
const SYNC_IO_MAX = 64 << 10;
const TMPFS_MAGIC = 0x01021994;
const RAMFS_MAGIC = 0x858458f6;

function isMemoryFs(path: string): boolean {
  try {
    const t = fs.statfsSync(path).type;
    return t === TMPFS_MAGIC || t === RAMFS_MAGIC;
  } catch {
    return false;
  }
}

function noWait(io: (fd: number, buf: Buffer, pos: number) => number, fd: number, buf: Buffer, pos: number): number | Error {
  try {
    return io(fd, buf, pos);
  } catch (err) {
    return err as Error;
  }
}

function settle(io: (fd: number, buf: Buffer, pos: number) => void, fd: number, buf: Buffer, pos: number): Promise<void> {
  try {
    io(fd, buf, pos);
    return Promise.resolve();
  } catch (err) {
    return Promise.reject(err);
  }
}

function readFullySync(fd: number, buf: Buffer, pos: number): void {
  let done = 0;
  while (done < buf.length) {
    const n = fs.readSync(fd, buf, done, buf.length - done, pos + done);
    if (n === 0) {
      buf.fill(0, done); // past the end of the file, as readFully
      return;
    }
    done += n;
  }
}

function writeFullySync(fd: number, buf: Buffer, pos: number): void {
  let done = 0;
  while (done < buf.length) done += fs.writeSync(fd, buf, done, buf.length - done, pos + done);
}

function closeFd(fd: number): Promise<void> {
  return new Promise((resolve) => fs.close(fd, () => resolve()));
}

function readFully(fd: number, buf: Buffer, pos: number): Promise<void> {
  return new Promise((resolve, reject) => {
    let done = 0;
    const step = (): void => {
      fs.read(fd, buf, done, buf.length - done, pos + done, (err, n) => {
        if (err) return reject(err);
        if (n === 0) {
          buf.fill(0, done); // past the end of a file: reads as zeroes (the table cannot address past its size)
          return resolve();
        }
        done += n;
        if (done < buf.length) step();
        else resolve();
      });
    };
    step();
  });
}

function writeFully(fd: number, buf: Buffer, pos: number): Promise<void> {
  return new Promise((resolve, reject) => {
    let done = 0;
    const step = (): void => {
      fs.write(fd, buf, done, buf.length - done, pos + done, (err, n) => {
        if (err) return reject(err);
        done += n;
        if (done < buf.length) step();
        else resolve();
      });
    };
    step();
  });
}

const ZERO_CHUNK = Buffer.alloc(1 << 20);
async function writeZeroBuffers(fd: number, pos: number, len: number): Promise<void> {
  for (let off = 0; off < len; off += ZERO_CHUNK.length) {
    await writeFully(fd, ZERO_CHUNK.subarray(0, Math.min(ZERO_CHUNK.length, len - off)), pos + off);
  }
}

// glibc's encoding of dev_t.
export const major = (dev: number): number => Number(((BigInt(dev) >> 8n) & 0xfffn) | ((BigInt(dev) >> 32n) & ~0xfffn));
export const minor = (dev: number): number => Number((BigInt(dev) & 0xffn) | ((BigInt(dev) >> 12n) & ~0xffn));

function blockDeviceName(path: string): string {
  try {
    return fs.realpathSync(path).replace(/^\/dev\//, "");
  } catch {
    return path;
  }
}
