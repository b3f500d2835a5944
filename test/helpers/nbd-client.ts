import net from "node:net";

/**
 * A minimal NBD client for tests that need exact control over requests and acknowledgements (crash harness,
 * hostile input): fixed newstyle, NBD_OPT_GO, simple replies, pipelined requests matched by cookie.
 */
const NBDMAGIC = 0x4e42444d41474943n;
const IHAVEOPT = 0x49484156454f5054n;
const REPLY_MAGIC = 0x0003e889045565a9n;
const REQUEST_MAGIC = 0x25609513;
const SIMPLE_REPLY_MAGIC = 0x67446698;

export const CMD = { READ: 0, WRITE: 1, DISC: 2, FLUSH: 3, TRIM: 4, CACHE: 5, WRITE_ZEROES: 6 } as const;
export const FLAG_FUA = 1;

export class NbdError extends Error {
  constructor(readonly errno: number) {
    super(`NBD error ${errno}`);
  }
}

class Reader {
  private buf: Buffer = Buffer.alloc(0);
  private waiters: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void }[] = [];
  private ended: Error | undefined;
  constructor(sock: net.Socket) {
    sock.on("data", (b: Buffer) => {
      this.buf = this.buf.length ? Buffer.concat([this.buf, b]) : b;
      this.pump();
    });
    const end = (e: Error) => {
      this.ended = e;
      for (const w of this.waiters) w.reject(e);
      this.waiters = [];
    };
    sock.on("close", () => end(new Error("connection closed")));
    sock.on("error", (e) => end(e));
  }
  read(n: number): Promise<Buffer> {
    if (this.ended && this.buf.length < n) return Promise.reject(this.ended);
    return new Promise((resolve, reject) => {
      this.waiters.push({ n, resolve, reject });
      this.pump();
    });
  }
  private pump(): void {
    while (this.waiters.length && this.buf.length >= this.waiters[0]!.n) {
      const w = this.waiters.shift()!;
      const out = this.buf.subarray(0, w.n);
      this.buf = this.buf.subarray(w.n);
      w.resolve(Buffer.from(out));
    }
  }
}

export class NbdClient {
  private cookie = 1n;
  private pending = new Map<bigint, { resolve: (b: Buffer | undefined) => void; reject: (e: Error) => void; readLen: number }>();
  size = 0n;
  flags = 0;

  private constructor(
    private readonly sock: net.Socket,
    private readonly reader: Reader,
  ) {}

  static async connect(socketPath: string, exportName: string): Promise<NbdClient> {
    const sock = net.connect(socketPath);
    await new Promise<void>((resolve, reject) => {
      sock.once("connect", resolve);
      sock.once("error", reject);
    });
    const reader = new Reader(sock);
    const c = new NbdClient(sock, reader);
    const hello = await reader.read(18);
    if (hello.readBigUInt64BE(0) !== NBDMAGIC || hello.readBigUInt64BE(8) !== IHAVEOPT) throw new Error("bad server greeting");
    const cflags = Buffer.alloc(4);
    cflags.writeUInt32BE(1 | (hello.readUInt16BE(16) & 2));
    sock.write(cflags);
    const name = Buffer.from(exportName);
    const data = Buffer.alloc(4 + name.length + 2);
    data.writeUInt32BE(name.length, 0);
    name.copy(data, 4);
    data.writeUInt16BE(0, 4 + name.length);
    const opt = Buffer.alloc(16);
    opt.writeBigUInt64BE(IHAVEOPT, 0);
    opt.writeUInt32BE(7, 8); // NBD_OPT_GO
    opt.writeUInt32BE(data.length, 12);
    sock.write(Buffer.concat([opt, data]));
    for (;;) {
      const h = await reader.read(20);
      if (h.readBigUInt64BE(0) !== REPLY_MAGIC) throw new Error("bad option reply magic");
      const type = h.readUInt32BE(12);
      const len = h.readUInt32BE(16);
      const payload = len ? await reader.read(len) : Buffer.alloc(0);
      if (type === 1) break; // ACK
      if (type >= 0x80000000) throw new Error(`NBD_OPT_GO refused: ${type - 0x80000000} ${payload.toString()}`);
      if (type === 3 && payload.readUInt16BE(0) === 0) {
        c.size = payload.readBigUInt64BE(2);
        c.flags = payload.readUInt16BE(10);
      }
    }
    void c.replyLoop();
    return c;
  }

  private async replyLoop(): Promise<void> {
    try {
      for (;;) {
        const h = await this.reader.read(16);
        if (h.readUInt32BE(0) !== SIMPLE_REPLY_MAGIC) throw new Error("bad reply magic");
        const err = h.readUInt32BE(4);
        const cookie = h.readBigUInt64BE(8);
        const p = this.pending.get(cookie);
        if (!p) throw new Error(`reply for unknown cookie ${cookie}`);
        this.pending.delete(cookie);
        if (err) p.reject(new NbdError(err));
        else p.resolve(p.readLen ? await this.reader.read(p.readLen) : undefined);
      }
    } catch (e) {
      for (const p of this.pending.values()) p.reject(e as Error);
      this.pending.clear();
    }
  }

  request(cmd: number, offset: bigint | number, length: number, opts: { flags?: number; data?: Buffer } = {}): Promise<Buffer | undefined> {
    const cookie = this.cookie++;
    const h = Buffer.alloc(28);
    h.writeUInt32BE(REQUEST_MAGIC, 0);
    h.writeUInt16BE(opts.flags ?? 0, 4);
    h.writeUInt16BE(cmd, 6);
    h.writeBigUInt64BE(cookie, 8);
    h.writeBigUInt64BE(BigInt(offset), 16);
    h.writeUInt32BE(length, 24);
    const p = new Promise<Buffer | undefined>((resolve, reject) => this.pending.set(cookie, { resolve, reject, readLen: cmd === CMD.READ ? length : 0 }));
    this.sock.write(opts.data ? Buffer.concat([h, opts.data]) : h);
    return p;
  }

  read(offset: number, length: number): Promise<Buffer> {
    return this.request(CMD.READ, offset, length) as Promise<Buffer>;
  }
  write(offset: number, data: Buffer, fua = false): Promise<void> {
    return this.request(CMD.WRITE, offset, data.length, { data, flags: fua ? FLAG_FUA : 0 }).then(() => undefined);
  }
  flush(): Promise<void> {
    return this.request(CMD.FLUSH, 0, 0).then(() => undefined);
  }
  /** Raw bytes on the wire (hostile-input tests). */
  writeRaw(b: Buffer): void {
    this.sock.write(b);
  }
  closed(): Promise<void> {
    return new Promise((resolve) => (this.sock.destroyed ? resolve() : this.sock.once("close", () => resolve())));
  }
  async disconnect(): Promise<void> {
    const h = Buffer.alloc(28);
    h.writeUInt32BE(REQUEST_MAGIC, 0);
    h.writeUInt16BE(CMD.DISC, 6);
    this.sock.end(h);
    await this.closed();
  }
  destroy(): void {
    this.sock.destroy();
  }
}
