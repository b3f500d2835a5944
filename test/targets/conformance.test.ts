import { execFileSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DmError } from "../../daemon/core/errors.js";
import type { DeviceRegistry } from "../../daemon/device/registry.js";
import type { MappedDevice } from "../../daemon/device/mapped-device.js";
import { makeFile, makeRegistry, tempDir } from "../helpers/registry.js";
import { caught, line, liveDevice, statusOf, tableOf } from "./helpers.js";

/**
 * Conformance with the real kernel: kernel-oracle/results-6.12.txt records, for ~120 striped/flakey/delay table
 * lines, what the Debian 6.12 kernel did (accepted, with its `table` and `status` text, or rejected, with the
 * constructor's reason and errno from dmesg). Every line is replayed here with the guest's disks replaced by
 * files of the same size and the guest's 4 KiB-sector loop devices by loop devices made the same way (root only;
 * CI runs as root), and tsdm must do exactly the same.
 */
interface OracleCase {
  table: string;
  ok: boolean;
  tableOut?: string;
  statusOut?: string;
  reason?: string;
  errno?: string;
}

const HERE = path.dirname(fileURLToPath(import.meta.url));

function parseOracle(text: string): OracleCase[] {
  const cases: OracleCase[] = [];
  for (const l of text.split("\n")) {
    let m: RegExpExecArray | null;
    if ((m = /^OK {3}\[(.*)\]$/.exec(l))) cases.push({ table: m[1]!, ok: true });
    else if ((m = /^FAIL \[(.*)\] rc: /.exec(l))) cases.push({ table: m[1]!, ok: false });
    else if ((m = /^ {2}table : \[(.*)\]$/.exec(l))) cases.at(-1)!.tableOut = m[1]!;
    else if ((m = /^ {2}status: \[(.*)\]$/.exec(l))) cases.at(-1)!.statusOut = m[1]!;
    else if ((m = /^ {2}dmesg: (.*)$/.exec(l))) {
      // "device-mapper: table: 253:0: striped: <reason> (-EINVAL)" or the table core's
      // "device-mapper: table: 253:0: vdb too small for target: ...|...Cannot calculate initial queue limits|".
      const first = m[1]!.split("|")[0]!.replace(/^\[[ 0-9.]+\] device-mapper: table: 253:\d+: /, "");
      const e = / \(-(E[A-Z]+)\)$/.exec(first);
      const c = cases.at(-1)!;
      c.errno = e ? e[1]! : "EINVAL";
      c.reason = (e ? first.slice(0, e.index) : first).replace(/^(striped|flakey|delay): /, "");
    }
  }
  return cases;
}

const allCases = parseOracle(fs.readFileSync(path.join(HERE, "kernel-oracle", "results-6.12.txt"), "utf8"));
const canLoop = process.getuid?.() === 0;
const cases = canLoop ? allCases : allCases.filter((c) => !c.table.includes("/dev/loop"));
const loops: string[] = [];

let reg: DeviceRegistry;
let tmp: ReturnType<typeof tempDir>;
let dev: MappedDevice;
let names: Record<string, string>;
beforeAll(async () => {
  reg = makeRegistry();
  tmp = tempDir();
  const a = makeFile(tmp.dir, "vda", 8 << 20);
  const b = makeFile(tmp.dir, "vdb", 8 << 20);
  // Guest names → files: paths in tables, major:minor in output, bare names in the table core's messages.
  names = { "/dev/vda": a, "/dev/vdb": b, "254:0": a, "254:16": b, vda: a, vdb: b, "/dev/nonexist": path.join(tmp.dir, "nonexist") };
  if (canLoop) {
    // As the guest script does: 4 MiB files on loop devices with 4096-byte logical blocks.
    for (const i of [0, 1]) {
      const loop = execFileSync("losetup", ["-f", "--show", "-b", "4096", makeFile(tmp.dir, `l${i}`, 4 << 20)], { encoding: "utf8" }).trim();
      loops.push(loop);
      const rdev = fs.statSync(loop).rdev;
      Object.assign(names, { [`/dev/loop${i}`]: loop, [`7:${i}`]: `${Math.floor(rdev / 256) & 0xfff}:${(rdev & 0xff) | ((rdev >> 12) & ~0xff)}`, [`loop${i}`]: path.basename(loop) });
    }
  }
  dev = await liveDevice(reg, "oracle", [line(0, 8, "zero")]);
});
afterAll(async () => {
  for (const d of reg.list()) await reg.remove(d).catch(() => undefined);
  for (const loop of loops) execFileSync("losetup", ["-d", loop]);
  tmp.cleanup();
});

const localise = (text: string): string =>
  text.replace(/\/dev\/vd[ab]|\/dev\/nonexist|\/dev\/loop[01]|\b254:(?:0|16)\b|\b7:[01]\b|\bvd[ab]\b|\bloop[01]\b/g, (m) => names[m]!);

describe("kernel 6.12 conformance (recorded dm oracle)", () => {
  it("the recording covers all three targets", () => {
    for (const t of ["striped", "flakey", "delay"]) expect(cases.filter((c) => c.table.split(" ")[2] === t).length).toBeGreaterThan(10);
    if (canLoop) expect(cases.filter((c) => c.table.includes("/dev/loop")).length).toBe(7);
  });

  it.each(cases.map((c) => [c.table, c] as const))("%s", async (_t, c) => {
    const [start, length, type, ...params] = c.table.split(" ");
    const spec = [line(Number(start), Number(length), type!, localise(params.join(" ")))];
    const err = await caught(dev.load(spec, false));
    if (c.ok) {
      expect(err).toBeUndefined();
      await dev.resume({ noflush: false });
      const [, , , ...expectedTable] = c.tableOut!.split(" ");
      expect(tableOf(dev)).toEqual([localise(expectedTable.join(" "))]);
      if (c.statusOut !== undefined) {
        // `dmsetup status` prints "<start> <len> <type> <info>" (a trailing space when info is empty).
        expect(`${start} ${length} ${type} ${statusOf(dev)[0]}`).toBe(localise(c.statusOut));
      }
    } else {
      expect(err).toBeInstanceOf(DmError);
      expect((err as DmError).errno).toBe(c.errno);
      expect((err as DmError).message).toContain(`${type}: ${localise(c.reason!)}`);
      expect(dev.inactive).toBeUndefined();
    }
  });
});
