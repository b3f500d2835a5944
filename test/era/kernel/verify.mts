/**
 * Host side, after the guest: check both images with era_check, era_invalidate and the reference-count checker;
 * then open the kernel's metadata in tsdm, drop the kernel's snapshot, write, and check again.
 * Usage: verify.mts <dir>
 */
import fs from "node:fs";
import path from "node:path";
import { FileMetaIo } from "../../../daemon/targets/era/pdata/block.js";
import { checkReferenceCounts } from "../../../daemon/targets/era/inspect.js";
import { makeRegistry } from "../../helpers/registry.js";
import { createEra, invalidateSince, parseBlocks, run, S, statusOf, tsdm, writeBio } from "../helpers.js";

const dir = process.argv[2]!;
let failed = false;
const report = (what: string, ok: boolean, detail = ""): void => {
  console.log(`${ok ? "OK  " : "FAIL"} ${what}${detail ? ": " + detail : ""}`);
  if (!ok) failed = true;
};
async function refcounts(file: string, what: string): Promise<void> {
  const io = FileMetaIo.open(file, false);
  const r = await checkReferenceCounts(io);
  await io.close();
  report(`${what}: reference counts`, r.problems.length === 0 && r.reachable === r.nrAllocated, r.problems.slice(0, 5).join("; ") || `${r.reachable} blocks`);
}
async function eraCheck(file: string, what: string): Promise<void> {
  const r = await run("era_check", [file]);
  report(`${what}: era_check`, r.code === 0, r.stderr.trim());
}

// (a) tsdm's metadata after the kernel used it.
const tmeta = path.join(dir, "tmeta.img");
await eraCheck(tmeta, "tsdm->kernel");
await refcounts(tmeta, "tsdm->kernel");
const tBlocks = await invalidateSince(tmeta, 1);
for (const b of [1, 2, 40, 300, 500, 501, 600, 601, 602]) report(`tsdm->kernel: block ${b} listed as written`, tBlocks.includes(b));

// (b) the kernel's metadata, checked as it is, then used by tsdm.
const kmeta = path.join(dir, "kmeta.img");
await eraCheck(kmeta, "kernel");
for (const args of [[], ["--logical"]]) {
  const [ours, theirs] = await Promise.all([tsdm(["era", "dump", ...args, kmeta]), run("era_dump", [...args, kmeta])]);
  report(`kernel: tsdm era dump ${args.join(" ")} equals era_dump`, ours.code === 0 && ours.stdout === theirs.stdout);
}
for (const n of ["1", "5", "20"]) {
  const [ours, theirs] = await Promise.all([tsdm(["era", "invalidate", "--written-since", n, kmeta]), run("era_invalidate", ["--written-since", n, kmeta])]);
  report(`kernel: tsdm era invalidate --written-since ${n} equals era_invalidate`, ours.code === 0 && ours.stdout === theirs.stdout);
}
const snapOurs = await tsdm(["era", "invalidate", "--metadata-snapshot", "--written-since", "1", kmeta]);
report("kernel: tsdm era invalidate --metadata-snapshot reads the kernel's snapshot", snapOurs.code === 0 && !parseBlocks(snapOurs.stdout).includes(11), `${parseBlocks(snapOurs.stdout).length} blocks`);
await refcounts(kmeta, "kernel (our checker agrees with the kernel's counts)");
const korig = path.join(dir, "korig.img");
const reg = makeRegistry();
const dev = await createEra(reg, "k", kmeta, korig, fs.statSync(korig).size / 512, 128);
console.log(`tsdm on kernel metadata: ${statusOf(dev)}`);
await dev.message(S(0), ["drop_metadata_snap"]);
await dev.submit(writeBio(900 * 128, 8));
await dev.message(S(0), ["take_metadata_snap"]);
await dev.message(S(0), ["drop_metadata_snap"]);
await dev.submit(writeBio(901 * 128, 8));
await reg.remove(dev);
await eraCheck(kmeta, "kernel->tsdm");
await refcounts(kmeta, "kernel->tsdm");
const kBlocks = await invalidateSince(kmeta, 1);
for (const b of [3, 7, 9, 11, 100, 101, 102, 103, 900, 901]) report(`kernel->tsdm: block ${b} listed as written`, kBlocks.includes(b));
process.exitCode = failed ? 1 : 0;
