/**
 * Crash-test child: an era device over the given files, written by 8 concurrent writers until it is killed.
 * Prints "E <era>" once resumed, then "A <block>" after each write is acknowledged, "C <era>" after a checkpoint.
 * Usage: crash-child.ts <meta> <origin> <blockSize> <nrBlocks> <seed>
 */
import fs from "node:fs";
import { makeRegistry } from "../helpers/registry.js";
import { createEra, eraOf, rng, S, statusOf, writeBio } from "./helpers.js";

const [meta, origin, bsText, nrText, seedText] = process.argv.slice(2);
const blockSize = Number(bsText);
const nrBlocks = Number(nrText);
const rand = rng(Number(seedText));
const say = (s: string): void => void fs.writeSync(1, s + "\n");

const reg = makeRegistry();
const dev = await createEra(reg, "crash", meta!, origin!, nrBlocks * blockSize, blockSize);
say(`E ${eraOf(dev)}`);
let n = 0;
let messaging = false; // one message at a time (the writers share the device)
async function writer(): Promise<never> {
  for (;;) {
    const b = Math.floor(rand() * nrBlocks);
    const off = Math.floor(rand() * blockSize);
    await dev.submit(writeBio(b * blockSize + off, 1, n & 0xff));
    say(`A ${b}`);
    ++n;
    if (messaging) continue;
    messaging = true;
    if (n % 97 === 0) {
      await dev.message(S(0), ["checkpoint"]);
      say(`C ${eraOf(dev)}`);
    } else if (n % 151 === 0) {
      // Snapshots too: a held one survives the crash and is dropped by a later run.
      const held = statusOf(dev).split(" ")[3] !== "-";
      await dev.message(S(0), [held ? "drop_metadata_snap" : "take_metadata_snap"]);
      if (!held) say(`C ${eraOf(dev)}`);
    }
    messaging = false;
  }
}
await Promise.all(Array.from({ length: 8 }, writer));
