import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { DeviceRegistry } from "../../daemon/device/registry.js";
import { registerBuiltinTargets } from "../../daemon/targets/all.js";
import { silentLogger } from "../../daemon/core/log.js";

/** A real in-process registry with every built-in target, for tests that need no daemon process. */
export function makeRegistry(): DeviceRegistry {
  registerBuiltinTargets();
  return new DeviceRegistry(silentLogger);
}

/** A fresh temp directory, removed by the returned cleanup. */
export function tempDir(prefix = "tsdm-test-"): { dir: string; cleanup: () => void } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  fs.chmodSync(dir, 0o755);
  return { dir, cleanup: () => fs.rmSync(dir, { recursive: true, force: true }) };
}

/** A file of `bytes` bytes: zeroes (sparse) or filled with a deterministic pattern. */
export function makeFile(dir: string, name: string, bytes: number, fill: "zero" | "pattern" = "zero"): string {
  const p = path.join(dir, name);
  if (fill === "zero") {
    fs.writeFileSync(p, "");
    fs.truncateSync(p, bytes);
  } else {
    const buf = Buffer.alloc(bytes);
    for (let i = 0; i < bytes; i += 4) buf.writeUInt32LE((i * 2654435761) >>> 0, i);
    fs.writeFileSync(p, buf);
  }
  return p;
}

/**
 * Fills a table-argument template whose placeholders are whole words ("F1 0 F2 8" → paths). Word-wise, because a
 * chained String.replace can hit a placeholder's letters inside a path already substituted (mkdtemp's random
 * suffix once contained "F2").
 */
export function fillArgs(template: string, values: Record<string, string>): string {
  return template
    .split(" ")
    .map((word) => values[word] ?? word)
    .join(" ");
}
