import fs from "node:fs";
import fc from "fast-check";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { Sector } from "../../daemon/core/units.js";
import { DmError } from "../../daemon/core/errors.js";
import { findTargetType, registerTargetType } from "../../daemon/targets/index.js";
import { CMD, NbdClient, NbdError } from "../helpers/nbd-client.js";
import { makeFile } from "../helpers/registry.js";
import { runOk, startNbd, type NbdFixture } from "./fixture.js";
import { RawClient, metaRequest } from "./raw-client.js";

// Clients that never agreed to block sizes (NBD_OPT_GO without NBD_INFO_BLOCK_SIZE, NBD_OPT_EXPORT_NAME) are owed
// the spec's default minimum block size of 1: any byte range is served, by read-modify-write where needed.
// NbdClient sends GO with no info requests, so it is such a client.

const SIZE = 1 << 20;
const EINVAL = 22;

let fx: NbdFixture;
beforeEach(async () => {
  fx = await startNbd();
});
afterEach(async () => {
  await fx.close();
});

/** The backing file's bytes, to compare with what the client was told and did. */
const fileBytes = (file: string): Buffer => fs.readFileSync(file);

describe("NBD requests that are not whole blocks, from a client without block sizes", () => {
  it("reads any byte range, within a block and across blocks", async () => {
    const { file } = await fx.linear("d", SIZE, { fill: "pattern" });
    const want = fileBytes(file);
    const c = await NbdClient.connect(fx.sock, "d");
    for (const [off, len] of [
      [1, 1],
      [100, 1000],
      [511, 2],
      [4095, 8193],
      [SIZE - 3, 3],
    ] as const) {
      expect((await c.read(off, len)).equals(want.subarray(off, off + len))).toBe(true);
    }
    await c.disconnect();
  });

  it("writes any byte range and leaves every other byte of the partial blocks as it was", async () => {
    const { file } = await fx.linear("d", SIZE, { fill: "pattern" });
    const model = fileBytes(file);
    const c = await NbdClient.connect(fx.sock, "d");
    const writes: [number, number][] = [
      [7, 3], // inside one block
      [500, 1000], // head and tail partial, one whole block between
      [2048, 700], // aligned start, partial tail
      [5000, 120], // partial head, aligned end
      [SIZE - 1, 1],
    ];
    for (const [i, [off, len]] of writes.entries()) {
      const data = Buffer.alloc(len, 0xa0 + i);
      await c.write(off, data, i % 2 === 0);
      data.copy(model, off);
    }
    expect(fileBytes(file).equals(model)).toBe(true);
    // Reads through the export agree with the file.
    expect((await c.read(400, 1300)).equals(model.subarray(400, 1700))).toBe(true);
    await c.disconnect();
  });

  it("zeroes a byte range exactly; TRIM of a partial range keeps the partial blocks' data", async () => {
    const { file } = await fx.linear("d", SIZE, { fill: "pattern" });
    const model = fileBytes(file);
    const c = await NbdClient.connect(fx.sock, "d");
    await c.request(CMD.WRITE_ZEROES, 300, 5000);
    model.fill(0, 300, 5300);
    await c.request(CMD.WRITE_ZEROES, 9000, 10); // no whole block inside
    model.fill(0, 9000, 9010);
    expect(fileBytes(file).equals(model)).toBe(true);

    // TRIM is advisory: only the whole blocks inside [20000-100, 20000+4096+100) may change (linear punches them).
    await c.request(CMD.TRIM, 20480 - 100, 4096 + 200);
    const after = fileBytes(file);
    expect(after.subarray(0, 20480).equals(model.subarray(0, 20480))).toBe(true);
    expect(after.subarray(20480 + 4096).equals(model.subarray(20480 + 4096))).toBe(true);
    await c.request(CMD.TRIM, 30000, 10); // nothing whole inside: succeeds, changes nothing
    expect(fileBytes(file).subarray(29696, 30208).equals(model.subarray(29696, 30208))).toBe(true);
    await c.disconnect();
  });

  it("concurrent writes to different bytes of one block all land (read-modify-write cycles do not interleave)", async () => {
    // A delay target holds each read and write 20 ms, so unserialised cycles would all read the block as it was
    // and each write back only its own byte.
    const file = makeFile(fx.dir, "slow.img", SIZE);
    const dev = fx.reg.create({ name: "slow" });
    await dev.load([{ start: 0 as Sector, length: (SIZE / 512) as Sector, type: "delay", params: `${file} 0 20` }], false);
    await dev.resume({ noflush: false });
    const c = await NbdClient.connect(fx.sock, "slow");
    const bytes = [...Array(16).keys()].map((i) => i * 31 + 1);
    await Promise.all(bytes.map((b, i) => c.write(b, Buffer.from([i + 1]))));
    const block = (await c.read(0, 512)) as Buffer;
    for (const [i, b] of bytes.entries()) expect(block[b]).toBe(i + 1);
    await c.disconnect();
  });

  it("serves 512-byte requests on a device whose blocks are 4096 bytes", async () => {
    const data = makeFile(fx.dir, "data.img", SIZE, "pattern");
    const log = makeFile(fx.dir, "log.img", 4 * SIZE);
    const dev = fx.reg.create({ name: "lw" });
    await dev.load([{ start: 0 as Sector, length: (SIZE / 512) as Sector, type: "log-writes", params: `${data} ${log} 2 log_sector_size 4096` }], false);
    await dev.resume({ noflush: false });
    expect(dev.logicalBlockSize).toBe(4096);
    const model = fileBytes(data);
    const c = await NbdClient.connect(fx.sock, "lw");
    const sector = Buffer.alloc(512, 0x5c);
    await c.write(4096 + 512, sector, true);
    sector.copy(model, 4096 + 512);
    expect((await c.read(4096, 4096)).equals(model.subarray(4096, 8192))).toBe(true);
    expect(fileBytes(data).equals(model)).toBe(true);
    await c.disconnect();
  });

  it("out of range is still refused, and nothing is written", async () => {
    const { file } = await fx.linear("d", SIZE, { fill: "pattern" });
    const before = fileBytes(file);
    const c = await NbdClient.connect(fx.sock, "d");
    await expect(c.write(SIZE - 1, Buffer.alloc(2))).rejects.toEqual(new NbdError(28));
    await expect(c.read(SIZE - 1, 2)).rejects.toBeInstanceOf(NbdError);
    expect(fileBytes(file).equals(before)).toBe(true);
    await c.disconnect();
  });
});

describe("model check: pipelined byte-granular writes and zeroes on a device that completes out of order", () => {
  it("after every batch of non-overlapping requests in flight together, the device reads as the model", async () => {
    const BYTES = 16 * 1024;
    const file = makeFile(fx.dir, "m.img", BYTES, "pattern");
    const dev = fx.reg.create({ name: "m" });
    // Reads delayed 1 ms, writes 0: completions interleave, so unserialised read-modify-write would lose bytes.
    await dev.load([{ start: 0 as Sector, length: (BYTES / 512) as Sector, type: "delay", params: `${file} 0 1 ${file} 0 0` }], false);
    await dev.resume({ noflush: false });
    const c = await NbdClient.connect(fx.sock, "m");
    const base = fileBytes(file);
    let model = Buffer.from(base);
    const op = fc.record({ kind: fc.constantFrom("write", "zero"), start: fc.nat({ max: BYTES - 1 }), len: fc.integer({ min: 1, max: 1500 }), fill: fc.integer({ min: 1, max: 255 }) });
    let seq = 0;
    await fc.assert(
      fc.asyncProperty(fc.array(op, { minLength: 1, maxLength: 10 }), async (ops) => {
        // Each run starts from the same content, so a counterexample stands on its own.
        await c.write(0, base);
        model = Buffer.from(base);
        // Overlapping requests in flight together have no defined result: keep each batch's ranges disjoint.
        const taken: [number, number][] = [];
        const batch = ops
          .map((o) => ({ ...o, len: Math.min(o.len, BYTES - o.start) }))
          .filter((o) => {
            if (taken.some(([a, b]) => o.start < b && a < o.start + o.len)) return false;
            taken.push([o.start, o.start + o.len]);
            return true;
          });
        await Promise.all(
          batch.map((o) => {
            if (o.kind === "zero") {
              model.fill(0, o.start, o.start + o.len);
              return c.request(CMD.WRITE_ZEROES, o.start, o.len);
            }
            const data = Buffer.alloc(o.len, (o.fill + seq++) & 0xff || 1);
            data.copy(model, o.start);
            return c.write(o.start, data);
          }),
        );
        expect((await c.read(0, BYTES)).equals(model)).toBe(true);
      }),
      { numRuns: Number(process.env.FUZZ_RUNS ?? 40) },
    );
    expect(fileBytes(file).equals(model)).toBe(true);
    await c.disconnect();
  });
});

describe("WRITE_ZEROES on a target that cannot zero (EOPNOTSUPP): written as zero buffers", () => {
  /** A memory target that refuses write_zeroes, as a device without REQ_OP_WRITE_ZEROES support does. */
  const mem = Buffer.alloc(64 * 1024, 0x5a);
  const ops: string[] = [];
  if (!findTargetType("test-nozero")) {
    registerTargetType({
      name: "test-nozero",
      version: [0, 0, 1],
      async construct() {
        return {
          async map(bio) {
            ops.push(bio.op);
            const at = bio.sector * 512;
            if (bio.op === "write_zeroes") throw new DmError("EOPNOTSUPP", "cannot zero");
            if (bio.op === "read") mem.copy(bio.data!, 0, at, at + bio.data!.length);
            if (bio.op === "write") bio.data!.copy(mem, at);
          },
          status: () => "",
          async destroy() {},
        };
      },
    });
  }

  it("whole blocks and a byte range both end up zero, nothing else changes", async () => {
    const dev = fx.reg.create({ name: "nz" });
    await dev.load([{ start: 0 as Sector, length: (mem.length / 512) as Sector, type: "test-nozero", params: "" }], false);
    await dev.resume({ noflush: false });
    const c = await NbdClient.connect(fx.sock, "nz");
    const model = Buffer.from(mem);
    await c.request(CMD.WRITE_ZEROES, 4096, 8192);
    model.fill(0, 4096, 12288);
    await c.request(CMD.WRITE_ZEROES, 20000, 3000);
    model.fill(0, 20000, 23000);
    expect(mem.equals(model)).toBe(true);
    expect(ops.filter((o) => o === "write_zeroes")).toHaveLength(2); // each tried natively first
    await c.disconnect();
  });
});

describe("structured replies for a client without block sizes", () => {
  it("READ answers with the offset asked for; BLOCK_STATUS extents start at the offset and cover the length", async () => {
    const { file } = await fx.linear("d", SIZE); // sparse
    const fd = fs.openSync(file, "r+");
    fs.writeSync(fd, Buffer.alloc(4096, 0x77), 0, 4096, 8192);
    fs.closeSync(fd);
    const c = await RawClient.connect(fx.sock);
    await c.greet();
    c.sendOption(8); // STRUCTURED_REPLY
    await c.optionReply();
    c.sendOption(10, metaRequest("d", ["base:allocation"])); // SET_META_CONTEXT
    const id = (await c.optionReplies()).find((r) => r.type === 4)!.data.readUInt32BE(0);
    await c.go("d", []);

    c.request(CMD.READ, { cookie: 1n, offset: 8190, length: 5 });
    const rd = await c.chunk();
    expect(rd.type).toBe(1); // OFFSET_DATA
    expect(rd.data.readBigUInt64BE(0)).toBe(8190n);
    expect([...rd.data.subarray(8)]).toEqual([0, 0, 0x77, 0x77, 0x77]);

    c.request(7, { cookie: 2n, offset: 8000, length: 5000 }); // BLOCK_STATUS
    const bs = await c.chunk();
    expect(bs.data.readUInt32BE(0)).toBe(id);
    const extents: [number, number][] = [];
    for (let p = 4; p < bs.data.length; p += 8) extents.push([bs.data.readUInt32BE(p), bs.data.readUInt32BE(p + 4)]);
    expect(extents).toEqual([
      [192, 3], // hole, reads as zeroes
      [4096, 0],
      [712, 3],
    ]);
    c.destroy();
  });
});

describe("a real client that does not negotiate block sizes (libnbd, as nbdsh scripts use it)", () => {
  it("byte-granular pwrite, pread and zero land exactly, bit for bit", async () => {
    const { file } = await fx.linear("d", SIZE, { fill: "pattern" });
    const model = fileBytes(file);
    // Debian's python3-libnbd installs the module for the system interpreter (nbdsh runs whatever python3 is first
    // on PATH, which need not be that one).
    const script = [
      "import nbd, sys",
      "h = nbd.NBD()",
      "h.set_request_block_size(False)",
      "h.set_strict_mode(h.get_strict_mode() & ~nbd.STRICT_ALIGN)",
      "h.connect_uri(sys.argv[1])",
      "h.pwrite(b'\\xab' * 3, 1001)",
      "h.pwrite(bytes(range(256)) * 4, 4000, nbd.CMD_FLAG_FUA)",
      "h.zero(700, 9100)",
      "print(h.pread(2000, 600).hex())",
      "h.shutdown()",
    ].join("\n");
    const out = await runOk("/usr/bin/python3", ["-c", script, fx.uri("d")]);
    model.fill(0xab, 1001, 1004);
    Buffer.from(Array.from({ length: 1024 }, (_, i) => i % 256)).copy(model, 4000);
    model.fill(0, 9100, 9800);
    expect(out.trim()).toBe(model.subarray(600, 2600).toString("hex"));
    expect(fileBytes(file).equals(model)).toBe(true);
  });
});

describe("which clients are held to the advertised minimum", () => {
  it("a client that listed NBD_INFO_BLOCK_SIZE in GO gets EINVAL for a misaligned request", async () => {
    await fx.linear("d", SIZE, { fill: "pattern" });
    const c = await RawClient.connect(fx.sock);
    await c.greet();
    await c.go("d", [3]);
    c.request(CMD.READ, { offset: 100, length: 10 });
    expect((await c.simpleReply()).error).toBe(EINVAL);
    c.destroy();
  });

  it("an NBD_OPT_EXPORT_NAME client reads and writes single bytes", async () => {
    const { file } = await fx.linear("d", SIZE, { fill: "pattern" });
    const c = await RawClient.connect(fx.sock);
    await c.greet();
    c.sendOption(1, Buffer.from("d"));
    await c.read(8 + 2); // size and transmission flags (NO_ZEROES was sent)
    c.request(CMD.WRITE, { offset: 12345, payload: Buffer.from([0xee]) });
    expect((await c.simpleReply()).error).toBe(0);
    c.request(CMD.READ, { offset: 12344, length: 3 });
    const r = await c.simpleReply(3);
    const want = fileBytes(file).subarray(12344, 12347);
    expect(want[1]).toBe(0xee);
    expect(r.data.equals(want)).toBe(true);
    c.destroy();
  });
});
