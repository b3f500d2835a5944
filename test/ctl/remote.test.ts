/** tsdmsetup against tsdmd's remote API: TCP with mutual TLS, roles by certificate CN. */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { Readable, Writable } from "node:stream";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { main } from "../../ctl/tsdmsetup.js";
import { makeCerts, type Certs } from "../helpers/certs.js";
import { startDaemon, type TestDaemon } from "../helpers/daemon.js";

let d: TestDaemon;
let certs: Certs;
let port: number;

class Capture extends Writable {
  text = "";
  override _write(chunk: Buffer | string, _enc: BufferEncoding, cb: () => void): void {
    this.text += chunk.toString();
    cb();
  }
}

async function remote(cn: string | "rogue", args: string[], env: NodeJS.ProcessEnv = {}) {
  const stdout = new Capture();
  const stderr = new Capture();
  const c = cn === "rogue" ? certs.rogue : certs.client(cn);
  const conn = ["--host", `localhost:${port}`, "--ca", certs.ca, "--cert", c.cert, "--key", c.key];
  const code = await main([...conn, ...args], {
    stdin: Readable.from([]),
    stdout,
    stderr,
    env: { PATH: process.env.PATH, DM_DEV_DIR: d.devDir, ...env },
    prog: "tsdmsetup",
  });
  return { code, stdout: stdout.text, stderr: stderr.text };
}

beforeAll(async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tsdmsetup-remote-"));
  certs = await makeCerts(path.join(dir, "certs"), ["ops-admin", "monitor"]);
  const authz = path.join(dir, "authz.json");
  fs.writeFileSync(authz, JSON.stringify({ admin: ["ops-admin"], reader: ["monitor"] }));
  d = await startDaemon({ args: ["--listen", "127.0.0.1:0", "--tls-ca", certs.ca, "--tls-cert", certs.serverCert, "--tls-key", certs.serverKey, "--authz", authz] });
  port = Number(/"msg":"remote API listening \(mTLS\)".*?"port":(\d+)/.exec(d.log())![1]);
});
afterAll(async () => {
  await d?.stop();
  d?.cleanup();
  if (certs) fs.rmSync(path.dirname(certs.dir), { recursive: true, force: true });
});

describe("remote tsdmsetup (mTLS)", () => {
  it("an admin certificate manages devices", async () => {
    expect(await remote("ops-admin", ["create", "r1", "--table", "0 8 zero"])).toEqual({ code: 0, stdout: "", stderr: "" });
    expect(await remote("ops-admin", ["ls"])).toEqual({ code: 0, stdout: "r1\t(253:0)\n", stderr: "" });
  });

  it("a reader may look but not touch", async () => {
    expect(await remote("monitor", ["table", "r1"])).toEqual({ code: 0, stdout: "0 8 zero \n", stderr: "" });
    const r = await remote("monitor", ["remove", "r1"]);
    expect(r.code).toBe(1);
    const lines = r.stderr.split("\n");
    expect(lines[0]).toBe("device-mapper: remove ioctl on r1  failed: Permission denied");
    expect(lines[1]).toMatch(/^tsdmsetup: monitor may not call/);
    expect(lines.slice(2)).toEqual(["Command failed.", ""]);
  });

  it("environment variables work like the flags", async () => {
    const c = certs.client("ops-admin");
    const stdout = new Capture();
    const stderr = new Capture();
    const code = await main(["info", "-c", "--noheadings", "-o", "name"], {
      stdin: Readable.from([]),
      stdout,
      stderr,
      env: { TSDM_HOST: `localhost:${port}`, TSDM_CA: certs.ca, TSDM_CERT: c.cert, TSDM_KEY: c.key },
      prog: "tsdmsetup",
    });
    expect({ code, out: stdout.text, err: stderr.text }).toEqual({ code: 0, out: "r1\n", err: "" });
  });

  it("a certificate from another CA cannot connect", async () => {
    const r = await remote("rogue", ["ls"]);
    expect(r.code).toBe(1);
    expect(r.stdout).toBe("");
    // Which of the two the client sees depends on when the daemon's refusal arrives (TLS 1.3).
    expect(r.stderr).toMatch(
      new RegExp(
        `^tsdmsetup: cannot connect to tsdmd at localhost:${port}: (the daemon refused this client's certificate \\(TLS alert: unknown ca\\)|the connection was closed during the handshake \\(does the daemon trust this certificate\\?\\))\\nFailure to communicate with kernel device-mapper driver.\\nCommand failed.\\n$`,
      ),
    );
  });

  it("files that are not usable TLS material are named as such, before any connection", async () => {
    const run = async (cert: string, key: string) => {
      const stderr = new Capture();
      const code = await main(["--host", `localhost:${port}`, "--ca", certs.ca, "--cert", cert, "--key", key, "ls"], { stdin: Readable.from([]), stdout: new Capture(), stderr, env: {}, prog: "tsdmsetup" });
      return { code, err: stderr.text };
    };
    const admin = certs.client("ops-admin");
    expect(await run(certs.ca.replace(/\.crt$/, ".ext"), admin.key)).toEqual({
      code: 1,
      err: "tsdmsetup: Couldn't use the TLS files (--ca, --cert, --key): a file is not a PEM certificate or key.\n",
    });
    expect(await run(admin.cert, certs.rogue.key)).toEqual({ code: 1, err: "tsdmsetup: Couldn't use the TLS files (--ca, --cert, --key): the key does not belong to the certificate.\n" });
  });

  it("--host without key material is a usage error", async () => {
    const stderr = new Capture();
    const code = await main(["--host", "localhost:1", "ls"], { stdin: Readable.from([]), stdout: new Capture(), stderr, env: {}, prog: "tsdmsetup" });
    expect({ code, err: stderr.text }).toEqual({ code: 1, err: "tsdmsetup: --host needs --ca (or TSDM_CA).\n" });
  });
});
