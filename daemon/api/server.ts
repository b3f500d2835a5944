import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import tls from "node:tls";
import { Server, ServerCredentials, type ServerInterceptor } from "@grpc/grpc-js";
import { HealthImplementation } from "grpc-health-check";
import { DeviceMapperServiceService } from "../../gen/tsdm/v1/tsdm.js";
import type { Logger } from "../core/log.js";
import { bindPrivate, claimSocketPath, socketFd } from "../core/unix-socket.js";
import { native } from "../io/native.js";
import { addReflection } from "./reflection.js";
import { createService, type ServiceOptions } from "./service.js";

export interface ApiServerOptions extends ServiceOptions {
  log: Logger;
  interceptors?: ServerInterceptor[];
}

/**
 * The gRPC server: the DeviceMapperService, the standard health service and reflection, on a unix socket
 * (mode 0600, or 0660 for a group) and optionally on TCP with mTLS.
 */
export class ApiServer {
  readonly server: Server;
  readonly health: HealthImplementation;
  private readonly unixPaths: string[] = [];
  /** Listeners of our own (local and TLS), each feeding accepted connections to grpc-js through an injector. */
  private readonly ownListeners: { listener: net.Server; destroy: () => void }[] = [];

  constructor(private readonly opts: ApiServerOptions) {
    this.server = new Server({ "grpc.keepalive_time_ms": 60_000, interceptors: opts.interceptors ?? [] });
    this.server.addService(DeviceMapperServiceService, createService(opts));
    this.health = new HealthImplementation({ "": "SERVING", "tsdm.v1.DeviceMapperService": "SERVING" });
    this.health.addToServer(this.server);
    if (!addReflection(this.server)) opts.log.warn("descriptor set not found: gRPC reflection disabled");
  }

  /** Bind the control socket. A stale socket file is replaced; a live daemon's socket is refused. */
  async listenUnix(socketPath: string, opts: { group?: number } = {}): Promise<void> {
    await claimSocketPath(socketPath);
    await bindPrivate(socketPath, opts.group, () => this.serveLocal((l) => l.listen(socketPath)));
    this.unixPaths.push(socketPath);
  }

  /**
   * systemd socket activation: serve the control socket systemd created and passed as `fd` (LISTEN_FDS).
   * systemd owns the socket file and its mode (SocketMode=0600 or 0660 with SocketGroup=).
   */
  async listenInherited(fd: number): Promise<void> {
    await this.serveLocal((l) => l.listen({ fd }));
  }

  /**
   * Local callers come through a listener of our own rather than grpc-js's, so that each connection can be
   * labelled with its peer's credentials (SO_PEERCRED): the audit log then says which uid and pid acted.
   */
  private serveLocal(listen: (l: net.Server) => void): Promise<void> {
    const injector = this.server.createConnectionInjector(ServerCredentials.createInsecure());
    const listener = net.createServer((sock) => {
      labelLocalPeer(sock);
      injector.injectConnection(sock);
    });
    this.ownListeners.push({ listener, destroy: () => injector.destroy() });
    return new Promise<void>((resolve, reject) => {
      listener.once("error", reject);
      listener.once("listening", () => {
        listener.off("error", reject);
        resolve();
      });
      listen(listener);
    });
  }

  /**
   * TCP with TLS and required client certificates. Returns the bound port. The TLS listener is ours; each
   * verified connection goes to grpc-js as an already secure stream (where call.getAuthContext() still sees
   * the peer certificate), so that a refused handshake is logged with its peer and reason: grpc-js's own TLS
   * listener drops them without a word.
   */
  async listenTls(host: string, port: number, material: { ca: Buffer; cert: Buffer; key: Buffer }): Promise<number> {
    const injector = this.server.createConnectionInjector(ServerCredentials.createInsecure());
    const log = this.opts.log;
    const refuse = (sock: tls.TLSSocket, why: string): void => {
      log.warn("TLS handshake refused", { peer: `${sock.remoteAddress}:${sock.remotePort}`, error: why });
      // close_notify and FIN, not a reset: the client then reports a closed handshake rather than ECONNRESET.
      sock.end();
      setTimeout(() => sock.destroy(), 1000).unref();
    };
    // The certificate is checked here rather than by rejectUnauthorized, which drops a bad one without a word.
    const listener = tls.createServer({ ca: material.ca, cert: material.cert, key: material.key, requestCert: true, rejectUnauthorized: false, ALPNProtocols: ["h2"], handshakeTimeout: TLS_HANDSHAKE_MS });
    listener.on("secureConnection", (sock) => {
      if (!sock.authorized) {
        const sent = Boolean(sock.getPeerCertificate()?.raw);
        return refuse(sock, sent ? `client certificate refused: ${String(sock.authorizationError)}` : "no client certificate");
      }
      injector.injectConnection(sock);
    });
    listener.on("tlsClientError", (err, sock) => refuse(sock, err.message));
    this.ownListeners.push({ listener, destroy: () => injector.destroy() });
    return new Promise<number>((resolve, reject) => {
      listener.once("error", reject);
      listener.listen({ host, port }, () => {
        listener.off("error", reject);
        resolve((listener.address() as net.AddressInfo).port);
      });
    });
  }

  async close(): Promise<void> {
    for (const l of this.ownListeners) l.listener.close(); // no new local callers from here on
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        this.server.forceShutdown();
        resolve();
      }, 2000);
      this.server.tryShutdown(() => {
        clearTimeout(timer);
        resolve();
      });
    });
    for (const p of this.unixPaths) fs.rmSync(p, { force: true });
    for (const l of this.ownListeners) l.destroy();
  }
}

/** A TLS client has this long to complete its handshake (Node's TLS servers default to 120 s). */
const TLS_HANDSHAKE_MS = 10_000;

/** The first socket passed by systemd (LISTEN_FDS/LISTEN_PID), if this process was socket-activated. */
export function inheritedSocketFd(env: NodeJS.ProcessEnv = process.env): number | undefined {
  if (env.LISTEN_PID !== String(process.pid)) return undefined;
  const n = Number(env.LISTEN_FDS ?? "0");
  return n >= 1 ? 3 : undefined;
}

/** Put the unix peer's credentials where grpc-js looks for a peer address (call.getPeer()). */
function labelLocalPeer(sock: net.Socket): void {
  const fd = socketFd(sock);
  if (fd === undefined) return;
  try {
    const c = native.peerCred(fd);
    Object.defineProperty(sock, "remoteAddress", { value: `uid=${c.uid},gid=${c.gid},pid=${c.pid}`, configurable: true });
  } catch {
    // not a unix socket (or gone already): the caller stays "local" without credentials
  }
}
