import fs from "node:fs";
import type { Bio } from "./bio.js";
import type { BlockDevice } from "./block-device.js";
import { native } from "./native.js";
import { DmError, fromSystemError } from "../core/errors.js";
import { SECTOR_SHIFT, type Sector } from "../core/units.js";

/**
 * A regular file or a kernel block device used as an underlying device. Reads and writes go through the page
 * cache (pread/pwrite on the libuv pool); FUA writes go through a second descriptor opened O_DSYNC so that only
 * that write waits for the disk; flush is fdatasync. Discards punch holes in files and become BLKDISCARD on
 * block devices.
 */
export class FileDevice implements BlockDevice {
  readonly kernelName: string;
  private closed = false;

  private constructor(
    readonly path: string,
    private readonly fd: number,
    private readonly syncFd: number,
    readonly isBlockDevice: boolean,
    readonly size: Sector,
    readonly logicalBlockSize: number,
    readonly devno: { major: number; minor: number },
    readonly readOnly: boolean,
  ) {
    this.kernelName = isBlockDevice ? blockDeviceName(path) : path;
  }

  get label(): string {
    return this.isBlockDevice ? `${this.devno.major}:${this.devno.minor}` : this.path;
  }

  static open(path: string, readOnly: boolean): FileDevice {
    let fd = -1;
    let syncFd = -1;
    try {
      const mode = readOnly ? fs.constants.O_RDONLY : fs.constants.O_RDWR;
      fd = fs.openSync(path, mode);
      const st = fs.fstatSync(fd);
      if (!st.isFile() && !st.isBlockDevice()) throw new DmError("EINVAL", `${path} is neither a regular file nor a block device`);
      syncFd = readOnly ? -1 : fs.openSync(path, mode | fs.constants.O_DSYNC);
      const isBlock = st.isBlockDevice();
      const sizeBytes = isBlock ? Number(native.blkGetSize64(fd)) : st.size;
      const lbs = isBlock ? native.blkLogicalBlockSize(fd) : 512;
      const devno = isBlock ? { major: major(st.rdev), minor: minor(st.rdev) } : { major: 0, minor: 0 };
      return new FileDevice(path, fd, syncFd, isBlock, Math.floor(sizeBytes / 512) as Sector, lbs, devno, readOnly);
    } catch (err) {
      if (fd >= 0) fs.closeSync(fd);
      if (syncFd >= 0) fs.closeSync(syncFd);
      throw fromSystemError(err, `cannot open ${path}`);
    }
  }

  submit(bio: Bio): Promise<void> {
    if (this.closed) return Promise.reject(new DmError("ENXIO", `${this.path} is closed`));
    const pos = bio.sector * 512;
    switch (bio.op) {
      case "read":
        return readFully(this.fd, bio.data!, pos);
      case "write":
        if (this.readOnly) return Promise.reject(new DmError("EROFS", `${this.path} is read-only`));
        return writeFully(bio.fua ? this.syncFd : this.fd, bio.data!, pos);
      case "flush":
        return new Promise((resolve, reject) => fs.fdatasync(this.fd, (err) => (err ? reject(err) : resolve())));
      case "discard":
        return this.finish(
          this.isBlockDevice ? native.blkDiscard(this.fd, pos, bio.count << SECTOR_SHIFT) : native.punchHole(this.fd, pos, bio.count << SECTOR_SHIFT),
          bio.fua,
        );
      case "write_zeroes": {
        const len = bio.count << SECTOR_SHIFT;
        const op = this.isBlockDevice
          ? native.blkZeroOut(this.fd, pos, len)
          : bio.noUnmap
            ? native.zeroRange(this.fd, pos, len).catch(() => writeZeroBuffers(this.fd, pos, len))
            : native.punchHole(this.fd, pos, len);
        return this.finish(op, bio.fua);
      }
    }
  }

  private async finish(op: Promise<void>, fua: boolean): Promise<void> {
    await op;
    if (fua) await new Promise<void>((resolve, reject) => fs.fdatasync(this.fd, (err) => (err ? reject(err) : resolve())));
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.all([closeFd(this.fd), this.syncFd >= 0 ? closeFd(this.syncFd) : undefined]);
  }
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
