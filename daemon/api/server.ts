import fs from "node:fs";
import net from "node:net";
import path from "node:path";
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
  private readonly localListeners: { listener: net.Server; destroy: () => void }[] = [];

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
    this.localListeners.push({ listener, destroy: () => injector.destroy() });
    return new Promise<void>((resolve, reject) => {
      listener.once("error", reject);
      listener.once("listening", () => {
        listener.off("error", reject);
        resolve();
      });
      listen(listener);
    });
  }

  /** TCP with TLS and required client certificates. Returns the bound port. */
  async listenTls(hostPort: string, tls: { ca: Buffer; cert: Buffer; key: Buffer }): Promise<number> {
    const creds = ServerCredentials.createSsl(tls.ca, [{ cert_chain: tls.cert, private_key: tls.key }], true);
    return this.bind(hostPort, creds);
  }

  private bind(address: string, creds: ServerCredentials): Promise<number> {
    return new Promise((resolve, reject) => this.server.bindAsync(address, creds, (err, port) => (err ? reject(err) : resolve(port))));
  }

  async close(): Promise<void> {
    for (const l of this.localListeners) l.listener.close(); // no new local callers from here on
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
    for (const l of this.localListeners) l.destroy();
  }
}

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
