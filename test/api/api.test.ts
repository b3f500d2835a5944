import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import { status as Code } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { HealthCheckResponse_ServingStatus, HealthClient } from "../../gen/grpc/health/v1/health.js";
import { credentials } from "@grpc/grpc-js";
import { WatchEventsResponse_Kind as Kind, type WatchEventsResponse } from "../../gen/tsdm/v1/tsdm.js";
import { ROOT, run, startDaemon, type TestDaemon } from "../helpers/daemon.js";
import { call, connect, failure, type ApiClient } from "../helpers/client.js";
import { RawClient } from "../nbd/raw-client.js";

const line = (start: number, length: number, targetType: string, params = "") => ({
  startSector: BigInt(start),
  lengthSectors: BigInt(length),
  targetType,
  params,
});
const byName = (name: string) => ({ by: { $case: "name" as const, value: name } });

let d: TestDaemon;
let api: ApiClient;
let backing: string;

beforeAll(async () => {
  d = await startDaemon();
  api = connect(d.socket);
  backing = path.join(d.dir, "backing.img");
  fs.writeFileSync(backing, Buffer.alloc(4 << 20, 0x5a));
});

afterAll(async () => {
  api?.close();
  await d?.stop();
  d?.cleanup();
});

describe("gRPC API over the unix socket", () => {
  it("creates the control socket 0600 and answers health checks", async () => {
    expect(fs.statSync(d.socket).mode & 0o777).toBe(0o600);
    const health = new HealthClient(`unix://${d.socket}`, credentials.createInsecure());
    const res = await new Promise<{ status: number }>((resolve, reject) =>
      health.check({ service: "tsdm.v1.DeviceMapperService" }, (err, r) => (err ? reject(err) : resolve(r))),
    );
    expect(res.status).toBe(HealthCheckResponse_ServingStatus.SERVING);
    health.close();
  });

  it("serves reflection with real descriptors (buf curl can list and call)", async () => {
    const buf = path.join(ROOT, "node_modules", ".bin", "buf");
    const list = await run(buf, ["curl", "--protocol", "grpc", "--http2-prior-knowledge", "--unix-socket", d.socket, "--list-services", "http://localhost"]);
    expect(list.stdout).toContain("tsdm.v1.DeviceMapperService");
    const ver = await run(buf, ["curl", "--protocol", "grpc", "--http2-prior-knowledge", "--unix-socket", d.socket, "http://localhost/tsdm.v1.DeviceMapperService/GetVersion"]);
    expect(JSON.parse(ver.stdout)).toMatchObject({ driverVersion: "4.48.0" });
  });

  it("create → info → table → status → message errors → remove, with kernel errnos", async () => {
    const created = await call(api, api.createDevice, { name: "lin", uuid: "TSDM-lin", table: [line(0, 8192, "linear", `${backing} 0`)], readOnly: false });
    expect(created.device).toMatchObject({ name: "lin", uuid: "TSDM-lin", major: 253, liveTable: true, suspended: false, targetCount: 1 });
    const table = await call(api, api.getTable, { device: byName("lin"), inactive: false });
    expect(table.lines).toEqual([line(0, 8192, "linear", `${backing} 0`)]);

    const dup = await failure(call(api, api.createDevice, { name: "lin", uuid: "", table: [], readOnly: false }));
    expect(dup).toMatchObject({ code: Code.ALREADY_EXISTS, errno: "EBUSY", op: "create" });

    const missing = await failure(call(api, api.getInfo, { device: byName("nosuch"), inactive: false }));
    expect(missing).toMatchObject({ code: Code.NOT_FOUND, errno: "ENXIO" });

    const msg = await failure(call(api, api.sendMessage, { device: byName("lin"), sector: 0n, message: "hello" }));
    expect(msg).toMatchObject({ code: Code.INVALID_ARGUMENT, errno: "EINVAL", op: "message" });

    await call(api, api.removeDevice, { device: byName("lin"), force: false, deferred: false, retry: false });
    expect((await call(api, api.listDevices, {})).devices).toEqual([]);
  });

  it("a failed create leaves nothing and names the failing step with the device number", async () => {
    const bad = await failure(call(api, api.createDevice, { name: "bad", uuid: "", table: [line(0, 8, "zero"), line(16, 8, "zero")], readOnly: false }));
    expect(bad).toMatchObject({ code: Code.INVALID_ARGUMENT, errno: "EINVAL", op: "reload" });
    expect(bad.devno).toMatch(/^253:\d+$/);
    expect(bad.details).toMatch(/gap/);
    const gone = await failure(call(api, api.getInfo, { device: byName("bad"), inactive: false }));
    expect(gone.errno).toBe("ENXIO");
    const noFile = await failure(call(api, api.createDevice, { name: "bad", uuid: "", table: [line(0, 8, "linear", "/nonexistent/file 0")], readOnly: false }));
    expect(noFile).toMatchObject({ errno: "ENOENT", op: "reload" });
    expect((await call(api, api.listDevices, {})).devices).toEqual([]);
  });

  it("load, suspend, resume, wait and the watch stream", async () => {
    const events: WatchEventsResponse[] = [];
    const stream = api.watchEvents({ name: "" });
    stream.on("data", (ev: WatchEventsResponse) => events.push(ev));
    stream.on("error", () => undefined);
    await new Promise((r) => setTimeout(r, 100));

    await call(api, api.createDevice, { name: "w", uuid: "", table: [line(0, 8, "zero")], readOnly: false });
    await call(api, api.loadTable, { device: byName("w"), table: [line(0, 16, "zero")], readOnly: false });
    let info = (await call(api, api.getInfo, { device: byName("w"), inactive: false })).device!;
    expect(info).toMatchObject({ liveTable: true, inactiveTable: true });
    await call(api, api.suspendDevice, { device: byName("w"), noflush: false, nolockfs: false });
    expect((await call(api, api.getInfo, { device: byName("w"), inactive: false })).device!.suspended).toBe(true);
    await call(api, api.resumeDevice, { device: byName("w"), noflush: false, nolockfs: false });
    info = (await call(api, api.getInfo, { device: byName("w"), inactive: false })).device!;
    expect(info).toMatchObject({ suspended: false, inactiveTable: false, sizeSectors: 16n });

    // wait returns once the event number moves (a rename of a device with a live table raises one).
    const waiting = call(api, api.waitEvent, { device: byName("w"), eventNr: info.eventNr });
    await call(api, api.renameDevice, { device: byName("w"), change: { $case: "newName", value: "w2" } });
    expect((await waiting).device!.eventNr).toBe(info.eventNr + 1);
    await call(api, api.removeDevice, { device: byName("w2"), force: false, deferred: false, retry: false });
    await new Promise((r) => setTimeout(r, 100));
    stream.cancel();
    const kinds = events.map((e) => e.kind);
    expect(kinds).toEqual(
      expect.arrayContaining([Kind.KIND_CREATED, Kind.KIND_LOADED, Kind.KIND_SUSPENDED, Kind.KIND_RESUMED, Kind.KIND_RENAMED, Kind.KIND_REMOVED]),
    );
    expect(kinds.indexOf(Kind.KIND_CREATED)).toBeLessThan(kinds.indexOf(Kind.KIND_REMOVED));
  });

  it("remove of an open device: EBUSY at once, or with retry it succeeds once the opener goes away", async () => {
    await call(api, api.createDevice, { name: "held", uuid: "", table: [line(0, 8, "zero")], readOnly: false });
    const client = await RawClient.connect(d.nbdSocket);
    await client.greet();
    await client.go("held");
    const busy = await failure(call(api, api.removeDevice, { device: byName("held"), force: false, deferred: false, retry: false }));
    expect(busy).toMatchObject({ code: Code.FAILED_PRECONDITION, errno: "EBUSY" });
    const t0 = Date.now();
    setTimeout(() => client.destroy(), 700);
    await call(api, api.removeDevice, { device: byName("held"), force: false, deferred: false, retry: true });
    expect(Date.now() - t0).toBeGreaterThanOrEqual(600);
    const gone = await failure(call(api, api.getInfo, { device: byName("held"), inactive: false }));
    expect(gone).toMatchObject({ errno: "ENXIO" });
  });

  it("writes an audit line for every mutating call, none for reads", async () => {
    await call(api, api.createDevice, { name: "aud", uuid: "", table: [line(0, 8, "zero")], readOnly: false });
    await call(api, api.getInfo, { device: byName("aud"), inactive: false });
    await failure(call(api, api.removeDevice, { device: byName("nosuch-aud"), force: false, deferred: false, retry: false }));
    await call(api, api.removeDevice, { device: byName("aud"), force: false, deferred: false, retry: false });
    const lines = fs.readFileSync(path.join(d.stateDir, "audit.log"), "utf8").trim().split("\n").map((l) => JSON.parse(l));
    const mine = lines.filter((l) => JSON.stringify(l.request ?? {}).includes("aud"));
    expect(mine.map((l) => [l.method, l.result])).toEqual([
      ["CreateDevice", "OK"],
      ["RemoveDevice", "NOT_FOUND"],
      ["RemoveDevice", "OK"],
    ]);
    expect(mine.every((l) => l.who === "local" && l.transport === "unix")).toBe(true);
    // The local caller's credentials (SO_PEERCRED): this test process.
    expect(mine.every((l) => l.peer === `uid=${process.getuid!()},gid=${process.getgid!()},pid=${process.pid}`)).toBe(true);
  });
});

describe("daemon lifecycle", () => {
  it("refuses a socket a live daemon owns, and replaces a stale one", async () => {
    const second = await run(process.execPath, [path.join(ROOT, "bin", "tsdmd.js"), "--socket", d.socket, "--nbd-socket", path.join(d.dir, "nbd2.sock"), "--state-dir", path.join(d.dir, "state2")]);
    expect(second.code).not.toBe(0);
    expect(second.stderr).toMatch(/in use by a running daemon/);
    expect(fs.existsSync(d.socket)).toBe(true);
  });

  it("refuses a second daemon on the same state dir (sockets elsewhere), naming the holder's pid; the first one is untouched", async () => {
    await call(api, api.createDevice, { name: "held", uuid: "", table: [line(0, 2048, "linear", `${backing} 0`)], readOnly: false });
    const saved = fs.readFileSync(path.join(d.stateDir, "devices.json"), "utf8");
    // Without the lock it would start and serve (killed by the timeout), so it gets nothing it could harm with.
    const args = ["--socket", path.join(d.dir, "s2.sock"), "--nbd-socket", path.join(d.dir, "nbd-s2.sock"), "--state-dir", d.stateDir, "--attach", "none"];
    const second = await run(process.execPath, [path.join(ROOT, "bin", "tsdmd.js"), ...args], { timeoutMs: 15_000, env: { DM_DEV_DIR: d.devDir } });
    expect(second.code).toBe(1);
    expect(second.stderr).toContain(`state dir ${d.stateDir} in use by pid ${d.proc.pid}`);
    expect(fs.existsSync(path.join(d.dir, "s2.sock")) || fs.existsSync(path.join(d.dir, "nbd-s2.sock"))).toBe(false);
    expect(fs.readFileSync(path.join(d.stateDir, "devices.json"), "utf8")).toBe(saved);
    expect((await call(api, api.getInfo, { device: byName("held"), inactive: false })).device?.liveTable).toBe(true);
    await call(api, api.removeDevice, { device: byName("held"), force: false, deferred: false, retry: false });
  });

  it("a start that fails after some listeners are up exits with an error instead of hanging", async () => {
    const busy = net.createServer();
    await new Promise<void>((r) => busy.listen(0, "127.0.0.1", () => r()));
    const port = (busy.address() as net.AddressInfo).port;
    try {
      const r = await run(
        process.execPath,
        [path.join(ROOT, "bin", "tsdmd.js"), "--socket", path.join(d.dir, "late.sock"), "--nbd-socket", path.join(d.dir, "late-nbd.sock"), "--state-dir", path.join(d.dir, "late-state"), "--nbd-listen", `127.0.0.1:${port}`],
        { timeoutMs: 30_000 },
      );
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(/tsdmd failed to start.*EADDRINUSE/);
      expect(fs.existsSync(path.join(d.dir, "late.sock"))).toBe(false);
    } finally {
      busy.close();
    }
  });

  it("brings devices back after kill -9, data intact; a device whose backing is gone comes back in an error state", async () => {
    const keep = path.join(d.dir, "keep.img");
    const lose = path.join(d.dir, "lose.img");
    fs.writeFileSync(keep, Buffer.alloc(1 << 20, 0x11));
    fs.writeFileSync(lose, Buffer.alloc(1 << 20, 0x22));
    await call(api, api.createDevice, { name: "keep", uuid: "U-keep", table: [line(0, 2048, "linear", `${keep} 0`)], readOnly: false });
    await call(api, api.createDevice, { name: "top", uuid: "", table: [line(0, 2048, "linear", "keep 0")], readOnly: false });
    await call(api, api.createDevice, { name: "lose", uuid: "", table: [line(0, 2048, "linear", `${lose} 0`)], readOnly: false });
    await call(api, api.loadTable, { device: byName("keep"), table: [line(0, 1024, "linear", `${keep} 0`)], readOnly: false });
    api.close();
    await d.kill();
    fs.rmSync(lose);
    await d.restart();
    api = connect(d.socket);
    const devs = (await call(api, api.listDevices, {})).devices;
    expect(devs.map((x) => x.name)).toEqual(["keep", "lose", "top"]);
    const keepInfo = devs.find((x) => x.name === "keep")!;
    expect(keepInfo).toMatchObject({ uuid: "U-keep", liveTable: true, inactiveTable: true, openCount: 1, errorState: "" });
    const loseInfo = devs.find((x) => x.name === "lose")!;
    expect(loseInfo.liveTable).toBe(false);
    expect(loseInfo.errorState).toMatch(/could not be restored.*lose\.img/);
    expect(d.log()).toMatch(/device restored in error state/);
    // A clean stop keeps the state too.
    api.close();
    expect(await d.stop()).toBe(0);
    await d.restart();
    api = connect(d.socket);
    expect((await call(api, api.listDevices, {})).devices.map((x) => x.name)).toEqual(["keep", "lose", "top"]);
    for (const n of ["top", "keep", "lose"]) await call(api, api.removeDevice, { device: byName(n), force: false, deferred: false, retry: false });
  });

  it("disk_added: false until a table loads (a failed load does not count), then true until remove, after clear and across restarts", async () => {
    await call(api, api.createDevice, { name: "nd", uuid: "", table: [], readOnly: false });
    await call(api, api.createDevice, { name: "cd", uuid: "", table: [], readOnly: false });
    const added = async () => Object.fromEntries((await call(api, api.listDevices, {})).devices.map((x) => [x.name, x.diskAdded]));
    expect(await added()).toEqual({ cd: false, nd: false });
    await expect(call(api, api.loadTable, { device: byName("cd"), table: [line(0, 8, "nosuch")], readOnly: false })).rejects.toThrow();
    expect(await added()).toEqual({ cd: false, nd: false });
    await call(api, api.loadTable, { device: byName("cd"), table: [line(0, 8, "zero")], readOnly: false });
    await call(api, api.clearTable, { device: byName("cd") });
    expect(await added()).toEqual({ cd: true, nd: false });
    api.close();
    await d.kill();
    await d.restart();
    api = connect(d.socket);
    expect(await added()).toEqual({ cd: true, nd: false });
    for (const n of ["cd", "nd"]) await call(api, api.removeDevice, { device: byName(n), force: false, deferred: false, retry: false });
  });

  it("a device restored without its backing keeps its saved table until the user replaces it; restart or resume brings it back", async () => {
    const img = path.join(d.dir, "pend.img");
    const away = `${img}.away`;
    fs.writeFileSync(img, Buffer.alloc(1 << 20, 0x33));
    const table = [line(0, 2048, "linear", `${img} 0`)];
    const info = async (n: string) => (await call(api, api.getInfo, { device: byName(n), inactive: false })).device!;
    const liveTable = async (n: string) => (await call(api, api.getTable, { device: byName(n), inactive: false })).lines.map((l) => `${l.targetType} ${l.params}`);
    const restartWithout = async (gone: boolean): Promise<void> => {
      api.close();
      await d.kill();
      if (gone) fs.renameSync(img, away);
      await d.restart();
      api = connect(d.socket);
    };
    await call(api, api.createDevice, { name: "pend", uuid: "", table, readOnly: false });

    // Restart without the backing; another device's change saves the state; the backing returns; restart.
    await restartWithout(true);
    expect(await info("pend")).toMatchObject({ liveTable: false, errorState: expect.stringMatching(/could not be restored/) });
    await call(api, api.createDevice, { name: "other", uuid: "", table: [line(0, 8, "zero")], readOnly: false });
    fs.renameSync(away, img);
    await restartWithout(false);
    expect(await info("pend")).toMatchObject({ liveTable: true, errorState: "" });
    expect(await liveTable("pend")).toEqual([`linear ${img} 0`]);

    // resume retries the restore: it fails while the backing is gone (and keeps the table), then succeeds.
    await restartWithout(true);
    await call(api, api.createDevice, { name: "other2", uuid: "", table: [line(0, 8, "zero")], readOnly: false });
    const still = await failure(call(api, api.resumeDevice, { device: byName("pend"), noflush: false, nolockfs: false }));
    expect(still.errno).toBe("ENOENT");
    expect((await info("pend")).errorState).toMatch(/could not be restored/);
    fs.renameSync(away, img);
    await call(api, api.resumeDevice, { device: byName("pend"), noflush: false, nolockfs: false });
    expect(await info("pend")).toMatchObject({ liveTable: true, inactiveTable: false, suspended: false, errorState: "" });
    expect(await liveTable("pend")).toEqual([`linear ${img} 0`]);

    // A table the user loads replaces the saved one for good.
    await restartWithout(true);
    await call(api, api.loadTable, { device: byName("pend"), table: [line(0, 8, "zero")], readOnly: false });
    expect((await info("pend")).errorState).toBe("");
    fs.renameSync(away, img);
    await restartWithout(false);
    expect(await info("pend")).toMatchObject({ liveTable: false, inactiveTable: true, errorState: "" });
    for (const n of ["pend", "other", "other2"]) await call(api, api.removeDevice, { device: byName(n), force: false, deferred: false, retry: false });
  });
});
