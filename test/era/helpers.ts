import { execFile } from "node:child_process";
import { Writable } from "node:stream";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { expect } from "vitest";
import type { Sector } from "../../daemon/core/units.js";
import type { Bio } from "../../daemon/io/bio.js";
import type { DeviceRegistry } from "../../daemon/device/registry.js";
import type { MappedDevice } from "../../daemon/device/mapped-device.js";
import { FileMetaIo } from "../../daemon/targets/era/pdata/block.js";
import { checkReferenceCounts } from "../../daemon/targets/era/inspect.js";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Run a program asynchronously (the thin-provisioning-tools binaries, or tsdm itself). */
export function run(cmd: string, args: readonly string[]): Promise<RunResult> {
  return new Promise((resolve) => {
    execFile(cmd, [...args], { maxBuffer: 1 << 30, encoding: "utf8" }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === "number" ? ((err as { code: number }).code) : 128) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

/** `tsdm <args>` as a process, from source (the real entry point). */
export const tsdmProcess = (args: readonly string[]): Promise<RunResult> => run(process.execPath, ["--import", "tsx", path.join(ROOT, "tools/tsdm.ts"), ...args]);

/** `tsdm era ...` in-process, through the same dispatcher as the binary (args start with "era"). */
export async function tsdm(args: readonly string[]): Promise<RunResult> {
  expect(args[0]).toBe("era");
  const { run: runEra } = await import("../../tools/era/cli.js");
  let stdout = "";
  let stderr = "";
  const sink = (append: (s: string) => void) => new Writable({ write: (chunk: Buffer | string, _enc, cb) => (append(chunk.toString()), cb()) });
  const code = await runEra(args.slice(1), { stdout: sink((s) => (stdout += s)), stderr: sink((s) => (stderr += s)) });
  return { code, stdout, stderr };
}

/** Blocks listed by era_invalidate's <blocks> XML. */
export function parseBlocks(xml: string): number[] {
  const out: number[] = [];
  for (const m of xml.matchAll(/<block block="(\d+)"\/>|<range begin="(\d+)" end = "(\d+)"\/>/g)) {
    if (m[1] !== undefined) out.push(Number(m[1]));
    else for (let b = Number(m[2]); b < Number(m[3]); b++) out.push(b);
  }
  return out;
}

export async function invalidateSince(meta: string, since: number): Promise<number[]> {
  const r = await run("era_invalidate", ["--written-since", String(since), meta]);
  expect(r.stderr).toBe("");
  expect(r.code).toBe(0);
  return parseBlocks(r.stdout);
}

export async function expectEraCheckClean(meta: string): Promise<void> {
  const r = await run("era_check", [meta]);
  expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 0, stderr: "examining superblock\n" });
}

export async function expectRefCountsClean(meta: string): Promise<void> {
  const io = FileMetaIo.open(meta, false);
  try {
    const r = await checkReferenceCounts(io);
    expect(r.problems).toEqual([]);
    expect(r.reachable).toBe(r.nrAllocated);
  } finally {
    await io.close();
  }
}

export const S = (n: number): Sector => n as Sector;
export const writeBio = (sector: number, count: number, fill = 0xab): Bio => ({ op: "write", sector: S(sector), count: S(count), data: Buffer.alloc(count * 512, fill), fua: false });
export const readBio = (sector: number, count: number): Bio => ({ op: "read", sector: S(sector), count: S(count), data: Buffer.alloc(count * 512), fua: false });

export async function createEra(reg: DeviceRegistry, name: string, meta: string, origin: string, sectors: number, blockSize: number): Promise<MappedDevice> {
  const dev = reg.create({ name });
  await dev.load([{ start: S(0), length: S(sectors), type: "era", params: `${meta} ${origin} ${blockSize}` }], false);
  await dev.resume({ noflush: false });
  return dev;
}

export const statusOf = (dev: MappedDevice): string => dev.live!.lines("info")[0]!.params;
export const eraOf = (dev: MappedDevice): number => Number(statusOf(dev).split(" ")[2]);

/** A seeded PRNG (mulberry32), so a failing workload can be replayed. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
