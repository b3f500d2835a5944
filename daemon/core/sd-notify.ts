import { native } from "../io/native.js";
import type { Logger } from "./log.js";

/**
 * sd_notify(3) for Type=notify services: READY=1 once the control socket answers, STOPPING=1 on the way
 * down. A no-op outside systemd (no $NOTIFY_SOCKET). Node has no unix datagram sockets, so the addon sends.
 */
export function sdNotify(state: string, log: Logger, env: NodeJS.ProcessEnv = process.env): void {
  const socket = env.NOTIFY_SOCKET;
  if (!socket) return;
  try {
    native.sdNotify(socket, state);
  } catch (err) {
    log.warn("sd_notify failed", { socket, state, error: (err as Error).message });
  }
}
