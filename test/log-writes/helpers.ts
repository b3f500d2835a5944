import fs from "node:fs";
import path from "node:path";
import type { Sector } from "../../daemon/core/units.js";
import type { Bio } from "../../daemon/io/bio.js";
import type { BlockDevice } from "../../daemon/io/block-device.js";
import { FileDevice } from "../../daemon/io/file-device.js";
import type { Target, TargetContext } from "../../daemon/targets/target.js";
import { logWritesTarget } from "../../daemon/targets/log-writes/index.js";
import { LogReader, type ReadEntry } from "../../tools/replay-log/log-reader.js";
import { ROOT, run, type RunResult } from "../helpers/daemon.js";

export const S = (n: number): Sector => n as Sector;
export const write = (sector: number, data: Buffer, fua = false): Bio => ({ op: "write", sector: S(sector), count: S(data.length / 512), data, fua });
export const flush = (): Bio => ({ op: "flush", sector: S(0), count: S(0), fua: false });
export const discard = (sector: number, count: number): Bio => ({ op: "discard", sector: S(sector), count: S(count), fua: false });
export const fill = (sectors: number, byte: number): Buffer => Buffer.alloc(sectors * 512, byte);

/**
 * A real FileDevice whose bio completions the test releases by hand, in any order: the block layer reordering
 * completions, which is what dm-log-writes' ordering rules are about. The I/O itself really happens (on
 * release), so the data device ends up with real contents.
 */
export class GatedDevice implements BlockDevice {
  private readonly held: { bio: Bio; release: () => void; done: Promise<void> }[] = [];
  private waiters: (() => void)[] = [];
  constructor(private readonly inner: BlockDevice) {}
  get label(): string {
    return this.inner.label;
  }
  get devno() {
    return this.inner.devno;
  }
  get kernelName(): string {
    return this.inner.kernelName;
  }
  get size(): Sector {
    return this.inner.size;
  }
  get logicalBlockSize(): number {
    return this.inner.logicalBlockSize;
  }
  get readOnly(): boolean {
    return this.inner.readOnly;
  }
  submit(bio: Bio): Promise<void> {
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const done = gate.then(() => this.inner.submit(bio));
    this.held.push({ bio, release, done });
    for (const w of this.waiters.splice(0)) w();
    return done;
  }
  /** Wait until `n` bios have been submitted in total. */
  async submitted(n: number): Promise<void> {
    while (this.held.length < n) await new Promise<void>((r) => this.waiters.push(r));
  }
  /** Complete the i-th submitted bio (0-based, submission order) and wait for it. */
  async complete(i: number): Promise<void> {
    await this.submitted(i + 1);
    const h = this.held[i]!;
    h.release();
    await h.done.catch(() => undefined);
    // Let the target's completion handler (the continuation after its await) run.
    await new Promise((r) => setImmediate(r));
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}

/** Construct a log-writes target directly on devices the test supplies (data device possibly gated). */
export async function constructOn(
  dev: BlockDevice,
  logPath: string,
  length: number,
  extraArgs: string[] = [],
  logDev?: BlockDevice,
): Promise<{ target: Target; close: () => Promise<void> }> {
  const opened: BlockDevice[] = [];
  const ctx: TargetContext = {
    deviceName: "lw-test",
    readOnly: false,
    start: S(0),
    openDevice: async (spec) => {
      const d = spec === "DATA" ? dev : (logDev ?? FileDevice.open(spec, false));
      opened.push(d);
      return d;
    },
    raiseEvent: () => undefined,
    log: () => undefined,
  };
  const target = await logWritesTarget.construct(ctx, ["DATA", logPath, ...extraArgs], S(length));
  return {
    target,
    close: async () => {
      await target.destroy();
      for (const d of opened) await d.close();
    },
  };
}

export interface ParsedLog {
  sectorSize: number;
  nrEntries: number;
  entries: ReadEntry[];
  /** Payload bytes of each entry (empty for flush/mark/discard). */
  payload: Buffer[];
}

/** Read a log with the replay tool's reader (entries up to the super block's nr_entries, or `count`). */
export function readLog(file: string, count?: number): ParsedLog {
  const r = LogReader.open(file, { entries: count });
  try {
    const entries: ReadEntry[] = [];
    const payload: Buffer[] = [];
    for (let i = 0; i < r.nrEntries; i++) {
      const e = r.next()!;
      entries.push(e);
      const b = Buffer.alloc(e.dataBytes);
      r.readData(e.dataPos, b, e.dataBytes);
      payload.push(b);
    }
    return { sectorSize: r.sectorSize, nrEntries: r.nrEntries, entries, payload };
  } finally {
    r.close();
  }
}

/** Compact description of entries: "w16+8", "fua100+2", "flush", "discard16+4", "mark:x". */
export function describeEntries(log: ParsedLog): string[] {
  return log.entries.map((e) => {
    const h = e.header;
    if (h.flags & 8) return `mark:${h.mark!.toString()}`;
    if (h.flags === 1 && h.nrSectors === 0) return "flush";
    const kind = h.flags & 4 ? "discard" : h.flags & 2 ? "fua" : h.flags & 1 ? "flushw" : "w";
    return `${kind}${h.sector}+${h.nrSectors}`;
  });
}

export const superNrEntries = (file: string): number => {
  const b = Buffer.alloc(32);
  const fd = fs.openSync(file, "r");
  try {
    fs.readSync(fd, b, 0, 32, 0);
  } finally {
    fs.closeSync(fd);
  }
  return b.readBigUInt64LE(0) === 0x6a736677736872n ? Number(b.readBigUInt64LE(16)) : -1;
};

/** Poll (without a deadline of its own: vitest's test timeout bounds it) until `cond` holds. */
export async function until(cond: () => boolean): Promise<void> {
  while (!cond()) await new Promise((r) => setTimeout(r, 5));
}

/** `tsdm replay-log <args>` as a real child process. */
export function replayLog(args: string[], env?: NodeJS.ProcessEnv): Promise<RunResult> {
  return run(process.execPath, ["--import", "tsx", path.join(ROOT, "tools", "tsdm.ts"), "replay-log", ...args], { cwd: ROOT, env });
}
