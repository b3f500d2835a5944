/**
 * Host side: run in tsdm the sequence guest.sh (c) ran in the kernel, on fresh files, and compare the two
 * metadata images block by block (allocation order, layout, space-map hints). Usage: compare.mts <dir>
 */
import fs from "node:fs";
import path from "node:path";
import { makeRegistry } from "../../helpers/registry.js";
import { createEra, run, S, statusOf, writeBio } from "../helpers.js";

const dir = process.argv[2]!;
const meta = path.join(dir, "cmeta.tsdm.img");
const origin = path.join(dir, "corig.tsdm.img");
for (const [f, size] of [[meta, 8 << 20], [origin, 64 << 20]] as const) {
  fs.writeFileSync(f, "");
  fs.truncateSync(f, size);
}
const reg = makeRegistry();
const dev = await createEra(reg, "c", meta, origin, (64 << 20) / 512, 128);
const w = (b: number) => dev.submit(writeBio(b * 128, 128));
await w(3);
await w(7);
await dev.message(S(0), ["checkpoint"]);
await w(1000);
await dev.message(S(0), ["take_metadata_snap"]);
await dev.message(S(0), ["drop_metadata_snap"]);
console.log(`tsdm c-final: ${statusOf(dev)}`);
await reg.remove(dev);
const a = fs.readFileSync(meta);
const b = fs.readFileSync(path.join(dir, "cmeta.img"));
const differing: number[] = [];
for (let blk = 0; blk < a.length / 4096; blk++) if (!a.subarray(blk * 4096, (blk + 1) * 4096).equals(b.subarray(blk * 4096, (blk + 1) * 4096))) differing.push(blk);
// Block placement follows allocation order (and the kernel's asynchronous digest), so images need not be identical.
console.log(differing.length === 0 ? "metadata images byte-identical (tsdm vs kernel)" : `info: ${differing.length} metadata blocks placed differently (tsdm vs kernel)`);
const [dt, dk] = await Promise.all([run("era_dump", [meta]), run("era_dump", [path.join(dir, "cmeta.img")])]);
const same = dt.code === 0 && dt.stdout === dk.stdout;
console.log(`${same ? "OK  " : "FAIL"} era_dump of tsdm's image equals era_dump of the kernel's image for the same operations`);
const used = (img: Buffer) => img.readUInt32LE(52);
console.log(`${used(a) === used(b) ? "OK  " : "FAIL"} space map nr_allocated equal: tsdm ${used(a)}, kernel ${used(b)}`);
process.exitCode = same && used(a) === used(b) ? 0 : 1;
