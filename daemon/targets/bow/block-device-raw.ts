import type { BlockDevice } from "../../io/block-device.js";
import type { Sector } from "../../core/units.js";
import { ShortReadError, ShortWriteError, type RawDevice } from "./raw-device.js";

/**
 * A target's underlying BlockDevice seen as a RawDevice, so the daemon can run vold's restore itself (bow does
 * when its table comes back after a daemon restart, as fs_mgr does at every boot). Every position the restore
 * uses is a whole number of 512-byte sectors; sync is a flush.
 */
export class BlockDeviceRaw implements RawDevice {
  readonly path: string;
  readonly size: number;

  constructor(private readonly dev: BlockDevice) {
    this.path = dev.label;
    this.size = dev.size * 512;
  }

  async read(pos: number, length: number): Promise<Buffer> {
    if (!Number.isSafeInteger(pos) || pos < 0 || pos + length > this.size) throw new ShortReadError(`read of ${length} bytes at ${pos} is beyond the end of ${this.path}`);
    const first = Math.floor(pos / 512);
    const count = Math.ceil((pos + length) / 512) - first;
    const data = Buffer.alloc(count * 512);
    await this.dev.submit({ op: "read", sector: first as Sector, count: count as Sector, data, fua: false });
    return data.subarray(pos - first * 512, pos - first * 512 + length);
  }

  async write(pos: number, data: Buffer): Promise<void> {
    if (!Number.isSafeInteger(pos) || pos < 0 || pos + data.length > this.size || pos % 512 !== 0 || data.length % 512 !== 0) {
      throw new ShortWriteError(`write of ${data.length} bytes at ${pos} is not inside whole sectors of ${this.path}`);
    }
    await this.dev.submit({ op: "write", sector: (pos / 512) as Sector, count: (data.length / 512) as Sector, data, fua: false });
  }

  async sync(): Promise<void> {
    await this.dev.submit({ op: "flush", sector: 0 as Sector, count: 0 as Sector, fua: false });
  }

  close(): void {}
}
