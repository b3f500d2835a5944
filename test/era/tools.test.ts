import fs from "node:fs";
import path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { DeviceRegistry } from "../../daemon/device/registry.js";
import { FileMetaIo, SM_BITMAP_VALIDATOR, stampBlock, SUPERBLOCK_VALIDATOR } from "../../daemon/targets/era/pdata/block.js";
import * as btree from "../../daemon/targets/era/pdata/btree.js";
import { readIndexEntry } from "../../daemon/targets/era/pdata/space-map.js";
import { EraMetadata } from "../../daemon/targets/era/metadata.js";
import { readerTm, readSuperblock } from "../../daemon/targets/era/inspect.js";
import { decodeWriteset } from "../../daemon/targets/era/superblock.js";
import { makeFile, makeRegistry, tempDir } from "../helpers/registry.js";
import { createEra, parseBlocks, run, S, tsdm, tsdmProcess, writeBio } from "./helpers.js";

let tmp: ReturnType<typeof tempDir>;
let reg: DeviceRegistry;
beforeEach(() => {
  tmp = tempDir("tsdm-era-tools-");
  reg = makeRegistry();
});
afterEach(async () => {
  for (const d of reg.list()) await reg.remove(d).catch(() => undefined);
  tmp.cleanup();
});

/** The spec's test vector (§4.2). */
const XML = `<superblock uuid="" block_size="128" nr_blocks="100" current_era="5">
  <writeset era="3" nr_bits="100">
    <bit block="1" value="true"/>
  </writeset>
  <writeset era="4" nr_bits="100">
    <bit block="7" value="true"/>
    <bit block="50" value="true"/>
    <bit block="51" value="true"/>
  </writeset>
  <era_array>
    <era block="0" era="1"/>
    <era block="1" era="2"/>
    <era block="2" era="2"/>
    <era block="99" era="2"/>
  </era_array>
</superblock>
`;

async function restored(name = "meta"): Promise<string> {
  const xml = path.join(tmp.dir, `${name}.xml`);
  fs.writeFileSync(xml, XML);
  const meta = makeFile(tmp.dir, name, 4 << 20);
  const r = await run("era_restore", ["-i", xml, "-o", meta]);
  expect(r.code).toBe(0);
  return meta;
}

describe("tsdm era tools vs thin-provisioning-tools 0.9.0", () => {
  it("invalidate: the spec's table, byte for byte equal to era_invalidate", async () => {
    const meta = await restored();
    const want: Record<number, number[]> = {
      0: Array.from({ length: 100 }, (_, i) => i),
      2: [1, 2, 7, 50, 51, 99],
      3: [1, 7, 50, 51],
      4: [7, 50, 51],
      5: [],
    };
    for (const [n, blocks] of Object.entries(want)) {
      const [ours, theirs] = await Promise.all([tsdm(["era", "invalidate", "--written-since", n, meta]), run("era_invalidate", ["--written-since", n, meta])]);
      expect(ours.code).toBe(0);
      expect(ours.stdout).toBe(theirs.stdout);
      expect(parseBlocks(ours.stdout)).toEqual(blocks);
    }
    expect((await tsdm(["era", "invalidate", "--written-since", "2", meta])).stdout).toBe('<blocks>\n  <range begin="1" end = "3"/>\n  <block block="7"/>\n  <range begin="50" end = "52"/>\n  <block block="99"/>\n</blocks>\n');
    // The real binary: `tsdm era invalidate` and its stdout through a pipe.
    const bin = await tsdmProcess(["era", "invalidate", "--written-since", "2", meta]);
    expect({ code: bin.code, stdout: bin.stdout }).toEqual({ code: 0, stdout: (await run("era_invalidate", ["--written-since", "2", meta])).stdout });
    const out = path.join(tmp.dir, "out.xml");
    expect((await tsdm(["era", "invalidate", "-o", out, "--written-since=3", meta])).code).toBe(0);
    expect(fs.readFileSync(out, "utf8")).toBe((await run("era_invalidate", ["--written-since", "3", meta])).stdout);
  });

  it("dump and dump --logical equal era_dump's output (including 0.9.0's oldest-era quirk)", async () => {
    const meta = await restored();
    for (const args of [[], ["--logical"]]) {
      const [ours, theirs] = await Promise.all([tsdm(["era", "dump", ...args, meta]), run("era_dump", [...args, meta])]);
      expect(ours.code).toBe(0);
      expect(ours.stdout).toBe(theirs.stdout);
    }
    const out = path.join(tmp.dir, "dump.xml");
    expect((await tsdm(["era", "dump", "-o", out, meta])).code).toBe(0);
    // A dump restores to the same metadata contents.
    const again = makeFile(tmp.dir, "again", 4 << 20);
    expect((await run("era_restore", ["-i", out, "-o", again])).code).toBe(0);
    expect((await tsdm(["era", "dump", again])).stdout).toBe((await run("era_dump", [meta])).stdout);
  });

  it("check: clean metadata passes both; usage errors; damaged metadata fails both", async () => {
    const meta = await restored();
    const ok = await tsdm(["era", "check", meta]);
    expect({ code: ok.code, stderr: ok.stderr }).toEqual({ code: 0, stderr: "examining superblock\n" });
    expect((await tsdm(["era", "check", "--check-space-map", meta])).code).toBe(0);
    const noInput = await tsdm(["era", "check"]);
    expect(noInput.code).toBe(1);
    expect(noInput.stderr).toMatch(/^No input file provided\./);
    expect((await tsdm(["era", "invalidate", meta])).stderr).toMatch(/^Please specify --written-since/);
    const missing = await tsdm(["era", "dump", path.join(tmp.dir, "nope")]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toBe("Couldn't stat path\n"); // era_dump's words; era_check names the path and errno

    const zero = makeFile(tmp.dir, "zero", 1 << 20);
    const [zOurs, zTheirs] = await Promise.all([tsdm(["era", "check", zero]), run("era_check", [zero])]);
    expect(zTheirs.code).toBe(1);
    expect(zOurs.code).toBe(1);
    expect(zOurs.stderr).toMatch(/examining superblock\n  superblock is corrupt\n/);

    // An era above current_era in the era array: both report it.
    const tooGreat = await restored("great");
    const io = FileMetaIo.open(tooGreat, true);
    const md = await EraMetadata.open(io, 128, false);
    const v = Buffer.alloc(4);
    v.writeUInt32LE(9);
    md.eraArrayRoot = await md.eraArray.set(md.eraArrayRoot, 42, v);
    await md.commit();
    await io.close();
    const [gOurs, gTheirs] = await Promise.all([tsdm(["era", "check", tooGreat]), run("era_check", [tooGreat])]);
    expect(gTheirs.code).toBe(1);
    expect(gOurs.code).toBe(1);
    expect(gOurs.stderr).toMatch(/invalid era in era array\n  era too great\n  block: 42, era: 9/);
    expect(gTheirs.stderr).toMatch(/era too great/);
  });

  it("check --check-space-map finds a wrong reference count that era_check cannot see", async () => {
    const meta = await restored();
    const sb = await (async () => {
      const io = FileMetaIo.open(meta, false);
      try {
        return await readSuperblock(io, 0);
      } finally {
        await io.close();
      }
    })();
    const fd = fs.openSync(meta, "r+");
    const index = Buffer.alloc(4096);
    fs.readSync(fd, index, 0, 4096, sb.smRoot.bitmapRoot * 4096);
    const bmLoc = readIndexEntry(index, 0).blocknr;
    const bm = Buffer.alloc(4096);
    fs.readSync(fd, bm, 0, 4096, bmLoc * 4096);
    // Block 0 (the superblock) has count 1 = bits 01; make it 2 = bits 10.
    bm.writeUInt32LE((bm.readUInt32LE(16) & ~3) | 1, 16);
    stampBlock(bm, bmLoc, SM_BITMAP_VALIDATOR);
    fs.writeSync(fd, bm, 0, 4096, bmLoc * 4096);
    fs.closeSync(fd);
    expect((await run("era_check", [meta])).code).toBe(0);
    const r = await tsdm(["era", "check", "--check-space-map", meta]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/block 0: 1 references but count 2/);
  });

  it("invalidate --metadata-snapshot reads the snapshot (0.9.0 reads the live trees, its bug #192)", async () => {
    const meta = makeFile(tmp.dir, "meta", 1 << 20);
    const origin = makeFile(tmp.dir, "origin", 1 << 20);
    const dev = await createEra(reg, "e", meta, origin, 2048, 8);
    await dev.submit(writeBio(8, 1)); // block 1, era 1
    await dev.message(S(0), ["take_metadata_snap"]); // era 2
    await dev.submit(writeBio(16, 1)); // block 2, era 2
    await dev.message(S(0), ["checkpoint"]); // era 3
    const snap = await tsdm(["era", "invalidate", "--metadata-snapshot", "--written-since", "1", meta]);
    expect(snap.code).toBe(0);
    expect(parseBlocks(snap.stdout)).toEqual([1]);
    const live = await tsdm(["era", "invalidate", "--written-since", "1", meta]);
    expect(parseBlocks(live.stdout)).toEqual([1, 2]);
    expect(parseBlocks((await run("era_invalidate", ["--metadata-snapshot", "--written-since", "1", meta])).stdout)).toEqual([1, 2]);
    await dev.message(S(0), ["drop_metadata_snap"]);
    const none = await tsdm(["era", "invalidate", "--metadata-snapshot", "--written-since", "1", meta]);
    expect(none.code).toBe(1);
    expect(none.stderr).toBe("no metadata snapshot taken.\n");
  });
});

/** A copy of `src` with u32 `value` at superblock offset `off` (checksum restamped unless `stamp` is false). */
function withSuperblockField(src: string, name: string, off: number, value: number, stamp = true): string {
  const dst = path.join(tmp.dir, name);
  fs.copyFileSync(src, dst);
  const fd = fs.openSync(dst, "r+");
  const b = Buffer.alloc(4096);
  fs.readSync(fd, b, 0, 4096, 0);
  b.writeUInt32LE(value >>> 0, off);
  if (stamp) stampBlock(b, 0, SUPERBLOCK_VALIDATOR);
  fs.writeSync(fd, b, 0, 4096, 0);
  fs.closeSync(fd);
  return dst;
}

/** A copy of `src` with one byte flipped in metadata block `block` (its checksum no longer matches). */
function withDamagedBlock(src: string, name: string, block: number): string {
  const dst = path.join(tmp.dir, name);
  fs.copyFileSync(src, dst);
  const fd = fs.openSync(dst, "r+");
  const b = Buffer.alloc(1);
  fs.readSync(fd, b, 0, 1, block * 4096 + 100);
  b[0]! ^= 1;
  fs.writeSync(fd, b, 0, 1, block * 4096 + 100);
  fs.closeSync(fd);
  return dst;
}

/** Where things are in a metadata file: the writeset tree root, each era's bitset array blocks, the era array's. */
async function layout(meta: string): Promise<{ wsTree: number; bitsetBlocks: Map<number, number[]>; eraArrayBlocks: number[] }> {
  const io = FileMetaIo.open(meta, false);
  try {
    const sb = await readSuperblock(io);
    const tm = readerTm(io);
    const arrayBlocks = async (root: number): Promise<number[]> => {
      const out: number[] = [];
      await btree.walk(tm, root, (_k, v) => void out.push(btree.readLe64(v)));
      return out;
    };
    const bitsetBlocks = new Map<number, number[]>();
    const roots: Array<[number, number]> = [];
    await btree.walk(tm, sb.writesetTreeRoot, (k, v) => void roots.push([k, decodeWriteset(v).root]));
    for (const [era, root] of roots) bitsetBlocks.set(era, await arrayBlocks(root));
    return { wsTree: sb.writesetTreeRoot, bitsetBlocks, eraArrayBlocks: await arrayBlocks(sb.eraArrayRoot) };
  } finally {
    await io.close();
  }
}

const TOOLS = { check: "era_check", dump: "era_dump", invalidate: "era_invalidate" } as const;

describe("tsdm era tools print what 0.9.0 prints (stdout, stderr, exit code)", () => {
  it("bad paths, small files and damaged or invalid superblocks", async () => {
    const meta = await restored();
    const dir = path.join(tmp.dir, "adir");
    fs.mkdirSync(dir);
    const small = makeFile(tmp.dir, "small", 1000);
    const zero = makeFile(tmp.dir, "zero4k", 4096);
    const cases = [
      path.join(tmp.dir, "missing"),
      dir,
      small,
      zero,
      withSuperblockField(meta, "magic", 32, 1234),
      withSuperblockField(meta, "version", 40, 2),
      withSuperblockField(meta, "version0", 40, 0),
      withSuperblockField(meta, "mbs", 176, 16),
      withSuperblockField(meta, "csum", 300, 7, false),
      withSuperblockField(meta, "blocknr", 8, 5),
      withSuperblockField(withSuperblockField(withSuperblockField(meta, "m1", 32, 1234), "m2", 40, 2), "multi", 176, 16),
      withSuperblockField(meta, "wsroot0", 200, 0),
      withSuperblockField(meta, "earoot0", 208, 0),
      withSuperblockField(withSuperblockField(meta, "s1", 200, 6), "same", 208, 6),
    ];
    for (const file of cases) {
      for (const [sub, tool] of Object.entries(TOOLS)) {
        const args = sub === "invalidate" ? ["--written-since", "1", file] : [file];
        const [ours, theirs] = await Promise.all([tsdm(["era", sub, ...args]), run(tool, args)]);
        expect({ file: path.basename(file), tool, ...ours }).toEqual({ file: path.basename(file), tool, ...theirs });
      }
    }
    // Spot checks of the words themselves.
    expect((await tsdm(["era", "check", cases[4]!])).stderr).toBe("examining superblock\n  superblock is invalid\n    magic is incorrect: 1234\n");
    expect((await tsdm(["era", "dump", cases[0]!])).stderr).toBe("Couldn't stat path\n");
    expect((await tsdm(["era", "invalidate", "--written-since", "1", cases[2]!])).stderr).toBe("Metadata is not large enough for superblock.\n");
  });

  it("era check reports every era that is too great; option errors and --written-since casts as boost does", async () => {
    const xml = path.join(tmp.dir, "great.xml");
    fs.writeFileSync(xml, `<superblock uuid="" block_size="128" nr_blocks="10" current_era="5">\n  <era_array>\n    <era block="2" era="7"/>\n    <era block="5" era="9"/>\n  </era_array>\n</superblock>\n`);
    const great = makeFile(tmp.dir, "great", 1 << 20);
    expect((await run("era_restore", ["-i", xml, "-o", great])).code).toBe(0);
    const [ours, theirs] = await Promise.all([tsdm(["era", "check", great]), run("era_check", [great])]);
    expect(ours).toEqual(theirs);
    expect(ours.stderr).toMatch(/block: 2, era: 7\n.*\n.*\n  block: 5, era: 9\n$/);

    const meta = await restored();
    const argvs: Array<[keyof typeof TOOLS, string[]]> = [
      ["invalidate", ["--written-since", "+3", meta]],
      ["invalidate", ["--written-since", "-1", meta]],
      ["invalidate", ["--written-since", "-4294967295", meta]],
      ["invalidate", ["--written-since", "-4294967296", meta]],
      ["invalidate", ["--written-since", "4294967296", meta]],
      ["invalidate", ["--written-since", "3x", meta]],
      ["invalidate", ["--frob", meta]],
      ["invalidate", ["-x", meta]],
      ["invalidate", ["--help"]],
      ["dump", ["--frob", meta]],
      ["dump", ["--help"]],
    ];
    for (const [sub, args] of argvs) {
      const [o, t] = await Promise.all([tsdm(["era", sub, ...args]), run(TOOLS[sub], args)]);
      expect({ sub, args, ...o }).toEqual({ sub, args, ...t });
    }
    expect(parseBlocks((await tsdm(["era", "invalidate", "--written-since", "+3", meta])).stdout)).toEqual([1, 7, 50, 51]);
  });

  it("-o - is stdout, as in 0.9.0, not a file named '-'", async () => {
    const meta = await restored();
    const cwd = process.cwd();
    process.chdir(tmp.dir);
    try {
      for (const [sub, args] of [["dump", [meta]], ["invalidate", ["--written-since", "2", meta]]] as const) {
        const [ours, theirs] = await Promise.all([tsdm(["era", sub, "-o", "-", ...args]), run(TOOLS[sub], ["-o", "-", ...args])]);
        expect(ours).toEqual(theirs);
        expect(ours.stdout.length).toBeGreaterThan(0);
      }
      expect(fs.existsSync(path.join(tmp.dir, "-"))).toBe(false);
      // An output that cannot be created is reported, not a crash (0.9.0 says nothing and exits 0).
      const bad = await tsdm(["era", "dump", "-o", path.join(tmp.dir, "no", "such", "dir.xml"), meta]);
      expect(bad).toEqual({ code: 1, stdout: "", stderr: expect.stringMatching(/^ENOENT: no such file or directory, open /) });
    } finally {
      process.chdir(cwd);
    }
  });
});

describe("damaged writesets and era arrays", () => {
  it("dump --repair drops only the damaged writeset's unreadable bits; dump and invalidate stop as 0.9.0 does", async () => {
    const meta = await restored();
    const where = await layout(meta);
    const ws3 = withDamagedBlock(meta, "ws3", where.bitsetBlocks.get(3)![0]!);
    for (const args of [["--repair"], ["--repair", "--logical"], [], ["--logical"]]) {
      const [ours, theirs] = await Promise.all([tsdm(["era", "dump", ...args, ws3]), run("era_dump", [...args, ws3])]);
      expect({ args, ...ours }).toEqual({ args, ...theirs });
    }
    const repaired = (await tsdm(["era", "dump", "--repair", ws3])).stdout;
    expect(repaired).toMatch(/<writeset era="3" nr_bits="100">\n  <\/writeset>\n  <writeset era="4" nr_bits="100">\n(    <bit .*\n){100}  <\/writeset>\n  <era_array>\n(    <era .*\n){100}  <\/era_array>\n<\/superblock>\n$/);
    const [inv, invTheirs] = await Promise.all([tsdm(["era", "invalidate", "--written-since", "1", ws3]), run("era_invalidate", ["--written-since", "1", ws3])]);
    expect(inv).toEqual(invTheirs);
    // Every damaged writeset is reported with its range (0.9.0 starts the same lines, then aborts).
    const check = await tsdm(["era", "check", ws3]);
    expect(check).toEqual({ code: 1, stdout: "", stderr: "examining superblock\ndamaged writeset\n  missing bits\n  Era: 3\n  Missing bits: [0, 100)\n" });
    expect((await run("era_check", [ws3])).stderr).toMatch(/^examining superblock\ndamaged writeset\n  missing bits\n  Era: 3\n  Missing bits: \[/);
    const tree = withDamagedBlock(meta, "wstree", where.wsTree);
    expect((await tsdm(["era", "check", tree])).stderr).toBe(`examining superblock\nmissing eras from writeset tree\n  bad checksum in btree node (block ${where.wsTree})\n  Effected eras: [0, 4294967296)\n`);
    expect((await tsdm(["era", "dump", "--repair", tree])).stdout).toBe((await run("era_dump", ["--repair", tree])).stdout);
    const ea = withDamagedBlock(meta, "ea", where.eraArrayBlocks[0]!);
    expect((await tsdm(["era", "check", ea])).stderr).toBe("examining superblock\nmissing eras from era array\n  bad checksum in array block node\n  Effected eras: [0, 100)\n");
    for (const args of [["--repair"], []]) expect(await tsdm(["era", "dump", ...args, ea])).toEqual(await run("era_dump", [...args, ea]));
    expect(await tsdm(["era", "invalidate", "--written-since", "1", ea])).toEqual(await run("era_invalidate", ["--written-since", "1", ea]));
  });

  it("dump --repair keeps the readable array blocks after a damaged one (0.9.0 stops at the damage)", async () => {
    const n = 100_000;
    const xml = path.join(tmp.dir, "big.xml");
    const bits = (era: number, list: number[]) => `  <writeset era="${era}" nr_bits="${n}">\n${list.map((b) => `    <bit block="${b}" value="true"/>\n`).join("")}  </writeset>\n`;
    fs.writeFileSync(xml, `<superblock uuid="" block_size="8" nr_blocks="${n}" current_era="9">\n${bits(3, [5, 40000, 70000, 99999])}${bits(4, [1, 33000, 66000])}  <era_array>\n    <era block="0" era="2"/>\n    <era block="5000" era="2"/>\n    <era block="99000" era="2"/>\n  </era_array>\n</superblock>\n`);
    const meta = makeFile(tmp.dir, "big", 8 << 20);
    expect((await run("era_restore", ["-i", xml, "-o", meta])).code).toBe(0);
    const where = await layout(meta);
    const damaged = withDamagedBlock(withDamagedBlock(meta, "d1", where.bitsetBlocks.get(3)![1]!), "d2", where.eraArrayBlocks[2]!);
    const out = await tsdm(["era", "dump", "--repair", "--logical", damaged]);
    expect(out.code).toBe(0);
    const eraOf = (b: number): number => Number(new RegExp(`<era block="${b}" era="(\\d+)"/>`).exec(out.stdout)?.[1] ?? -1);
    expect([eraOf(0), eraOf(5), eraOf(40000), eraOf(70000), eraOf(99999), eraOf(33000), eraOf(99000)]).toEqual([2, 3, 0, 3, 3, 4, 2]); // 40000 was only in the damaged bitset block
    expect(eraOf(2036)).toBe(-1); // in the damaged era-array block (entries 2036..3053)
    const check = await tsdm(["era", "check", damaged]);
    expect(check.stderr).toBe(
      "examining superblock\ndamaged writeset\n  missing bits\n  Era: 3\n  Missing bits: [32576, 65152)\nmissing eras from era array\n  bad checksum in array block node\n  Effected eras: [2036, 3054)\n",
    );
  });
});
