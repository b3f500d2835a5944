import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import { silentLogger } from "../../daemon/core/log.js";
import { NbdServer } from "../../daemon/nbd/server.js";
import type { Sector } from "../../daemon/core/units.js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { RawClient, infoRequest, metaRequest } from "./raw-client.js";
import { run, startNbd, type NbdFixture } from "./fixture.js";

// Byte-level protocol checks: what real clients never send, and the exact shapes of replies.
const OPT = { EXPORT_NAME: 1, ABORT: 2, LIST: 3, INFO: 6, GO: 7, STRUCTURED_REPLY: 8, LIST_META: 9, SET_META: 10 };
const REP = { ACK: 1, SERVER: 2, INFO: 3, META: 4, ERR_UNSUP: 0x80000001, ERR_INVALID: 0x80000003, ERR_UNKNOWN: 0x80000006 };
const CMD = { READ: 0, WRITE: 1, DISC: 2, FLUSH: 3, TRIM: 4, CACHE: 5, WRITE_ZEROES: 6, BLOCK_STATUS: 7 };
const E = { EPERM: 1, EINVAL: 22, ENOSPC: 28, ENOTSUP: 95, ESHUTDOWN: 108 };
const SIZE = 1 << 20;

describe("NBD protocol handling", () => {
  let fx: NbdFixture;
  let file: string;

  beforeAll(async () => {
    fx = await startNbd();
    ({ file } = await fx.linear("disk", SIZE, { fill: "pattern" }));
  });
  afterAll(async () => {
    await fx?.close();
  });

  async function attached(opts: { structured?: boolean } = {}): Promise<RawClient> {
    const c = await RawClient.connect(fx.sock);
    await c.greet();
    if (opts.structured) {
      c.sendOption(OPT.STRUCTURED_REPLY);
      expect((await c.optionReply()).type).toBe(REP.ACK);
    }
    await c.go("disk");
    return c;
  }

  describe("handshake", () => {
    it("greets with fixed newstyle + no zeroes and drops unknown client flags", async () => {
      const c = await RawClient.connect(fx.sock);
      expect(await c.greet(0x10)).toBe(3);
      await c.closed();
      expect(c.received).toBe(18);
    });

    it("answers an unknown option with ERR_UNSUP and stays in sync for GO", async () => {
      const c = await RawClient.connect(fx.sock);
      await c.greet();
      c.sendOption(4242, Buffer.from("some data the server must skip"));
      const r = await c.optionReply();
      expect(r).toMatchObject({ option: 4242, type: REP.ERR_UNSUP });
      c.sendOption(11); // EXTENDED_HEADERS: experimental, refused
      expect((await c.optionReply()).type).toBe(REP.ERR_UNSUP);
      const { size, flags, replies } = await c.go("disk");
      expect(size).toBe(BigInt(SIZE));
      expect(flags & 0x1).toBe(1);
      expect(flags & 0x100).toBe(0x100); // CAN_MULTI_CONN
      expect(flags & 0x80).toBe(0); // no DF without structured replies
      const bs = replies.find((x) => x.type === REP.INFO && x.data.readUInt16BE(0) === 3)!;
      expect([bs.data.readUInt32BE(2), bs.data.readUInt32BE(6), bs.data.readUInt32BE(10)]).toEqual([512, 4096, 32 << 20]);
      c.request(CMD.DISC);
      await c.closed();
    });

    it("refuses unknown exports and table-less devices with ERR_UNKNOWN, INFO stays in haggling", async () => {
      fx.reg.create({ name: "no-table" });
      const c = await RawClient.connect(fx.sock);
      await c.greet();
      c.sendOption(OPT.GO, infoRequest("nope", []));
      expect((await c.optionReply()).type).toBe(REP.ERR_UNKNOWN);
      c.sendOption(OPT.GO, infoRequest("no-table", []));
      const r = await c.optionReply();
      expect(r.type).toBe(REP.ERR_UNKNOWN);
      expect(r.data.toString()).toMatch(/no live table/);
      c.sendOption(OPT.INFO, infoRequest("disk", [1, 2]));
      const info = await c.optionReplies();
      expect(info[info.length - 1]!.type).toBe(REP.ACK);
      const name = info.find((x) => x.type === REP.INFO && x.data.readUInt16BE(0) === 1)!;
      expect(name.data.subarray(2).toString()).toBe("disk");
      c.sendOption(OPT.GO, Buffer.from([0, 0])); // malformed GO data
      expect((await c.optionReply()).type).toBe(REP.ERR_INVALID);
      c.sendOption(OPT.LIST);
      const list = await c.optionReplies();
      const names = list.filter((x) => x.type === REP.SERVER).map((x) => x.data.subarray(4, 4 + x.data.readUInt32BE(0)).toString());
      expect(names).toContain("disk");
      expect(names).not.toContain("no-table");
      c.sendOption(OPT.ABORT);
      expect((await c.optionReply()).type).toBe(REP.ACK);
      await c.closed();
      await fx.reg.discard(fx.reg.get({ name: "no-table" }));
    });

    it("EXPORT_NAME sends size, flags and the 124 zero bytes unless NO_ZEROES; an unknown name is a hard close", async () => {
      const c = await RawClient.connect(fx.sock);
      await c.greet(1); // FIXED_NEWSTYLE only
      c.sendOption(OPT.EXPORT_NAME, Buffer.from("disk"));
      const reply = await c.read(134);
      expect(reply.readBigUInt64BE(0)).toBe(BigInt(SIZE));
      expect(reply.subarray(10).every((b) => b === 0)).toBe(true);
      c.request(CMD.READ, { cookie: 3n, offset: 0, length: 512 });
      expect((await c.simpleReply(512)).data.equals(fs.readFileSync(file).subarray(0, 512))).toBe(true);
      c.destroy();

      const d = await RawClient.connect(fx.sock);
      await d.greet();
      d.sendOption(OPT.EXPORT_NAME, Buffer.from("nope"));
      await d.closed();
      expect(d.received).toBe(18);
    });

    it("meta contexts: SET needs structured replies; base:allocation is listed and selected", async () => {
      const c = await RawClient.connect(fx.sock);
      await c.greet();
      c.sendOption(OPT.SET_META, metaRequest("disk", ["base:allocation"]));
      expect((await c.optionReply()).type).toBe(REP.ERR_INVALID);
      c.sendOption(OPT.STRUCTURED_REPLY);
      expect((await c.optionReply()).type).toBe(REP.ACK);
      c.sendOption(OPT.LIST_META, metaRequest("disk", ["base:"]));
      const listed = await c.optionReplies();
      expect(listed.filter((r) => r.type === REP.META).map((r) => r.data.subarray(4).toString())).toEqual(["base:allocation"]);
      c.sendOption(OPT.SET_META, metaRequest("disk", ["base:allocation", "x-unknown:thing", "base:"]));
      const set = await c.optionReplies();
      const metas = set.filter((r) => r.type === REP.META);
      expect(metas.map((r) => r.data.subarray(4).toString())).toEqual(["base:allocation"]);
      const id = metas[0]!.data.readUInt32BE(0);
      const { flags } = await c.go("disk");
      expect(flags & 0x80).toBe(0x80); // DF with structured replies
      c.request(CMD.BLOCK_STATUS, { cookie: 5n, offset: 4096, length: 8192 });
      const ch = await c.chunk();
      expect(ch).toMatchObject({ flags: 1, type: 5, cookie: 5n });
      expect(ch.data.readUInt32BE(0)).toBe(id);
      expect([ch.data.readUInt32BE(4), ch.data.readUInt32BE(8)]).toEqual([8192, 0]);
      c.destroy();
    });

    it("contexts chosen for one export do not carry over to GO on another", async () => {
      await fx.linear("other", 1 << 20);
      const c = await RawClient.connect(fx.sock);
      await c.greet();
      c.sendOption(OPT.STRUCTURED_REPLY);
      await c.optionReply();
      c.sendOption(OPT.SET_META, metaRequest("other", ["base:allocation"]));
      expect((await c.optionReplies()).filter((r) => r.type === REP.META)).toHaveLength(1);
      await c.go("disk");
      c.request(CMD.BLOCK_STATUS, { cookie: 1n, offset: 0, length: 4096 });
      const ch = await c.chunk();
      expect(ch.type).toBe(0x8001);
      expect(ch.data.readUInt32BE(0)).toBe(E.EINVAL);
      c.destroy();
    });

    it("BLOCK_STATUS without a negotiated context is EINVAL", async () => {
      const c = await attached({ structured: true });
      c.request(CMD.BLOCK_STATUS, { cookie: 6n, offset: 0, length: 4096 });
      const ch = await c.chunk();
      expect(ch.type).toBe(0x8001);
      expect(ch.data.readUInt32BE(0)).toBe(E.EINVAL);
      c.destroy();
    });
  });

  describe("transmission", () => {
    it("echoes cookies verbatim and reads/writes through to the file (simple replies)", async () => {
      const c = await attached();
      const cookie = 0xdeadbeefcafebaben;
      c.request(CMD.WRITE, { cookie, offset: 8192, payload: Buffer.alloc(4096, 0x5a), flags: 1 });
      const w = await c.simpleReply();
      expect(w).toMatchObject({ error: 0, cookie });
      c.request(CMD.READ, { cookie: 0xffffffffffffffffn, offset: 8192, length: 4096 });
      const r = await c.simpleReply(4096);
      expect(r.cookie).toBe(0xffffffffffffffffn);
      expect(r.data.every((b) => b === 0x5a)).toBe(true);
      expect(fs.readFileSync(file).subarray(8192, 12288).every((b) => b === 0x5a)).toBe(true);
      c.request(CMD.FLUSH, { cookie: 2n });
      expect((await c.simpleReply()).error).toBe(0);
      c.request(CMD.CACHE, { cookie: 3n, offset: 0, length: 65536 });
      expect((await c.simpleReply()).error).toBe(0);
      c.destroy();
    });

    it("structured READ replies are one OFFSET_DATA chunk carrying the offset", async () => {
      const c = await attached({ structured: true });
      c.request(CMD.READ, { cookie: 9n, offset: 4096, length: 1024, flags: 4 /* DF */ });
      const ch = await c.chunk();
      expect(ch).toMatchObject({ flags: 1, type: 1, cookie: 9n });
      expect(ch.data.readBigUInt64BE(0)).toBe(4096n);
      expect(ch.data.subarray(8).equals(fs.readFileSync(file).subarray(4096, 5120))).toBe(true);
      c.request(CMD.READ, { cookie: 10n, offset: SIZE, length: 512 });
      const err = await c.chunk();
      expect(err).toMatchObject({ flags: 1, type: 0x8001, cookie: 10n });
      expect(err.data.readUInt32BE(0)).toBe(E.EINVAL);
      c.destroy();
    });

    it("out-of-range, misaligned, unknown and bad-flag requests get errors and the stream stays in sync", async () => {
      const c = await attached();
      c.request(CMD.READ, { cookie: 1n, offset: SIZE - 512, length: 1024 });
      expect((await c.simpleReply()).error).toBe(E.EINVAL);
      c.request(CMD.READ, { cookie: 2n, offset: 2n ** 63n, length: 512 });
      expect((await c.simpleReply()).error).toBe(E.EINVAL);
      c.request(CMD.WRITE, { cookie: 3n, offset: SIZE, payload: Buffer.alloc(512) });
      expect((await c.simpleReply()).error).toBe(E.ENOSPC);
      c.request(CMD.WRITE, { cookie: 4n, offset: 100, payload: Buffer.alloc(512) });
      expect((await c.simpleReply()).error).toBe(E.EINVAL);
      c.request(CMD.TRIM, { cookie: 5n, offset: 0, length: SIZE + 512 });
      expect((await c.simpleReply()).error).toBe(E.EINVAL);
      c.request(42, { cookie: 6n });
      expect((await c.simpleReply()).error).toBe(E.EINVAL);
      c.request(CMD.READ, { cookie: 7n, offset: 0, length: 512, flags: 0x40 });
      expect((await c.simpleReply()).error).toBe(E.EINVAL);
      c.request(CMD.WRITE_ZEROES, { cookie: 8n, offset: 0, length: 4096, flags: 0x10 | 0x2 });
      expect((await c.simpleReply()).error).toBe(E.ENOTSUP); // FAST_ZERO is never promised
      c.request(CMD.READ, { cookie: 9n, offset: 0, length: 512 });
      const ok = await c.simpleReply(512);
      expect(ok).toMatchObject({ error: 0, cookie: 9n });
      c.destroy();
    });

    it("an oversized WRITE is refused without taking its payload; a huge one closes the connection", async () => {
      const c = await attached();
      const base = c.received;
      const big = (32 << 20) + 4096;
      c.request(CMD.WRITE, { cookie: 1n, offset: 0, length: big });
      c.write(Buffer.alloc(big, 0xee));
      expect((await c.simpleReply()).error).toBe(E.EINVAL);
      c.request(CMD.READ, { cookie: 2n, offset: 0, length: 512 });
      const r = await c.simpleReply(512);
      expect(r.data.equals(fs.readFileSync(file).subarray(0, 512))).toBe(true); // nothing was written
      c.request(CMD.WRITE, { cookie: 3n, offset: 0, length: 0xfffffe00 });
      await c.closed();
      expect(c.received - base).toBe(16 + 16 + 512);
    });

    it("a bad request magic closes the connection with nothing written", async () => {
      const c = await attached();
      const before = c.received;
      const junk = Buffer.alloc(28, 0x41);
      c.write(junk);
      await c.closed();
      expect(c.received).toBe(before);
    });

    it("parses many requests per chunk and requests split byte by byte", async () => {
      const c = await attached();
      const n = 64;
      const parts: Buffer[] = [];
      for (let i = 0; i < n; i++) {
        const h = Buffer.alloc(28 + 512);
        h.writeUInt32BE(0x25609513, 0);
        h.writeUInt16BE(CMD.WRITE, 6);
        h.writeBigUInt64BE(BigInt(i), 8);
        h.writeBigUInt64BE(BigInt(65536 + i * 512), 16);
        h.writeUInt32BE(512, 24);
        h.fill(i, 28);
        parts.push(h);
      }
      c.write(Buffer.concat(parts));
      const cookies = new Set<bigint>();
      for (let i = 0; i < n; i++) {
        const r = await c.simpleReply();
        expect(r.error).toBe(0);
        cookies.add(r.cookie);
      }
      expect(cookies.size).toBe(n);
      // One READ, dribbled one byte per write.
      const h = Buffer.alloc(28);
      h.writeUInt32BE(0x25609513, 0);
      h.writeUInt16BE(CMD.READ, 6);
      h.writeBigUInt64BE(77n, 8);
      h.writeBigUInt64BE(65536n, 16);
      h.writeUInt32BE(n * 512, 24);
      for (const byte of h) {
        c.write(Buffer.from([byte]));
        await new Promise((r) => setImmediate(r));
      }
      const r = await c.simpleReply(n * 512);
      expect(r.cookie).toBe(77n);
      for (let i = 0; i < n; i++) expect(r.data.subarray(i * 512, (i + 1) * 512).every((b) => b === i)).toBe(true);
      c.destroy();
    });

    it("target errors reach the client as NBD errors (EIO from dm-error, structured and simple)", async () => {
      const dev = fx.reg.create({ name: "broken" });
      await dev.load([{ start: 0 as Sector, length: 2048 as Sector, type: "error", params: "" }], false);
      await dev.resume({ noflush: false });
      const c = await RawClient.connect(fx.sock);
      await c.greet();
      c.sendOption(OPT.STRUCTURED_REPLY);
      await c.optionReply();
      await c.go("broken");
      c.request(CMD.READ, { cookie: 1n, offset: 0, length: 4096 });
      const ch = await c.chunk();
      expect(ch).toMatchObject({ flags: 1, type: 0x8001, cookie: 1n });
      expect(ch.data.readUInt32BE(0)).toBe(5);
      expect(ch.data.subarray(6).toString()).toMatch(/error target/);
      c.request(CMD.WRITE, { cookie: 2n, offset: 0, payload: Buffer.alloc(4096) });
      expect((await c.simpleReply()).error).toBe(5);
      c.destroy();
      await c.closed();
      await fx.reg.discard(dev);
    });

    it("requests pipelined right behind NBD_OPT_GO are served", async () => {
      const c = await RawClient.connect(fx.sock);
      await c.greet();
      const go = Buffer.alloc(16);
      go.writeBigUInt64BE(0x49484156454f5054n, 0);
      go.writeUInt32BE(OPT.GO, 8);
      const data = infoRequest("disk", []);
      go.writeUInt32BE(data.length, 12);
      const req = Buffer.alloc(28);
      req.writeUInt32BE(0x25609513, 0);
      req.writeUInt16BE(CMD.READ, 6);
      req.writeBigUInt64BE(11n, 8);
      req.writeBigUInt64BE(1024n, 16);
      req.writeUInt32BE(512, 24);
      c.write(Buffer.concat([go, data, req]));
      const replies = await c.optionReplies();
      expect(replies[replies.length - 1]!.type).toBe(REP.ACK);
      const r = await c.simpleReply(512);
      expect(r).toMatchObject({ error: 0, cookie: 11n });
      expect(r.data.equals(fs.readFileSync(file).subarray(1024, 1536))).toBe(true);
      c.destroy();
    });

    it("devices beyond 4 GiB: offsets, bounds and multi-GiB TRIM/WRITE_ZEROES are exact", async () => {
      const big = 8 * 2 ** 30;
      const { file: bigFile } = await fx.linear("big", big); // sparse
      const c = await RawClient.connect(fx.sock);
      await c.greet();
      const { size } = await c.go("big");
      expect(size).toBe(BigInt(big));
      c.request(CMD.WRITE, { cookie: 1n, offset: big - 4096, payload: Buffer.alloc(4096, 0x77) });
      expect((await c.simpleReply()).error).toBe(0);
      c.request(CMD.READ, { cookie: 2n, offset: big - 4096, length: 4096 });
      expect((await c.simpleReply(4096)).data.every((b) => b === 0x77)).toBe(true);
      c.request(CMD.READ, { cookie: 3n, offset: big, length: 512 });
      expect((await c.simpleReply()).error).toBe(E.EINVAL);
      const threeGiB = 3 * 2 ** 30;
      c.request(CMD.TRIM, { cookie: 4n, offset: 2 ** 32, length: threeGiB });
      expect((await c.simpleReply()).error).toBe(0);
      c.request(CMD.WRITE_ZEROES, { cookie: 5n, offset: 2 ** 30, length: threeGiB });
      expect((await c.simpleReply()).error).toBe(0);
      c.request(CMD.READ, { cookie: 6n, offset: big - 4096, length: 4096 });
      expect((await c.simpleReply(4096)).data.every((b) => b === 0x77)).toBe(true); // outside both ranges
      c.destroy();
      await c.closed();
      await fx.reg.discard(fx.reg.get({ name: "big" }));
      fs.rmSync(bigFile);
    });

    it("backpressure: a client that pipelines more than the in-flight limit without reading gets every reply", async () => {
      const c = await attached();
      const n = 800; // above the 512-request in-flight limit, so parsing pauses and resumes mid-chunk
      const reqs: Buffer[] = [];
      for (let i = 0; i < n; i++) {
        const h = Buffer.alloc(28);
        h.writeUInt32BE(0x25609513, 0);
        h.writeUInt16BE(CMD.READ, 6);
        h.writeBigUInt64BE(BigInt(i), 8);
        h.writeBigUInt64BE(BigInt((i % 16) * 65536), 16);
        h.writeUInt32BE(65536, 24);
        reqs.push(h);
      }
      c.socket.pause(); // do not read replies yet
      c.write(Buffer.concat(reqs));
      await new Promise((r) => setTimeout(r, 100));
      c.socket.resume();
      const data = fs.readFileSync(file);
      const seen = new Set<bigint>();
      for (let i = 0; i < n; i++) {
        const r = await c.simpleReply(65536);
        expect(r.error).toBe(0);
        const k = Number(r.cookie) % 16;
        expect(r.data.equals(data.subarray(k * 65536, (k + 1) * 65536))).toBe(true);
        seen.add(r.cookie);
      }
      expect(seen.size).toBe(n);
      c.destroy();
    });

    it("a payload budget across connections: many writers together hold no more than it allows", async () => {
      const server = new NbdServer({ registry: fx.reg, log: silentLogger, maxPayloadBytes: 256 << 10 });
      const sock = path.join(fx.dir, "budget.sock");
      await server.listenUnix(sock);
      const { file: f } = await fx.linear("budget-base", 8 << 20);
      const dev = fx.reg.create({ name: "budget" });
      await dev.load([{ start: 0 as Sector, length: ((8 << 20) / 512) as Sector, type: "delay", params: `${f} 0 0 ${f} 0 150` }], false);
      await dev.resume({ noflush: false });
      const clients = await Promise.all([0, 1, 2].map(() => RawClient.connect(sock)));
      for (const c of clients) {
        await c.greet();
        await c.go("budget");
      }
      const payload = Buffer.alloc(64 << 10, 0x42);
      clients.forEach((c, k) => {
        for (let i = 0; i < 16; i++) c.request(CMD.WRITE, { cookie: BigInt(i), offset: (k * 16 + i) * payload.length, length: payload.length, payload });
      });
      // dm-delay's status counts the writes it holds: with 64 KiB writes and a 256 KiB budget, at most 4 plus
      // one per connection (each may take one request past the budget before it stops reading).
      let most = 0;
      const done = Promise.all(clients.map(async (c) => {
        for (let i = 0; i < 16; i++) expect((await c.simpleReply()).error).toBe(0);
      }));
      let finished = false;
      void done.then(() => (finished = true));
      while (!finished) {
        most = Math.max(most, Number(dev.live!.lines("info")[0]!.params.split(" ")[1]));
        await new Promise((r) => setTimeout(r, 5));
      }
      await done;
      expect(most).toBeGreaterThan(0);
      expect(most).toBeLessThanOrEqual(4 + clients.length);
      expect(fs.readFileSync(f).subarray(0, 48 * payload.length).every((b) => b === 0x42)).toBe(true);
      for (const c of clients) c.destroy();
      await server.close();
    });

    it("WRITE_ZEROES and TRIM reach the file", async () => {
      const c = await attached();
      c.request(CMD.WRITE_ZEROES, { cookie: 1n, offset: 131072, length: 65536, flags: 2 /* NO_HOLE */ });
      expect((await c.simpleReply()).error).toBe(0);
      c.request(CMD.WRITE_ZEROES, { cookie: 2n, offset: 262144, length: 65536, flags: 1 /* FUA */ });
      expect((await c.simpleReply()).error).toBe(0);
      c.request(CMD.TRIM, { cookie: 3n, offset: 393216, length: 65536 });
      expect((await c.simpleReply()).error).toBe(0);
      const back = fs.readFileSync(file);
      for (const off of [131072, 262144, 393216]) expect(back.subarray(off, off + 65536).every((b) => b === 0)).toBe(true);
      c.destroy();
    });

    it("DISC lets in-flight requests finish, then the server closes and releases the device", async () => {
      const dev = fx.reg.get({ name: "disk" });
      const c = await attached();
      const base = c.received;
      expect(dev.openCount).toBe(1);
      c.request(CMD.READ, { cookie: 1n, offset: 0, length: 65536 });
      c.request(CMD.DISC);
      c.request(CMD.READ, { cookie: 2n, offset: 0, length: 512 }); // after DISC: ignored
      const r = await c.simpleReply(65536);
      expect(r.cookie).toBe(1n);
      await c.closed();
      expect(c.received - base).toBe(16 + 65536);
      await new Promise((res) => setTimeout(res, 10));
      expect(dev.openCount).toBe(0);
    });

    it("I/O sent while the device is suspended completes after resume", async () => {
      const dev = fx.reg.get({ name: "disk" });
      const c = await attached();
      await dev.suspend({ noflush: false });
      c.request(CMD.READ, { cookie: 1n, offset: 0, length: 512 });
      const done = c.simpleReply(512);
      await new Promise((res) => setTimeout(res, 20));
      await dev.resume({ noflush: false });
      const r = await done;
      expect(r).toMatchObject({ error: 0, cookie: 1n });
      expect(r.data.equals(fs.readFileSync(file).subarray(0, 512))).toBe(true);
      c.destroy();
    });

    it("close() ends attached sessions and stops listening", async () => {
      const sock = path.join(fx.dir, "second.sock");
      const server = new NbdServer({ registry: fx.reg, log: silentLogger });
      await server.listenUnix(sock);
      const c = await RawClient.connect(sock);
      await c.greet();
      await c.go("disk");
      expect(server.clientCount).toBe(1);
      await server.close();
      await c.closed();
      expect(server.clientCount).toBe(0);
      await expect(RawClient.connect(sock)).rejects.toThrow();
      expect(fx.reg.get({ name: "disk" }).openCount).toBe(0);
    });

    it("enforces maxConnections and the handshake timeout", async () => {
      const sock = path.join(fx.dir, "limited.sock");
      const server = new NbdServer({ registry: fx.reg, log: silentLogger, maxConnections: 1, handshakeTimeoutMs: 200 });
      await server.listenUnix(sock);
      const first = await RawClient.connect(sock);
      await first.greet();
      const second = await RawClient.connect(sock);
      await second.closed();
      expect(second.received).toBe(0);
      // The first client never sends an option: the server gives up on it.
      await first.closed();
      const third = await RawClient.connect(sock);
      await third.greet();
      await third.go("disk");
      third.destroy();
      await server.close();
    });

    it("listenUnix replaces a stale socket but refuses one a live server owns; listenTcp returns the port", async () => {
      const server = new NbdServer({ registry: fx.reg, log: silentLogger });
      await expect(server.listenUnix(fx.sock)).rejects.toMatchObject({ code: "EADDRINUSE" });
      const stale = path.join(fx.dir, "stale.sock");
      // A socket file nobody accepts on, as a crashed daemon leaves behind.
      const script = "require('net').createServer().listen(process.argv[1], () => process.kill(process.pid, 'SIGKILL'))";
      await run(process.execPath, ["-e", script, stale]); // killed: no chance to unlink its socket
      expect(fs.lstatSync(stale).isSocket()).toBe(true);
      await server.listenUnix(stale);
      const port = await server.listenTcp("127.0.0.1", 0);
      expect(port).toBeGreaterThan(0);
      const c = new RawClient(net.connect(port, "127.0.0.1"));
      expect(await c.greet()).toBe(3);
      c.destroy();
      await server.close();
    });

    it("a client's unix socket gets a 4 MiB send buffer (1 MiB READ replies in one write)", async () => {
      const c = await attached();
      // ss shows the server end of the connection (local address: the listening path); tb is the send buffer,
      // which the kernel reports doubled.
      const out = (await run("ss", ["-x", "-m", "-n"])).stdout;
      const server = out.split("\n").find((l) => l.includes(fx.sock) && /ESTAB/.test(l));
      expect(server, out).toBeDefined();
      expect(Number(/tb(\d+)/.exec(server!)?.[1])).toBeGreaterThanOrEqual(8 << 20);
      c.destroy();
    });

    it("the NBD socket is born 0600 whatever the umask (it gives raw access to every device), 0660 for a group", async () => {
      const old = process.umask(0);
      try {
        const server = new NbdServer({ registry: fx.reg, log: silentLogger });
        const own = path.join(fx.dir, "private.sock");
        await server.listenUnix(own);
        expect(fs.statSync(own).mode & 0o777).toBe(0o600);
        const grouped = path.join(fx.dir, "group.sock");
        const gid = process.getgid?.() ?? 0;
        await server.listenUnix(grouped, { group: gid });
        expect(fs.statSync(grouped).mode & 0o777).toBe(0o660);
        expect(fs.statSync(grouped).gid).toBe(gid);
        await server.close();
      } finally {
        process.umask(old);
      }
    });
  });
});
