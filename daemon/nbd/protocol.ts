/**
 * NBD wire constants and encoders (NetworkBlockDevice/nbd doc/proto.md). Everything on the wire is big-endian.
 * Only the compact (non-extended) headers are spoken: NBD_OPT_EXTENDED_HEADERS is still experimental upstream.
 */

// ---- handshake ----
export const NBDMAGIC = 0x4e42444d41474943n;
export const IHAVEOPT = 0x49484156454f5054n;
/** IHAVEOPT as two 32-bit halves, to compare without BigInt on the option path. */
export const IHAVEOPT_HI = 0x49484156;
export const IHAVEOPT_LO = 0x454f5054;
export const OPT_REPLY_MAGIC = 0x0003e889045565a9n;

export const FLAG_FIXED_NEWSTYLE = 1 << 0;
export const FLAG_NO_ZEROES = 1 << 1;
export const CLIENT_FLAG_FIXED_NEWSTYLE = 1 << 0;
export const CLIENT_FLAG_NO_ZEROES = 1 << 1;

export const Opt = {
  EXPORT_NAME: 1,
  ABORT: 2,
  LIST: 3,
  STARTTLS: 5,
  INFO: 6,
  GO: 7,
  STRUCTURED_REPLY: 8,
  LIST_META_CONTEXT: 9,
  SET_META_CONTEXT: 10,
  EXTENDED_HEADERS: 11,
} as const;

export const Rep = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
  META_CONTEXT: 4,
  ERR_UNSUP: 0x80000001,
  ERR_POLICY: 0x80000002,
  ERR_INVALID: 0x80000003,
  ERR_PLATFORM: 0x80000004,
  ERR_TLS_REQD: 0x80000005,
  ERR_UNKNOWN: 0x80000006,
  ERR_SHUTDOWN: 0x80000007,
  ERR_BLOCK_SIZE_REQD: 0x80000008,
  ERR_TOO_BIG: 0x80000009,
} as const;

export const Info = { EXPORT: 0, NAME: 1, DESCRIPTION: 2, BLOCK_SIZE: 3 } as const;

// ---- transmission flags ----
export const TF = {
  HAS_FLAGS: 1 << 0,
  READ_ONLY: 1 << 1,
  SEND_FLUSH: 1 << 2,
  SEND_FUA: 1 << 3,
  ROTATIONAL: 1 << 4,
  SEND_TRIM: 1 << 5,
  SEND_WRITE_ZEROES: 1 << 6,
  SEND_DF: 1 << 7,
  CAN_MULTI_CONN: 1 << 8,
  SEND_RESIZE: 1 << 9,
  SEND_CACHE: 1 << 10,
  SEND_FAST_ZERO: 1 << 11,
} as const;

// ---- requests and replies ----
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;
export const REQUEST_HEADER_SIZE = 28;
export const SIMPLE_REPLY_SIZE = 16;
export const CHUNK_HEADER_SIZE = 20;

export const Cmd = {
  READ: 0,
  WRITE: 1,
  DISC: 2,
  FLUSH: 3,
  TRIM: 4,
  CACHE: 5,
  WRITE_ZEROES: 6,
  BLOCK_STATUS: 7,
} as const;

export const CmdFlag = {
  FUA: 1 << 0,
  NO_HOLE: 1 << 1,
  DF: 1 << 2,
  REQ_ONE: 1 << 3,
  FAST_ZERO: 1 << 4,
} as const;

export const ReplyFlag = { DONE: 1 } as const;
export const ReplyType = {
  NONE: 0,
  OFFSET_DATA: 1,
  OFFSET_HOLE: 2,
  BLOCK_STATUS: 5,
  ERROR: 0x8001,
  ERROR_OFFSET: 0x8002,
} as const;

/** NBD error values (proto.md "Error values"); clients map anything unknown to EINVAL. */
export const NbdErr = {
  OK: 0,
  EPERM: 1,
  EIO: 5,
  ENOMEM: 12,
  EINVAL: 22,
  ENOSPC: 28,
  EOVERFLOW: 75,
  ENOTSUP: 95,
  ESHUTDOWN: 108,
} as const;
export type NbdError = (typeof NbdErr)[keyof typeof NbdErr];

// ---- limits ----
/** Block-size constraints we advertise: sectors are our unit, so 512 is the floor. */
export const MIN_BLOCK = 512;
export const PREFERRED_BLOCK = 4096;
/** Largest READ/WRITE payload (the kernel client's max_hw_sectors; the spec's "must accept" figure). */
export const MAX_PAYLOAD = 32 << 20;
/** Option data we read into memory; longer options are skipped and refused with ERR_TOO_BIG. */
export const MAX_OPTION_LENGTH = 64 << 10;
/** Beyond this, an option is not worth skipping: the connection is dropped. */
export const MAX_OPTION_SKIP = 16 << 20;
/** Strings (export names, queries) per proto.md. */
export const MAX_STRING = 4096;

// ---- encoders (handshake: allocation per message is fine, this is not the hot path) ----

export function handshakeGreeting(): Buffer {
  const b = Buffer.allocUnsafe(18);
  b.writeBigUInt64BE(NBDMAGIC, 0);
  b.writeBigUInt64BE(IHAVEOPT, 8);
  b.writeUInt16BE(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES, 16);
  return b;
}

export function optionReply(option: number, type: number, data?: Buffer): Buffer {
  const len = data?.length ?? 0;
  const b = Buffer.allocUnsafe(20 + len);
  b.writeBigUInt64BE(OPT_REPLY_MAGIC, 0);
  b.writeUInt32BE(option >>> 0, 8);
  b.writeUInt32BE(type >>> 0, 12);
  b.writeUInt32BE(len, 16);
  if (data) data.copy(b, 20);
  return b;
}

export function optionError(option: number, type: number, message: string): Buffer {
  return optionReply(option, type, Buffer.from(truncateUtf8(message, 256)));
}

export function repServer(name: string, description?: string): Buffer {
  const n = Buffer.from(name);
  const d = Buffer.from(description ?? "");
  const b = Buffer.allocUnsafe(4 + n.length + d.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  d.copy(b, 4 + n.length);
  return b;
}

export function infoExport(sizeBytes: number, flags: number): Buffer {
  const b = Buffer.allocUnsafe(12);
  b.writeUInt16BE(Info.EXPORT, 0);
  b.writeBigUInt64BE(BigInt(sizeBytes), 2);
  b.writeUInt16BE(flags, 10);
  return b;
}

export function infoString(type: typeof Info.NAME | typeof Info.DESCRIPTION, text: string): Buffer {
  const s = Buffer.from(truncateUtf8(text, MAX_STRING));
  const b = Buffer.allocUnsafe(2 + s.length);
  b.writeUInt16BE(type, 0);
  s.copy(b, 2);
  return b;
}

export function infoBlockSize(min: number, preferred: number, max: number): Buffer {
  const b = Buffer.allocUnsafe(14);
  b.writeUInt16BE(Info.BLOCK_SIZE, 0);
  b.writeUInt32BE(min, 2);
  b.writeUInt32BE(preferred, 6);
  b.writeUInt32BE(max, 10);
  return b;
}

export function repMetaContext(id: number, name: string): Buffer {
  const n = Buffer.from(name);
  const b = Buffer.allocUnsafe(4 + n.length);
  b.writeUInt32BE(id >>> 0, 0);
  n.copy(b, 4);
  return b;
}

/** The reply to NBD_OPT_EXPORT_NAME: size, transmission flags and (unless NO_ZEROES) 124 zero bytes. */
export function exportNameReply(sizeBytes: number, flags: number, noZeroes: boolean): Buffer {
  const b = Buffer.alloc(noZeroes ? 10 : 134);
  b.writeBigUInt64BE(BigInt(sizeBytes), 0);
  b.writeUInt16BE(flags, 8);
  return b;
}

// ---- transmission encoders (hot path: the caller owns cookie halves as two uint32s, no BigInt) ----

/** Write a simple reply header at `off` of `b`. */
export function putSimpleReply(b: Buffer, off: number, error: number, cookieHi: number, cookieLo: number): void {
  b.writeUInt32BE(SIMPLE_REPLY_MAGIC, off);
  b.writeUInt32BE(error, off + 4);
  b.writeUInt32BE(cookieHi, off + 8);
  b.writeUInt32BE(cookieLo, off + 12);
}

/** Write a structured reply chunk header at `off` of `b`. */
export function putChunkHeader(b: Buffer, off: number, flags: number, type: number, cookieHi: number, cookieLo: number, length: number): void {
  b.writeUInt32BE(STRUCTURED_REPLY_MAGIC, off);
  b.writeUInt16BE(flags, off + 4);
  b.writeUInt16BE(type, off + 6);
  b.writeUInt32BE(cookieHi, off + 8);
  b.writeUInt32BE(cookieLo, off + 12);
  b.writeUInt32BE(length, off + 16);
}

/** A complete NBD_REPLY_TYPE_ERROR chunk (with DONE) carrying `error` and a short message. */
export function errorChunk(error: number, cookieHi: number, cookieLo: number, message: string): Buffer {
  const msg = Buffer.from(truncateUtf8(message, 256));
  const b = Buffer.allocUnsafe(CHUNK_HEADER_SIZE + 6 + msg.length);
  putChunkHeader(b, 0, ReplyFlag.DONE, ReplyType.ERROR, cookieHi, cookieLo, 6 + msg.length);
  b.writeUInt32BE(error, CHUNK_HEADER_SIZE);
  b.writeUInt16BE(msg.length, CHUNK_HEADER_SIZE + 4);
  msg.copy(b, CHUNK_HEADER_SIZE + 6);
  return b;
}

/** Cut `text` to at most `maxBytes` of UTF-8 without splitting a character. */
export function truncateUtf8(text: string, maxBytes: number): string {
  const b = Buffer.from(text);
  if (b.length <= maxBytes) return text;
  let end = maxBytes;
  while (end > 0 && (b[end]! & 0xc0) === 0x80) end--;
  return b.subarray(0, end).toString();
}

export const OPT_NAMES: Record<number, string> = Object.fromEntries(Object.entries(Opt).map(([k, v]) => [v, k]));
export const CMD_NAMES: Record<number, string> = Object.fromEntries(Object.entries(Cmd).map(([k, v]) => [v, k]));
