import { spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { BIN, run } from "../helpers/daemon.js";
import { call, connect } from "../helpers/client.js";

describe("systemd socket activation", () => {
  it("serves the control socket systemd passes as fd 3", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tsdm-sa-"));
    const socket = path.join(dir, "ctl.sock");
    // systemd-socket-activate binds the socket and execs the daemon with LISTEN_FDS=1, as tsdmd.socket would.
    const proc = spawn(
      "systemd-socket-activate",
      ["-l", socket, process.execPath, BIN.tsdmd, "--socket", socket, "--nbd-socket", path.join(dir, "nbd.sock"), "--state-dir", path.join(dir, "state")],
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    let log = "";
    proc.stderr.on("data", (b: Buffer) => (log += b.toString()));
    try {
      for (let i = 0; i < 100 && !fs.existsSync(socket); i++) await new Promise((r) => setTimeout(r, 50));
      // The first connection starts the daemon; grpc retries until it answers.
      const api = connect(socket);
      const ver = await call(api, api.getVersion, {}, 20_000);
      expect(ver.driverVersion).toBe("4.48.0");
      api.close();
      const cli = await run(process.execPath, [BIN.tsdmsetup, "version"], { env: { TSDM_SOCKET: socket } });
      expect(cli.stdout).toContain("Driver version:    4.48.0");
    } finally {
      proc.kill("SIGTERM");
      await new Promise((r) => proc.once("exit", r));
      fs.rmSync(dir, { recursive: true, force: true });
    }
    expect(log).toContain('"msg":"tsdmd ready"');
  });
});
