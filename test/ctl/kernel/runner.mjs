// Runs INSIDE the kernel VM: the oracle scenario (scenario.mjs) with one client, recording every step's argv,
// exit code, stdout and stderr as JSON.
//   node runner.mjs kernel OUT.json LOOP...   the real dmsetup (spawned per step; argv[0] "dmsetup")
//   node runner.mjs tsdm OUT.json LOOP...     tsdmsetup's main() in this process against tsdmd (TSDM_SOCKET):
//                                             a node start per step costs seconds under TCG. The steps get
//                                             prog "tsdmsetup", what bin/tsdmsetup.js would pass.
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { Readable, Writable } from "node:stream";
import { fileURLToPath } from "node:url";
import { scenario } from "./scenario.mjs";

const [mode, outFile, ...loops] = process.argv.slice(2);
const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");
const TARGETS = ["linear", "striped", "zero", "error", "flakey", "delay", "log-writes", "era"];

class Capture extends Writable {
  text = "";
  _write(chunk, _enc, cb) {
    this.text += chunk.toString();
    cb();
  }
}

let tsdmMain;
async function runStep(argv, input) {
  if (mode === "kernel") {
    const r = spawnSync("dmsetup", argv, { input: input ?? "", encoding: "utf8", timeout: 30_000 });
    return { code: r.status ?? `signal ${r.signal}`, stdout: r.stdout, stderr: r.stderr };
  }
  tsdmMain ??= (await import(path.join(REPO, "dist/ctl/tsdmsetup.js"))).main;
  const stdout = new Capture();
  const stderr = new Capture();
  const stdin = Readable.from(input === undefined ? [] : [Buffer.from(input)]);
  const code = await tsdmMain(argv, { stdin, stdout, stderr, env: process.env, prog: "tsdmsetup" });
  return { code, stdout: stdout.text, stderr: stderr.text };
}

const steps = [];
const t0 = Date.now();
// The device-mapper major of this side, for major:minor operands and table arguments naming a mapped device:
// the kernel's dynamic one, or the one tsdmd reports for its devices.
const dmMajor =
  mode === "kernel"
    ? Number(/^\s*(\d+) device-mapper$/m.exec(fs.readFileSync("/proc/devices", "utf8"))[1])
    : (await import(path.join(REPO, "dist/daemon/device/mapped-device.js"))).DM_MAJOR;
for (const step of scenario(loops, dmMajor)) {
  const r = await runStep(step.argv, step.input);
  if (step.filterTargets) {
    r.stdout = r.stdout
      .split("\n")
      .filter((l) => TARGETS.includes(l.split(/\s+/)[0]))
      .sort()
      .map((l) => `${l}\n`)
      .join("");
  }
  steps.push({ argv: step.argv, input: step.input, helpThenRuns: step.helpThenRuns, ...r });
}
fs.writeFileSync(outFile, JSON.stringify(steps, null, 1));
console.log(`${mode}: ${steps.length} steps in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
