import type { Socket } from "node:net";
import type { Bio } from "../io/bio.js";
import type { MappedDevice } from "../device/mapped-device.js";
import type { Logger } from "../core/log.js";
import type { Sector } from "../core/units.js";
import { SECTOR_SIZE } from "../core/units.js";
import { errorMessage, nbdErrorOf } from "./errno.js";
import { blockSizes } from "./export.js";
import type { SelectedContext } from "./handshake.js";
import {
  CHUNK_HEADER_SIZE,
  CMD_NAMES,
  Cmd,
  CmdFlag,
  MAX_PAYLOAD,
  NbdErr,
  REQUEST_HEADER_SIZE,
  REQUEST_MAGIC,
  ReplyFlag,
  ReplyType,
  SIMPLE_REPLY_SIZE,
  errorChunk,
  putChunkHeader,
  putSimpleReply,
} from "./protocol.js";
import { cover, innerBlocks, isAligned, readUnaligned, writeUnaligned, zeroUnaligned } from "./unaligned.js";
import { writeZeroes } from "./zeroes.js";
import { sharedPool } from "../io/buffer-pool.js";
import { adoptSocket } from "./adopt-socket.js";
import type { PayloadBudget } from "./budget.js";

/** Oversized WRITE payloads up to this size are skipped (read and dropped) to keep the stream in sync; beyond it
 * the connection is closed, as a client sending that much garbage is not worth the bandwidth. */
const MAX_SKIP = 2 * MAX_PAYLOAD;
/** Stop reading requests while this many are in flight or this many reply bytes are queued (backpressure). */
const MAX_INFLIGHT = 512;
const MAX_INFLIGHT_BYTES = 256 << 20;
const MAX_QUEUED_REPLY_BYTES = 64 << 20;
/** How long a client gets to close its end after the server ended the session. */
const LINGER_MS = 5000;
/** Requests are read into one reused buffer of this size (many small requests per read). */
const STAGING_BYTES = 256 << 10;
/** WRITE payloads with at least this much still to come are read straight into their own buffer. */
const DIRECT_READ_MIN = 64 << 10;

const TWO_32 = 4294967296;
/** Offsets at or beyond 2^53 cannot be represented exactly; no device is that large. */
const MAX_OFFSET_HI = 1 << 21;

const enum RxState {
  Header,
  Payload,
  Skip,
  /** DISC received, shut down, or the stream is broken: nothing more is parsed. */
  Stopped,
}

/**
 * The transmission phase of one client on one export. Requests are parsed straight out of the socket's data
 * chunks (many per chunk, or split across chunks), submitted concurrently to the device, and answered as they
 * complete; replies written within one event-loop turn go out in one writev (cork until setImmediate).
 * READ replies are allocated once, header and data together, and the bio reads into them directly.
 */
export class Connection {
  private readonly socket: Socket;
  /** The device's block size in bytes: bios are whole blocks. */
  private readonly align: number;
  /** Misaligned requests are refused (EINVAL), not served by read-modify-write: the client agreed to `align`. */
  private readonly strict: boolean;
  /** Where requests are read (see adoptSocket); small payloads are copied out of it before the next read. */
  private readonly staging = Buffer.allocUnsafeSlow(STAGING_BYTES);
  private readonly hdr = Buffer.allocUnsafe(REQUEST_HEADER_SIZE);
  private hdrFill = 0;
  private rx = RxState.Header;

  // The WRITE whose payload is being received.
  private wFlags = 0;
  private wCookieHi = 0;
  private wCookieLo = 0;
  private wOffset = 0;
  private wLength = 0;
  /** The pooled buffer the payload is assembled in, when it spans chunks. */
  private wBuf: Buffer | undefined;
  private wFill = 0;
  /** Payload bytes of a refused WRITE still to drop (its error reply has already been sent). */
  private skipLeft = 0;

  private inflight = 0;
  private inflightBytes = 0;
  private paused = false;
  private stash: Buffer | undefined;
  private stashPos = 0;
  private corked = false;
  private ending = false;
  private closed = false;
  private released = false;
  private readonly closedWaiters: (() => void)[] = [];

  constructor(
    accepted: Socket,
    readonly dev: MappedDevice,
    private readonly structured: boolean,
    blockSizeAgreed: boolean,
    private readonly contexts: readonly SelectedContext[],
    private readonly log: Logger,
    private readonly onGone: (c: Connection) => void,
    private readonly budget: PayloadBudget,
  ) {
    this.align = blockSizes(dev).min;
    this.strict = blockSizeAgreed;
    const adopted = adoptSocket(accepted, this.readInto);
    const socket = (this.socket = adopted ?? accepted);
    socket.setNoDelay(true);
    if (!adopted) {
      socket.on("data", this.onData);
      socket.resume(); // the server paused it after the handshake
    }
    socket.on("end", this.onEnd);
    socket.on("drain", this.onDrain);
    socket.on("error", (err) => this.log.debug("nbd connection error", { error: err.message }));
    socket.on("close", this.onClose);
  }

  /**
   * Reads into buffers of our choosing: a WRITE payload with much still to come goes straight into its own
   * (pooled) buffer, everything else into the staging buffer, parsed before the next read reuses it.
   */
  private readonly readInto = {
    buffer: (): Buffer => {
      if (this.rx === RxState.Payload && this.stash === undefined && this.wLength - this.wFill >= DIRECT_READ_MIN) {
        this.wBuf ??= sharedPool.get(this.wLength);
        return this.wBuf.subarray(this.wFill, this.wLength);
      }
      return this.staging;
    },
    callback: (n: number, buf: Buffer): boolean => {
      if (buf === this.staging) this.consume(buf.subarray(0, n), 0);
      else this.payloadRead(n);
      return !this.paused;
    },
  };

  /** `n` more payload bytes are in the current WRITE's buffer (read there in place, or copied from a chunk). */
  private payloadRead(n: number): void {
    this.wFill += n;
    if (this.wFill < this.wLength) return;
    const buf = this.wBuf!;
    this.wBuf = undefined;
    this.wFill = 0;
    this.rx = RxState.Header;
    this.submitWrite(buf.subarray(0, this.wLength), buf);
  }

  /** Feed bytes that arrived during the handshake, behind the final option. */
  start(leftover: readonly Buffer[]): void {
    for (const b of leftover) this.onData(b);
  }

  /**
   * End the session from the server side (device removed, daemon stopping): requests still arriving are
   * answered ESHUTDOWN, in-flight ones complete, then the socket is closed.
   */
  shutdown(): void {
    if (this.closed || this.ending) return;
    this.ending = true;
    this.maybeFinish();
  }

  /** Resolves once the socket is closed and every in-flight request has completed. */
  whenClosed(): Promise<void> {
    if (this.released) return Promise.resolve();
    return new Promise((resolve) => this.closedWaiters.push(resolve));
  }

  destroy(): void {
    this.socket.destroy();
  }

  // ---- receiving ----

  private readonly onData = (chunk: Buffer): void => {
    if (this.stash) {
      // Paused with unparsed bytes (only while feeding the handshake's leftovers): keep the order.
      this.stash = Buffer.concat([this.stash.subarray(this.stashPos), chunk]);
      this.stashPos = 0;
      return;
    }
    this.consume(chunk, 0);
  };

  private consume(chunk: Buffer, pos: number): void {
    const len = chunk.length;
    while (pos < len) {
      if (this.paused) {
        this.stash = chunk;
        this.stashPos = pos;
        return;
      }
      switch (this.rx) {
        case RxState.Header: {
          if (this.hdrFill === 0 && len - pos >= REQUEST_HEADER_SIZE) {
            this.request(chunk, pos);
            pos += REQUEST_HEADER_SIZE;
          } else {
            const n = Math.min(REQUEST_HEADER_SIZE - this.hdrFill, len - pos);
            chunk.copy(this.hdr, this.hdrFill, pos, pos + n);
            this.hdrFill += n;
            pos += n;
            if (this.hdrFill === REQUEST_HEADER_SIZE) {
              this.hdrFill = 0;
              this.request(this.hdr, 0);
            }
          }
          break;
        }
        case RxState.Payload: {
          // Copied out into the payload's own buffer: the chunk it sits in is read into again.
          const buf = (this.wBuf ??= sharedPool.get(this.wLength));
          const n = Math.min(this.wLength - this.wFill, len - pos);
          chunk.copy(buf, this.wFill, pos, pos + n);
          pos += n;
          this.payloadRead(n);
          break;
        }
        case RxState.Skip: {
          const n = Math.min(this.skipLeft, len - pos);
          this.skipLeft -= n;
          pos += n;
          if (this.skipLeft === 0) this.rx = RxState.Header;
          break;
        }
        case RxState.Stopped:
          return;
      }
    }
  }

  /** Parse one 28-byte request header at b[off] and act on it. */
  private request(b: Buffer, off: number): void {
    if (b.readUInt32BE(off) !== REQUEST_MAGIC) return this.violation("bad request magic");
    const flags = b.readUInt16BE(off + 4);
    const type = b.readUInt16BE(off + 6);
    const cookieHi = b.readUInt32BE(off + 8);
    const cookieLo = b.readUInt32BE(off + 12);
    const offHi = b.readUInt32BE(off + 16);
    const offset = offHi >= MAX_OFFSET_HI ? Infinity : offHi * TWO_32 + b.readUInt32BE(off + 20);
    const length = b.readUInt32BE(off + 24);

    if (type === Cmd.WRITE) return this.writeHeader(flags, cookieHi, cookieLo, offset, length);
    if (type === Cmd.DISC) {
      // No reply; requests already in flight still get theirs, then the server closes.
      this.rx = RxState.Stopped;
      this.ending = true;
      return this.maybeFinish();
    }
    if (this.ending) return this.replyError(type, cookieHi, cookieLo, NbdErr.ESHUTDOWN, "server is shutting down");

    switch (type) {
      case Cmd.READ:
        return this.read(flags, cookieHi, cookieLo, offset, length);
      case Cmd.FLUSH:
        if ((flags & ~CmdFlag.FUA) !== 0) return this.badFlags(type, cookieHi, cookieLo, flags);
        return this.submitEmpty(type, cookieHi, cookieLo, { op: "flush", sector: 0 as Sector, count: 0 as Sector, fua: false }, 0);
      case Cmd.TRIM:
        return this.trim(flags, cookieHi, cookieLo, offset, length);
      case Cmd.WRITE_ZEROES:
        return this.writeZeroes(flags, cookieHi, cookieLo, offset, length);
      case Cmd.CACHE: {
        if ((flags & ~CmdFlag.FUA) !== 0) return this.badFlags(type, cookieHi, cookieLo, flags);
        const err = this.rangeError(offset, length, NbdErr.EINVAL);
        // A prefetch hint with no semantic effect; the backing files sit in the page cache already.
        return this.replyEmpty(cookieHi, cookieLo, err);
      }
      case Cmd.BLOCK_STATUS:
        return void this.blockStatus(flags, cookieHi, cookieLo, offset, length);
      default:
        return this.replyError(type, cookieHi, cookieLo, NbdErr.EINVAL, `unknown command ${type}`);
    }
  }

  /**
   * EINVAL (or `beyondEnd` past the end) unless [offset, offset+length) is inside the device and, for a client
   * that agreed to block sizes, aligned.
   */
  private rangeError(offset: number, length: number, beyondEnd: number): number {
    if (this.strict && !isAligned(offset, length, this.align)) return NbdErr.EINVAL;
    if (offset + length > this.dev.size * SECTOR_SIZE) return beyondEnd; // not <<: sizes pass 2^31 bytes
    return 0;
  }

  /** A request the block layer cannot take as one bio: not whole blocks (only from non-strict clients). */
  private partial(offset: number, length: number): boolean {
    return !this.strict && !isAligned(offset, length, this.align);
  }

  private read(flags: number, cookieHi: number, cookieLo: number, offset: number, length: number): void {
    const allowed = CmdFlag.FUA | (this.structured ? CmdFlag.DF : 0);
    if ((flags & ~allowed) !== 0) return this.badFlags(Cmd.READ, cookieHi, cookieLo, flags);
    const err = length > MAX_PAYLOAD ? NbdErr.EINVAL : this.rangeError(offset, length, NbdErr.EINVAL);
    if (err) return this.replyError(Cmd.READ, cookieHi, cookieLo, err, length > MAX_PAYLOAD ? "read larger than the maximum payload" : "read out of range or misaligned");
    if (length === 0) {
      if (!this.structured) return this.replyEmpty(cookieHi, cookieLo, 0);
      const b = Buffer.allocUnsafe(CHUNK_HEADER_SIZE);
      putChunkHeader(b, 0, ReplyFlag.DONE, ReplyType.NONE, cookieHi, cookieLo, 0);
      return this.send(b);
    }
    // One buffer for the reply header and the data; the bio reads straight into it.
    const head = this.structured ? CHUNK_HEADER_SIZE + 8 : SIMPLE_REPLY_SIZE;
    const pooled = sharedPool.get(head + length);
    const buf = pooled.subarray(0, head + length);
    if (this.structured) {
      putChunkHeader(buf, 0, ReplyFlag.DONE, ReplyType.OFFSET_DATA, cookieHi, cookieLo, 8 + length);
      buf.writeUInt32BE(Math.floor(offset / TWO_32), CHUNK_HEADER_SIZE);
      buf.writeUInt32BE(offset >>> 0, CHUNK_HEADER_SIZE + 4);
    } else {
      putSimpleReply(buf, 0, 0, cookieHi, cookieLo);
    }
    this.started(length);
    const done = this.partial(offset, length)
      ? readUnaligned(this.dev, offset, buf.subarray(head), this.align)
      : this.submitBio({ op: "read", sector: (offset / 512) as Sector, count: (length / 512) as Sector, data: buf.subarray(head), fua: false });
    done.then(
      () => this.readDone(buf, pooled, length),
      (e: unknown) => this.readFailed(buf, pooled, length, e),
    );
  }

  private readDone(buf: Buffer, pooled: Buffer, length: number): void {
    this.finished(length);
    this.send(buf, pooled);
    this.maybeFinish();
  }

  private readFailed(buf: Buffer, pooled: Buffer, length: number, e: unknown): void {
    this.finished(length);
    // The cookie sits at bytes 8..16 of both reply header kinds.
    const cookieHi = buf.readUInt32BE(8);
    const cookieLo = buf.readUInt32BE(12);
    sharedPool.put(pooled);
    this.replyError(Cmd.READ, cookieHi, cookieLo, nbdErrorOf(e), errorMessage(e));
    this.maybeFinish();
  }

  private writeHeader(flags: number, cookieHi: number, cookieLo: number, offset: number, length: number): void {
    let err: number;
    if (length > MAX_PAYLOAD) {
      if (length > MAX_SKIP) return this.violation(`WRITE payload of ${length} bytes`);
      err = NbdErr.EINVAL;
    } else if (this.ending) err = NbdErr.ESHUTDOWN;
    else if ((flags & ~CmdFlag.FUA) !== 0) err = NbdErr.EINVAL;
    else if (this.dev.readOnly) err = NbdErr.EPERM;
    else err = this.rangeError(offset, length, NbdErr.ENOSPC);
    if (err) {
      // Refused: drop the payload without buffering it, answer right away.
      this.log.debug("nbd write refused", { device: this.dev.name, offset, length, flags, error: err });
      this.replyEmpty(cookieHi, cookieLo, err);
      if (length > 0) {
        this.skipLeft = length;
        this.rx = RxState.Skip;
      }
      return;
    }
    this.wFlags = flags;
    this.wCookieHi = cookieHi;
    this.wCookieLo = cookieLo;
    this.wOffset = offset;
    this.wLength = length;
    if (length === 0) return this.replyEmpty(cookieHi, cookieLo, 0);
    this.rx = RxState.Payload;
  }

  private submitWrite(data: Buffer, pooled: Buffer | undefined): void {
    if (this.partial(this.wOffset, data.length)) {
      this.started(data.length);
      const done = writeUnaligned(this.dev, this.wOffset, data, (this.wFlags & CmdFlag.FUA) !== 0, this.align);
      return this.awaitEmpty(Cmd.WRITE, this.wCookieHi, this.wCookieLo, done, data.length, pooled);
    }
    const bio: Bio = {
      op: "write",
      sector: (this.wOffset / 512) as Sector,
      count: (data.length / 512) as Sector,
      data,
      fua: (this.wFlags & CmdFlag.FUA) !== 0,
    };
    this.submitEmpty(Cmd.WRITE, this.wCookieHi, this.wCookieLo, bio, data.length, pooled);
  }

  private trim(flags: number, cookieHi: number, cookieLo: number, offset: number, length: number): void {
    if ((flags & ~CmdFlag.FUA) !== 0) return this.badFlags(Cmd.TRIM, cookieHi, cookieLo, flags);
    if (this.dev.readOnly) return this.replyEmpty(cookieHi, cookieLo, NbdErr.EPERM);
    const err = this.rangeError(offset, length, NbdErr.EINVAL);
    if (err) return this.replyEmpty(cookieHi, cookieLo, err);
    if (this.partial(offset, length)) {
      // TRIM is advisory: discard the whole blocks inside the range, leave the partial ones as they are.
      const inner = innerBlocks(offset, length, this.align);
      offset = inner.start;
      length = Math.max(0, inner.end - inner.start);
    }
    if (length === 0) return this.replyEmpty(cookieHi, cookieLo, 0);
    const bio: Bio = { op: "discard", sector: (offset / 512) as Sector, count: (length / 512) as Sector, fua: (flags & CmdFlag.FUA) !== 0 };
    this.submitEmpty(Cmd.TRIM, cookieHi, cookieLo, bio, 0);
  }

  private writeZeroes(flags: number, cookieHi: number, cookieLo: number, offset: number, length: number): void {
    if ((flags & ~(CmdFlag.FUA | CmdFlag.NO_HOLE | CmdFlag.FAST_ZERO)) !== 0) return this.badFlags(Cmd.WRITE_ZEROES, cookieHi, cookieLo, flags);
    if (this.dev.readOnly) return this.replyEmpty(cookieHi, cookieLo, NbdErr.EPERM);
    const err = this.rangeError(offset, length, NbdErr.ENOSPC);
    if (err) return this.replyEmpty(cookieHi, cookieLo, err);
    // Targets cannot promise that zeroing is cheaper than writing (a file on tmpfs without ZERO_RANGE falls
    // back to writing buffers, log-writes logs it): answer FAST_ZERO with ENOTSUP, as the spec asks, and let
    // the client (qemu-img convert's pre-zeroing) take its slow path.
    if ((flags & CmdFlag.FAST_ZERO) !== 0) return this.replyEmpty(cookieHi, cookieLo, NbdErr.ENOTSUP);
    if (length === 0) return this.replyEmpty(cookieHi, cookieLo, 0);
    const fua = (flags & CmdFlag.FUA) !== 0;
    const noUnmap = (flags & CmdFlag.NO_HOLE) !== 0;
    this.started(0);
    const done = this.partial(offset, length)
      ? zeroUnaligned(this.dev, offset, length, fua, noUnmap, this.align)
      : writeZeroes(this.dev, { op: "write_zeroes", sector: (offset / 512) as Sector, count: (length / 512) as Sector, fua, noUnmap });
    this.awaitEmpty(Cmd.WRITE_ZEROES, cookieHi, cookieLo, done, 0);
  }

  /** Submit a bio whose success reply carries no data. */
  private submitEmpty(type: number, cookieHi: number, cookieLo: number, bio: Bio, bytes: number, pooled?: Buffer): void {
    this.started(bytes);
    this.awaitEmpty(type, cookieHi, cookieLo, this.submitBio(bio), bytes, pooled);
  }

  /** Reply to a request with no reply data once `done` settles. The caller has counted the request started. */
  private awaitEmpty(type: number, cookieHi: number, cookieLo: number, done: Promise<void>, bytes: number, pooled?: Buffer): void {
    done.then(
      () => {
        if (pooled) sharedPool.put(pooled);
        this.emptyDone(cookieHi, cookieLo, bytes);
      },
      (e: unknown) => {
        if (pooled) sharedPool.put(pooled);
        this.emptyFailed(type, cookieHi, cookieLo, bytes, e);
      },
    );
  }

  /** dev.submit, with a synchronous throw from a target turned into a failed request instead of a dead daemon. */
  private submitBio(bio: Bio): Promise<void> {
    try {
      return this.dev.submit(bio);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  private emptyDone(cookieHi: number, cookieLo: number, bytes: number): void {
    this.finished(bytes);
    this.replyEmpty(cookieHi, cookieLo, 0);
    this.maybeFinish();
  }

  private emptyFailed(type: number, cookieHi: number, cookieLo: number, bytes: number, e: unknown): void {
    const err = nbdErrorOf(e);
    if (err === NbdErr.ENOTSUP && type === Cmd.TRIM) {
      // TRIM is advisory: a target that cannot discard has done all it needs to.
      return this.emptyDone(cookieHi, cookieLo, bytes);
    }
    this.finished(bytes);
    this.log.debug("nbd request failed", { cmd: CMD_NAMES[type] ?? type, error: errorMessage(e) });
    this.replyEmpty(cookieHi, cookieLo, err);
    this.maybeFinish();
  }

  private async blockStatus(flags: number, cookieHi: number, cookieLo: number, offset: number, length: number): Promise<void> {
    if ((flags & ~(CmdFlag.FUA | CmdFlag.REQ_ONE)) !== 0) return this.badFlags(Cmd.BLOCK_STATUS, cookieHi, cookieLo, flags);
    if (!this.structured || this.contexts.length === 0) {
      return this.replyError(Cmd.BLOCK_STATUS, cookieHi, cookieLo, NbdErr.EINVAL, "no metadata context was negotiated");
    }
    const err = length === 0 ? NbdErr.EINVAL : this.rangeError(offset, length, NbdErr.EINVAL);
    if (err) return this.replyError(Cmd.BLOCK_STATUS, cookieHi, cookieLo, err, "block status out of range or misaligned");
    const reqOne = (flags & CmdFlag.REQ_ONE) !== 0;
    // Providers answer in whole blocks; a client without block sizes gets the answer for the covering blocks,
    // its head cut off at the offset it asked for.
    const { start, end } = this.partial(offset, length) ? cover(offset, length, this.align) : { start: offset, end: offset + length };
    const extentAlign = this.strict ? this.align : 1;
    this.started(0);
    try {
      const chunks: Buffer[] = [];
      for (const [i, { id, ctx }] of this.contexts.entries()) {
        const answer = dropHead(await ctx.blockStatus(this.dev, start, end - start, reqOne), offset - start);
        const extents = clampExtents(answer, length, reqOne, extentAlign);
        const b = Buffer.allocUnsafe(CHUNK_HEADER_SIZE + 4 + 8 * extents.length);
        const last = i === this.contexts.length - 1;
        putChunkHeader(b, 0, last ? ReplyFlag.DONE : 0, ReplyType.BLOCK_STATUS, cookieHi, cookieLo, 4 + 8 * extents.length);
        b.writeUInt32BE(id, CHUNK_HEADER_SIZE);
        let p = CHUNK_HEADER_SIZE + 4;
        for (const x of extents) {
          b.writeUInt32BE(x.length, p);
          b.writeUInt32BE(x.flags >>> 0, p + 4);
          p += 8;
        }
        chunks.push(b);
      }
      this.finished(0);
      for (const c of chunks) this.send(c);
    } catch (e) {
      this.finished(0);
      this.replyError(Cmd.BLOCK_STATUS, cookieHi, cookieLo, nbdErrorOf(e), errorMessage(e));
    }
    this.maybeFinish();
  }

  // ---- replying ----

  private badFlags(type: number, cookieHi: number, cookieLo: number, flags: number): void {
    this.replyError(type, cookieHi, cookieLo, NbdErr.EINVAL, `unsupported flags 0x${flags.toString(16)} for ${CMD_NAMES[type] ?? type}`);
  }

  /** An error reply in the form the command needs: structured for READ/BLOCK_STATUS once negotiated. */
  private replyError(type: number, cookieHi: number, cookieLo: number, error: number, message: string): void {
    if (this.structured && (type === Cmd.READ || type === Cmd.BLOCK_STATUS)) this.send(errorChunk(error, cookieHi, cookieLo, message));
    else this.replyEmpty(cookieHi, cookieLo, error);
  }

  /** A simple reply without payload (NBD errors other than READ's carry no message in simple replies). */
  private replyEmpty(cookieHi: number, cookieLo: number, error: number): void {
    const b = Buffer.allocUnsafe(SIMPLE_REPLY_SIZE);
    putSimpleReply(b, 0, error, cookieHi, cookieLo);
    this.send(b);
  }

  /** Queue a reply; `pooled` (the buffer `b` lies in) goes back to the pool once the socket has taken it. */
  private send(b: Buffer, pooled?: Buffer): void {
    if (this.closed) {
      if (pooled) sharedPool.put(pooled);
      return;
    }
    if (!this.corked) {
      this.corked = true;
      this.socket.cork();
      setImmediate(this.uncork);
    }
    if (pooled) this.socket.write(b, () => sharedPool.put(pooled));
    else this.socket.write(b);
  }

  private readonly uncork = (): void => {
    this.corked = false;
    if (!this.closed) this.socket.uncork();
    this.checkFlow();
  };

  // ---- flow control and lifecycle ----

  private started(bytes: number): void {
    this.inflight++;
    this.inflightBytes += bytes;
    this.budget.take(bytes);
    if (this.inflight >= MAX_INFLIGHT || this.inflightBytes >= MAX_INFLIGHT_BYTES || this.budget.exhausted) this.pause();
  }

  private finished(bytes: number): void {
    this.inflight--;
    this.inflightBytes -= bytes;
    this.budget.give(bytes);
    if (this.closed) {
      if (this.inflight === 0) this.release();
    } else if (this.paused) this.checkFlow();
  }

  private pause(): void {
    if (this.paused) return;
    this.paused = true;
    this.socket.pause();
  }

  private readonly onDrain = (): void => this.checkFlow();
  private readonly onBudget = (): void => this.checkFlow();

  private checkFlow(): void {
    if (this.budget.exhausted && !this.closed) {
      // Other connections hold the memory: wait for the budget, not for our own requests (we may have none).
      this.budget.whenAvailable(this.onBudget);
      return this.pause();
    }
    const congested =
      this.inflight >= MAX_INFLIGHT || this.inflightBytes >= MAX_INFLIGHT_BYTES || this.socket.writableLength >= MAX_QUEUED_REPLY_BYTES;
    if (congested) return this.pause();
    if (!this.paused || this.closed) return;
    this.paused = false;
    const stash = this.stash;
    if (stash) {
      this.stash = undefined;
      this.consume(stash, this.stashPos);
    }
    if (!this.paused) this.socket.resume();
  }

  private readonly onEnd = (): void => {
    // EOF without DISC: finish what is in flight, then close our side.
    this.rx = RxState.Stopped;
    this.ending = true;
    this.maybeFinish();
  };

  /** Once ending and idle, flush the replies and close; the client gets LINGER_MS to close its side. */
  private maybeFinish(): void {
    if (!this.ending || this.inflight > 0 || this.closed) return;
    this.rx = RxState.Stopped;
    if (this.corked) {
      this.corked = false;
      this.socket.uncork();
    }
    // Drop the open before our FIN: a client that saw the connection close may remove the device at once
    // (nbdcopy ... && tsdmsetup remove), as it may after closing a kernel block device.
    this.release();
    this.socket.end();
    setTimeout(() => this.socket.destroy(), LINGER_MS).unref();
  }

  private readonly onClose = (): void => {
    this.closed = true;
    this.budget.forget(this.onBudget);
    this.rx = RxState.Stopped;
    this.stash = undefined;
    if (this.wBuf) sharedPool.put(this.wBuf);
    this.wBuf = undefined;
    this.release();
  };

  /** Drop the device open once the socket is gone and nothing is in flight. */
  private release(): void {
    if (this.released || this.inflight > 0) return;
    this.released = true;
    this.dev.close();
    this.onGone(this);
    for (const w of this.closedWaiters.splice(0)) w();
  }

  /** A malformed request: the stream cannot be trusted any more, close without answering. */
  private violation(why: string): void {
    this.log.warn("nbd protocol violation, closing connection", { device: this.dev.name, reason: why });
    this.rx = RxState.Stopped;
    this.closed = true;
    this.socket.destroy();
  }
}

/** Extents from `skip` bytes on (the answer for a covering range, cut to where the client's range begins). */
function dropHead(extents: readonly { length: number; flags: number }[], skip: number): readonly { length: number; flags: number }[] {
  if (skip === 0) return extents;
  const out: { length: number; flags: number }[] = [];
  for (const x of extents) {
    const cut = Math.min(skip, x.length);
    skip -= cut;
    if (x.length > cut) out.push({ length: x.length - cut, flags: x.flags });
  }
  return out;
}

/** Keep a provider's answer within the protocol: ≥1 extent, within the request, aligned, one with REQ_ONE. */
function clampExtents(extents: readonly { length: number; flags: number }[], length: number, reqOne: boolean, align: number): { length: number; flags: number }[] {
  const out: { length: number; flags: number }[] = [];
  let total = 0;
  for (const x of extents) {
    const len = Math.min(x.length - (x.length % align), length - total);
    if (len <= 0) break;
    out.push({ length: len, flags: x.flags });
    total += len;
    if (reqOne || total >= length || out.length >= 1 << 20) break;
  }
  if (out.length === 0) out.push({ length, flags: 0 });
  return out;
}
