import fs from "node:fs";
import { expect } from "vitest";
import { DmError } from "../../daemon/core/errors.js";
import type { Sector } from "../../daemon/core/units.js";
import type { Bio } from "../../daemon/io/bio.js";
import type { DeviceRegistry } from "../../daemon/device/registry.js";
import type { MappedDevice } from "../../daemon/device/mapped-device.js";
import { FileRawDevice } from "../../tools/bow-restore/raw-device.js";
import { restoreCheckpoint, type RestoreOptions, type RestoreResult } from "../../daemon/targets/bow/restore.js";

const S = (n: number) => n as Sector;

export const readBio = (sector: number, count: number): Bio => ({ op: "read", sector: S(sector), count: S(count), data: Buffer.alloc(count * 512), fua: false });
export const writeBio = (sector: number, data: Buffer): Bio => ({ op: "write", sector: S(sector), count: S(data.length / 512), data, fua: false });
export const discardBio = (sector: number, count: number): Bio => ({ op: "discard", sector: S(sector), count: S(count), fua: false });

/** A block whose every byte says which sector and which "generation" wrote it. */
export function pattern(sectors: number, seed: number): Buffer {
  const b = Buffer.alloc(sectors * 512);
  for (let i = 0; i < b.length; i += 4) b.writeUInt32LE((Math.imul(i + 1, 2654435761) ^ Math.imul(seed + 7, 40503)) >>> 0, i);
  return b;
}

export async function createBow(reg: DeviceRegistry, name: string, file: string, sectors: number, extra = ""): Promise<MappedDevice> {
  const dev = reg.create({ name });
  await dev.load([{ start: S(0), length: S(sectors), type: "bow", params: `${file}${extra ? " " + extra : ""}` }], false);
  await dev.resume({ noflush: false });
  return dev;
}

export async function read(dev: MappedDevice, sector: number, count: number): Promise<Buffer> {
  const bio = readBio(sector, count);
  await dev.submit(bio);
  return bio.data!;
}

export const write = (dev: MappedDevice, sector: number, data: Buffer): Promise<void> => dev.submit(writeBio(sector, data));
export const discard = (dev: MappedDevice, sector: number, count: number): Promise<void> => dev.submit(discardBio(sector, count));

export async function setState(dev: MappedDevice, s: string): Promise<void> {
  await dev.message(S(0), ["state", s]);
}

export async function state(dev: MappedDevice): Promise<number> {
  return Number(await dev.message(S(0), ["state"]));
}

export async function free(dev: MappedDevice): Promise<number> {
  return Number(await dev.message(S(0), ["free"]));
}

/** The range map as "Type: start" strings (without self-check errors, which are asserted absent). */
export async function ranges(dev: MappedDevice): Promise<string[]> {
  const text = String(await dev.message(S(0), ["ranges"]));
  const lines = text.trimEnd().split("\n");
  expect(lines.filter((l) => l.startsWith("ERROR"))).toEqual([]);
  return lines;
}

export async function restoreFile(path: string, opts: RestoreOptions = {}): Promise<RestoreResult> {
  const raw = await FileRawDevice.open(path, { readOnly: Boolean(opts.dryRun) });
  try {
    return await restoreCheckpoint(raw, opts);
  } finally {
    raw.close();
  }
}

export function readFileRange(path: string, sector: number, count: number): Buffer {
  const fd = fs.openSync(path, "r");
  try {
    const b = Buffer.alloc(count * 512);
    fs.readSync(fd, b, 0, b.length, sector * 512);
    return b;
  } finally {
    fs.closeSync(fd);
  }
}

export function writeFileRange(path: string, sector: number, data: Buffer): void {
  const fd = fs.openSync(path, "r+");
  try {
    fs.writeSync(fd, data, 0, data.length, sector * 512);
  } finally {
    fs.closeSync(fd);
  }
}

/** Compare two images on the given block set; returns the first differing block or -1. */
export function firstDifference(a: Buffer, b: Buffer, blockSize: number, blocks: Iterable<number>): number {
  for (const blk of blocks) {
    const off = blk * blockSize;
    if (a.compare(b, off, off + blockSize, off, off + blockSize) !== 0) return blk;
  }
  return -1;
}

/** Seeded PRNG (mulberry32) for reproducible random workloads. */
export function rng(seed: number): () => number {
  let t = seed >>> 0;
  return () => {
    t = (t + 0x6d2b79f5) >>> 0;
    let x = t;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

export { expectDmError } from "../helpers/errors.js";
