import fs from "node:fs";

/** A failure writing the replay target. */
export class ReplayWriteError extends Error {
  override readonly name = "ReplayWriteError";
}

const DISCARD_CHUNK = 1 << 30; // replay-log issues BLKDISCARD in ≤ 1 GiB pieces
const ZERO_CHUNK = Buffer.alloc(1 << 20);

/**
 * Where a log is replayed: an existing file or block device opened write-only (never created). Discards become
 * BLKDISCARD on block devices and punched holes in files; if the target refuses them, replay switches for good
 * to writing zeroes (unlike the C tool, of any length: it skipped ranges over 128 MiB, leaving stale data).
 */
export class ReplayTarget {
  private discardWorks = true;

  private constructor(
    readonly path: string,
    private readonly fd: number,
    readonly isBlockDevice: boolean,
    private readonly say: (line: string) => void,
  ) {}

  static open(path: string, say: (line: string) => void): ReplayTarget {
    let fd: number;
    try {
      fd = fs.openSync(path, fs.constants.O_WRONLY);
    } catch (err) {
      throw new ReplayWriteError(`Couldn't open replay file ${path}: ${(err as Error).message}`);
    }
    return new ReplayTarget(path, fd, fs.fstatSync(fd).isBlockDevice(), say);
  }

  write(buf: Buffer, len: number, offset: number): void {
    let done = 0;
    try {
      while (done < len) done += fs.writeSync(this.fd, buf, done, len - done, offset + done);
    } catch (err) {
      throw new ReplayWriteError(`Error writing data at byte ${offset + done}: ${(err as Error).message}`);
    }
  }

  async discard(offset: number, len: number): Promise<void> {
    for (let done = 0; done < len; ) {
      const chunk = Math.min(DISCARD_CHUNK, len - done);
      if (this.discardWorks) {
        // Loaded on first use: reading, finding and plain replays need no native code.
        const { native } = await import("../../daemon/io/native.js");
        try {
          await (this.isBlockDevice ? native.blkDiscard(this.fd, offset + done, chunk) : native.punchHole(this.fd, offset + done, chunk));
        } catch {
          this.discardWorks = false;
          this.say("replay device doesn't support discard, switching to writing zeros");
        }
      }
      if (!this.discardWorks) this.writeZeroes(offset + done, chunk);
      done += chunk;
    }
  }

  private writeZeroes(offset: number, len: number): void {
    for (let done = 0; done < len; done += ZERO_CHUNK.length) this.write(ZERO_CHUNK, Math.min(ZERO_CHUNK.length, len - done), offset + done);
  }

  fsync(): void {
    try {
      fs.fsyncSync(this.fd);
    } catch (err) {
      throw new ReplayWriteError(`Error syncing ${this.path}: ${(err as Error).message}`);
    }
  }

  close(): void {
    fs.closeSync(this.fd);
  }
}
