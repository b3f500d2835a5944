import fs from "node:fs";
import path from "node:path";
import { native } from "../io/native.js";

/** Another daemon holds the state directory. */
export class StateDirInUseError extends Error {
  constructor(
    readonly stateDir: string,
    readonly pid: number | undefined,
  ) {
    super(`state dir ${stateDir} in use by ${pid ? `pid ${pid}` : "another process"}`);
  }
}

/**
 * An exclusive flock on <state-dir>/lock for the daemon's lifetime. Two daemons on one state dir would
 * restore (and then detach) each other's devices and both write devices.json. flock, unlike a pid file,
 * goes away with the process however it dies; the fd is close-on-exec, so nbdfuse children never hold it.
 * The file keeps the holder's pid, for the message.
 */
export function lockStateDir(stateDir: string): { release(): void } {
  const file = path.join(stateDir, "lock");
  const fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o600);
  let taken: boolean;
  try {
    taken = native.tryFlock(fd, true);
  } catch (err) {
    fs.closeSync(fd);
    throw err;
  }
  if (!taken) {
    const pid = Number(fs.readFileSync(fd, "utf8").trim()) || undefined;
    fs.closeSync(fd);
    throw new StateDirInUseError(stateDir, pid);
  }
  fs.ftruncateSync(fd);
  fs.writeSync(fd, `${process.pid}\n`, 0);
  let released = false;
  return {
    release() {
      if (released) return;
      released = true;
      fs.closeSync(fd); // the lock goes with the last close; the file stays (unlinking it would race a new holder)
    },
  };
}
