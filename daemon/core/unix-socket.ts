import fs from "node:fs";
import net from "node:net";
import path from "node:path";

/**
 * Unix socket files the daemon listens on (the gRPC control socket and the NBD socket). Both hand out full
 * control of every device, so both get the same treatment: a stale file is replaced but a live daemon's is
 * refused, and the socket is created owner-only (no umask race) and opened to one group on request.
 */

/**
 * Make `socketPath` free to bind: create its directory (0755: the socket's own mode is the gate), remove a
 * stale socket file; refuse a live one (another daemon owns it) or a file that is not a socket.
 */
export async function claimSocketPath(socketPath: string): Promise<void> {
  fs.mkdirSync(path.dirname(socketPath), { recursive: true, mode: 0o755 });
  let st: fs.Stats;
  try {
    st = fs.lstatSync(socketPath);
  } catch {
    return;
  }
  if (!st.isSocket()) throw Object.assign(new Error(`${socketPath} exists and is not a socket`), { code: "EEXIST" });
  const alive = await new Promise<boolean>((resolve) => {
    const s = net.connect(socketPath);
    s.once("connect", () => {
      s.destroy();
      resolve(true);
    });
    s.once("error", () => resolve(false));
  });
  if (alive) throw Object.assign(new Error(`${socketPath} is in use by a running daemon`), { code: "EADDRINUSE" });
  fs.rmSync(socketPath, { force: true });
}

/**
 * Run `bind`, which creates the socket file at `socketPath`, under umask 0177 so that the file is born 0600
 * (a chmod after bind would leave a window), then open it to `group` (0660). The umask is process-wide: files
 * created by other work meanwhile only come out stricter.
 */
export async function bindPrivate<T>(socketPath: string, group: number | undefined, bind: () => Promise<T>): Promise<T> {
  const old = process.umask(0o177);
  let result: T;
  try {
    result = await bind();
  } finally {
    process.umask(old);
  }
  if (group !== undefined) {
    fs.chownSync(socketPath, process.getuid?.() ?? 0, group);
    fs.chmodSync(socketPath, 0o660);
  }
  return result;
}

/** The file descriptor under a connected net.Socket (Node keeps it on its internal handle). */
export function socketFd(sock: net.Socket): number | undefined {
  const fd = (sock as unknown as { _handle?: { fd?: number } })._handle?.fd;
  return fd !== undefined && fd >= 0 ? fd : undefined;
}
