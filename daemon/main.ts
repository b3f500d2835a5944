import fs from "node:fs";
import path from "node:path";
import { ApiServer, inheritedSocketFd } from "./api/server.js";
import { claimSocketPath } from "./core/unix-socket.js";
import { AuditLog, auditInterceptor } from "./api/audit.js";
import { authzInterceptor, loadAuthz } from "./api/authz.js";
import { loadTlsMaterial } from "./api/tls.js";
import { ConfigError, parseConfig, USAGE, type DaemonConfig } from "./config.js";
import { createLogger, type Logger } from "./core/log.js";
import { sdNotify } from "./core/sd-notify.js";
import { lockStateDir } from "./core/state-lock.js";
import { DeviceRegistry } from "./device/registry.js";
import { DeviceStateStore } from "./device/persistence.js";
import { NbdServer } from "./nbd/server.js";
import { baseAllocation, MetaContextRegistry } from "./nbd/meta-context.js";
import { eraWrittenSince } from "./targets/era/nbd-context.js";
import { NodeManager } from "./attach/node-manager.js";
import { attachModeError } from "./attach/select.js";
import { registerBuiltinTargets } from "./targets/all.js";

export const VERSION = "0.1.0";

export interface RunningDaemon {
  readonly config: DaemonConfig;
  readonly registry: DeviceRegistry;
  stop(): Promise<void>;
}

/** Start every part of tsdmd: registry, NBD server, gRPC API (unix socket, optional mTLS TCP). */
export async function startDaemon(config: DaemonConfig, log: Logger = createLogger({ level: config.logLevel })): Promise<RunningDaemon> {
  registerBuiltinTargets();
  // Everything that can be wrong in the configuration is checked before anything is bound or restored.
  const policy = config.authz ? loadAuthz(config.authz) : undefined;
  const tls = config.tls ? loadTlsMaterial(config.tls) : undefined;
  const attachError = attachModeError(config.attach);
  if (attachError) throw new Error(attachError);
  fs.mkdirSync(config.stateDir, { recursive: true, mode: 0o700 });
  // A second daemon on the same state dir or socket stops here, before touching anything.
  const lock = lockStateDir(config.stateDir);
  // From here on a failure must undo what was started, or the listeners would keep the process alive.
  const undo: (() => Promise<void>)[] = [async () => lock.release()];
  const activatedFd = inheritedSocketFd();
  const registry = new DeviceRegistry(log.child({ component: "registry" }), { devDir: config.devDir, maxDevices: config.maxDevices });
  const store = new DeviceStateStore(config.stateDir, registry, log.child({ component: "state" }));
  const nbd = new NbdServer({
    registry,
    log: log.child({ component: "nbd" }),
    maxConnections: config.nbdMaxConnections,
    // base:allocation, plus "blocks written since era N" on era devices (incremental backup over NBD).
    metaContexts: new MetaContextRegistry([baseAllocation, eraWrittenSince]),
  });
  try {
    if (activatedFd === undefined) await claimSocketPath(config.socket);
    // Devices of the previous run come back before anyone can connect.
    const { restored, failed } = await store.restore();
    if (restored.length || failed.length) log.info("devices restored", { restored, failed });
    store.start();
    return await startServing();
  } catch (err) {
    for (const u of undo.reverse()) await u().catch(() => undefined);
    throw err;
  }

  async function startServing(): Promise<RunningDaemon> {
    undo.push(() => nbd.close());
    await nbd.listenUnix(config.nbdSocket, { group: config.group });
    const attachSocket = attachSocketPath(config, log);
    if (attachSocket !== path.resolve(config.nbdSocket)) await nbd.listenUnix(attachSocket, { internal: true });
    if (config.nbdListen) await nbd.listenTcp(config.nbdListen.host, config.nbdListen.port);
    // Kernel block devices behind $DM_DEV_DIR/mapper/NAME (--attach: ublk > kernel nbd > nbdfuse + loop).
    const nodes = await NodeManager.start({
      registry,
      mode: config.attach,
      runDir: path.join(config.stateDir, "attach"),
      recordDir: path.join(config.stateDir, "attachments"),
      exportOf: (d) => ({ socket: attachSocket, name: d.name }),
      log: log.child({ component: "attach" }),
    });
    undo.push(() => nodes.stop());

    const audit = new AuditLog(path.join(config.stateDir, "audit.log"));
    const nbdSocket = path.resolve(config.nbdSocket);
    const api = new ApiServer({
      registry,
      nodes,
      version: VERSION,
      log: log.child({ component: "api" }),
      persist: () => store.commit(),
      retryRestore: (dev) => store.retry(dev),
      nbdUri: (name) => `nbd+unix:///${encodeURIComponent(name)}?socket=${nbdSocket}`,
      // Audit outermost, so that calls the authorization refuses are audited too.
      interceptors: [auditInterceptor(audit), authzInterceptor(policy, log.child({ component: "authz" }))],
    });
    undo.push(() => api.close());
    if (config.listen && tls) {
      const port = await api.listenTls(config.listen.host, config.listen.port, tls);
      log.info("remote API listening (mTLS)", { host: config.listen.host, port });
    }
    // The control socket last: once it answers, everything else is up.
    if (activatedFd !== undefined) await api.listenInherited(activatedFd);
    else await api.listenUnix(config.socket, { group: config.group });
    log.info("tsdmd ready", { socket: config.socket, nbdSocket: config.nbdSocket, stateDir: config.stateDir, version: VERSION });

    let stopping: Promise<void> | undefined;
    const stop = (): Promise<void> =>
      (stopping ??= (async () => {
        log.info("tsdmd stopping");
        api.health.setStatus("", "NOT_SERVING");
        store.stop(); // the teardown below must not erase what the next start restores
        await api.close();
        await nodes.stop(); // before the NBD server goes: the kernel nodes' I/O runs through it
        await nbd.close();
        // Tear devices down from the top of each stack: targets write their final state (dtr), as for a restart
        // (the devices come back on the next start, so e.g. log-writes writes no end mark).
        for (let progress = true; progress && registry.list().length > 0; ) {
          progress = false;
          for (const dev of registry.list()) {
            if (dev.openCount > 0) continue;
            await registry.remove(dev, { shutdown: true }).then(() => (progress = true), (err) => log.error("teardown failed", { device: dev.name, error: String(err) }));
          }
        }
        audit.close();
        lock.release();
      })());
    return { config, registry, stop };
  }
}

/**
 * Where nbdfuse and the kernel NBD client connect: a socket of their own in the state dir (root only), whose
 * sessions do not count against --nbd-max-connections. A unix socket path has at most 107 bytes (Node
 * truncates longer ones silently); a longer state dir falls back to the public socket.
 */
function attachSocketPath(config: DaemonConfig, log: Logger): string {
  const p = path.resolve(config.stateDir, "nbd-attach.sock");
  if (config.attach === "none") return path.resolve(config.nbdSocket);
  if (Buffer.byteLength(p) <= 107) return p;
  log.warn("state dir path too long for the attach socket; attached nodes use the NBD socket and count against --nbd-max-connections", { path: p });
  return path.resolve(config.nbdSocket);
}

/** The tsdmd command line: start, then stop cleanly on SIGTERM/SIGINT. */
export async function runTsdmd(argv: string[]): Promise<number> {
  let config;
  try {
    config = parseConfig(argv);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`tsdmd: ${err.message}\n${USAGE}`);
      return 2;
    }
    throw err;
  }
  if (config === "help") {
    process.stdout.write(USAGE);
    return 0;
  }
  const log = createLogger({ level: config.logLevel });
  // Handlers first: a SIGTERM during start (systemctl stop right after start) must stop cleanly, not kill.
  const signalled = new Promise<void>((resolve) => {
    const onSignal = (sig: string): void => {
      log.info("signal received", { signal: sig });
      resolve();
    };
    process.once("SIGTERM", onSignal);
    process.once("SIGINT", onSignal);
  });
  let daemon: RunningDaemon;
  try {
    daemon = await startDaemon(config, log);
  } catch (err) {
    log.error("tsdmd failed to start", { error: (err as Error).message });
    return 1;
  }
  sdNotify(`READY=1\nMAINPID=${process.pid}`, log);
  await signalled;
  sdNotify("STOPPING=1", log);
  await daemon.stop();
  return 0;
}
