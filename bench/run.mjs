#!/usr/bin/env node
// tsdm NBD benchmark: fio's nbd engine against tsdm's NBD server and reference servers on the same backing file.
//
//   node bench/run.mjs                       # defaults: 1 GiB file on /dev/shm, 3 repetitions x 3 s
//   BENCH_REPS=5 BENCH_RUNTIME=6 BENCH_RAMP=2 node bench/run.mjs     # the spec's method (nbd.md section 4)
//
// Knobs (environment):
//   BENCH_SIZE       backing file size, bytes or with K/M/G suffix (default 1G)
//   BENCH_DIR        where the backing file goes (default /dev/shm)
//   BENCH_REPS       repetitions (default 3); each repetition runs every workload on every target, order rotating
//   BENCH_RUNTIME    seconds per fio run (default 3); BENCH_RAMP seconds of ramp before it (default 1)
//   BENCH_IODEPTH    fio iodepth (default 16)
//   BENCH_WORKLOADS  comma list of workload names (default: seq-read-1m,seq-write-1m,rand-read-4k,rand-write-4k;
//                    also available: rand-read-4k-qd1, seq-write-1m-fsync, rand-write-4k-fsync)
//   BENCH_TARGETS    comma list of target names (default: all in TARGETS below)
//   BENCH_THREADPOOL UV_THREADPOOL_SIZE for tsdm servers (default 16, as bin/tsdmd.js sets)
//   BENCH_JSON       also write every sample to this file
//   BENCH_LOG_SIZE   log device size for the log-writes scenario (default 10G, sparse, beside the backing file)
//
// Adding a scenario (e.g. log-writes/era/bow overhead against plain linear): add an entry to TARGETS with
// kind "tsdm", a `devices(file, sectors, workDir)` function returning the devices to create (name + dmsetup table
// text, lines joined by ";", created in order so later ones may stack on earlier ones), the `export` to measure,
// and `ratios` naming the targets its ratio rows are computed against (e.g. ["tsdm-linear"]).
import { spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = path.dirname(path.dirname(fileURLToPath(import.meta.url)));

const env = process.env;
const SIZE = parseSize(env.BENCH_SIZE ?? "1G");
const DIR = env.BENCH_DIR ?? "/dev/shm";
const REPS = Number(env.BENCH_REPS ?? 3);
const RUNTIME = Number(env.BENCH_RUNTIME ?? 3);
const RAMP = Number(env.BENCH_RAMP ?? 1);
const IODEPTH = Number(env.BENCH_IODEPTH ?? 16);
const THREADPOOL = env.BENCH_THREADPOOL ?? "16";

/** fio job shapes. */
const WORKLOADS = {
  "seq-read-1m": { rw: "read", bs: "1m", unit: "MiB/s" },
  "seq-write-1m": { rw: "write", bs: "1m", unit: "MiB/s" },
  "rand-read-4k": { rw: "randread", bs: "4k", unit: "IOPS" },
  "rand-write-4k": { rw: "randwrite", bs: "4k", unit: "IOPS" },
  "rand-read-4k-qd1": { rw: "randread", bs: "4k", unit: "IOPS", iodepth: 1 },
  // With a flush every 64 writes, as a filesystem would: log-writes logs writes only when a flush completes
  // (before that they wait in memory, as in the kernel), so these are the workloads that measure its logging.
  "seq-write-1m-fsync": { rw: "write", bs: "1m", unit: "MiB/s", fsync: 64 },
  "rand-write-4k-fsync": { rw: "randwrite", bs: "4k", unit: "IOPS", fsync: 64 },
};

/**
 * Servers under test. kind "tsdm" runs bench/serve.ts as compiled to dist/ (tsdm's registry + NbdServer in a
 * process of its own, the same JavaScript tsdmd runs; `npm run bench` builds first);
 * "command" runs an external server. Every one serves the same backing file over a unix socket.
 */
const TARGETS = [
  {
    name: "tsdm-linear",
    kind: "tsdm",
    devices: (file, sectors) => [{ name: "lin", table: `0 ${sectors} linear ${file} 0` }],
    export: "lin",
    ratios: ["nbdkit-file", "qemu-nbd"],
  },
  {
    // Two stripes over the two halves of the same file (64 KiB chunks): the cost of chunk splitting.
    name: "tsdm-striped",
    kind: "tsdm",
    devices: (file, sectors) => {
      const half = Math.floor(sectors / 2 / 128) * 128;
      return [{ name: "str", table: `0 ${half * 2} striped 2 128 ${file} 0 ${file} ${half}` }];
    },
    export: "str",
    ratios: ["tsdm-linear"],
  },
  {
    // flakey in its up phase and delay with zero delays: the pass-through cost of the fault injectors.
    name: "tsdm-flakey-up",
    kind: "tsdm",
    devices: (file, sectors) => [{ name: "flk", table: `0 ${sectors} flakey ${file} 0 4294967295 0` }],
    export: "flk",
    ratios: ["tsdm-linear"],
  },
  {
    name: "tsdm-delay-0",
    kind: "tsdm",
    devices: (file, sectors) => [{ name: "dly", table: `0 ${sectors} delay ${file} 0 0` }],
    export: "dly",
    ratios: ["tsdm-linear"],
  },
  {
    // log-writes: every write is written twice (data + log). The log lives next to the backing file (same
    // medium, sparse), BENCH_LOG_SIZE (default 10G) so that a default run never fills it; the exit status line
    // shows whether it did ("logging_disabled"), which would make later runs measure unlogged pass-through.
    name: "tsdm-log-writes",
    kind: "tsdm",
    devices: (file, sectors) => {
      const log = sideFile(file, "lw-log", parseSize(env.BENCH_LOG_SIZE ?? "10G"));
      return [{ name: "lw", table: `0 ${sectors} log-writes ${file} ${log}` }];
    },
    export: "lw",
    ratios: ["tsdm-linear"],
    // A fresh (empty, sparse) log for every run: otherwise the log grows by gigabytes across the runs and what is
    // measured is the machine finding memory for it, not the target.
    fresh: true,
  },
  {
    // era, 4 KiB blocks, metadata freshly formatted: writes mix first writes (a metadata commit each batch) and
    // re-writes of blocks already marked.
    name: "tsdm-era",
    kind: "tsdm",
    devices: (file, sectors) => [{ name: "era", table: `0 ${sectors} era ${sideFile(file, "era-meta", 64 << 20)} ${file} 8` }],
    export: "era",
    ratios: ["tsdm-linear"],
  },
  {
    // era after every block was written once: only re-writes of marked blocks (target: <= 5% overhead).
    name: "tsdm-era-rewrite",
    kind: "tsdm",
    devices: (file, sectors) => [{ name: "erw", table: `0 ${sectors} era ${sideFile(file, "erw-meta", 64 << 20)} ${file} 8` }],
    setup: ["erw=prefill"],
    export: "erw",
    ratios: ["tsdm-linear"],
  },
  {
    // bow in state 1 with the upper 60% trimmed (free for backups): first overwrites of in-use blocks each need
    // a backup (copy + log entry + flushes); writes to free space and re-writes pass through.
    name: "tsdm-bow",
    kind: "tsdm",
    devices: (file, sectors) => [{ name: "bow", table: `0 ${sectors} bow ${file}` }],
    setup: (sectors) => [`bow=discard:${inUse(sectors)}:${sectors - inUse(sectors)}`, "bow=message:state 1"],
    // fio stays in the in-use part: every first overwrite takes one free block, so that part must fit the free one.
    range: (sectors) => ({ offset: 0, size: inUse(sectors) * 512 }),
    export: "bow",
    ratios: ["tsdm-linear"],
  },
  {
    // bow in state 1 after every block was overwritten once: re-writes of changed blocks (target: <= 5%).
    name: "tsdm-bow-rewrite",
    kind: "tsdm",
    devices: (file, sectors) => [{ name: "brw", table: `0 ${sectors} bow ${file}` }],
    setup: (sectors) => [`brw=discard:${inUse(sectors)}:${sectors - inUse(sectors)}`, "brw=message:state 1", `brw=prefill:0:${inUse(sectors)}`],
    range: (sectors) => ({ offset: 0, size: inUse(sectors) * 512 }),
    export: "brw",
    ratios: ["tsdm-linear"],
  },
  {
    name: "nbdkit-file",
    kind: "command",
    command: (file, sock) => ["nbdkit", ["-f", "-U", sock, "file", file]],
    export: "",
  },
  {
    name: "qemu-nbd",
    kind: "command",
    command: (file, sock) => ["qemu-nbd", ["-t", "-k", sock, "-f", "raw", "--cache=writeback", "--aio=threads", "-x", "", file]],
    export: "",
  },
];

// ---------------------------------------------------------------------------------------------------------

function parseSize(s) {
  const m = /^(\d+)([KMG]?)$/i.exec(s.trim());
  if (!m) throw new Error(`bad size ${s}`);
  return Number(m[1]) * { "": 1, K: 1024, M: 1 << 20, G: 1 << 30 }[m[2].toUpperCase()];
}

function pick(list, envValue, key) {
  if (!envValue) return list;
  const want = envValue.split(",").map((s) => s.trim());
  for (const w of want) if (!list.some((x) => key(x) === w)) throw new Error(`unknown name ${w}`);
  return list.filter((x) => want.includes(key(x)));
}

function run(cmd, args, opts = {}) {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"], ...opts });
    let out = "";
    let err = "";
    p.stdout.on("data", (d) => (out += d));
    p.stderr.on("data", (d) => (err += d));
    p.on("error", reject);
    p.on("close", (code) => (code === 0 ? resolve(out) : reject(new Error(`${cmd} exited ${code}: ${err.trim()}`))));
  });
}

async function waitForSocket(sock, proc, timeoutMs = 15000) {
  const t0 = Date.now();
  while (!fs.existsSync(sock)) {
    if (proc.exitCode !== null) throw new Error(`server exited with ${proc.exitCode}`);
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out waiting for ${sock}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** CPU time (user+system) of a process in seconds, from /proc (clock ticks are 100 Hz on Linux). */
function cpuSeconds(pid) {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(f[11]) + Number(f[12])) / 100;
  } catch {
    return NaN;
  }
}

/** bow scenarios: the lower 40% (MiB-aligned) is "in use", the rest trimmed free space for backups. */
const inUse = (sectors) => Math.floor((sectors * 0.4) / 2048) * 2048;

/** A zeroed sparse file beside the backing file (same medium), recreated for every run of the bench. */
function sideFile(file, name, bytes) {
  const p = `${file}.${name}`;
  fs.rmSync(p, { force: true });
  fs.writeFileSync(p, "");
  fs.truncateSync(p, bytes);
  return p;
}

async function startTarget(t, file, sectors, workDir) {
  const sock = path.join(workDir, `${t.name}.sock`);
  let proc;
  if (t.kind === "tsdm") {
    const args = [path.join(ROOT, "dist/bench/serve.js"), "--socket", sock];
    for (const d of t.devices(file, sectors, workDir)) args.push("--device", `${d.name}=${d.table}`);
    const setup = typeof t.setup === "function" ? t.setup(sectors) : (t.setup ?? []);
    for (const s of setup) args.push("--setup", s);
    proc = spawn(process.execPath, args, {
      cwd: ROOT,
      stdio: ["ignore", "pipe", "inherit"],
      env: { ...env, UV_THREADPOOL_SIZE: THREADPOOL, TSDM_LOG_LEVEL: env.TSDM_LOG_LEVEL ?? "warn" },
    });
    await new Promise((resolve, reject) => {
      proc.stdout.on("data", (d) => String(d).includes("ready") && resolve());
      proc.on("exit", (code) => reject(new Error(`${t.name} exited with ${code}`)));
    });
  } else {
    const [cmd, args] = t.command(file, sock);
    proc = spawn(cmd, args, { stdio: ["ignore", "ignore", "inherit"] });
    await waitForSocket(sock, proc);
  }
  const uri = `nbd+unix:///${encodeURIComponent(t.export)}?socket=${sock}`;
  return { ...t, proc, uri };
}

async function fio(uri, w, outFile, range) {
  const args = [
    "--name=bench",
    "--ioengine=nbd",
    `--uri=${uri}`,
    `--iodepth=${w.iodepth ?? IODEPTH}`,
    `--rw=${w.rw}`,
    `--bs=${w.bs}`,
    `--size=${range?.size ?? SIZE}`,
    `--offset=${range?.offset ?? 0}`,
    ...(w.fsync ? [`--fsync=${w.fsync}`] : []),
    "--time_based",
    `--runtime=${RUNTIME}`,
    `--ramp_time=${RAMP}`,
    "--output-format=json",
    `--output=${outFile}`,
  ];
  await run("fio", args);
  const job = JSON.parse(fs.readFileSync(outFile, "utf8")).jobs[0];
  const r = w.rw.includes("read") ? job.read : job.write;
  return { mibs: r.bw / 1024, iops: r.iops, ios: r.total_ios };
}

const median = (xs) => {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

const fmt = (x, digits = 0) => (Number.isFinite(x) ? x.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits }) : "-");

async function main() {
  const targets = pick(TARGETS, env.BENCH_TARGETS, (t) => t.name);
  const workloads = pick(
    Object.entries(WORKLOADS).map(([name, w]) => ({ name, ...w })),
    env.BENCH_WORKLOADS ?? "seq-read-1m,seq-write-1m,rand-read-4k,rand-write-4k",
    (w) => w.name,
  );
  const workDir = fs.mkdtempSync(path.join(os.tmpdir(), "tsdm-bench-"));
  const file = path.join(DIR, `tsdm-bench-${process.pid}.img`);
  const started = [];
  const cleanup = () => {
    for (const t of started) t.proc.kill("SIGTERM");
    fs.rmSync(file, { force: true });
    for (const side of ["lw-log", "era-meta", "erw-meta"]) fs.rmSync(`${file}.${side}`, { force: true });
    fs.rmSync(workDir, { recursive: true, force: true });
  };
  process.on("SIGINT", () => {
    cleanup();
    process.exit(130);
  });

  try {
    console.log(`tsdm NBD benchmark: ${fmt(SIZE / (1 << 20))} MiB file in ${DIR}, ${REPS} reps x ${RUNTIME}s (+${RAMP}s ramp), iodepth ${IODEPTH}`);
    console.log(`machine: ${os.cpus().length} CPUs, load average at start ${os.loadavg().map((x) => x.toFixed(2)).join(" ")}, UV_THREADPOOL_SIZE=${THREADPOOL} for tsdm`);
    await writeRandomFile(file, SIZE);
    const sectors = Math.floor(SIZE / 512);
    for (const t of targets) started.push(await startTarget(t, file, sectors, workDir));

    /** samples[target][workload] = [{ value, cpuUsPerIo }] per repetition */
    const samples = {};
    for (const t of started) samples[t.name] = Object.fromEntries(workloads.map((w) => [w.name, []]));
    const outFile = path.join(workDir, "fio.json");
    for (let rep = 0; rep < REPS; rep++) {
      for (const w of workloads) {
        // Rotate the order every repetition so that no target always runs first (warm caches, turbo, neighbours).
        const order = started.map((_, i) => started[(i + rep) % started.length]);
        for (let t of order) {
          if (t.fresh) {
            t.proc.kill("SIGTERM");
            await new Promise((r) => t.proc.once("exit", r));
            const i = started.indexOf(t);
            started[i] = t = await startTarget(t, file, sectors, workDir);
          }
          const cpu0 = cpuSeconds(t.proc.pid);
          const r = await fio(t.uri, w, outFile, t.range?.(sectors));
          const cpu1 = cpuSeconds(t.proc.pid);
          const value = w.unit === "IOPS" ? r.iops : r.mibs;
          // Server CPU includes the ramp, so divide by the I/Os of ramp + measured time, estimated from the rate.
          const ioEstimate = r.iops * (RUNTIME + RAMP);
          const cpuUs = ((cpu1 - cpu0) * 1e6) / ioEstimate;
          samples[t.name][w.name].push({ value, cpuUs });
          process.stderr.write(`rep ${rep + 1}/${REPS} ${w.name.padEnd(16)} ${t.name.padEnd(12)} ${fmt(value).padStart(9)} ${w.unit}  ${fmt(cpuUs, 1)} µs CPU/req\n`);
        }
      }
    }
    report(started, workloads, samples);
    if (env.BENCH_JSON) fs.writeFileSync(env.BENCH_JSON, JSON.stringify({ size: SIZE, reps: REPS, runtime: RUNTIME, samples }, null, 2));
    console.log(`load average at end ${os.loadavg().map((x) => x.toFixed(2)).join(" ")}`);
  } finally {
    cleanup();
  }
}

function report(targets, workloads, samples) {
  console.log("");
  const header = ["workload", ...targets.map((t) => t.name)];
  const rows = [];
  for (const w of workloads) {
    rows.push([`${w.name} (${w.unit})`, ...targets.map((t) => fmt(median(samples[t.name][w.name].map((s) => s.value))))]);
  }
  rows.push(["", ...targets.map(() => "")]);
  for (const w of workloads) {
    rows.push([`${w.name} µs CPU/req`, ...targets.map((t) => fmt(median(samples[t.name][w.name].map((s) => s.cpuUs)), 1))]);
  }
  printTable(header, rows);

  const ratioRows = [];
  for (const t of targets) {
    for (const base of t.ratios ?? []) {
      if (!samples[base]) continue;
      const row = [`${t.name} / ${base}`];
      for (const w of workloads) {
        // Median of per-repetition ratios: each ratio compares runs made moments apart.
        const a = samples[t.name][w.name];
        const b = samples[base][w.name];
        row.push(fmt(median(a.map((s, i) => s.value / b[i].value)), 2));
      }
      ratioRows.push(row);
    }
  }
  if (ratioRows.length) {
    console.log("");
    printTable(["ratio (median of per-rep)", ...workloads.map((w) => w.name)], ratioRows);
  }
}

function printTable(header, rows) {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => String(r[i]).length)));
  const line = (cells) => cells.map((c, i) => (i === 0 ? String(c).padEnd(widths[i]) : String(c).padStart(widths[i]))).join("  ");
  console.log(line(header));
  console.log(widths.map((w) => "-".repeat(w)).join("  "));
  for (const r of rows) console.log(line(r));
}

async function writeRandomFile(file, size) {
  const { randomFillSync } = await import("node:crypto");
  const fd = fs.openSync(file, "w");
  try {
    const buf = Buffer.allocUnsafe(16 << 20);
    for (let off = 0; off < size; off += buf.length) {
      const n = Math.min(buf.length, size - off);
      randomFillSync(buf, 0, n);
      fs.writeSync(fd, buf, 0, n, off);
    }
  } finally {
    fs.closeSync(fd);
  }
}

await main();
