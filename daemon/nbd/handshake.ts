import type { Socket } from "node:net";
import type { DeviceRegistry } from "../device/registry.js";
import type { MappedDevice } from "../device/mapped-device.js";
import type { Logger } from "../core/log.js";
import type { ByteQueue } from "./byte-queue.js";
import { blockSizes, exportDescription, exportSizeBytes, notExportable, transmissionFlags } from "./export.js";
import type { MetaContext, MetaContextRegistry } from "./meta-context.js";
import {
  CLIENT_FLAG_FIXED_NEWSTYLE,
  CLIENT_FLAG_NO_ZEROES,
  IHAVEOPT_HI,
  IHAVEOPT_LO,
  Info,
  MAX_OPTION_LENGTH,
  MAX_OPTION_SKIP,
  MAX_STRING,
  OPT_NAMES,
  Opt,
  Rep,
  exportNameReply,
  handshakeGreeting,
  infoBlockSize,
  infoExport,
  infoString,
  optionError,
  optionReply,
  repMetaContext,
  repServer,
} from "./protocol.js";

/** A metadata context selected for this connection, with the id BLOCK_STATUS replies carry. */
export interface SelectedContext {
  readonly id: number;
  readonly ctx: MetaContext;
}

/** The outcome of option haggling that ends in transmission. */
export interface Negotiated {
  /** The export; already opened (dev.open()) on the connection's behalf. */
  readonly dev: MappedDevice;
  readonly structured: boolean;
  readonly contexts: readonly SelectedContext[];
  /**
   * The client listed NBD_INFO_BLOCK_SIZE in NBD_OPT_GO, so it MUST keep to the advertised minimum. Other clients
   * (EXPORT_NAME, GO without it) are owed the spec's default minimum of 1 byte (see unaligned.ts).
   */
  readonly blockSizeAgreed: boolean;
  /** Bytes received after the final option (pipelined requests). */
  readonly leftover: Buffer[];
}

export interface HandshakeEnv {
  readonly registry: DeviceRegistry;
  readonly metaContexts: MetaContextRegistry;
  readonly log: Logger;
}

/** A client broke the protocol in a way that leaves nothing to answer: drop the connection. */
export class ProtocolViolation extends Error {}

/** Raised by option parsers: answer the option with this error type and message, keep haggling. */
class OptionRefused extends Error {
  constructor(
    readonly rep: number,
    message: string,
  ) {
    super(message);
  }
}

const KNOWN_CLIENT_FLAGS = CLIENT_FLAG_FIXED_NEWSTYLE | CLIENT_FLAG_NO_ZEROES;

/**
 * Fixed-newstyle handshake (proto.md "Option haggling"). Resolves with the negotiated export when the client
 * enters transmission (GO or EXPORT_NAME), with undefined when it aborts; rejects when the connection is
 * unusable (EOF, protocol violation).
 */
export async function negotiate(socket: Socket, queue: ByteQueue, env: HandshakeEnv): Promise<Negotiated | undefined> {
  socket.write(handshakeGreeting());
  const clientFlags = (await queue.read(4)).readUInt32BE(0);
  if ((clientFlags & ~KNOWN_CLIENT_FLAGS) !== 0) throw new ProtocolViolation(`unknown client flags 0x${clientFlags.toString(16)}`);
  const noZeroes = (clientFlags & CLIENT_FLAG_NO_ZEROES) !== 0;

  let structured = false;
  // Contexts chosen by SET_META_CONTEXT, valid only for the export they were chosen for.
  let meta: { exportName: string; contexts: SelectedContext[] } | undefined;

  const send = (b: Buffer): void => void socket.write(b);

  for (;;) {
    const h = await queue.read(16);
    if (h.readUInt32BE(0) !== IHAVEOPT_HI || h.readUInt32BE(4) !== IHAVEOPT_LO) throw new ProtocolViolation("bad option magic");
    const option = h.readUInt32BE(8);
    const length = h.readUInt32BE(12);

    if (length > MAX_OPTION_LENGTH) {
      if (option === Opt.EXPORT_NAME || length > MAX_OPTION_SKIP) throw new ProtocolViolation(`option ${option} with ${length} bytes of data`);
      await queue.skip(length);
      send(optionError(option, Rep.ERR_TOO_BIG, `option data too long (${length} bytes)`));
      continue;
    }
    const data = await queue.read(length);
    env.log.debug("nbd option", { option: OPT_NAMES[option] ?? option, length });

    try {
      switch (option) {
        case Opt.EXPORT_NAME: {
          const name = data.toString("utf8");
          const dev = env.registry.find({ name });
          const why = dev ? notExportable(dev) : `no export named "${name}"`;
          // EXPORT_NAME has no error reply: a refusal can only be a disconnect (proto.md).
          if (!dev || why) throw new ProtocolViolation(`EXPORT_NAME refused: ${why}`);
          dev.open();
          send(exportNameReply(exportSizeBytes(dev), transmissionFlags(dev, structured), noZeroes));
          return { dev, structured, contexts: meta?.exportName === name ? meta.contexts : [], blockSizeAgreed: false, leftover: queue.drain() };
        }
        case Opt.ABORT:
          send(optionReply(option, Rep.ACK));
          return undefined;
        case Opt.LIST: {
          if (length !== 0) throw new OptionRefused(Rep.ERR_INVALID, "NBD_OPT_LIST carries no data");
          for (const dev of env.registry.list()) {
            if (!notExportable(dev)) send(optionReply(option, Rep.SERVER, repServer(dev.name)));
          }
          send(optionReply(option, Rep.ACK));
          break;
        }
        case Opt.INFO:
        case Opt.GO: {
          const { name, infos } = parseInfoRequest(data);
          const dev = env.registry.find({ name });
          if (!dev) throw new OptionRefused(Rep.ERR_UNKNOWN, `no export named "${name}"`);
          const why = notExportable(dev);
          if (why) throw new OptionRefused(Rep.ERR_UNKNOWN, why);
          send(optionReply(option, Rep.INFO, infoExport(exportSizeBytes(dev), transmissionFlags(dev, structured))));
          // Block size constraints are sent whether asked or not (the spec allows it; libnbd and qemu use them).
          const bs = blockSizes(dev);
          send(optionReply(option, Rep.INFO, infoBlockSize(bs.min, bs.preferred, bs.max)));
          if (infos.includes(Info.NAME)) send(optionReply(option, Rep.INFO, infoString(Info.NAME, dev.name)));
          if (infos.includes(Info.DESCRIPTION)) send(optionReply(option, Rep.INFO, infoString(Info.DESCRIPTION, exportDescription(dev))));
          if (option === Opt.INFO) {
            send(optionReply(option, Rep.ACK));
            break;
          }
          dev.open();
          send(optionReply(option, Rep.ACK));
          const blockSizeAgreed = infos.includes(Info.BLOCK_SIZE);
          return { dev, structured, contexts: meta?.exportName === name ? meta.contexts : [], blockSizeAgreed, leftover: queue.drain() };
        }
        case Opt.STRUCTURED_REPLY:
          if (length !== 0) throw new OptionRefused(Rep.ERR_INVALID, "NBD_OPT_STRUCTURED_REPLY carries no data");
          structured = true;
          send(optionReply(option, Rep.ACK));
          break;
        case Opt.LIST_META_CONTEXT:
        case Opt.SET_META_CONTEXT: {
          const { name, queries } = parseMetaRequest(data);
          if (option === Opt.SET_META_CONTEXT && !structured) {
            throw new OptionRefused(Rep.ERR_INVALID, "NBD_OPT_SET_META_CONTEXT needs structured replies first");
          }
          const dev = env.registry.find({ name });
          if (!dev || notExportable(dev)) throw new OptionRefused(Rep.ERR_UNKNOWN, `no export named "${name}"`);
          if (option === Opt.LIST_META_CONTEXT) {
            for (const ctxName of env.metaContexts.list(dev, queries)) send(optionReply(option, Rep.META_CONTEXT, repMetaContext(0, ctxName)));
          } else {
            const contexts = env.metaContexts.select(dev, queries).map((ctx, i) => ({ id: i + 1, ctx }));
            meta = { exportName: name, contexts };
            for (const c of contexts) send(optionReply(option, Rep.META_CONTEXT, repMetaContext(c.id, c.ctx.name)));
          }
          send(optionReply(option, Rep.ACK));
          break;
        }
        case Opt.STARTTLS:
          throw new OptionRefused(Rep.ERR_POLICY, "TLS is not offered on this socket");
        default:
          // Unknown options (and EXTENDED_HEADERS, still experimental upstream) are refused, staying in sync.
          throw new OptionRefused(Rep.ERR_UNSUP, `option ${OPT_NAMES[option] ?? option} is not supported`);
      }
    } catch (err) {
      if (!(err instanceof OptionRefused)) throw err;
      send(optionError(option, err.rep, err.message));
    }
  }
}

function parseInfoRequest(data: Buffer): { name: string; infos: number[] } {
  const invalid = (): never => {
    throw new OptionRefused(Rep.ERR_INVALID, "malformed NBD_OPT_INFO/GO data");
  };
  if (data.length < 6) invalid();
  const nameLen = data.readUInt32BE(0);
  if (nameLen > MAX_STRING || 4 + nameLen + 2 > data.length) invalid();
  const name = data.toString("utf8", 4, 4 + nameLen);
  const n = data.readUInt16BE(4 + nameLen);
  if (data.length !== 4 + nameLen + 2 + 2 * n) invalid();
  const infos: number[] = [];
  for (let i = 0; i < n; i++) infos.push(data.readUInt16BE(4 + nameLen + 2 + 2 * i));
  return { name, infos };
}

function parseMetaRequest(data: Buffer): { name: string; queries: string[] } {
  const invalid = (): never => {
    throw new OptionRefused(Rep.ERR_INVALID, "malformed meta context request");
  };
  if (data.length < 8) invalid();
  const nameLen = data.readUInt32BE(0);
  if (nameLen > MAX_STRING || 4 + nameLen + 4 > data.length) invalid();
  const name = data.toString("utf8", 4, 4 + nameLen);
  const n = data.readUInt32BE(4 + nameLen);
  let pos = 8 + nameLen;
  const queries: string[] = [];
  for (let i = 0; i < n; i++) {
    if (pos + 4 > data.length) invalid();
    const qLen = data.readUInt32BE(pos);
    if (qLen > MAX_STRING || pos + 4 + qLen > data.length) invalid();
    queries.push(data.toString("utf8", pos + 4, pos + 4 + qLen));
    pos += 4 + qLen;
  }
  if (pos !== data.length) invalid();
  return { name, queries };
}
