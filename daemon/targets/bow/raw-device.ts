/**
 * The lower device (or an image of it) as vold sees it during a restore: positioned reads and writes, and
 * fsync. `tsdm bow-restore` uses blocking I/O on a file or block device (tools/bow-restore/raw-device.ts);
 * the daemon runs the same restore over a target's BlockDevice (block-device-raw.ts).
 */
export interface RawDevice {
  readonly path: string;
  /** Size in bytes. */
  readonly size: number;
  /** Exactly `length` bytes at `pos`; throws ShortReadError when the device ends first. */
  read(pos: number, length: number): Promise<Buffer> | Buffer;
  write(pos: number, data: Buffer): Promise<void> | void;
  sync(): Promise<void> | void;
  close(): Promise<void> | void;
}

export class ShortReadError extends Error {
  override readonly name = "ShortReadError";
}

export class ShortWriteError extends Error {
  override readonly name = "ShortWriteError";
}
