import fs from "node:fs";
import { DmError, fromSystemError } from "../core/errors.js";
import type { Logger } from "../core/log.js";
import { waitFor } from "./exec.js";
import { sysBlockDevno } from "./kernel-dev.js";
import { nativeAttach } from "./native-attach.js";
import type { Attacher, Attachment, AttachRequest } from "./types.js";

/**
 * The kernel NBD client (drivers/block/nbd.c): the addon does the NBD handshake on the daemon's own unix
 * socket (simple replies only) and hands the connected sockets to the kernel with NBD_CMD_CONNECT over
 * generic netlink. The kernel then talks NBD to the daemon directly; /dev/nbdN is the block device.
 */
export class KernelNbdAttacher implements Attacher {
  readonly method = "nbd" as const;

  constructor(private readonly opts: { log: Logger; connections?: number; timeoutSec?: number; deadConnTimeoutSec?: number }) {}

  static unavailableReason(): string | undefined {
    if (process.getuid?.() !== 0) return "NBD_CMD_CONNECT needs CAP_SYS_ADMIN";
    const a = nativeAttach.nbdAvailable();
    return a.genl ? undefined : `kernel nbd driver not available (${a.reason})`;
  }

  async attach(req: AttachRequest): Promise<Attachment> {
    // The backend id names the export for good: after a daemon crash the next daemon finds the device by it.
    const backend = `tsdm:${req.export.socket}#${req.export.name}`;
    const params = {
      socketPath: req.export.socket,
      exportName: req.export.name,
      blockSize: Math.max(512, req.logicalBlockSize),
      connections: this.opts.connections ?? 1,
      timeoutSec: this.opts.timeoutSec ?? 0,
      // I/O on a mounted node waits this long for a restarted daemon instead of failing at once.
      deadConnTimeoutSec: this.opts.deadConnTimeoutSec ?? 120,
      readOnly: req.readOnly,
      backend,
    };
    let r: { index: number; size: bigint; connections: number } | undefined;
    const orphan = findOrphan(backend, req.sizeBytes);
    if (orphan !== undefined) {
      try {
        r = await nativeAttach.nbdConnect({ ...params, index: orphan, reconfigure: true });
        r = { ...r, size: BigInt(req.sizeBytes) };
        this.opts.log.info("reconnected kernel nbd device left by a previous daemon", { device: req.export.name, nbd: `nbd${orphan}` });
      } catch (err) {
        this.opts.log.warn("cannot reconnect orphaned nbd device; attaching a new one", { nbd: `nbd${orphan}`, error: String(err) });
      }
    }
    try {
      r ??= await nativeAttach.nbdConnect(params);
    } catch (err) {
      throw fromSystemError(err, `attach ${req.export.name} via kernel nbd`);
    }
    const kname = `nbd${r.index}`;
    // The gendisk's size is set by the time CONNECT returns; wait for sysfs to show it (udev-less systems).
    const ok = await waitFor(() => (fs.existsSync(`/sys/block/${kname}/dev`) && fs.existsSync(`/dev/${kname}`) ? true : undefined), 5_000);
    if (!ok) {
      await nativeAttach.nbdDisconnect(r.index).catch(() => undefined);
      throw new DmError("EIO", `/dev/${kname} did not appear after NBD_CMD_CONNECT`);
    }
    const devno = sysBlockDevno(kname);
    const log = this.opts.log;
    let detached: Promise<void> | undefined;
    return {
      node: { path: `/dev/${kname}`, major: devno.major, minor: devno.minor, method: "nbd" },
      sizeBytes: Number(r.size),
      readOnly: req.readOnly,
      nbdSessions: r.connections,
      detach: () => (detached ??= (async () => {
        await nativeAttach.nbdDisconnect(r.index).catch((err) => {
          throw fromSystemError(err, `detach /dev/${kname}`);
        });
        // NBD_CMD_DISC goes out and the kernel drops the sockets: wait until the device reports no pid.
        const idle = await waitFor(() => (readPid(kname) ? undefined : true), 10_000);
        if (!idle) log.warn("nbd device still connected after disconnect", { device: kname });
      })()),
    };
  }
}

/** An nbd device a previous daemon attached for this export (same backend id and size), if any. */
function findOrphan(backend: string, sizeBytes: number): number | undefined {
  let names: string[];
  try {
    names = fs.readdirSync("/sys/block").filter((n) => /^nbd\d+$/.test(n));
  } catch {
    return undefined;
  }
  for (const n of names) {
    try {
      if (fs.readFileSync(`/sys/block/${n}/backend`, "utf8").trim() !== backend) continue;
      if (Number(fs.readFileSync(`/sys/block/${n}/size`, "utf8")) * 512 !== sizeBytes) continue;
      return Number(n.slice(3));
    } catch {
      /* no backend attribute: not ours */
    }
  }
  return undefined;
}

function readPid(kname: string): string | undefined {
  try {
    return fs.readFileSync(`/sys/block/${kname}/pid`, "utf8").trim() || undefined;
  } catch {
    return undefined;
  }
}
