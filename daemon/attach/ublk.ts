import fs from "node:fs";
import { DmError, ERRNO, fromSystemError } from "../core/errors.js";
import type { Logger } from "../core/log.js";
import type { Sector } from "../core/units.js";
import type { Bio } from "../io/bio.js";
import type { MappedDevice } from "../device/mapped-device.js";
import { waitFor } from "./exec.js";
import { blockDeviceBusy, sysBlockDevno } from "./kernel-dev.js";
import { nativeAttach, type UblkHandle } from "./native-attach.js";
import { bootId, type AttachRecord } from "./records.js";
import type { Attacher, Attachment, AttachRequest } from "./types.js";

// ublksrv_io_desc op codes and flags (include/uapi/linux/ublk_cmd.h).
const UBLK_IO_OP_READ = 0;
const UBLK_IO_OP_WRITE = 1;
const UBLK_IO_OP_FLUSH = 2;
const UBLK_IO_OP_DISCARD = 3;
const UBLK_IO_OP_WRITE_ZEROES = 5;
const UBLK_IO_F_FUA = 1 << 13;
const UBLK_IO_F_NOUNMAP = 1 << 15;

const QUEUE_DEPTH = 64;
const MAX_IO_BYTES = 512 << 10;

/**
 * ublk (drivers/block/ublk_drv.c): the kernel hands block requests to the daemon over io_uring; the addon's
 * queue thread passes each one to JS, where it becomes a Bio submitted straight to the mapped device (no NBD
 * hop), and the result goes back as COMMIT_AND_FETCH_REQ. /dev/ublkbN is the block device.
 */
export class UblkAttacher implements Attacher {
  readonly method = "ublk" as const;

  constructor(private readonly opts: { log: Logger }) {}

  static unavailableReason(): string | undefined {
    if (process.getuid?.() !== 0) return "ublk devices need root";
    const a = nativeAttach.ublkAvailable();
    return a.control ? undefined : a.reason;
  }

  async attach(req: AttachRequest): Promise<Attachment> {
    const dev = req.device;
    const handle: UblkHandle = nativeAttach.ublkCreate(
      { sizeBytes: req.sizeBytes, logicalBlockSize: req.logicalBlockSize, readOnly: req.readOnly, queueDepth: QUEUE_DEPTH, maxIoBytes: MAX_IO_BYTES },
      (tag, op, flags, sector, nrSectors, data) => serve(dev, handle, tag, op, flags, sector, nrSectors, data, this.opts.log),
    );
    try {
      await handle.start();
    } catch (err) {
      throw fromSystemError(err, `attach ${dev.name} via ublk`);
    }
    const kname = `ublkb${handle.devId}`;
    const ok = await waitFor(() => (fs.existsSync(`/sys/block/${kname}/dev`) && fs.existsSync(`/dev/${kname}`) ? true : undefined), 5_000);
    if (!ok) {
      await nativeAttach.ublkStop(handle).catch(() => undefined);
      throw new DmError("EIO", `/dev/${kname} did not appear after START_DEV`);
    }
    const devno = sysBlockDevno(kname);
    let detached: Promise<void> | undefined;
    return {
      node: { path: `/dev/${kname}`, major: devno.major, minor: devno.minor, method: "ublk" },
      sizeBytes: req.sizeBytes,
      readOnly: req.readOnly,
      nbdSessions: 0,
      ublkCookie: handle.cookie,
      detach: () => (detached ??= nativeAttach.ublkStop(handle).catch((err) => {
        throw fromSystemError(err, `detach /dev/${kname}`);
      })),
    };
  }
}

/**
 * The ublk device of a recorded attachment whose daemon died (SIGKILL): the kernel keeps it (/dev/ublkcN, and
 * its id) until someone deletes it. Deleted only if it is still the device that daemon added (ublksrv_flags
 * carry the recorded cookie) and no server holds it (native/ublk.cc). Returns false to keep the record for the
 * next start (still held, or a control command failed).
 */
export async function releaseRecordedUblk(rec: AttachRecord, log: Logger): Promise<boolean> {
  if (rec.method !== "ublk" || rec.bootId !== bootId()) return true;
  const devId = Number(/^\/dev\/ublkb(\d+)$/.exec(rec.kernel.path)?.[1] ?? NaN);
  if (rec.pid === undefined || rec.ublkCookie === undefined || !Number.isInteger(devId)) {
    log.warn("ublk device of a previous run left alone: its record (older version) cannot tell it apart", { device: rec.device, blockDevice: rec.kernel.path });
    return true;
  }
  // DEL_DEV (the fallback for kernels without DEL_DEV_ASYNC) waits for the disk's release: only if nothing holds it.
  const held = blockDeviceBusy(rec.kernel);
  const r = await nativeAttach.ublkDeleteOrphan(devId, rec.pid, rec.ublkCookie, held === undefined);
  const fields = { device: rec.device, devId, pid: rec.pid, why: held && r.status === "in-use" ? `${r.reason}: ${held}` : r.reason };
  switch (r.status) {
    case "deleted":
      log.info(`deleted ublk device ${devId} left by a previous daemon (pid ${rec.pid})`, fields);
      return true;
    case "gone":
      return true;
    case "foreign":
      log.info(`ublk device ${devId} is no longer the previous daemon's; left alone`, fields);
      return true;
    default:
      log.error(`cannot delete ublk device ${devId} left by a previous daemon (pid ${rec.pid}); the next start tries again`, fields);
      return false;
  }
}

/** One kernel request → one Bio on the mapped device → its result back to the kernel. Never throws. */
function serve(dev: MappedDevice, handle: UblkHandle, tag: number, op: number, flags: number, sector: number, nrSectors: number, data: Buffer | undefined, log: Logger): void {
  const bytes = nrSectors * 512;
  let bio: Bio;
  const fua = (flags & UBLK_IO_F_FUA) !== 0;
  const s = sector as Sector;
  const n = nrSectors as Sector;
  switch (op) {
    case UBLK_IO_OP_READ:
      bio = { op: "read", sector: s, count: n, data: Buffer.allocUnsafe(bytes), fua: false };
      break;
    case UBLK_IO_OP_WRITE:
      bio = { op: "write", sector: s, count: n, data, fua };
      break;
    case UBLK_IO_OP_FLUSH:
      bio = { op: "flush", sector: 0 as Sector, count: 0 as Sector, fua: false };
      break;
    case UBLK_IO_OP_DISCARD:
      bio = { op: "discard", sector: s, count: n, fua };
      break;
    case UBLK_IO_OP_WRITE_ZEROES:
      bio = { op: "write_zeroes", sector: s, count: n, fua, noUnmap: (flags & UBLK_IO_F_NOUNMAP) !== 0 };
      break;
    default:
      handle.complete(tag, -ERRNO.EOPNOTSUPP);
      return;
  }
  dev.submit(bio).then(
    () => handle.complete(tag, op === UBLK_IO_OP_READ || op === UBLK_IO_OP_WRITE ? bytes : 0, op === UBLK_IO_OP_READ ? bio.data : undefined),
    (err: unknown) => {
      const errno = err instanceof DmError ? ERRNO[err.errno] : ERRNO.EIO;
      log.debug("ublk request failed", { device: dev.name, op, sector, nrSectors, errno });
      handle.complete(tag, -errno);
    },
  );
}
