import net from "node:net";
import type { DeviceRegistry, RegistryEvent } from "../device/registry.js";
import type { Logger } from "../core/log.js";
import { bindPrivate, claimSocketPath, socketFd } from "../core/unix-socket.js";
import { native } from "../io/native.js";
import { ByteQueue } from "./byte-queue.js";
import { PayloadBudget } from "./budget.js";
import { Connection } from "./connection.js";
import { drainReadable, whenWritten } from "./adopt-socket.js";
import { negotiate, ProtocolViolation } from "./handshake.js";
import { MetaContextRegistry } from "./meta-context.js";

export interface NbdServerOptions {
  registry: DeviceRegistry;
  log: Logger;
  /**
   * Client connections (handshaking or transmitting) across all listeners but internal ones; more are closed at
   * accept. Default 256.
   */
  maxConnections?: number;
  /** Metadata contexts offered to clients; default: base:allocation only. */
  metaContexts?: MetaContextRegistry;
  /** A client silent for this long during option haggling is dropped (transmission has no timeout). Default 30 s. */
  handshakeTimeoutMs?: number;
  /** Request payload bytes held across all connections before they stop reading requests. Default 1 GiB. */
  maxPayloadBytes?: number;
}

/** How long close() waits for clients to finish in-flight requests before cutting them off. */
const CLOSE_GRACE_MS = 5000;

/**
 * tsdmd's NBD server: every device with a live table is an export named after the device (fixed newstyle,
 * NBD_OPT_GO, structured replies, base:allocation). Listens on unix and/or TCP sockets.
 */
export class NbdServer {
  private readonly registry: DeviceRegistry;
  private readonly log: Logger;
  private readonly maxConnections: number;
  private readonly metaContexts: MetaContextRegistry;
  private readonly handshakeTimeoutMs: number;
  private readonly budget: PayloadBudget;
  private readonly listeners: net.Server[] = [];
  private readonly handshaking = new Set<net.Socket>();
  private readonly connections = new Set<Connection>();
  /** Open sockets of non-internal listeners (what maxConnections bounds). */
  private clientSockets = 0;
  private closing = false;

  constructor(opts: NbdServerOptions) {
    this.registry = opts.registry;
    this.log = opts.log;
    this.maxConnections = opts.maxConnections ?? 256;
    this.metaContexts = opts.metaContexts ?? new MetaContextRegistry();
    this.handshakeTimeoutMs = opts.handshakeTimeoutMs ?? 30_000;
    this.budget = new PayloadBudget(opts.maxPayloadBytes ?? 1 << 30);
    this.registry.on("event", this.onRegistryEvent);
  }

  /**
   * Listen on a unix socket, mode 0600 (0660 for `group`): it gives raw access to every device. A stale socket
   * file (nobody accepting on it) is replaced. `internal`: the daemon's own sessions (nbdfuse, kernel nbd behind
   * /dev/mapper nodes), in a root-only directory: not bounded by maxConnections, which is there to bound what
   * clients can make the daemon hold (every attached device takes 4 sessions: 256 would allow only 64 attached
   * devices).
   */
  async listenUnix(path: string, opts: { group?: number; internal?: boolean } = {}): Promise<void> {
    await claimSocketPath(path);
    await bindPrivate(path, opts.group, () => this.listen((s) => s.listen(path), { internal: opts.internal ?? false, unix: true }));
    this.log.info("nbd listening", { socket: path, internal: opts.internal ?? false });
  }

  /** Listen on TCP; returns the bound port (useful with port 0). */
  async listenTcp(host: string, port: number): Promise<number> {
    const server = await this.listen((s) => s.listen(port, host));
    const bound = (server.address() as net.AddressInfo).port;
    this.log.info("nbd listening", { host, port: bound });
    return bound;
  }

  /** Stop listening and end every session: in-flight requests complete (within a grace period), then sockets close. */
  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    this.registry.off("event", this.onRegistryEvent);
    const stopped = Promise.all(this.listeners.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
    for (const s of this.handshaking) s.destroy();
    const conns = [...this.connections];
    for (const c of conns) c.shutdown();
    let timer: NodeJS.Timeout | undefined;
    const grace = new Promise<void>((resolve) => (timer = setTimeout(resolve, CLOSE_GRACE_MS)));
    await Promise.race([Promise.all(conns.map((c) => c.whenClosed())), grace]);
    clearTimeout(timer);
    for (const c of conns) c.destroy();
    await stopped;
  }

  /** Number of clients in the transmission phase (for status and tests). */
  get clientCount(): number {
    return this.connections.size;
  }

  private listen(start: (s: net.Server) => void, kind: { internal: boolean; unix: boolean } = { internal: false, unix: false }): Promise<net.Server> {
    const server = net.createServer({ noDelay: true, pauseOnConnect: false }, (socket) => this.onConnection(socket, kind));
    return new Promise((resolve, reject) => {
      server.once("error", reject);
      server.once("listening", () => {
        server.off("error", reject);
        server.on("error", (err) => this.log.error("nbd listener error", { error: err.message }));
        this.listeners.push(server);
        resolve(server);
      });
      start(server);
    });
  }

  private onConnection(socket: net.Socket, kind: { internal: boolean; unix: boolean }): void {
    if (this.closing) return void socket.destroy();
    if (kind.unix) enlargeSendBuffer(socket, this.log);
    // A client socket counts until it closes during the handshake, or its session is gone.
    let counted = false;
    const uncount = (): void => {
      if (counted) this.clientSockets--;
      counted = false;
    };
    if (!kind.internal) {
      if (this.clientSockets >= this.maxConnections) {
        this.log.warn("nbd connection refused: too many connections", { max: this.maxConnections });
        return void socket.destroy();
      }
      this.clientSockets++;
      counted = true;
      socket.once("close", uncount);
    }
    this.handshaking.add(socket);
    const queue = new ByteQueue();
    const onData = (chunk: Buffer): void => queue.push(chunk);
    const onEnd = (): void => queue.end(new Error("client closed the connection"));
    const onError = (err: Error): void => queue.end(err);
    socket.on("data", onData);
    socket.on("end", onEnd);
    socket.on("close", onEnd);
    socket.on("error", onError);
    socket.setTimeout(this.handshakeTimeoutMs, () => queue.end(new Error("handshake timed out")));
    const detach = (): void => {
      this.handshaking.delete(socket);
      socket.setTimeout(0);
      socket.off("data", onData);
      socket.off("end", onEnd);
      socket.off("close", onEnd);
      socket.off("error", onError);
    };

    negotiate(socket, queue, { registry: this.registry, metaContexts: this.metaContexts, log: this.log }).then(
      async (neg) => {
        detach();
        if (!neg) {
          socket.on("error", () => undefined);
          socket.end();
          return;
        }
        // Hold what arrives until the session reads it; the last reply must be out before the socket moves on.
        socket.pause();
        socket.on("error", () => undefined);
        await whenWritten(socket);
        if (socket.destroyed || this.closing) {
          neg.dev.close();
          socket.destroy();
          return;
        }
        const leftover = [...neg.leftover, ...queue.drain(), ...drainReadable(socket)];
        const conn = new Connection(socket, neg.dev, neg.structured, neg.blockSizeAgreed, neg.contexts, this.log, (c) => {
          this.connections.delete(c);
          uncount();
        }, this.budget);
        this.connections.add(conn);
        this.log.debug("nbd client attached", { device: neg.dev.name, structured: neg.structured, blockSizeAgreed: neg.blockSizeAgreed });
        conn.start(leftover);
      },
      (err: unknown) => {
        detach();
        const msg = err instanceof Error ? err.message : String(err);
        if (err instanceof ProtocolViolation) this.log.warn("nbd handshake failed", { reason: msg });
        else this.log.debug("nbd handshake ended", { reason: msg });
        socket.on("error", () => undefined);
        socket.destroy();
      },
    );
  }

  private readonly onRegistryEvent = (ev: RegistryEvent): void => {
    if (ev.kind !== "removed") return; // a rename keeps sessions: they hold the device, not its name
    for (const c of this.connections) if (c.dev === ev.device) c.shutdown();
  };
}

/**
 * READ replies of up to 32 MiB go out through a unix socket whose send buffer is 208 KiB by default: a 1 MiB
 * reply then takes several writes, each waiting for the client to drain the last (measured: 1.2 GB/s of 1 MiB
 * reads instead of 1.75 GB/s with 4 MiB). TCP is left to its own autotuning, which a fixed size would disable.
 */
const UNIX_SEND_BUFFER = 4 << 20;

function enlargeSendBuffer(socket: net.Socket, log: Logger): void {
  const fd = socketFd(socket);
  if (fd === undefined) return;
  try {
    native.setSendBuffer(fd, UNIX_SEND_BUFFER);
  } catch (err) {
    log.debug("could not enlarge the NBD socket's send buffer", { error: (err as Error).message });
  }
}
