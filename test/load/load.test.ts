import fs from "node:fs";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startDaemon, type TestDaemon } from "../helpers/daemon.js";
import { call, connect, failure, type ApiClient } from "../helpers/client.js";
import { NbdClient } from "../helpers/nbd-client.js";

const byName = (name: string) => ({ by: { $case: "name" as const, value: name } });
const linear = (file: string, sectors: number) => [{ startSector: 0n, lengthSectors: BigInt(sectors), targetType: "linear", params: `${file} 0` }];

let d: TestDaemon;
let api: ApiClient;

beforeAll(async () => {
  d = await startDaemon({ args: ["--max-devices", "64", "--nbd-max-connections", "80"], env: { TSDM_LOG_LEVEL: "info" } });
  api = connect(d.socket);
});
afterAll(async () => {
  api?.close();
  await d?.stop();
  d?.cleanup();
});

const fdCount = (pid: number) => fs.readdirSync(`/proc/${pid}/fd`).length;
const rssKiB = (pid: number) => Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, "utf8"))![1]);

/** Each client writes its own stripe of blocks with a pattern naming it, then reads everything back. */
async function clientWorkload(c: NbdClient, id: number, blocks: number[], blockSize: number): Promise<void> {
  for (const b of blocks) {
    const buf = Buffer.alloc(blockSize, (id * 31 + b) & 0xff);
    buf.writeUInt32LE(id, 0);
    buf.writeUInt32LE(b, 4);
    await c.write(b * blockSize, buf, b % 7 === 0);
  }
  await c.flush();
  for (const b of blocks) {
    const got = await c.read(b * blockSize, blockSize);
    expect(got.readUInt32LE(0)).toBe(id);
    expect(got.readUInt32LE(4)).toBe(b);
  }
}

describe("load", () => {
  it("32 concurrent NBD clients on one device, each on its own blocks, all data intact", async () => {
    const file = path.join(d.dir, "shared.img");
    fs.writeFileSync(file, "");
    fs.truncateSync(file, 32 << 20);
    await call(api, api.createDevice, { name: "shared", uuid: "", table: linear(file, 65536), readOnly: false });
    const clients = await Promise.all(Array.from({ length: 32 }, () => NbdClient.connect(d.nbdSocket, "shared")));
    expect((await call(api, api.getInfo, { device: byName("shared"), inactive: false })).device!.openCount).toBe(32);
    await Promise.all(clients.map((c, id) => clientWorkload(c, id, Array.from({ length: 16 }, (_, k) => k * 32 + id), 4096)));
    // The backing file has exactly what each client wrote.
    const img = fs.readFileSync(file);
    for (let id = 0; id < 32; id++) for (let k = 0; k < 16; k++) expect(img.readUInt32LE((k * 32 + id) * 4096)).toBe(id);
    await Promise.all(clients.map((c) => c.disconnect()));
    await call(api, api.removeDevice, { device: byName("shared"), force: false, deferred: false, retry: false });
  });

  it("16 devices with 4 clients each, concurrently", async () => {
    const names = Array.from({ length: 16 }, (_, i) => `many-${i}`);
    for (const n of names) {
      const f = path.join(d.dir, `${n}.img`);
      fs.writeFileSync(f, "");
      fs.truncateSync(f, 4 << 20);
      await call(api, api.createDevice, { name: n, uuid: "", table: linear(f, 8192), readOnly: false });
    }
    await Promise.all(
      names.map(async (n) => {
        const cs = await Promise.all(Array.from({ length: 4 }, () => NbdClient.connect(d.nbdSocket, n)));
        await Promise.all(cs.map((c, id) => clientWorkload(c, id, [id, id + 4, id + 8, id + 12], 65536)));
        await Promise.all(cs.map((c) => c.disconnect()));
      }),
    );
    for (const n of names) await call(api, api.removeDevice, { device: byName(n), force: false, deferred: false, retry: false });
  });

  it("refuses connections beyond --nbd-max-connections and devices beyond --max-devices, with clear errors", async () => {
    await call(api, api.createDevice, { name: "lim", uuid: "", table: [{ startSector: 0n, lengthSectors: 8n, targetType: "zero", params: "" }], readOnly: false });
    const held = await Promise.all(Array.from({ length: 80 }, () => NbdClient.connect(d.nbdSocket, "lim")));
    await expect(NbdClient.connect(d.nbdSocket, "lim")).rejects.toThrow();
    await Promise.all(held.map((c) => c.disconnect()));
    // After the others left, a new client gets in again.
    const again = await NbdClient.connect(d.nbdSocket, "lim");
    await again.disconnect();
    await call(api, api.removeDevice, { device: byName("lim"), force: false, deferred: false, retry: false });

    for (let i = 0; i < 64; i++) await call(api, api.createDevice, { name: `cap-${i}`, uuid: "", table: [], readOnly: false });
    const over = await failure(call(api, api.createDevice, { name: "cap-64", uuid: "", table: [], readOnly: false }));
    expect(over).toMatchObject({ errno: "ENOSPC" });
    expect(over.details).toMatch(/device limit reached \(64/);
    const res = await call(api, api.removeAll, { force: false, deferred: false, retry: false });
    expect(res.removed).toHaveLength(64);
  });

  it("1000 create/remove cycles keep file descriptors and memory stable", async () => {
    const pid = d.proc.pid!;
    const file = path.join(d.dir, "cycle.img");
    fs.writeFileSync(file, "");
    fs.truncateSync(file, 1 << 20);
    const cycle = async (i: number) => {
      await call(api, api.createDevice, { name: "cycle", uuid: `U-${i}`, table: linear(file, 2048), readOnly: false });
      if (i % 50 === 0) {
        const c = await NbdClient.connect(d.nbdSocket, "cycle");
        await c.write(0, Buffer.alloc(4096, i & 0xff));
        await c.disconnect();
      }
      await call(api, api.removeDevice, { device: byName("cycle"), force: false, deferred: false, retry: false });
    };
    for (let i = 0; i < 100; i++) await cycle(i); // warm-up: JIT, pools, lazy allocations
    const fds0 = fdCount(pid);
    const rss0 = rssKiB(pid);
    for (let i = 100; i < 1100; i++) await cycle(i);
    const fds1 = fdCount(pid);
    const rss1 = rssKiB(pid);
    console.log(`1000 create/remove cycles: fds ${fds0} → ${fds1}, RSS ${rss0} KiB → ${rss1} KiB`);
    expect(fds1).toBeLessThanOrEqual(fds0 + 2);
    expect(rss1 - rss0).toBeLessThan(64 * 1024);
    expect((await call(api, api.listDevices, {})).devices).toEqual([]);
  }, 180_000);
});
