import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import { Server, ServerCredentials, type ServerInterceptor } from "@grpc/grpc-js";
import { HealthImplementation } from "grpc-health-check";
import { DeviceMapperServiceService } from "../../gen/tsdm/v1/tsdm.js";
import type { Logger } from "../core/log.js";
import { bindPrivate, claimSocketPath } from "../core/unix-socket.js";
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
  private readonly inherited: { listener: net.Server; destroy: () => void }[] = [];

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
    await bindPrivate(socketPath, opts.group, () => this.bind(`unix://${path.resolve(socketPath)}`, ServerCredentials.createInsecure()));
    this.unixPaths.push(socketPath);
  }

  /**
   * systemd socket activation: serve the control socket systemd created and passed as `fd` (LISTEN_FDS).
   * systemd owns the socket file and its mode (SocketMode=0600 or 0660 with SocketGroup=).
   */
  async listenInherited(fd: number): Promise<void> {
    const injector = this.server.createConnectionInjector(ServerCredentials.createInsecure());
    const listener = net.createServer((sock) => injector.injectConnection(sock));
    await new Promise<void>((resolve, reject) => {
      listener.once("error", reject);
      listener.listen({ fd }, () => resolve());
    });
    this.inherited.push({ listener, destroy: () => injector.destroy() });
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
    for (const i of this.inherited) {
      i.listener.close();
      i.destroy();
    }
  }
}

/** The first socket passed by systemd (LISTEN_FDS/LISTEN_PID), if this process was socket-activated. */
export function inheritedSocketFd(env: NodeJS.ProcessEnv = process.env): number | undefined {
  if (env.LISTEN_PID !== String(process.pid)) return undefined;
  const n = Number(env.LISTEN_FDS ?? "0");
  return n >= 1 ? 3 : undefined;
}

