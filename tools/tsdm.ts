import { pathToFileURL } from "node:url";

/**
 * tsdm: the offline tools that go with the targets. Each subcommand lives in tools/<name>/cli.ts and exports
 * `run(argv: string[]): Promise<number>` (the exit code). Register a new one with one line in SUBCOMMANDS.
 */
type Runner = (argv: string[]) => Promise<number>;

const SUBCOMMANDS: Record<string, { summary: string; load: () => Promise<{ run: Runner }> }> = {};

export function register(name: string, summary: string, load: () => Promise<{ run: Runner }>): void {
  SUBCOMMANDS[name] = { summary, load };
}

// ---- registered subcommands (one line each), e.g.
// register("replay-log", "replay a dm-log-writes log", () => import("./replay-log/cli.js"));
register("replay-log", "replay, search or crash-check a dm-log-writes log", () => import("./replay-log/cli.js"));
register("bow-restore", "roll a device back to its dm-bow checkpoint (vold restore)", () => import("./bow-restore/cli.js"));
register("era", "dm-era metadata: dump, invalidate (blocks written since an era), check", () => import("./era/cli.js"));


function usage(): string {
  const names = Object.keys(SUBCOMMANDS).sort();
  const width = Math.max(12, ...names.map((n) => n.length));
  return [
    "Usage: tsdm <command> [options]",
    "",
    "Offline tools for tsdm targets:",
    ...names.map((n) => `  ${n.padEnd(width)}  ${SUBCOMMANDS[n]!.summary}`),
    "",
    "Run 'tsdm <command> --help' for a command's options.",
    "",
  ].join("\n");
}

export async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  if (!cmd || cmd === "-h" || cmd === "--help" || cmd === "help") {
    process.stderr.write(usage());
    return cmd ? 0 : 1;
  }
  // `tsdm era dump` and `tsdm era-dump` both work.
  const sub = SUBCOMMANDS[cmd] ?? (rest[0] !== undefined ? SUBCOMMANDS[`${cmd} ${rest[0]}`] : undefined);
  if (!sub) {
    process.stderr.write(`tsdm: unknown command '${cmd}'\n${usage()}`);
    return 1;
  }
  const args = SUBCOMMANDS[cmd] ? rest : rest.slice(1);
  const mod = await sub.load();
  return mod.run(args);
}

// Runnable directly from source too: node --import tsx tools/tsdm.ts <command> ...
if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  void main(process.argv.slice(2)).then((code) => (process.exitCode = code));
}
