/**
 * Host side, before the guest: tsdm writes era metadata (several eras, a digest, a held snapshot) into
 * <dir>/tmeta.img over <dir>/torig.img, for the kernel to open. Usage: prepare.mts <dir>
 */
import fs from "node:fs";
import path from "node:path";
import { makeRegistry } from "../../helpers/registry.js";
import { createEra, statusOf, S, writeBio } from "../helpers.js";

const dir = process.argv[2]!;
const meta = path.join(dir, "tmeta.img");
const origin = path.join(dir, "torig.img");
for (const [f, size] of [[meta, 8 << 20], [origin, 64 << 20]] as const) {
  fs.writeFileSync(f, "");
  fs.truncateSync(f, size);
}
const reg = makeRegistry();
const BS = 128;
const dev = await createEra(reg, "t", meta, origin, (64 << 20) / 512, BS);
const w = (block: number) => dev.submit(writeBio(block * BS, 8));
await w(1);
await w(2);
await dev.message(S(0), ["checkpoint"]);
await w(2);
await w(40);
for (let i = 0; i < 25; i++) {
  await w((i * 41) % 1024);
  await dev.message(S(0), ["checkpoint"]);
}
await new Promise((r) => setTimeout(r, 200)); // let the digest run
await dev.message(S(0), ["take_metadata_snap"]);
await w(300);
console.log(`tsdm status: ${statusOf(dev)}`);
await reg.remove(dev);
