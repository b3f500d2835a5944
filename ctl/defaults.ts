import os from "node:os";
import path from "node:path";

/**
 * Default locations, shared by tsdmd and its clients: system paths as root, a per-user runtime directory
 * otherwise (so a developer can run the daemon without privileges).
 */
export function defaultRuntimeDir(): string {
  if (process.getuid?.() === 0) return "/run/tsdm";
  const xdg = process.env.XDG_RUNTIME_DIR;
  return xdg ? path.join(xdg, "tsdm") : path.join(os.tmpdir(), `tsdm-${process.getuid?.() ?? "user"}`);
}

export const defaultSocketPath = (): string => path.join(defaultRuntimeDir(), "tsdmd.sock");
export const defaultNbdSocketPath = (): string => path.join(defaultRuntimeDir(), "nbd.sock");

export function defaultStateDir(): string {
  if (process.getuid?.() === 0) return "/var/lib/tsdm";
  const xdg = process.env.XDG_STATE_HOME;
  return xdg ? path.join(xdg, "tsdm") : path.join(os.homedir(), ".local", "state", "tsdm");
}

/** The control socket a client should use: --socket, else TSDM_SOCKET, else the default. */
export function resolveSocketPath(flag?: string): string {
  return flag ?? process.env.TSDM_SOCKET ?? defaultSocketPath();
}
