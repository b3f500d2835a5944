// Runs INSIDE the kernel VM (../shared/tools/kvm): tsdmd --attach ublk is killed with SIGKILL while a file
// system is mounted on its node. The kernel keeps the ublk device (/dev/ublkcN); the next start must delete
// it (it was that daemon's) and attach the restored device on a new ublk device, with the data intact.
// Usage: node --import tsx guest-ublk-crash.ts BACKING_DEV
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { nativeAttach } from "../../../daemon/attach/native-attach.js";
import type { AttachRecord } from "../../../daemon/attach/records.js";
import { run, startDaemon, type TestDaemon } from "../../helpers/daemon.js";

const backing = process.argv[2]!;
const t0 = Date.now();
const step = (msg: string): void => console.log(`[${((Date.now() - t0) / 1000).toFixed(1)}s] ublk-crash: ${msg}`);

async function sh(cmd: string): Promise<string> {
  const r = await run("sh", ["-c", cmd]);
  if (r.code !== 0) throw new Error(`${cmd}: exit ${r.code}\n${r.stderr}${r.stdout}`);
  return r.stdout;
}

/** The kernel block device behind a /dev/mapper node: ublkbN. */
function kernelName(node: string): string {
  const { major, minor } = nativeAttach.splitDevno(fs.statSync(node, { bigint: true }).rdev);
  return path.basename(fs.readlinkSync(`/sys/dev/block/${major}:${minor}`));
}

async function main(): Promise<void> {
  let d: TestDaemon | undefined = await startDaemon({ args: ["--attach", "ublk"], env: { TSDM_LOG_LEVEL: "info" } });
  const ok = async (args: string[]): Promise<string> => {
    const r = await d!.tsdmsetup(args);
    if (r.code !== 0) throw new Error(`tsdmsetup ${args.join(" ")}: exit ${r.code}\n${r.stderr}`);
    return r.stdout;
  };
  const mnt = path.join(d.dir, "mnt");
  fs.mkdirSync(mnt);
  try {
    const sectors = Number(await sh(`blockdev --getsz ${backing}`));
    await ok(["create", "crashvol", "--table", `0 ${sectors} linear ${backing} 0`]);
    const node = path.join(d.devDir, "mapper", "crashvol");
    const first = kernelName(node);
    const devId = Number(first.replace("ublkb", ""));
    const pid = d.proc.pid!;
    step(`tsdmd (pid ${pid}) attached crashvol as /dev/${first}`);

    // The guards, while the daemon lives: a server holding the char device, and a cookie that is not the device's.
    const rec = JSON.parse(fs.readFileSync(path.join(d.stateDir, "attachments", `${first}.json`), "utf8")) as AttachRecord;
    if (rec.pid !== pid || !rec.ublkCookie) throw new Error(`record lacks pid/cookie: ${JSON.stringify(rec)}`);
    const alive = await nativeAttach.ublkDeleteOrphan(devId, pid, rec.ublkCookie, true);
    const other = await nativeAttach.ublkDeleteOrphan(devId, pid, "00000000deadbeef", true);
    if (alive.status !== "in-use" || other.status !== "foreign" || !fs.existsSync(`/sys/block/${first}`)) throw new Error(`a live device was not left alone: ${JSON.stringify({ alive, other })}`);
    step(`live server: ublkDeleteOrphan -> ${alive.status} (${alive.reason}); wrong cookie -> ${other.status} (${other.reason})`);

    const blob = path.join(d.dir, "blob");
    fs.writeFileSync(blob, crypto.randomBytes(1 << 20));
    await sh(`mkfs.ext4 -q -F ${node} && mount ${node} ${mnt} && cp ${blob} ${mnt}/blob && sync -f ${mnt}`);
    await d.kill();
    const charDev = `/sys/class/ublk-char/ublkc${devId}`;
    if (!fs.existsSync(charDev)) throw new Error(`${charDev} went away with the daemon: nothing to test`);
    step(`SIGKILL with ${mnt} mounted: ${charDev} still exists; /sys/block/${first} ${fs.existsSync(`/sys/block/${first}`) ? "still exists" : "is gone (the kernel stopped the disk)"}`);

    await d.restart();
    const deleted = `deleted ublk device ${devId} left by a previous daemon (pid ${pid})`;
    const line = d.log().split("\n").find((l) => l.includes(deleted));
    if (!line) throw new Error(`restart did not delete the orphan:\n${d.log()}`);
    step(`restart logged: ${line}`);
    if (fs.existsSync(charDev)) throw new Error(`${charDev} still exists after the restart`);
    const second = kernelName(node);
    if (second === first) throw new Error(`crashvol came back on /dev/${first} again`);
    step(`${charDev} gone; crashvol attached again as /dev/${second} while the dead disk is still mounted`);

    await sh(`umount ${mnt} || umount -l ${mnt}`); // the dead disk's file system: its I/O fails, it goes
    await sh(`mount ${node} ${mnt} && cmp ${blob} ${mnt}/blob && umount ${mnt} && e2fsck -fn ${node}`);
    step("the new attachment works: journal replayed, data written before the crash read back, e2fsck -fn clean");

    await ok(["remove", "crashvol"]);
    if (fs.existsSync(node) || fs.existsSync(`/sys/block/${second}`)) throw new Error("remove left the node or the ublk device behind");
    const code = await d.stop();
    if (code !== 0) throw new Error(`tsdmd exited with ${code}`);
    d.cleanup();
    d = undefined;
    console.log("PASS ublk-crash");
  } finally {
    await sh(`umount -l ${mnt}`).catch(() => undefined);
    if (d && d.proc.exitCode === null && d.proc.signalCode === null) await d.stop();
  }
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error(`FAIL ublk-crash: ${err instanceof Error ? err.stack : String(err)}`);
    process.exit(1);
  },
);
