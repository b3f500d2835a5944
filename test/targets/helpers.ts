import fs from "node:fs";
import { expect } from "vitest";
import { DmError } from "../../daemon/core/errors.js";
import type { Sector } from "../../daemon/core/units.js";
import type { Bio } from "../../daemon/io/bio.js";
import type { DeviceRegistry } from "../../daemon/device/registry.js";
import type { MappedDevice } from "../../daemon/device/mapped-device.js";
import { caught, expectDmError } from "../helpers/errors.js";

export { caught, expectDmError };

/** Shared helpers for the target tests: bios, table lines, and devices with a live table. */
export const S = (n: number): Sector => n as Sector;
export const line = (start: number, length: number, type: string, params = "") => ({ start: S(start), length: S(length), type, params });

export const readBio = (sector: number, count: number, fua = false): Bio => ({ op: "read", sector: S(sector), count: S(count), data: Buffer.alloc(count * 512), fua });
export const writeBio = (sector: number, data: Buffer, fua = false): Bio => ({ op: "write", sector: S(sector), count: S(data.length / 512), data, fua });
export const flush = (): Bio => ({ op: "flush", sector: S(0), count: S(0), fua: false });
export const discard = (sector: number, count: number): Bio => ({ op: "discard", sector: S(sector), count: S(count), fua: false });

/** Deterministic, position-dependent bytes (no two sectors alike). */
export function pattern(bytes: number, seed = 1): Buffer {
  const b = Buffer.alloc(bytes);
  for (let i = 0; i < bytes; i++) b[i] = (Math.imul(i + 1, 2654435761 + seed) >>> 13) & 0xff;
  return b;
}

/** A device named `name` with `lines` loaded and resumed. */
export async function liveDevice(reg: DeviceRegistry, name: string, lines: ReturnType<typeof line>[]): Promise<MappedDevice> {
  const dev = reg.create({ name });
  await dev.load(lines, false);
  await dev.resume({ noflush: false });
  return dev;
}

export const openFds = (): number => fs.readdirSync("/proc/self/fd").length;

/** Status / table text of a device's live table, one string per target (params only). */
export const tableOf = (dev: MappedDevice): string[] => dev.live!.lines("table").map((l) => l.params);
export const statusOf = (dev: MappedDevice): string[] => dev.live!.lines("info").map((l) => l.params);

/**
 * Asserts that loading `lines` into a device that already has a live table fails with `errno` and `text`, and
 * changes nothing: the live table is the same, no inactive table appears, and no descriptor is left open.
 */
export async function expectLoadRejected(dev: MappedDevice, lines: ReturnType<typeof line>[], errno: string, text?: string | RegExp): Promise<DmError> {
  const before = tableOf(dev);
  const fds = openFds();
  const err = await expectDmError(dev.load(lines, false), errno, text);
  expect(dev.inactive).toBeUndefined();
  expect(tableOf(dev)).toEqual(before);
  expect(openFds()).toBe(fds);
  return err;
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

