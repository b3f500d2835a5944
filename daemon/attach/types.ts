import type { MappedDevice } from "../device/mapped-device.js";

/** How a mapped device reaches the kernel as a block device. */
export type AttachMethod = "ublk" | "nbd" | "fuse";
/** tsdmd --attach: a method, `auto` (best available: ublk > nbd > fuse) or `none`. */
export type AttachMode = "auto" | AttachMethod | "none";

/** An NBD export of the daemon: where the kernel-side client connects. */
export interface ExportRef {
  socket: string;
  name: string;
}

/** A kernel block device (/dev/loop3, /dev/nbd0, /dev/ublkb0) and its device number. */
export interface KernelNode {
  readonly path: string;
  readonly major: number;
  readonly minor: number;
  readonly method: AttachMethod;
}

export interface AttachRequest {
  readonly device: MappedDevice;
  readonly export: ExportRef;
  readonly sizeBytes: number;
  readonly logicalBlockSize: number;
  readonly readOnly: boolean;
}

/** One live attachment. detach() leaves nothing behind (no loop device, mount, process or nbd/ublk device). */
export interface Attachment {
  readonly node: KernelNode;
  readonly sizeBytes: number;
  readonly readOnly: boolean;
  /** NBD sessions the attachment holds on the device (each counts as an open of it): plumbing, not users. */
  readonly nbdSessions: number;
  /** ublk: the device's cookie (UblkHandle.cookie), kept in its attach record. */
  readonly ublkCookie?: string;
  detach(): Promise<void>;
}

export interface Attacher {
  readonly method: AttachMethod;
  attach(req: AttachRequest): Promise<Attachment>;
  /** Remove leftovers of a previous daemon run that died without detaching (best effort). */
  cleanupStale?(): Promise<void>;
}
