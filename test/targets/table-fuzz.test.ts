import fc from "fast-check";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { DmError } from "../../daemon/core/errors.js";
import { silentLogger } from "../../daemon/core/log.js";
import type { Sector } from "../../daemon/core/units.js";
import type { DeviceRegistry } from "../../daemon/device/registry.js";
import { Table, type TableEnv, type TableLineSpec } from "../../daemon/device/table.js";
import { targetTypes } from "../../daemon/targets/index.js";
import { makeFile, makeRegistry, tempDir } from "../helpers/registry.js";
import { line, liveDevice, openFds } from "./helpers.js";

/**
 * Fuzz Table.load with random table line lists over every registered target type: whatever the lines, a load
 * either builds a table or throws a DmError; it never throws anything else, and a failed load (like a destroyed
 * table) leaves no file descriptor open.
 */
let reg: DeviceRegistry;
let tmp: ReturnType<typeof tempDir>;
let files: string[];
let env: TableEnv;
let types: string[];
beforeAll(async () => {
  reg = makeRegistry();
  tmp = tempDir();
  files = [0, 1, 2, 3].map((i) => makeFile(tmp.dir, `f${i}`, (1 << 20) * (i + 1)));
  await liveDevice(reg, "lower", [line(0, 4096, "zero")]);
  const holder = reg.create({ name: "fuzz" });
  env = {
    deviceName: holder.name,
    readOnly: false,
    openDevice: (spec, mode) => reg.openDevice(spec, mode, holder),
    raiseEvent: () => undefined,
    log: (level, message, fields) => silentLogger[level](message, fields),
  };
  types = targetTypes().map((t) => t.name);
});
afterAll(async () => {
  for (let i = 0; i < 2; i++) for (const d of reg.list()) await reg.remove(d).catch(() => undefined);
  tmp.cleanup();
});

const number = () =>
  fc.oneof(
    { weight: 6, arbitrary: fc.nat({ max: 64 }).map(String) },
    { weight: 2, arbitrary: fc.constantFrom("0", "1", "8", "128", "512", "4096", "2048") },
    { weight: 1, arbitrary: fc.constantFrom("-1", "+1", "4294967296", "18446744073709551616", "0x10", "1.5", "1e3") },
  );
const token = () =>
  fc.oneof(
    { weight: 5, arbitrary: number() },
    { weight: 4, arbitrary: fc.constantFrom(...files, "lower", "fuzz", "253:0", "/nonexistent", "relative") },
    {
      weight: 3,
      arbitrary: fc.constantFrom(
        "drop_writes", "error_writes", "error_reads", "corrupt_bio_byte", "random_read_corrupt", "r", "w",
        "log_sector_size", "mark", "metadata", "ignore_discard", "no_discard_passdown", "\\", "#",
      ),
    },
    { weight: 1, arbitrary: fc.string({ minLength: 1, maxLength: 8 }) },
  );

const dev = () => fc.oneof({ weight: 8, arbitrary: fc.constantFrom(...files, "lower") }, { weight: 1, arbitrary: token() });
const small = () => fc.oneof({ weight: 6, arbitrary: fc.constantFrom("0", "0", "8", "16", "1", "2", "4", "128") }, { weight: 1, arbitrary: number() });

/** Argument lists in the shape each target's constructor expects, so that the fuzz reaches deep into them. */
const shapedArgs: Record<string, () => fc.Arbitrary<string[]>> = {
  zero: () => fc.constant([]),
  error: () => fc.constant([]),
  linear: () => fc.tuple(dev(), small()),
  striped: () => fc.integer({ min: 1, max: 3 }).chain((n) => fc.tuple(fc.constant(String(n)), fc.constantFrom("8", "16", "1", "12"), fc.array(fc.tuple(dev(), small()), { minLength: n, maxLength: n })).map(([a, b, p]) => [a, b, ...p.flat()])),
  flakey: () =>
    fc
      .tuple(dev(), small(), small(), small(), fc.array(fc.constantFrom(["drop_writes"], ["error_writes"], ["error_reads"], ["corrupt_bio_byte", "1", "r", "7", "0"], ["random_read_corrupt", "1000"]), { maxLength: 3 }))
      .map(([d, o, u, w, f]) => [d, o, u, w, String(f.flat().length), ...f.flat()]),
  delay: () => fc.array(fc.tuple(dev(), small(), fc.constantFrom("0", "1", "5")), { minLength: 1, maxLength: 3 }).map((c) => c.flat()),
  "log-writes": () => fc.tuple(dev(), dev(), fc.constantFrom([], ["1", "log_sector_size", "512"], ["1", "log_sector_size", "4096"], ["2", "log_sector_size"])).map(([a, b, o]) => [a, b, ...o]),
  era: () => fc.tuple(dev(), dev(), fc.constantFrom("8", "16", "128", "7", "0")),
  bow: () => fc.tuple(dev(), fc.constantFrom([], ["1", "block_size:4096"], ["1", "block_size:512"], ["2"])).map(([d, o]) => [d, ...o]),
};

/** Occasionally drop, duplicate or replace one argument. */
const mutated = (args: fc.Arbitrary<string[]>) =>
  fc.tuple(args, fc.nat(), fc.constantFrom("keep", "keep", "keep", "drop", "dup", "replace"), token()).map(([a, i, op, t]) => {
    if (a.length === 0 || op === "keep") return a;
    const at = i % a.length;
    const out = [...a];
    if (op === "drop") out.splice(at, 1);
    else if (op === "dup") out.splice(at, 0, out[at]!);
    else out[at] = t;
    return out;
  });

const lineSpec = () =>
  fc.oneof({ weight: 9, arbitrary: fc.constantFrom(...types) }, { weight: 1, arbitrary: fc.constantFrom("nosuch", "", "LINEAR") }).chain((type) =>
    fc.record({
      type: fc.constant(type),
      length: fc.oneof({ weight: 4, arbitrary: fc.constantFrom(8, 64, 512, 1024, 2048) }, { weight: 1, arbitrary: fc.nat({ max: 5000 }) }),
      startSkew: fc.oneof({ weight: 9, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.integer({ min: -8, max: 8 }) }),
      args: fc.oneof({ weight: 4, arbitrary: mutated(shapedArgs[type]?.() ?? fc.array(token(), { maxLength: 10 })) }, { weight: 1, arbitrary: fc.array(token(), { maxLength: 10 }) }),
    }),
  );

/** Lines mostly contiguous from 0 (so constructors run), sometimes with a gap or overlap. */
const tableLines = () =>
  fc.array(lineSpec(), { maxLength: 4 }).map((specs) => {
    let next = 0;
    return specs.map((s): TableLineSpec => {
      const start = Math.max(0, next + s.startSkew);
      next = start + s.length;
      return { start: start as Sector, length: s.length as Sector, type: s.type, params: s.args.join(" ") };
    });
  });

describe("Table.load fuzz over every registered target type", () => {
  it("throws only DmError, and leaves no descriptor open whether it fails or is destroyed", async () => {
    expect(types).toEqual(expect.arrayContaining(["linear", "striped", "flakey", "delay"]));
    await fc.assert(
      fc.asyncProperty(tableLines(), async (lines) => {
        const fds = openFds();
        let table: Table | undefined;
        try {
          table = await Table.load(lines, env);
        } catch (err) {
          if (!(err instanceof DmError)) throw new Error(`Table.load threw ${String(err)} (not a DmError) for ${JSON.stringify(lines)}`);
        }
        if (table) {
          expect(table.size).toBe(lines.reduce((n, l) => n + l.length, 0));
          await table.destroy();
        }
        expect(openFds()).toBe(fds);
      }),
      { numRuns: Number(process.env.FUZZ_RUNS ?? 300) },
    );
  });
});
