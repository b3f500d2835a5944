import { parseArgs } from "node:util";
import { defaultNbdSocketPath, defaultSocketPath, defaultStateDir } from "../ctl/defaults.js";

export const USAGE = `Usage: tsdmd [options]

Serves device-mapper devices in userspace: a gRPC control API for tsdmsetup, and every device as an NBD export.

  --socket PATH         control socket (default ${defaultSocketPath()}; env TSDM_SOCKET)
  --group GID           make the control and NBD sockets 0660 for this group (default: 0600, owner only)
  --nbd-socket PATH     NBD unix socket (default ${defaultNbdSocketPath()})
  --nbd-listen H:P      also serve NBD on TCP (e.g. 127.0.0.1:10809)
  --state-dir DIR       persistent state (default ${defaultStateDir()})
  --listen H:P          remote gRPC API on TCP with mutual TLS (needs --tls-ca, --tls-cert, --tls-key, --authz)
  --tls-ca FILE         CA that signs client certificates
  --tls-cert FILE       server certificate
  --tls-key FILE        server private key
  --authz FILE          JSON roles file: {"admin": [CN...], "reader": [CN...]}
  --max-devices N       refuse to create more than N devices (default 4096)
  --nbd-max-connections N  NBD connections at once, all listeners (default 256)
  --attach MODE         kernel block devices: auto|ublk|nbd|fuse|none (default auto as root, none otherwise)
  --log-level LEVEL     debug|info|warn|error (default info)
  -h, --help            this text
`;

export interface DaemonConfig {
  socket: string;
  group?: number;
  nbdSocket: string;
  nbdListen?: { host: string; port: number };
  stateDir: string;
  listen?: { host: string; port: number };
  tls?: { ca: string; cert: string; key: string };
  authz?: string;
  attach: "auto" | "ublk" | "nbd" | "fuse" | "none";
  maxDevices: number;
  nbdMaxConnections: number;
  logLevel: string;
  devDir: string;
}

export class ConfigError extends Error {}

export function parseConfig(argv: string[], env: NodeJS.ProcessEnv = process.env): DaemonConfig | "help" {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      strict: true,
      allowPositionals: false,
      options: {
        socket: { type: "string" },
        group: { type: "string" },
        "nbd-socket": { type: "string" },
        "nbd-listen": { type: "string" },
        "state-dir": { type: "string" },
        listen: { type: "string" },
        "tls-ca": { type: "string" },
        "tls-cert": { type: "string" },
        "tls-key": { type: "string" },
        authz: { type: "string" },
        attach: { type: "string" },
        "max-devices": { type: "string" },
        "nbd-max-connections": { type: "string" },
        "log-level": { type: "string" },
        help: { type: "boolean", short: "h" },
      },
    }));
  } catch (err) {
    throw new ConfigError((err as Error).message);
  }
  if (values.help) return "help";
  const attach = values.attach ?? (process.getuid?.() === 0 ? "auto" : "none");
  if (!["auto", "ublk", "nbd", "fuse", "none"].includes(attach)) throw new ConfigError(`--attach must be auto, ublk, nbd, fuse or none (got ${attach})`);
  let group: number | undefined;
  if (values.group !== undefined) {
    if (!/^[0-9]+$/.test(values.group)) throw new ConfigError(`--group takes a numeric gid (got ${values.group})`);
    group = Number(values.group);
  }
  let nbdListen: DaemonConfig["nbdListen"];
  if (values["nbd-listen"]) nbdListen = parseHostPort(values["nbd-listen"], "--nbd-listen");
  const tlsParts = [values["tls-ca"], values["tls-cert"], values["tls-key"]];
  let listen: DaemonConfig["listen"];
  if (values.listen) {
    listen = parseHostPort(values.listen, "--listen");
    if (tlsParts.some((p) => !p)) throw new ConfigError("--listen needs --tls-ca, --tls-cert and --tls-key: the remote API only speaks mutual TLS");
    if (!values.authz) throw new ConfigError("--listen needs --authz: remote callers are authorized by certificate CN");
  } else if (tlsParts.some((p) => p) || values.authz) {
    throw new ConfigError("--tls-ca/--tls-cert/--tls-key/--authz only make sense with --listen");
  }
  const devDir = env.DM_DEV_DIR ?? "/dev";
  if (!devDir.startsWith("/")) throw new ConfigError("Invalid DM_DEV_DIR environment variable value.");
  return {
    maxDevices: parseCount(values["max-devices"], "--max-devices", 4096),
    nbdMaxConnections: parseCount(values["nbd-max-connections"], "--nbd-max-connections", 256),
    socket: values.socket ?? env.TSDM_SOCKET ?? defaultSocketPath(),
    group,
    nbdSocket: values["nbd-socket"] ?? defaultNbdSocketPath(),
    nbdListen,
    stateDir: values["state-dir"] ?? defaultStateDir(),
    listen,
    tls: values.listen ? { ca: values["tls-ca"]!, cert: values["tls-cert"]!, key: values["tls-key"]! } : undefined,
    authz: values.authz,
    attach: attach as DaemonConfig["attach"],
    logLevel: values["log-level"] ?? env.TSDM_LOG_LEVEL ?? "info",
    devDir,
  };
}

function parseHostPort(text: string, flag: string): { host: string; port: number } {
  const m = /^(.*):([0-9]+)$/.exec(text);
  if (!m || !m[1] || Number(m[2]) > 65535) throw new ConfigError(`${flag} takes HOST:PORT (got ${text})`);
  return { host: m[1].replace(/^\[(.*)\]$/, "$1"), port: Number(m[2]) };
}

function parseCount(text: string | undefined, flag: string, dflt: number): number {
  if (text === undefined) return dflt;
  if (!/^[0-9]+$/.test(text) || Number(text) < 1 || Number(text) > 1_000_000) throw new ConfigError(`${flag} takes a whole number from 1 to 1000000 (got ${text})`);
  return Number(text);
}
