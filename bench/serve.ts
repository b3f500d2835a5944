/**
 * A tsdm NBD server in its own process for the benchmark (and manual poking): one device per
 * `--device NAME=TABLE` argument, where TABLE is dmsetup table text with lines separated by ";"
 * (e.g. `lin=0 2097152 linear /dev/shm/x 0`). Prints "ready" on stdout once listening; exits on SIGTERM/SIGINT.
 *
 *   node --import tsx bench/serve.ts --socket /tmp/tsdm.sock --device lin="0 2097152 linear /dev/shm/f 0" [--tcp 127.0.0.1:10809]
 */
import { parseArgs } from "node:util";
import { DeviceRegistry } from "../daemon/device/registry.js";
import { registerBuiltinTargets } from "../daemon/targets/all.js";
import { createLogger } from "../daemon/core/log.js";
import { NbdServer } from "../daemon/nbd/server.js";
import type { Sector } from "../daemon/core/units.js";

const { values } = parseArgs({
  options: {
    socket: { type: "string" },
    device: { type: "string", multiple: true, default: [] },
    "read-only": { type: "boolean", default: false },
    tcp: { type: "string" },
  },
});
if (!values.socket) throw new Error("--socket is required");

registerBuiltinTargets();
const log = createLogger({ level: process.env.TSDM_LOG_LEVEL ?? "warn" });
const registry = new DeviceRegistry(log);
for (const spec of values.device) {
  const eq = spec.indexOf("=");
  const name = spec.slice(0, eq);
  const lines = spec
    .slice(eq + 1)
    .split(";")
    .map((l) => l.trim())
    .filter(Boolean)
    .map((l) => {
      const [start, length, type, ...params] = l.split(/\s+/);
      return { start: Number(start) as Sector, length: Number(length) as Sector, type: type!, params: params.join(" ") };
    });
  const dev = registry.create({ name });
  await dev.load(lines, values["read-only"]);
  await dev.resume({ noflush: false });
}
const server = new NbdServer({ registry, log });
await server.listenUnix(values.socket);
if (values.tcp) {
  const i = values.tcp.lastIndexOf(":");
  await server.listenTcp(values.tcp.slice(0, i), Number(values.tcp.slice(i + 1)));
}
process.stdout.write("ready\n");
const stop = async (): Promise<void> => {
  await server.close();
  process.exit(0);
};
process.on("SIGTERM", () => void stop());
process.on("SIGINT", () => void stop());
