import fs from "node:fs";
import { ShortReadError, ShortWriteError, type RawDevice } from "../../daemon/targets/bow/raw-device.js";

export { ShortReadError, ShortWriteError, type RawDevice };

/** Observer of every write and sync, in order (the hidden stepping hook used by crash tests). */
export type StepHook = (what: "write" | "sync", pos: number, length: number) => void;

/** The image is locked (flock) by another process: a bow device in tsdmd using it, or another restore. */
export class ImageBusyError extends Error {
  override readonly name = "ImageBusyError";
  readonly code = "EBUSY";
}

/** A file or block device, with blocking I/O: the restore runs before anything else uses the device. */
export class FileRawDevice implements RawDevice {
  private constructor(
    readonly path: string,
    private readonly fd: number,
    readonly size: number,
    private readonly step?: StepHook,
  ) {}

  /**
   * Open a file or block device, refusing one that something else uses, as vold effectively needs. A block
   * device is opened O_EXCL: a mounted or otherwise claimed device is refused with EBUSY. A file has no such
   * claim, so it is locked with flock(LOCK_EX | LOCK_NB), which fails while tsdmd holds a bow device on it
   * (the bow target keeps a shared flock on its image) or another restore runs: ImageBusyError.
   */
  static async open(path: string, opts: { readOnly: boolean; step?: StepHook }): Promise<FileRawDevice> {
    const st = fs.statSync(path);
    if (!st.isFile() && !st.isBlockDevice()) throw new Error(`${path} is neither a regular file nor a block device`);
    let flags = opts.readOnly ? fs.constants.O_RDONLY : fs.constants.O_RDWR;
    if (st.isBlockDevice()) flags |= fs.constants.O_EXCL;
    const fd = fs.openSync(path, flags);
    try {
      const { native } = await import("../../daemon/io/native.js");
      let size = st.size;
      if (st.isBlockDevice()) size = Number(native.blkGetSize64(fd));
      else if (!native.tryFlock(fd, true)) throw new ImageBusyError("locked by another process (a bow device in tsdmd, or another bow-restore)");
      return new FileRawDevice(path, fd, size, opts.step);
    } catch (err) {
      fs.closeSync(fd);
      throw err;
    }
  }

  read(pos: number, length: number): Buffer {
    if (!Number.isSafeInteger(pos) || pos < 0 || pos + length > this.size) {
      throw new ShortReadError(`read of ${length} bytes at ${pos} is beyond the end of ${this.path} (${this.size} bytes)`);
    }
    const buf = Buffer.alloc(length);
    for (let done = 0; done < length; ) {
      const n = fs.readSync(this.fd, buf, done, length - done, pos + done);
      if (n === 0) throw new ShortReadError(`short read at ${pos + done} of ${this.path}`);
      done += n;
    }
    return buf;
  }

  write(pos: number, data: Buffer): void {
    if (!Number.isSafeInteger(pos) || pos < 0 || pos + data.length > this.size) {
      throw new ShortWriteError(`write of ${data.length} bytes at ${pos} is beyond the end of ${this.path} (${this.size} bytes)`);
    }
    for (let done = 0; done < data.length; ) done += fs.writeSync(this.fd, data, done, data.length - done, pos + done);
    this.step?.("write", pos, data.length);
  }

  sync(): void {
    fs.fsyncSync(this.fd);
    this.step?.("sync", 0, 0);
  }

  close(): void {
    fs.closeSync(this.fd);
  }
}
