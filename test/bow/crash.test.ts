import fs from "node:fs";
import path from "node:path";
import { spawn } from "node:child_process";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { MAGIC_BOW, decodeHeader } from "../../daemon/targets/bow/format.js";
import { tempDir } from "../helpers/registry.js";
import { firstDifference, pattern, restoreFile, rng } from "./helpers.js";
import { trimmedSet } from "./fixtures/trim-plan.js";

const ROOT = path.resolve(import.meta.dirname, "../..");
let tmp: ReturnType<typeof tempDir>;
beforeAll(() => {
  tmp = tempDir("tsdm-bow-crash-");
});
afterAll(() => tmp.cleanup());

/** Run the writer child until it has completed `after` writes, then SIGKILL it (mid-way through later ones). */
function runAndKill(file: string, blockSize: number, sectors: number, seed: number, after: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["--import", "tsx", path.join(ROOT, "test/bow/fixtures/bow-writer.ts"), file, String(blockSize), String(sectors), String(seed)], {
      cwd: ROOT,
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    let err = "";
    let killed = false;
    child.stdout.on("data", (d: Buffer) => {
      out += d.toString();
      const writes = (out.match(/^w /gm) ?? []).length;
      if (!killed && out.includes("ready\n") && writes >= after) {
        killed = true;
        child.kill("SIGKILL");
      }
    });
    child.stderr.on("data", (d: Buffer) => (err += d.toString()));
    child.on("error", reject);
    child.on("exit", (code, signal) => (signal === "SIGKILL" ? resolve() : reject(new Error(`writer exited ${code}: ${err}`))));
  });
}

describe("bow: kill -9 in state 1", () => {
  const cases = [
    { blockSize: 4096, seed: 1 },
    { blockSize: 4096, seed: 2 },
    { blockSize: 512, seed: 3 },
    { blockSize: 1024, seed: 4 },
    { blockSize: 2048, seed: 5 },
  ];
  for (const { blockSize, seed } of cases) {
    it(`block ${blockSize}, seed ${seed}: bow-restore gives back the checkpoint on every block in use`, async () => {
      const sectors = 4096;
      const file = path.join(tmp.dir, `crash-${seed}.img`);
      const init = Buffer.alloc(sectors * 512);
      for (let s = 0; s < sectors; s++) pattern(1, 7000 + s).copy(init, s * 512);
      fs.writeFileSync(file, init);
      const after = Math.floor(rng(seed * 97)() * 60);
      await runAndKill(file, blockSize, sectors, seed, after);
      expect(decodeHeader(fs.readFileSync(file)).magic).toBe(MAGIC_BOW);
      const r = await restoreFile(file);
      expect(r.kind).toBe("restored");
      const blocks = (sectors * 512) / blockSize;
      const free = trimmedSet(seed, blocks);
      const inUse = Array.from({ length: blocks }, (_, b) => b).filter((b) => !free.has(b));
      expect(firstDifference(fs.readFileSync(file), init, blockSize, inUse)).toBe(-1);
    });
  }
});
