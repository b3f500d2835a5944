/** The command table: dmsetup's command names to their handlers. */
import { clear, create, load, mangle, message, mknodes, remove, removeAll, rename, resume, setgeometry, suspend, wait, wipeTable } from "./change.js";
import type { Handler } from "./common.js";
import { deps, help, info, ls, nbdUri, splitname, tableOrStatus, targets, targetVersion, version } from "./query.js";

export { runSelected } from "./query.js";
export type { DevNameType, Handler, RunState } from "./common.js";

const unsupported =
  (what: string): Handler =>
  async (ctx) =>
    ctx.fail(`tsdmsetup: ${what} is not supported by tsdm.`);

export const HANDLERS: Record<string, Handler> = {
  help,
  create,
  remove,
  remove_all: removeAll,
  suspend,
  resume,
  load,
  reload: load,
  clear,
  wipe_table: wipeTable,
  rename,
  measure: unsupported("measure (IMA measurements)"),
  message,
  ls,
  info,
  deps,
  stats: unsupported("stats"),
  status: tableOrStatus("status"),
  table: tableOrStatus("table"),
  wait,
  mknodes,
  mangle,
  udevcreatecookie: unsupported("udev synchronisation"),
  udevreleasecookie: unsupported("udev synchronisation"),
  udevflags: unsupported("udev synchronisation"),
  udevcomplete: unsupported("udev synchronisation"),
  udevcomplete_all: unsupported("udev synchronisation"),
  udevcookies: unsupported("udev synchronisation"),
  "target-version": targetVersion,
  targets,
  version,
  setgeometry,
  splitname,
  "nbd-uri": nbdUri,
};


