import fs from "node:fs";
import path from "node:path";
import type { Writable } from "node:stream";
import type { DeviceInfo, DeviceRef } from "../gen/tsdm/v1/tsdm.js";
import { DaemonError, describeEndpoint, Tsdm, type Endpoint } from "./client.js";
import { ioctlErrorLine, strerror, type IoctlTarget } from "./errno.js";
import { formatInfoBlock, type DeviceView } from "./format.js";
import { MangleError, nameForKernel, unmangleString, uuidForKernel, type ManglingMode } from "./mangle.js";
import type { Switches } from "./options.js";
import { readAheadOpenFailed } from "./report.js";

export interface Io {
  stdin: NodeJS.ReadableStream;
  stdout: Writable;
  stderr: Writable;
}

/** A command step failed; its diagnostics are already on stderr. */
export class Failed extends Error {
  constructor() {
    super("command failed");
  }
}

/** A device operand resolved the way libdm addresses it, plus how its error lines name it. */
export interface ResolvedDevice {
  ref: DeviceRef;
  target: IoctlTarget;
}

/** Everything a command handler needs: switches, output streams, the daemon connection, naming rules. */
export class Ctx {
  private client?: Tsdm;
  /** `table --concise` output was produced (main prints the final newline). */
  conciseProduced = false;

  constructor(
    readonly sw: Switches,
    readonly io: Io,
    readonly env: NodeJS.ProcessEnv,
    readonly endpoint: Endpoint,
    readonly mode: ManglingMode,
    /** DM_DEV_DIR with a trailing slash. */
    readonly devDir: string,
  ) {}

  /** `<DM_DEV_DIR>/mapper`. */
  get dmDir(): string {
    return `${this.devDir}mapper`;
  }

  out(s: string): void {
    this.io.stdout.write(s);
  }

  /** One diagnostic line on stderr. */
  err(line: string): void {
    this.io.stderr.write(`${line}\n`);
  }

  fail(...lines: string[]): never {
    for (const l of lines) this.err(l);
    throw new Failed();
  }

  get tsdm(): Tsdm {
    this.client ??= new Tsdm(this.endpoint);
    return this.client;
  }

  close(): void {
    this.client?.close();
  }

  /**
   * One RPC, with failures printed as libdm prints a failed ioctl. `op` is the dm step the request is,
   * unless the daemon names another (create's reload/resume steps). `target` says how the line names the
   * device; `opTargets` can override it per step.
   */
  async rpc<Res>(
    op: string,
    target: IoctlTarget,
    call: (api: Tsdm) => Promise<Res>,
    opts: { onError?: (e: DaemonError) => Res | undefined; stepTarget?: (op: string, e: DaemonError) => IoctlTarget } = {},
  ): Promise<Res> {
    try {
      return await call(this.tsdm);
    } catch (e) {
      if (!(e instanceof DaemonError)) throw e;
      if (e.unreachable) this.unreachable(e);
      const handled = opts.onError?.(e);
      if (handled !== undefined) return handled;
      // The device node could not be made (libdm prints "PATH: mknod for NAME failed: ..."): the daemon says why.
      if (e.op === "attach") this.fail(e.details);
      const step = e.op ?? op;
      const line = ioctlErrorLine(step, opts.stepTarget?.(step, e) ?? target, e.errno);
      if (e.denied) this.fail(line, `tsdmsetup: ${e.details}`);
      this.fail(line);
    }
  }

  /** The daemon is not there: say so plainly, in the place of libdm's "cannot open control" lines. */
  unreachable(e: DaemonError): never {
    const prog = "tsdmsetup";
    this.fail(`${prog}: cannot connect to tsdmd at ${describeEndpoint(this.endpoint)}: ${connectFailure(e.details)}`, "Failure to communicate with kernel device-mapper driver.");
  }

  /** Run a libdm-style name/uuid check, printing its lines on failure. */
  check<T>(fn: () => T): T {
    try {
      return fn();
    } catch (e) {
      if (e instanceof MangleError) this.fail(...e.lines);
      throw e;
    }
  }

  /** Kernel (mangled) name → what dmsetup displays (unmangled unless --manglename none). */
  displayName(kernelName: string, what = "name"): string {
    if (this.mode === "none") return kernelName;
    const r = unmangleString(kernelName, what, this.mode);
    if (r.error) this.err(r.error);
    return r.value;
  }

  displayUuid(kernelUuid: string): string {
    return kernelUuid ? this.displayName(kernelUuid, "UUID") : "";
  }

  view(d: DeviceInfo, inactive = this.sw.inactive): DeviceView {
    return {
      name: this.displayName(d.name),
      uuid: this.displayUuid(d.uuid),
      major: d.major,
      minor: d.minor,
      suspended: d.suspended,
      readOnly: d.readOnly,
      liveTable: d.liveTable,
      inactiveTable: d.inactiveTable,
      openCount: this.sw.noopencount ? undefined : d.openCount,
      eventNr: d.eventNr,
      targetCount: inactive ? d.inactiveTargetCount : d.targetCount,
      deferredRemove: d.deferredRemove,
      readAhead: d.diskAdded ? d.readAheadSectors : undefined,
    };
  }

  /**
   * The long `info` block of `d`. A device that never had a table has no disk: libdm cannot open it for the
   * read-ahead, logs that and leaves the Read Ahead line out.
   */
  infoBlock(d: DeviceInfo): string {
    if (!d.diskAdded) this.err(readAheadOpenFailed(`${this.dmDir}/${d.name}`));
    return formatInfoBlock(this.view(d));
  }

  /**
   * The device a command addresses (dmsetup's _set_task_device): the operand if given (a name, or a path
   * such as /dev/mapper/NAME), else -u UUID, else -j/-m; "No device specified." otherwise.
   */
  async device(operand: string | undefined): Promise<ResolvedDevice> {
    if (operand !== undefined) {
      const name = operand.includes("/") ? await this.nameFromPath(operand) : this.check(() => nameForKernel(operand, this.mode));
      return { ref: { by: { $case: "name", value: name } }, target: { name } };
    }
    if (this.sw.uuid !== undefined) {
      const uuid = this.check(() => uuidForKernel(this.sw.uuid!, this.mode));
      return { ref: { by: { $case: "uuid", value: uuid } }, target: { name: "", uuid } };
    }
    if (this.sw.major !== undefined && this.sw.minor !== undefined) {
      const devno = { major: this.sw.major, minor: this.sw.minor };
      return { ref: { by: { $case: "devno", value: devno } }, target: { name: "", devno } };
    }
    this.fail("No device specified.");
  }

  /** True when the command takes its device from -u or -j/-m rather than from an operand. */
  get deviceBySwitch(): boolean {
    return this.sw.uuid !== undefined || this.sw.major !== undefined;
  }

  /**
   * libdm's _dm_task_set_name_from_path: `<dm_dir>/NAME` (or a link to it) names NAME; another existing node
   * is matched by device number; a relative `x/y` is tried under DM_DEV_DIR. The name is used unmangled. A
   * missing `<dm_dir>/NAME` node still names NAME if tsdmd has a device NAME (it makes no nodes with --attach
   * none, or for a remote client).
   */
  private async nameFromPath(p: string): Promise<string> {
    const dmDir = path.resolve(this.dmDir);
    const last = p.slice(p.lastIndexOf("/") + 1);
    const lexical = (q: string): string | undefined => (path.dirname(path.resolve(q)) === dmDir && last ? last : undefined);
    let st: fs.Stats | undefined;
    let probe = p;
    try {
      st = fs.statSync(p);
    } catch {
      if (!p.startsWith("/") && p.length >= 3 && p.split("/").length === 2) {
        probe = `${this.devDir}${p}`;
        try {
          st = fs.statSync(probe);
        } catch {
          st = undefined;
        }
      }
    }
    const direct = lexical(probe) ?? lexical(p);
    if (direct) {
      // libdm stats the path first: no node, "Device P not found". tsdmd makes /dev/mapper nodes only for
      // devices it attaches to kernel block devices, so a device of this daemon is named by its path even
      // without a node; a path naming no device fails as libdm's does (dmsetup oracle).
      if (!st && !(await this.rpc("names", { name: "" }, (api) => api.listDevices({}))).devices.some((d) => d.name === direct)) {
        this.fail(`Device ${p} not found`);
      }
      return direct;
    }
    if (!st) this.fail(`Device ${p} not found`);
    try {
      const real = fs.realpathSync(probe);
      if (path.dirname(real) === fs.realpathSync(dmDir)) return path.basename(real);
    } catch {
      // fall through to the device-number scan
    }
    if (st.isBlockDevice()) {
      const maj = Math.floor(st.rdev / 256) & 0xfff;
      const min = (st.rdev & 0xff) | ((st.rdev >> 12) & 0xfff00);
      const list = await this.rpc("names", { name: "" }, (api) => api.listDevices({}));
      const hit = list.devices.find((d) => d.major === maj && d.minor === min);
      if (hit) return hit.name;
    }
    this.fail(`Device ${last} not found`);
  }

  /** The whole of stdin as text. */
  readStdin(): Promise<string> {
    return new Promise((resolve, reject) => {
      const chunks: Buffer[] = [];
      this.io.stdin.on("data", (b: Buffer | string) => chunks.push(typeof b === "string" ? Buffer.from(b) : b));
      this.io.stdin.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
      this.io.stdin.on("error", reject);
      this.io.stdin.resume();
    });
  }
}

/**
 * What went wrong connecting, without grpc-js's wrapping ("No connection established. Last error: Error:
 * connect ENOENT /path. Resolution note: "): the errno's text when there is one, else the first real sentence.
 */
export function connectFailure(details: string): string {
  const errno = /\bconnect (E[A-Z0-9]+)\b/.exec(details)?.[1];
  if (errno) return strerror(errno);
  const alert = /alert ([a-z ]+?):/.exec(details)?.[1];
  if (alert) return `the daemon refused this client's certificate (TLS alert: ${alert})`;
  if (/certificate verify failed|unable to (?:get|verify)|self[- ]signed|Hostname\/IP does not match/i.test(details)) {
    return "the daemon's certificate does not verify against --ca (or does not name this host)";
  }
  const inner = (/Last error: (?:Error: )?(.*?)(?:\. Resolution note:.*)?$/s.exec(details)?.[1] ?? details).trim();
  // grpc-js's text when the peer hung up during the handshake (TLS 1.3 reports a refused client cert so).
  if (/^Failed to connect\b/.test(inner)) return "the connection was closed during the handshake (does the daemon trust this certificate?)";
  return inner;
}
