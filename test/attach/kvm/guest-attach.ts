// Runs INSIDE the kernel VM (../shared/tools/kvm): a tsdm device attached through the real kernel driver
// (`nbd` or `ublk`) by the NodeManager, then mkfs, mount, write, fsync, fstrim, umount, fsck, read back,
// remove-while-mounted (EBUSY) and detach. Usage: node --import tsx guest-attach.ts nbd|ublk BACKING_DEV
import crypto from "node:crypto";
import { spawn } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { NodeManager } from "../../../daemon/attach/node-manager.js";
import { createLogger } from "../../../daemon/core/log.js";
import type { Sector } from "../../../daemon/core/units.js";
import { DeviceRegistry } from "../../../daemon/device/registry.js";
import { NbdServer } from "../../../daemon/nbd/server.js";
import { registerBuiltinTargets } from "../../../daemon/targets/all.js";

const method = process.argv[2] as "nbd" | "ublk";
const backing = process.argv[3]!;
const t0 = Date.now();
const step = (msg: string): void => console.log(`[${((Date.now() - t0) / 1000).toFixed(1)}s] ${method}: ${msg}`);

function sh(cmd: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const c = spawn("sh", ["-c", cmd], { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    c.stdout.on("data", (b: Buffer) => (out += b.toString()));
    c.stderr.on("data", (b: Buffer) => (err += b.toString()));
    c.on("close", (code) => (code === 0 ? resolve(out) : reject(new Error(`${cmd}: exit ${code}\n${err}${out}`))));
  });
}

async function main(): Promise<void> {
  const work = fs.mkdtempSync(`/tmp/tsdm-${method}-`);
  const devDir = path.join(work, "dev");
  registerBuiltinTargets();
  const log = createLogger({ level: process.env.TSDM_LOG_LEVEL ?? "warn" });
  const registry = new DeviceRegistry(log, { devDir });
  const server = new NbdServer({ registry, log });
  const sock = path.join(work, "nbd.sock");
  await server.listenUnix(sock);
  const nodes = await NodeManager.start({ registry, mode: method, runDir: path.join(work, "run"), log, exportOf: (d) => ({ socket: sock, name: d.name }) });
  if (nodes.method !== method) throw new Error(`attached via ${nodes.method}, wanted ${method}`);

  const sectors = Number(await sh(`blockdev --getsz ${backing}`));
  const dev = registry.create({ name: "kvmvol" });
  await dev.serialize(async () => {
    await dev.load([{ start: 0 as Sector, length: sectors as Sector, type: "linear", params: `${backing} 0` }], false);
    await dev.resume({ noflush: false });
  });
  await nodes.settle(dev);
  const info = nodes.nodeFor(dev);
  if (!info) throw new Error(`not attached: ${nodes.failureOf(dev)}`);
  const node = path.join(devDir, "mapper", "kvmvol");
  step(`attached as ${info.path} (${info.major}:${info.minor}); ${(await sh(`ls -l ${node}`)).trim()}`);
  const size = Number(await sh(`blockdev --getsize64 ${node}`));
  if (size !== sectors * 512) throw new Error(`size ${size} != ${sectors * 512}`);

  const mnt = path.join(work, "mnt");
  fs.mkdirSync(mnt);
  await sh(`mkfs.ext4 -q -F ${node}`);
  await sh(`mount ${node} ${mnt}`);
  const blob = path.join(work, "blob");
  fs.writeFileSync(blob, crypto.randomBytes(4 << 20));
  await sh(`dd if=${blob} of=${mnt}/blob bs=1M conv=fsync status=none && head -c 8M /dev/urandom > ${mnt}/junk && sync -f ${mnt}`);
  const allocBefore = Number(await sh(`dd if=${backing} bs=1M iflag=direct status=none | tr -d '\\000' | wc -c`));
  await sh(`rm ${mnt}/junk && sync -f ${mnt}`);
  step(`fstrim: ${(await sh(`fstrim -v ${mnt}`)).trim()}`);
  const allocAfter = Number(await sh(`dd if=${backing} bs=1M iflag=direct status=none | tr -d '\\000' | wc -c`));
  // The virtio disk's discard zeroes (raw sparse image): the trimmed 8 MiB of random data must be gone.
  step(`non-zero bytes on the backing disk: ${allocBefore} before trim, ${allocAfter} after`);
  if (allocBefore - allocAfter < 7 << 20) throw new Error("fstrim did not reach the backing disk");

  const busy = await registry.remove(dev).then(
    () => "removed",
    (e: Error & { errno?: string }) => `${e.errno}: ${e.message}`,
  );
  step(`remove while mounted -> ${busy}`);
  if (!busy.startsWith("EBUSY")) throw new Error("remove of a mounted device did not fail with EBUSY");

  await sh(`umount ${mnt}`);
  await sh(`e2fsck -fn ${node}`);
  await sh(`mount -o ro ${node} ${mnt} && cmp ${blob} ${mnt}/blob && umount ${mnt}`);
  step("umount, e2fsck -fn clean, data read back bit-exact");
  await sh(`dd if=${blob} of=${node} bs=64k seek=100 oflag=direct status=none`);
  await sh(`cmp -n ${4 << 20} ${blob} ${backing} -i 0:${100 * 65536}`);
  step("dd oflag=direct lands on the backing disk");

  let final = { registry, dev, nodes, server };
  if (method === "nbd") {
    // Daemon crash with the file system mounted: a new server + node manager (as after a restart, with the
    // device restored from state) must reconnect the kernel device, and the mount carries on.
    await sh(`mount ${node} ${mnt} && cp ${blob} ${mnt}/before-crash && sync -f ${mnt}`);
    await server.close(); // the kernel's connection dies; the old NodeManager is abandoned, not stopped
    const registry2 = new DeviceRegistry(log, { devDir });
    const server2 = new NbdServer({ registry: registry2, log });
    await server2.listenUnix(sock);
    const dev2 = registry2.create({ name: "kvmvol" });
    await dev2.serialize(async () => {
      await dev2.load([{ start: 0 as Sector, length: sectors as Sector, type: "linear", params: `${backing} 0` }], false);
      await dev2.resume({ noflush: false });
    });
    const nodes2 = await NodeManager.start({ registry: registry2, mode: method, runDir: path.join(work, "run2"), log, exportOf: (d) => ({ socket: sock, name: d.name }) });
    await nodes2.settle(dev2);
    const info2 = nodes2.nodeFor(dev2);
    if (info2?.path !== info.path) throw new Error(`after restart attached as ${info2?.path}, expected the orphaned ${info.path} to be reconnected`);
    await sh(`cp ${blob} ${mnt}/after-crash && sync -f ${mnt} && umount ${mnt}`);
    await sh(`e2fsck -fn ${node} && mount -o ro ${node} ${mnt} && cmp ${blob} ${mnt}/before-crash && cmp ${blob} ${mnt}/after-crash && umount ${mnt}`);
    step(`daemon restart with the fs mounted: ${info.path} reconnected (NBD_CMD_RECONFIGURE), writes before and after intact, fsck clean`);
    final = { registry: registry2, dev: dev2, nodes: nodes2, server: server2 };
  }

  await final.registry.remove(final.dev);
  const left = [fs.existsSync(node) ? node : "", fs.existsSync(`/sys/block/${path.basename(info.path)}/pid`) && fs.readFileSync(`/sys/block/${path.basename(info.path)}/pid`, "utf8").trim() ? `${info.path} still connected` : ""].filter(Boolean);
  if (left.length) throw new Error(`left behind: ${left.join(", ")}`);
  step(`removed: node gone, ${info.path} detached`);
  await final.nodes.stop();
  await final.server.close();
  console.log(`PASS ${method}`);
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error(`FAIL ${method}: ${err instanceof Error ? err.stack : String(err)}`);
    process.exit(1);
  },
);
