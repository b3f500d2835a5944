import { execFile } from "node:child_process";
import path from "node:path";
import type { DeviceRegistry } from "../../daemon/device/registry.js";
import type { MappedDevice } from "../../daemon/device/mapped-device.js";
import type { Sector } from "../../daemon/core/units.js";
import { silentLogger } from "../../daemon/core/log.js";
import { NbdServer } from "../../daemon/nbd/server.js";
import { makeFile, makeRegistry, tempDir } from "../helpers/registry.js";

/** An in-process registry and NBD server on a temp unix socket, with files for linear devices. */
export interface NbdFixture {
  reg: DeviceRegistry;
  server: NbdServer;
  dir: string;
  sock: string;
  uri(name: string): string;
  /** A resumed linear device over a new file of `bytes` bytes; returns the device and its backing file. */
  linear(name: string, bytes: number, opts?: { fill?: "zero" | "pattern"; readOnly?: boolean }): Promise<{ dev: MappedDevice; file: string }>;
  close(): Promise<void>;
}

export async function startNbd(): Promise<NbdFixture> {
  const reg = makeRegistry();
  const { dir, cleanup } = tempDir("tsdm-nbd-");
  const sock = path.join(dir, "nbd.sock");
  const server = new NbdServer({ registry: reg, log: silentLogger });
  await server.listenUnix(sock);
  return {
    reg,
    server,
    dir,
    sock,
    uri: (name) => `nbd+unix:///${encodeURIComponent(name)}?socket=${sock}`,
    async linear(name, bytes, opts = {}) {
      const file = makeFile(dir, `${name}.img`, bytes, opts.fill ?? "zero");
      const dev = reg.create({ name, readOnly: opts.readOnly });
      await dev.load([{ start: 0 as Sector, length: (bytes / 512) as Sector, type: "linear", params: `${file} 0` }], opts.readOnly ?? false);
      await dev.resume({ noflush: false });
      return { dev, file };
    },
    async close() {
      await server.close();
      for (const d of reg.list()) await reg.discard(d).catch(() => undefined);
      cleanup();
    },
  };
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Run a real client asynchronously (the server lives in this process: a sync spawn would deadlock it). */
export function run(cmd: string, args: string[], opts: { timeoutMs?: number } = {}): Promise<RunResult> {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: opts.timeoutMs ?? 30_000, maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === "number" ? ((err as { code: number }).code) : 1) : 0;
      resolve({ code, stdout: String(stdout), stderr: String(stderr) });
    });
  });
}

/** Run and require success, with the client's stderr in the failure message. */
export async function runOk(cmd: string, args: string[]): Promise<string> {
  const r = await run(cmd, args);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(" ")} failed (${r.code}): ${r.stderr.trim()}`);
  return r.stdout;
}
