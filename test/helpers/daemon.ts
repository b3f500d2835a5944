import { spawn, type ChildProcess } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import net from "node:net";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
export const BIN = {
  tsdmd: path.join(ROOT, "bin", "tsdmd.js"),
  tsdmsetup: path.join(ROOT, "bin", "tsdmsetup.js"),
  tsdm: path.join(ROOT, "bin", "tsdm.js"),
};

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface RunOptions {
  input?: string | Buffer;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
  timeoutMs?: number;
}

/** Run a command asynchronously (never spawnSync from a process hosting a server: it would deadlock). */
export function run(cmd: string, args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env: { ...process.env, ...opts.env }, cwd: opts.cwd, stdio: ["pipe", "pipe", "pipe"] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on("data", (b: Buffer) => out.push(b));
    child.stderr.on("data", (b: Buffer) => err.push(b));
    const timer = opts.timeoutMs ? setTimeout(() => child.kill("SIGKILL"), opts.timeoutMs) : undefined;
    child.on("error", reject);
    child.on("close", (code, signal) => {
      if (timer) clearTimeout(timer);
      resolve({ code: code ?? (signal ? 128 : 1), stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString() });
    });
    child.stdin.on("error", () => undefined);
    child.stdin.end(opts.input ?? "");
  });
}

export interface TestDaemon {
  dir: string;
  socket: string;
  nbdSocket: string;
  stateDir: string;
  devDir: string;
  proc: ChildProcess;
  /** Everything the daemon wrote on stderr (JSON log lines). */
  log(): string;
  nbdUri(name: string): string;
  tsdmsetup(args: readonly string[], opts?: RunOptions): Promise<RunResult>;
  tsdm(args: readonly string[], opts?: RunOptions): Promise<RunResult>;
  /** SIGTERM and wait for a clean exit. */
  stop(): Promise<number | null>;
  /** SIGKILL (crash) and wait. */
  kill(): Promise<void>;
  /** Start a new daemon process on the same sockets and state dir (after stop or kill). */
  restart(): Promise<void>;
  /** Remove the temp dir (after stop). */
  cleanup(): void;
}

export interface DaemonOptions {
  args?: string[];
  env?: NodeJS.ProcessEnv;
  /** Reuse an existing directory (state survives). */
  dir?: string;
}

/** Start a real tsdmd process on private sockets and state dir under a temp directory. */
export async function startDaemon(opts: DaemonOptions = {}): Promise<TestDaemon> {
  const dir = opts.dir ?? fs.mkdtempSync(path.join(os.tmpdir(), "tsdmd-test-"));
  fs.mkdirSync(dir, { recursive: true });
  fs.chmodSync(dir, 0o755);
  const socket = path.join(dir, "tsdmd.sock");
  const nbdSocket = path.join(dir, "nbd.sock");
  const stateDir = path.join(dir, "state");
  const devDir = path.join(dir, "dev");
  fs.mkdirSync(devDir, { recursive: true });
  const env = { ...process.env, DM_DEV_DIR: devDir, TSDM_LOG_LEVEL: "debug", ...opts.env };
  let logText = "";
  let proc!: ChildProcess;

  const launch = async (): Promise<void> => {
    logText = "";
    // No kernel block devices unless a test asks (--attach ...): attaching costs a FUSE mount + loop device per device.
    const attach = opts.args?.includes("--attach") ? [] : ["--attach", "none"];
    proc = spawn(process.execPath, [BIN.tsdmd, "--socket", socket, "--nbd-socket", nbdSocket, "--state-dir", stateDir, ...attach, ...(opts.args ?? [])], {
      env,
      stdio: ["ignore", "pipe", "pipe"],
    });
    proc.stdout!.on("data", (b: Buffer) => (logText += b.toString()));
    proc.stderr!.on("data", (b: Buffer) => (logText += b.toString()));
    const exited = new Promise<never>((_, reject) =>
      proc.once("exit", (code) => reject(new Error(`tsdmd exited with ${code} before it was ready:\n${logText}`))),
    );
    exited.catch(() => undefined);
    // Ready = the control socket accepts connections (independent of the log level).
    const deadline = Date.now() + 60_000;
    for (;;) {
      if (await canConnect(socket)) break;
      if (Date.now() > deadline) throw new Error(`tsdmd did not become ready:\n${logText}`);
      await Promise.race([new Promise((r) => setTimeout(r, 25)), exited]);
    }
  };
  await launch();

  const waitExit = (): Promise<number | null> =>
    proc.exitCode !== null || proc.signalCode !== null ? Promise.resolve(proc.exitCode) : new Promise((resolve) => proc.once("exit", (code) => resolve(code)));

  const cliEnv = { TSDM_SOCKET: socket, DM_DEV_DIR: devDir };
  return {
    dir,
    socket,
    nbdSocket,
    stateDir,
    devDir,
    get proc() {
      return proc;
    },
    log: () => logText,
    nbdUri: (name) => `nbd+unix:///${encodeURIComponent(name)}?socket=${nbdSocket}`,
    tsdmsetup: (args, o = {}) => run(process.execPath, [BIN.tsdmsetup, ...args], { ...o, env: { ...cliEnv, ...o.env } }),
    tsdm: (args, o = {}) => run(process.execPath, [BIN.tsdm, ...args], { ...o, env: { ...cliEnv, ...o.env } }),
    async stop() {
      proc.kill("SIGTERM");
      return waitExit();
    },
    async kill() {
      proc.kill("SIGKILL");
      await waitExit();
    },
    restart: launch,
    cleanup: () => fs.rmSync(dir, { recursive: true, force: true }),
  };
}

function canConnect(socket: string): Promise<boolean> {
  return new Promise((resolve) => {
    const c = net.connect(socket);
    c.once("connect", () => {
      c.destroy();
      resolve(true);
    });
    c.once("error", () => resolve(false));
  });
}
