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
    connections?: number;
    readOnly?: boolean;
    backend?: string;
  }): Promise<{ index: number; size: bigint; flags: number; connections: number }>;
  nbdDisconnect(index: number): Promise<void>;
  ublkAvailable(): { control: boolean; reason: string };
}

export const nativeAttach = native as unknown as NativeAttach;
