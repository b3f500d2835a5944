import { runCheck } from "./check.js";
import { runDump } from "./dump.js";
import { runInvalidate } from "./invalidate.js";
import { processIo, type ToolIo } from "./options.js";

/** `tsdm era <dump|invalidate|check> ...`: offline tools for dm-era metadata, compatible with era_* 0.9.0. */
const SUBS: Record<string, (argv: string[], io?: ToolIo) => Promise<number>> = {
  dump: runDump,
  invalidate: runInvalidate,
  check: runCheck,
};

export async function run(argv: string[], io: ToolIo = processIo()): Promise<number> {
  const [sub, ...rest] = argv;
  const fn = sub ? SUBS[sub] : undefined;
  if (!fn) {
    io.stderr.write(
      [
        "Usage: tsdm era <command> [options] {device|file}",
        "Commands:",
        "  dump        dump era metadata as XML (like era_dump)",
        "  invalidate  list blocks written since an era (like era_invalidate)",
        "  check       check era metadata (like era_check; --check-space-map also verifies reference counts)",
        "",
      ].join("\n"),
    );
    return sub === "-h" || sub === "--help" ? 0 : 1;
  }
  return fn(rest, io);
}
