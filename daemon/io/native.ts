import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

/** The C++ addon (native/blockops.cc): block-device and file syscalls Node lacks. */
export interface BlockOps {
  blkGetSize64(fd: number): bigint;
  blkLogicalBlockSize(fd: number): number;
  blkPhysicalBlockSize(fd: number): number;
  peerCred(fd: number): { pid: number; uid: number; gid: number };
  /** SO_SNDBUF (SO_SNDBUFFORCE where allowed); returns the size the kernel granted. */
  setSendBuffer(fd: number, bytes: number): number;
  /** lseek(SEEK_DATA): the next data offset at or after `offset`, or -1 when only a hole follows. */
  seekData(fd: number, offset: number): number;
  /** lseek(SEEK_HOLE): the next hole offset at or after `offset` (the file size at the latest), or -1 past the end. */
  seekHole(fd: number, offset: number): number;
  /** flock(LOCK_SH or LOCK_EX, non-blocking): false when another open file holds a conflicting lock. */
  tryFlock(fd: number, exclusive: boolean): boolean;
  /**
   * One preadv2/pwritev2 with RWF_NOWAIT on the calling thread: bytes done (possibly short), NOWAIT_AGAIN when
   * nothing could be done without waiting, NOWAIT_UNSUPPORTED when the file does not take RWF_NOWAIT.
   */
  preadNoWait(fd: number, buf: Buffer, offset: number): number;
  pwriteNoWait(fd: number, buf: Buffer, offset: number): number;
  punchHole(fd: number, offset: number | bigint, length: number | bigint): Promise<void>;
  zeroRange(fd: number, offset: number | bigint, length: number | bigint): Promise<void>;
  blkDiscard(fd: number, offset: number | bigint, length: number | bigint): Promise<void>;
  blkZeroOut(fd: number, offset: number | bigint, length: number | bigint): Promise<void>;
  punchHoleSync(fd: number, offset: number | bigint, length: number | bigint): void;
  /** One sd_notify datagram to `socketPath` ("@name": abstract). */
  sdNotify(socketPath: string, message: string): void;
}

export const NOWAIT_AGAIN = -1;
export const NOWAIT_UNSUPPORTED = -2;

function packageRoot(): string {
  // This module lives at <root>/daemon/io/native.ts (tsx) or <root>/dist/daemon/io/native.js (built).
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 5; i++) {
    const parent = path.dirname(dir);
    if (path.basename(dir) === "daemon") return path.basename(parent) === "dist" ? path.dirname(parent) : parent;
    dir = parent;
  }
  throw new Error("cannot locate the tsdm package root from " + import.meta.url);
}

const require = createRequire(import.meta.url);
export const native: BlockOps = require(path.join(packageRoot(), "build", "Release", "blockops.node"));
