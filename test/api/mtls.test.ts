import fs from "node:fs";
import path from "node:path";
import { credentials, status as Code } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DeviceMapperServiceClient } from "../../gen/tsdm/v1/tsdm.js";
import { ROOT, run, startDaemon, type TestDaemon } from "../helpers/daemon.js";
import { call, failure } from "../helpers/client.js";
import { makeCerts, type Certs } from "../helpers/certs.js";

const zero = { startSector: 0n, lengthSectors: 8n, targetType: "zero", params: "" };
const byName = (name: string) => ({ by: { $case: "name" as const, value: name } });

let d: TestDaemon;
let certs: Certs;
let port: number;

function client(id: { cert: string; key: string } | undefined): DeviceMapperServiceClient {
  const ca = fs.readFileSync(certs.ca);
  const creds = id ? credentials.createSsl(ca, fs.readFileSync(id.key), fs.readFileSync(id.cert)) : credentials.createSsl(ca);
  return new DeviceMapperServiceClient(`127.0.0.1:${port}`, creds);
}

beforeAll(async () => {
  const dir = fs.mkdtempSync("/tmp/tsdm-mtls-");
  certs = await makeCerts(path.join(dir, "pki"), ["ops-admin", "monitor", "stranger", "monitor/CN=ops-admin"]);
  const authz = path.join(dir, "authz.json");
  fs.writeFileSync(authz, JSON.stringify({ admin: ["ops-admin"], reader: ["monitor"] }));
  d = await startDaemon({
    args: ["--listen", "127.0.0.1:0", "--tls-ca", certs.ca, "--tls-cert", certs.serverCert, "--tls-key", certs.serverKey, "--authz", authz],
  });
  const m = /"msg":"remote API listening \(mTLS\)".*?"port":(\d+)/.exec(d.log());
  port = Number(m![1]);
});

afterAll(async () => {
  await d?.stop();
  d?.cleanup();
  if (certs) fs.rmSync(path.dirname(certs.dir), { recursive: true, force: true });
});

describe("remote API with mutual TLS", () => {
  it("an admin certificate may do everything", async () => {
    const c = client(certs.client("ops-admin"));
    await call(c, c.createDevice, { name: "remote", uuid: "", table: [zero], readOnly: false });
    const info = await call(c, c.getInfo, { device: byName("remote"), inactive: false });
    expect(info.device?.name).toBe("remote");
    await call(c, c.removeDevice, { device: byName("remote"), force: false, deferred: false, retry: false });
    c.close();
  });

  it("a reader may read but every mutation is PERMISSION_DENIED, logged and audited", async () => {
    const admin = client(certs.client("ops-admin"));
    await call(admin, admin.createDevice, { name: "ro-test", uuid: "", table: [zero], readOnly: false });
    const c = client(certs.client("monitor"));
    expect((await call(c, c.listDevices, {})).devices.map((x) => x.name)).toContain("ro-test");
    await call(c, c.getStatus, { device: byName("ro-test"), inactive: false, noflush: false });
    const denied = await failure(call(c, c.removeDevice, { device: byName("ro-test"), force: false, deferred: false, retry: false }));
    expect(denied.code).toBe(Code.PERMISSION_DENIED);
    const denied2 = await failure(call(c, c.sendMessage, { device: byName("ro-test"), sector: 0n, message: "x" }));
    expect(denied2.code).toBe(Code.PERMISSION_DENIED);
    expect((await call(c, c.listDevices, {})).devices.map((x) => x.name)).toContain("ro-test");
    expect(d.log()).toMatch(/"msg":"permission denied".*"cn":"monitor"/);
    const audit = fs.readFileSync(path.join(d.stateDir, "audit.log"), "utf8");
    // Refused calls are audited with what they asked for, and who exactly asked (certificate and address).
    const refused = audit.trim().split("\n").map((l) => JSON.parse(l)).find((e) => e.method === "RemoveDevice" && e.who === "monitor");
    expect(refused).toMatchObject({
      transport: "tls",
      subject: "CN=monitor",
      request: { device: { by: { $case: "name", value: "ro-test" } } },
      result: "PERMISSION_DENIED",
    });
    expect(refused.serial).toMatch(/^[0-9A-F]+$/);
    expect(refused.peer).toMatch(/^127\.0\.0\.1:\d+$/);
    await call(admin, admin.removeDevice, { device: byName("ro-test"), force: false, deferred: false, retry: false });
    admin.close();
    c.close();
  });

  it("a valid certificate whose CN has no role can do nothing", async () => {
    const c = client(certs.client("stranger"));
    expect((await failure(call(c, c.listDevices, {}))).code).toBe(Code.PERMISSION_DENIED);
    c.close();
  });

  it("a certificate with two CNs is nobody (not whichever CN comes first)", async () => {
    const c = client(certs.client("monitor/CN=ops-admin"));
    const f = await failure(call(c, c.listDevices, {}));
    expect(f.code).toBe(Code.PERMISSION_DENIED);
    expect(f.details).toMatch(/^\(no usable CN\) may not call/);
    c.close();
  });

  it("no client certificate, or one from another CA, fails the TLS handshake", async () => {
    for (const id of [undefined, certs.rogue]) {
      const c = client(id);
      const f = await failure(call(c, c.listDevices, {}, 3000));
      expect(f.code).toBe(Code.UNAVAILABLE);
      c.close();
    }
    // Each refusal is logged with the peer and the reason.
    const refusals = d.log().split("\n").filter((l) => l.includes('"msg":"TLS handshake refused"')).map((l) => JSON.parse(l));
    expect(refusals.map((r) => r.error)).toEqual(expect.arrayContaining(["no client certificate", expect.stringMatching(/^client certificate refused: [A-Z_]+$/)]));
    for (const r of refusals) expect(r.peer).toMatch(/^127\.0\.0\.1:\d+$/);
  });

  it("refuses to start --listen without TLS material or an authz file", async () => {
    const bin = path.join(ROOT, "bin", "tsdmd.js");
    const r1 = await run(process.execPath, [bin, "--listen", "127.0.0.1:0", "--socket", path.join(d.dir, "x.sock")]);
    expect(r1.code).toBe(2);
    expect(r1.stderr).toMatch(/mutual TLS/);
    const r2 = await run(process.execPath, [bin, "--listen", "127.0.0.1:0", "--tls-ca", certs.ca, "--tls-cert", certs.serverCert, "--tls-key", certs.serverKey]);
    expect(r2.code).toBe(2);
    expect(r2.stderr).toMatch(/--authz/);
  });
});

describe("bad TLS material is a clear start-up error", () => {
  it.each([
    ["a CA file that is not PEM", "ca", /--tls-ca .* is not a PEM certificate/],
    ["a key that does not match the certificate", "key", /does not match the certificate/],
  ])("%s", async (_what, which, message) => {
    const junk = path.join(d.dir, "junk.pem");
    fs.writeFileSync(junk, "not a certificate\n");
    const authz = path.join(d.dir, "authz2.json");
    fs.writeFileSync(authz, JSON.stringify({ admin: ["x"] }));
    const args = [
      path.join(ROOT, "bin", "tsdmd.js"),
      "--socket", path.join(d.dir, "bad.sock"),
      "--nbd-socket", path.join(d.dir, "bad-nbd.sock"),
      "--state-dir", path.join(d.dir, "bad-state"),
      "--listen", "127.0.0.1:0",
      "--tls-ca", which === "ca" ? junk : certs.ca,
      "--tls-cert", certs.serverCert,
      "--tls-key", which === "key" ? certs.client("monitor").key : certs.serverKey,
      "--authz", authz,
    ];
    const r = await run(process.execPath, args);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(message);
    expect(fs.existsSync(path.join(d.dir, "bad.sock"))).toBe(false);
  });
});
