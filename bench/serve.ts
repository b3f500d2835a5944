/**
 * A tsdm NBD server in its own process for the benchmark (and manual poking): one device per
 * `--device NAME=TABLE` argument, where TABLE is dmsetup table text with lines separated by ";"
 * (e.g. `lin=0 2097152 linear /dev/shm/x 0`). Prints "ready" on stdout once listening; exits on SIGTERM/SIGINT.
 *
 *   npm run build && node dist/bench/serve.js --socket /tmp/tsdm.sock --device lin="0 2097152 linear /dev/shm/f 0" [--tcp 127.0.0.1:10809]
 * (compiled, so that it runs what tsdmd runs; under tsx, esbuild's keepNames wrappers cost closure-heavy
 * targets several percent)
 *
 * `--setup NAME=ACTION` (repeatable, run in order once every device exists) prepares a scenario:
 *   discard:<start>:<sectors>   a discard bio (bow: free space for backups in state 0)
 *   message:<text>              a target message (bow: "state 1"; era: "checkpoint")
 *   prefill[:<start>:<sectors>] write the device (or that range) once (era: blocks marked; bow: blocks backed up)
 * On exit each device's status line goes to stderr, so a run that filled a log (logging_disabled) is visible.
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
    setup: { type: "string", multiple: true, default: [] },
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
for (const spec of values.setup) {
  const eq = spec.indexOf("=");
  const dev = registry.get({ name: spec.slice(0, eq) });
  const action = spec.slice(eq + 1);
  if (action.startsWith("discard:")) {
    const [, start, count] = action.split(":");
    await dev.submit({ op: "discard", sector: Number(start) as Sector, count: Number(count) as Sector, fua: false });
  } else if (action.startsWith("message:")) {
    await dev.message(0 as Sector, action.slice("message:".length).split(" "));
  } else if (action === "prefill" || action.startsWith("prefill:")) {
    const [, from, count] = action.split(":");
    const start = from === undefined ? 0 : Number(from);
    const end = count === undefined ? dev.size : start + Number(count);
    const chunk = 2048; // 1 MiB
    const data = Buffer.alloc(chunk * 512, 0x5a);
    for (let s = start; s < end; s += chunk) {
      const n = Math.min(chunk, end - s);
      await dev.submit({ op: "write", sector: s as Sector, count: n as Sector, data: data.subarray(0, n * 512), fua: false });
    }
    await dev.submit({ op: "flush", sector: 0 as Sector, count: 0 as Sector, fua: false });
  } else {
    throw new Error(`unknown --setup action ${action}`);
  }
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
  for (const dev of registry.list()) {
    for (const l of dev.live?.lines("info") ?? []) process.stderr.write(`[serve] ${dev.name}: ${l.start} ${l.length} ${l.type} ${l.params}\n`);
  }
  process.exit(0);
};
process.on("SIGTERM", () => void stop());
process.on("SIGINT", () => void stop());
