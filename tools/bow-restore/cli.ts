import fs from "node:fs";
import { Command, CommanderError, InvalidArgumentError, Option } from "commander";
import cliProgress from "cli-progress";
import { FileRawDevice, ImageBusyError, type StepHook } from "./raw-device.js";
import { restoreCheckpoint, type RestoreResult } from "../../daemon/targets/bow/restore.js";

/**
 * `tsdm bow-restore DEVICE|IMAGE`: roll a device back to its dm-bow checkpoint, as vold's
 * `vdc checkpoint restoreCheckpoint` does at boot. Run it on the raw lower device while no bow device (or
 * anything else) uses it.
 *
 * Exit codes: 0 restored, resumed, nothing to do, or (--check) a valid log; 2 the log failed validation and
 * the device was rolled forward (--check: would be); 3 stopped by --limit with entries left; 1 error.
 */
export const EXIT = { OK: 0, ERROR: 1, ROLLED_FORWARD: 2, LIMIT: 3 } as const;

export async function run(argv: string[]): Promise<number> {
  const program = new Command("tsdm bow-restore")
    .description("Roll a device back to its dm-bow checkpoint (vold's restoreCheckpoint)")
    .argument("<device>", "the raw lower device or an image file (not the bow device)")
    .option("-n, --check", "validate the log and report what a restore would do; write nothing")
    .option("--dry-run", "same as --check")
    .option("-q, --quiet", "no progress bar, only errors and the final line")
    .addOption(new Option("--limit <n>", "stop after n entries (vold's restore_limit, for testing)").argParser(parseCount).hideHelp())
    .addOption(new Option("--step-gate", "report each write/sync on stdout and wait for a line on stdin (crash tests)").hideHelp())
    .addHelpText(
      "after",
      "\nExit status: 0 restored or nothing to do, 2 log invalid so the device was rolled forward (its post-checkpoint\n" +
        "state kept), 3 stopped by --limit with entries left, 1 error. An interrupted restore resumes when run\n" +
        "again.\n",
    )
    .exitOverride()
    .configureOutput({ writeOut: (s) => process.stdout.write(s), writeErr: (s) => process.stderr.write(s) });
  try {
    program.parse(argv, { from: "user" });
  } catch (err) {
    if (err instanceof CommanderError) return err.exitCode === 0 ? 0 : EXIT.ERROR;
    throw err;
  }
  const opts = program.opts<{ check?: boolean; dryRun?: boolean; quiet?: boolean; limit?: number; stepGate?: boolean }>();
  const path = program.args[0]!;
  const dryRun = Boolean(opts.check || opts.dryRun);

  let dev: FileRawDevice;
  try {
    dev = await FileRawDevice.open(path, { readOnly: dryRun, step: opts.stepGate ? stepGate() : undefined });
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    const hint = err instanceof ImageBusyError ? "; remove the bow device first" : e.code === "EBUSY" ? " (in use: remove the bow device / unmount it first)" : "";
    process.stderr.write(`tsdm bow-restore: cannot open ${path}: ${e.message}${hint}\n`);
    return EXIT.ERROR;
  }

  const tty = Boolean(process.stderr.isTTY) && !opts.quiet && !opts.stepGate;
  let bar: cliProgress.SingleBar | undefined;
  try {
    const result = await restoreCheckpoint(dev, {
      dryRun,
      limit: opts.limit,
      onPhase: (phase) => {
        if (!opts.quiet && phase !== "restoring") process.stderr.write(`${phase}…\n`);
        if (phase === "restoring" && tty) {
          bar = new cliProgress.SingleBar({ format: "restoring [{bar}] {value}/{total} entries", stream: process.stderr }, cliProgress.Presets.shades_classic);
          bar.start(1, 0);
        }
      },
      onProgress: (done, total) => {
        if (!bar) return;
        bar.setTotal(total);
        bar.update(done);
      },
    });
    bar?.stop();
    return report(path, result);
  } catch (err) {
    bar?.stop();
    process.stderr.write(`tsdm bow-restore: ${path}: ${(err as Error).message}\n`);
    return EXIT.ERROR;
  } finally {
    dev.close();
  }
}

function report(path: string, r: RestoreResult): number {
  const out = (s: string) => process.stdout.write(s + "\n");
  switch (r.kind) {
    case "no-magic":
      out(`${path}: no checkpoint log (no BOW/WOB magic in block 0); nothing to do`);
      return EXIT.OK;
    case "restored":
      out(`${path}: ${r.resumed ? "resumed and completed an interrupted restore" : "restored the checkpoint"}: ${r.entries} log entries, ${r.bytes} bytes written back`);
      return EXIT.OK;
    case "limit":
      out(`${path}: stopped after ${r.entries} entries (--limit); block 0 is marked WOB, run again to resume`);
      return EXIT.LIMIT;
    case "rolled-forward":
      out(`${path}: checkpoint validation failed (${r.reason}); rolled forward: block 0 restored from sector ${r.sector0}, post-checkpoint data kept`);
      return EXIT.ROLLED_FORWARD;
    case "checked":
      if (r.valid) {
        out(`${path}: valid checkpoint log: block size ${r.blockSize}, ${r.sequence + 1} log sector(s), ${r.entries} entries, ${r.bytes} bytes to restore`);
        return EXIT.OK;
      }
      out(`${path}: checkpoint log is invalid (${r.reason}); a restore would roll forward from sector ${r.sector0}`);
      return EXIT.ROLLED_FORWARD;
    case "checked-resume":
      out(`${path}: an interrupted restore is pending (WOB): log sector ${r.sequence}, ${r.count} entries left in it; a restore resumes it without validating`);
      return EXIT.OK;
  }
}

function parseCount(v: string): number {
  if (!/^[1-9][0-9]*$/.test(v)) throw new InvalidArgumentError("expected a positive integer");
  return Number(v);
}

/** Crash-test hook: announce each step and block until the parent says go (or kills us). */
function stepGate(): StepHook {
  let n = 0;
  const line = Buffer.alloc(1);
  return (what, pos, length) => {
    fs.writeSync(1, `step ${++n} ${what} ${pos} ${length}\n`);
    // Read up to and including a newline from stdin, synchronously.
    for (;;) {
      let got = 0;
      try {
        got = fs.readSync(0, line, 0, 1, null);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === "EAGAIN") continue;
        throw err;
      }
      if (got === 0 || line[0] === 10) break;
    }
  };
}
