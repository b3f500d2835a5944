/**
 * Crash-safety harness: a workload of writes with flush/FUA on tsdm devices of every persistent kind, the
 * daemon killed with SIGKILL at a random point, then checked and restarted:
 *   linear     every write acknowledged after a flush or with FUA is on the backing file (or a later one is)
 *   era        era_check passes on the metadata, and every acknowledged write's block is marked as written
 *              since the era the harness started in (era_invalidate --written-since)
 *   log-writes the log replays (tsdm replay-log) to its last super update, and every replayed block holds data
 *              the workload really wrote there. (That is all the kernel promises too: entries are written by
 *              the log thread after the bios complete, so an acknowledged write may be missing from the log.)
 *   bow        (state 1, checkpointed) every acknowledged-durable write is in place on the device, and
 *              tsdm bow-restore rolls the device back exactly to the checkpoint
 * Meanwhile a control loop sends era checkpoints and log-writes marks, so kills also land in metadata commits
 * and mark entries, not only in data writes.
 * linear and era come back through restart persistence and keep going across iterations; log-writes and bow
 * are checked offline before the restart, then made anew.
 *
 * CLI:  node --import tsx test/crash/harness.ts [--iterations N] [--seed S] [--keep]
 */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { pathToFileURL } from "node:url";
import { parseArgs } from "node:util";
import { run, startDaemon, type TestDaemon } from "../helpers/daemon.js";
import { call, connect, type ApiClient } from "../helpers/client.js";
import { NbdClient } from "../helpers/nbd-client.js";

const BLOCK = 4096;
const BLOCKS = 2048; // 8 MiB devices
const SECTORS = (BLOCKS * BLOCK) / 512;

type Kind = "linear" | "era" | "log-writes" | "bow";

interface WriteRecord {
  block: number;
  gen: number;
}

/** What the workload knows about one device: what it submitted, what was acknowledged, what must be durable. */
class Ledger {
  /** Every generation ever submitted per block (a crash may leave any of them, or the durable one). */
  readonly submitted = new Map<number, Set<number>>();
  /** The newest generation per block that an acknowledged flush or FUA guarantees (or a newer one). */
  readonly durable = new Map<number, number>();
  /** Blocks with an acknowledged write (era must have marked them). */
  readonly ackedBlocks = new Set<number>();
  /** Acknowledged but not yet covered by a flush. */
  private sinceFlush: WriteRecord[] = [];
  /** When each generation was submitted and acknowledged, on one clock of events. */
  private readonly submittedAt = new Map<number, number>();
  private readonly ackedAt = new Map<number, number>();
  private clock = 0;

  submit(w: WriteRecord): void {
    let s = this.submitted.get(w.block);
    if (!s) this.submitted.set(w.block, (s = new Set()));
    s.add(w.gen);
    this.submittedAt.set(w.gen, this.clock++);
  }
  ack(w: WriteRecord, fua: boolean): void {
    this.ackedAt.set(w.gen, this.clock++);
    this.ackedBlocks.add(w.block);
    if (fua) this.makeDurable(w);
    else this.sinceFlush.push(w);
  }
  /** A flush was sent after these acknowledgements and has now completed. */
  flushed(covered: WriteRecord[]): void {
    for (const w of covered) this.makeDurable(w);
  }
  takeSinceFlush(): WriteRecord[] {
    const c = this.sinceFlush;
    this.sinceFlush = [];
    return c;
  }
  /**
   * May `found` be on disk where generation `durable` was made durable? Itself, or a write to the block that
   * was not acknowledged before the durable one was submitted: overlapping writes land in either order, and
   * later ones replace it.
   */
  mayReplace(block: number, durable: number, found: number): boolean {
    if (found === durable) return true;
    if (!this.submitted.get(block)?.has(found)) return false;
    const ackedAt = this.ackedAt.get(found);
    return ackedAt === undefined || ackedAt > this.submittedAt.get(durable)!;
  }
  private makeDurable(w: WriteRecord): void {
    if ((this.durable.get(w.block) ?? -1) < w.gen) this.durable.set(w.block, w.gen);
  }
}

/** A block's content names its block and generation, so a reader knows exactly which write it sees. */
function blockData(block: number, gen: number): Buffer {
  const b = Buffer.alloc(BLOCK, (block * 131 + gen * 7) & 0xff);
  b.writeUInt32LE(0x7473646d, 0); // "tsdm"
  b.writeUInt32LE(block, 4);
  b.writeUInt32LE(gen, 8);
  return b;
}

function decode(buf: Buffer, block: number): { gen: number } | "zero" | "garbage" {
  const off = block * BLOCK;
  const b = buf.subarray(off, off + BLOCK);
  if (b.every((x) => x === 0)) return "zero";
  if (b.readUInt32LE(0) !== 0x7473646d || b.readUInt32LE(4) !== block) return "garbage";
  const gen = b.readUInt32LE(8);
  return blockData(block, gen).equals(b) ? { gen } : "garbage";
}

/** Random writes (some FUA) with a flush every few writes, several in flight, until the connection dies. */
async function workload(c: NbdClient, ledger: Ledger, rand: () => number, gen: { next: number }, blocks: number): Promise<void> {
  const inflight = new Set<Promise<void>>();
  let sinceFlush = 0;
  try {
    for (;;) {
      while (inflight.size >= 8) await Promise.race(inflight);
      if (++sinceFlush >= 8) {
        sinceFlush = 0;
        const covered = ledger.takeSinceFlush();
        const p = c.flush().then(() => ledger.flushed(covered));
        inflight.add(p);
        void p.finally(() => inflight.delete(p)).catch(() => undefined);
        continue;
      }
      const w = { block: Math.floor(rand() * blocks), gen: gen.next++ };
      const fua = rand() < 0.25;
      ledger.submit(w);
      const p = c.write(w.block * BLOCK, blockData(w.block, w.gen), fua).then(() => ledger.ack(w, fua));
      inflight.add(p);
      void p.finally(() => inflight.delete(p)).catch(() => undefined);
    }
  } catch {
    // The daemon was killed: the connection is gone. Outstanding writes are simply unacknowledged.
  }
  await Promise.allSettled([...inflight]);
}

function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export interface HarnessResult {
  iterations: number;
  acknowledged: Record<Kind, number>;
  failures: string[];
}

export async function runHarness(opts: { iterations: number; seed?: number; keep?: boolean; log?: (s: string) => void }): Promise<HarnessResult> {
  const log = opts.log ?? (() => undefined);
  const rand = mulberry32(opts.seed ?? 1);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tsdm-crash-"));
  fs.chmodSync(dir, 0o755);
  const f = (n: string) => path.join(dir, n);
  const mkfile = (n: string, bytes: number) => {
    fs.writeFileSync(f(n), "");
    fs.truncateSync(f(n), bytes);
  };
  mkfile("lin.img", BLOCKS * BLOCK);
  mkfile("era.meta", 4 << 20);
  mkfile("era.origin", BLOCKS * BLOCK);

  const failures: string[] = [];
  const acknowledged: Record<Kind, number> = { linear: 0, era: 0, "log-writes": 0, bow: 0 };
  const ledgers = { linear: new Ledger(), era: new Ledger() };
  const gen = { next: 1 };
  let d: TestDaemon | undefined;
  let api: ApiClient | undefined;
  const line = (params: string, type: string) => [{ startSector: 0n, lengthSectors: BigInt(SECTORS), targetType: type, params }];
  const byName = (name: string) => ({ by: { $case: "name" as const, value: name } });

  try {
    d = await startDaemon({ dir: path.join(dir, "daemon"), env: { TSDM_LOG_LEVEL: "warn" } });
    api = connect(d.socket);
    await call(api, api.createDevice, { name: "c-lin", uuid: "", table: line(`${f("lin.img")} 0`, "linear"), readOnly: false });
    await call(api, api.createDevice, { name: "c-era", uuid: "", table: line(`${f("era.meta")} ${f("era.origin")} 8`, "era"), readOnly: false });
    const eraStart = Number((await call(api, api.getStatus, { device: byName("c-era"), inactive: false, noflush: false })).lines[0]!.params.split(" ")[2]);

    for (let it = 0; it < opts.iterations; it++) {
      // Fresh log-writes and bow devices each round (both are checked offline, before the restart).
      mkfile("lw.data", BLOCKS * BLOCK);
      mkfile("lw.log", 64 << 20);
      mkfile("bow.img", BLOCKS * BLOCK);
      const bowImage = Buffer.alloc(BLOCKS * BLOCK);
      for (let b = 0; b < BLOCKS; b++) blockData(b, 0).copy(bowImage, b * BLOCK);
      fs.writeFileSync(f("bow.img"), bowImage);
      await call(api!, api!.createDevice, { name: "c-lw", uuid: "", table: line(`${f("lw.data")} ${f("lw.log")}`, "log-writes"), readOnly: false });
      await call(api!, api!.createDevice, { name: "c-bow", uuid: "", table: line(f("bow.img"), "bow"), readOnly: false });
      // The upper half is free space (trimmed in state 0); the lower half is "in use" and must roll back exactly.
      const trim = await NbdClient.connect(d.nbdSocket, "c-bow");
      await trim.request(4, (BLOCKS / 2) * BLOCK, (BLOCKS / 2) * BLOCK);
      await trim.disconnect();
      await call(api!, api!.sendMessage, { device: byName("c-bow"), sector: 0n, message: "state 1" });

      const lwLedger = new Ledger();
      const bowLedger = new Ledger();
      const clients = await Promise.all(["c-lin", "c-era", "c-lw", "c-bow"].map((n) => NbdClient.connect(d!.nbdSocket, n)));
      const work = [
        workload(clients[0]!, ledgers.linear, rand, gen, BLOCKS),
        workload(clients[1]!, ledgers.era, rand, gen, BLOCKS),
        workload(clients[2]!, lwLedger, rand, gen, BLOCKS),
        workload(clients[3]!, bowLedger, rand, gen, BLOCKS / 2),
      ];
      let killed = false;
      const control = (async () => {
        for (let i = 0; !killed; i++) {
          const sent = [
            call(api!, api!.sendMessage, { device: byName("c-era"), sector: 0n, message: "checkpoint" }),
            call(api!, api!.sendMessage, { device: byName("c-lw"), sector: 0n, message: `mark it${it}-${i}` }),
          ];
          await Promise.allSettled(sent);
          await new Promise((r) => setTimeout(r, 20 + rand() * 40));
        }
      })();
      await new Promise((r) => setTimeout(r, 100 + rand() * 700));
      killed = true;
      await d.kill();
      api!.close();
      await Promise.all([...work, control]);
      for (const c of clients) c.destroy();
      acknowledged.linear = ledgers.linear.ackedBlocks.size;
      acknowledged.era = ledgers.era.ackedBlocks.size;
      acknowledged["log-writes"] += lwLedger.ackedBlocks.size;
      acknowledged.bow += bowLedger.ackedBlocks.size;
      const fail = (what: string) => failures.push(`iteration ${it}: ${what}`);

      // linear: acknowledged-durable data is there.
      const lin = fs.readFileSync(f("lin.img"));
      for (const [block, g] of ledgers.linear.durable) {
        const got = decode(lin, block);
        if (got === "zero" || got === "garbage" || !ledgers.linear.mayReplace(block, g, got.gen)) fail(`linear block ${block}: durable gen ${g}, found ${JSON.stringify(got)}`);
      }

      // era: metadata consistent, every acknowledged write's block marked.
      const check = await run("era_check", [f("era.meta")]);
      if (check.code !== 0) fail(`era_check: ${check.stdout}${check.stderr}`);
      // log-writes: the log replays to its last super update, and what it replays is real workload data.
      const replayImg = f("lw.replay");
      mkfile("lw.replay", BLOCKS * BLOCK);
      const replay = await run(process.execPath, ["--import", "tsx", path.join(import.meta.dirname, "..", "..", "tools", "tsdm.ts"), "replay-log", "--log", f("lw.log"), "--replay", replayImg]);
      // Killed before the first super update (the kernel writes the super only after a FUA or mark entry): an
      // empty log, as long as nothing was written where the super goes.
      const superBlock = fs.readFileSync(f("lw.log")).subarray(0, 4096);
      const logEmpty = /nr_entries == 0|no entries|empty/i.test(replay.stderr) || (/Magic doesn't match/.test(replay.stderr) && superBlock.every((x) => x === 0));
      if (replay.code !== 0 && !logEmpty) fail(`replay-log exited ${replay.code}: ${replay.stderr.trim()}`);
      const replayed = fs.readFileSync(replayImg);
      for (let b = 0; b < BLOCKS; b++) {
        const got = decode(replayed, b);
        if (got === "garbage" || (got !== "zero" && !lwLedger.submitted.get(b)?.has(got.gen))) fail(`log-writes replay block ${b}: ${JSON.stringify(got)} was never written there`);
      }

      // bow: before the rollback, what was acknowledged as durable is in place (block 0 holds the log; its
      // data lives elsewhere until commit, and the rollback below covers it).
      const bowNow = fs.readFileSync(f("bow.img"));
      for (const [block, g] of bowLedger.durable) {
        if (block === 0) continue;
        const got = decode(bowNow, block);
        if (got === "zero" || got === "garbage" || !bowLedger.mayReplace(block, g, got.gen)) fail(`bow block ${block}: durable gen ${g}, found ${JSON.stringify(got)}`);
      }

      // bow: the rollback restores the checkpoint exactly on the blocks in use.
      const restore = await run(process.execPath, ["--import", "tsx", path.join(import.meta.dirname, "..", "..", "tools", "tsdm.ts"), "bow-restore", "-q", f("bow.img")]);
      if (restore.code !== 0) fail(`bow-restore exited ${restore.code}: ${restore.stdout}${restore.stderr}`);
      const rolled = fs.readFileSync(f("bow.img"));
      if (!rolled.subarray(0, (BLOCKS / 2) * BLOCK).equals(bowImage.subarray(0, (BLOCKS / 2) * BLOCK))) {
        let first = -1;
        for (let b = 0; b < BLOCKS / 2 && first < 0; b++) if (!rolled.subarray(b * BLOCK, (b + 1) * BLOCK).equals(bowImage.subarray(b * BLOCK, (b + 1) * BLOCK))) first = b;
        fail(`bow: rolled-back image differs from the checkpoint (first block ${first})`);
      }


      // Restart: linear and era come back; the offline-checked devices are made anew next round.
      await d.restart();
      api = connect(d.socket);
      {
        // era_invalidate sees archived writesets only (not the current one at the crash); the restarted era
        // target's resume rolls the era over, as the kernel's does, so every mark is visible now.
        const inv = await run("era_invalidate", ["--written-since", String(eraStart), f("era.meta")]);
        const marked = new Set<number>();
        for (const m of inv.stdout.matchAll(/<block block="(\d+)"\/>|<range begin="(\d+)" end\s*=\s*"(\d+)"\/>/g)) {
          if (m[1] !== undefined) marked.add(Number(m[1]));
          else for (let b = Number(m[2]); b < Number(m[3]); b++) marked.add(b);
        }
        for (const b of ledgers.era.ackedBlocks) if (!marked.has(b)) fail(`era: acknowledged write to block ${b} not marked since era ${eraStart}`);
      }
      log(`iteration ${it}: acknowledged writes linear ${ledgers.linear.ackedBlocks.size} blocks, era ${ledgers.era.ackedBlocks.size}, log-writes ${lwLedger.ackedBlocks.size}, bow ${bowLedger.ackedBlocks.size}; failures so far ${failures.length}`);
      for (const n of ["c-lw", "c-bow"]) await call(api, api.removeDevice, { device: byName(n), force: false, deferred: false, retry: false });
    }
  } finally {
    api?.close();
    if (d) {
      await d.stop().catch(() => undefined);
    }
    if (!opts.keep) fs.rmSync(dir, { recursive: true, force: true });
    else log(`kept ${dir}`);
  }
  return { iterations: opts.iterations, acknowledged, failures };
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const { values } = parseArgs({ options: { iterations: { type: "string", default: "100" }, seed: { type: "string", default: String(Date.now() % 1e9) }, keep: { type: "boolean" } } });
  const res = await runHarness({ iterations: Number(values.iterations), seed: Number(values.seed), keep: values.keep, log: (s) => console.log(s) });
  console.log(JSON.stringify({ seed: Number(values.seed), ...res }, null, 2));
  process.exitCode = res.failures.length ? 1 : 0;
}
