import { spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { ROOT, run, startDaemon } from "../helpers/daemon.js";
import { tempDir } from "../helpers/registry.js";

const UNITS = path.join(ROOT, "deploy", "systemd");

/** systemd-style key=value settings of one unit file section. */
function settings(file: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const l of fs.readFileSync(file, "utf8").split("\n")) {
    const m = /^([A-Za-z]+)=(.*)$/.exec(l.trim());
    if (m) out.set(m[1]!, m[2]!);
  }
  return out;
}

const canConnect = (p: string): Promise<boolean> =>
  new Promise((resolve) => {
    const c = net.connect(p);
    c.once("connect", () => (c.destroy(), resolve(true)));
    c.once("error", () => resolve(false));
  });

describe("running under systemd", () => {
  it("sends READY=1 to $NOTIFY_SOCKET once the control socket answers, and STOPPING=1 on SIGTERM (Type=notify)", async () => {
    const tmp = tempDir("tsdm-notify-");
    const notify = path.join(tmp.dir, "notify.sock");
    // A datagram socket like systemd's: systemd-socket-activate binds it and cat prints what arrives on fd 3.
    const receiver = spawn("systemd-socket-activate", ["--datagram", "-l", notify, "sh", "-c", "exec cat <&3"], { stdio: ["ignore", "pipe", "pipe"] });
    let got = "";
    receiver.stdout.on("data", (b: Buffer) => (got += b.toString()));
    try {
      for (let i = 0; i < 100 && !fs.existsSync(notify); i++) await new Promise((r) => setTimeout(r, 50));
      const d = await startDaemon({ dir: tmp.dir, env: { NOTIFY_SOCKET: notify } });
      for (let i = 0; i < 200 && !got.includes("READY=1"); i++) await new Promise((r) => setTimeout(r, 25));
      expect(got).toContain("READY=1");
      expect(got).toContain(`MAINPID=${d.proc.pid}`);
      expect(await canConnect(d.socket)).toBe(true);
      expect(await d.stop()).toBe(0);
      for (let i = 0; i < 100 && !got.includes("STOPPING=1"); i++) await new Promise((r) => setTimeout(r, 25));
      expect(got).toContain("STOPPING=1");
    } finally {
      receiver.kill("SIGTERM");
      await new Promise((r) => receiver.once("exit", r));
      tmp.cleanup();
    }
  });

  it("the units verify, and the service is Type=notify, signals only tsdmd, and keeps /run/tsdm for the socket unit", async () => {
    const r = await run("systemd-analyze", ["verify", path.join(UNITS, "tsdmd.service"), path.join(UNITS, "tsdmd.socket")]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    const svc = settings(path.join(UNITS, "tsdmd.service"));
    expect(svc.get("Type")).toBe("notify");
    // KillMode=mixed: SIGTERM to tsdmd alone, so it detaches nodes in order before nbdfuse goes (SIGKILL to the rest after).
    expect(svc.get("KillMode")).toBe("mixed");
    // The socket unit listens in /run/tsdm: a service stop must not delete the directory under it.
    expect(svc.get("RuntimeDirectoryPreserve")).toBe("yes");
  });
});
