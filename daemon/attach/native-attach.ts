import { native } from "../io/native.js";

/** The attach entry points of the addon (native/devnode.cc, nbd_attach.cc, ublk.cc). */
export interface NativeAttach {
  mknodBlock(path: string, major: number, minor: number, mode: number, gid: number): void;
  splitDevno(rdev: bigint | number): { major: number; minor: number };
  nbdAvailable(): { genl: boolean; reason: string };
  nbdConnect(opts: {
    socketPath: string;
    exportName: string;
    index?: number;
    blockSize?: number;
    timeoutSec?: number;
    deadConnTimeoutSec?: number;
    reconfigure?: boolean;
    connections?: number;
    readOnly?: boolean;
    backend?: string;
  }): Promise<{ index: number; size: bigint; flags: number; connections: number }>;
  nbdDisconnect(index: number): Promise<void>;
  ublkAvailable(): { control: boolean; reason: string };
  ublkCreate(
    opts: { sizeBytes: number; logicalBlockSize: number; readOnly: boolean; queueDepth: number; maxIoBytes: number },
    onRequest: (tag: number, op: number, flags: number, sector: number, nrSectors: number, data: Buffer | undefined) => void,
  ): UblkHandle;
  ublkStop(handle: UblkHandle): Promise<void>;
}

/** A started ublk device (native/ublk.cc); complete() answers request `tag` with bytes done or -errno. */
export interface UblkHandle {
  readonly devId: number;
  /** ADD_DEV … START_DEV. Requests arrive (and must be completed) before it resolves: add_disk reads the disk. */
  start(): Promise<UblkHandle>;
  complete(tag: number, result: number, data?: Buffer): void;
}

export const nativeAttach = native as unknown as NativeAttach;
