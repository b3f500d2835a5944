/**
 * Host side of the kernel byte-identity check: runs workload.txt through tsdm's log-writes target (in-process)
 * on fresh zeroed data and log files of the given sizes, issuing the bios the kernel's block layer issues for
 * each operation (see workload.txt), then removes the device.
 * Usage: node --import tsx test/log-writes/kernel/tsdm-run.ts <workload> <data file or block device> <log.img>
 */
import fs from "node:fs";
import { makeRegistry } from "../../helpers/registry.js";
import { S, discard, flush, write } from "../helpers.js";

async function main(): Promise<void> {
  const [workload, data, log] = process.argv.slice(2) as [string, string, string];
  const reg = makeRegistry();
  const dev = reg.create({ name: "lw" });
  const sectors = fs.statSync(log).size / 512; // the data device has the same size (a file or a loop device over one)
  await dev.load([{ start: S(0), length: S(sectors), type: "log-writes", params: `${data} ${log}` }], false);
  await dev.resume({ noflush: false });
  const pat = (c: string, blocks: number) => Buffer.alloc(4096 * blocks, c.charCodeAt(0));
  for (const raw of fs.readFileSync(workload, "utf8").split("\n")) {
    const line = raw.trim();
    if (!line || line.startsWith("#")) continue;
    const [op, a, b, c] = line.split(/\s+/);
    switch (op) {
      case "write":
        await dev.submit(write(Number(a) * 8, pat(b!, Number(c ?? 1))));
        break;
      case "fsync":
        await dev.submit(flush());
        break;
      case "dsync":
        await dev.submit(write(Number(a) * 8, pat(b!, 1), true));
        await dev.submit(flush());
        break;
      case "discard":
        await dev.submit(discard(Number(a) * 8, Number(b) * 8));
        break;
      case "mark": {
        const name = line.slice(5).trim().replace(/^"(.*)"$/, "$1");
        await dev.message(S(0), ["mark", name]);
        break;
      }
      default:
        throw new Error(`unknown op ${op}`);
    }
  }
  // The kernel's status is read once its logger is idle; suspending ours waits for the logger.
  await dev.suspend({ noflush: false });
  process.stdout.write(dev.live!.lines("info")[0]!.params + "\n");
  await dev.resume({ noflush: false });
  await reg.remove(dev);
}

void main().catch((err) => {
  process.stderr.write(String(err?.stack ?? err) + "\n");
  process.exit(1);
});
