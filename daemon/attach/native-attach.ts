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
  /**
   * Off the event loop: delete ublk device `devId` if it is the one the dead daemon `pid` added with `cookie`
   * (UblkHandle.cookie) and no server holds it: STOP_DEV, then DEL_DEV_ASYNC, or the waiting DEL_DEV where the
   * kernel lacks that and `allowSyncDel` says nothing holds the disk. Never rejects.
   */
  ublkDeleteOrphan(devId: number, pid: number, cookie: string, allowSyncDel: boolean): Promise<UblkOrphanResult>;
}

/**
 * deleted; gone (no such device, or no ublk_drv); foreign (not that daemon's device, or served by another
 * process: left alone); in-use (its char device is still open, or the disk is held where only the waiting
 * DEL_DEV exists: try again later); failed (a control command failed).
 */
export interface UblkOrphanResult {
  deleted: boolean;
  status: "deleted" | "gone" | "foreign" | "in-use" | "failed";
  reason: string;
}

/** A started ublk device (native/ublk.cc); complete() answers request `tag` with bytes done or -errno. */
export interface UblkHandle {
  readonly devId: number;
  /** 16 hex digits, random per device, put into its ublksrv_flags at ADD_DEV: names it after a crash. */
  readonly cookie: string;
  /** ADD_DEV … START_DEV. Requests arrive (and must be completed) before it resolves: add_disk reads the disk. */
  start(): Promise<UblkHandle>;
  complete(tag: number, result: number, data?: Buffer): void;
}

export const nativeAttach = native as unknown as NativeAttach;
