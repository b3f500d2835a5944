import fs from "node:fs";
import path from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { DeviceRegistry } from "../../daemon/device/registry.js";
import { FileMetaIo, SM_BITMAP_VALIDATOR, stampBlock } from "../../daemon/targets/era/pdata/block.js";
import { readIndexEntry } from "../../daemon/targets/era/pdata/space-map.js";
import { EraMetadata } from "../../daemon/targets/era/metadata.js";
import { readSuperblock } from "../../daemon/targets/era/inspect.js";
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
    expect(missing.stderr).toMatch(/No such file or directory/);

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
