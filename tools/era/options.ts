import fs from "node:fs";
/** A small getopt_long: `--name`, `--name=value`, `--name value`, `-x`, `-x value`; stops at `--`. */
export interface OptSpec {
  readonly [name: string]: { readonly short?: string; readonly arg: boolean };
}

export type Parsed = { opts: Map<string, string | true>; positional: string[] } | { error: string };

export function parseOptions(argv: readonly string[], spec: OptSpec): Parsed {
  const opts = new Map<string, string | true>();
  const positional: string[] = [];
  const byShort = new Map(Object.entries(spec).filter(([, s]) => s.short).map(([n, s]) => [s.short!, n] as const));
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === "--") {
      positional.push(...argv.slice(i + 1));
      break;
    }
    let name: string | undefined;
    let inline: string | undefined;
    if (a.startsWith("--")) {
      const eq = a.indexOf("=");
      name = eq >= 0 ? a.slice(2, eq) : a.slice(2);
      inline = eq >= 0 ? a.slice(eq + 1) : undefined;
      if (!spec[name]) return { error: `unrecognized option '${a}'` };
    } else if (a.startsWith("-") && a.length > 1) {
      name = byShort.get(a[1]!);
      if (!name) return { error: `invalid option -- '${a[1]}'` };
      inline = a.length > 2 ? a.slice(2) : undefined;
    } else {
      positional.push(a);
      continue;
    }
    if (spec[name]!.arg) {
      const v = inline ?? argv[++i];
      if (v === undefined) return { error: `option '${a}' requires an argument` };
      opts.set(name, v);
    } else opts.set(name, true);
  }
  return { opts, positional };
}

/**
 * What every era tool does first, as the thin-provisioning-tools do: parse its options (always with -h/--help
 * and -V/--version), answer help and version, and require the metadata path. Returns the exit code when the
 * tool is done already, else the parsed options and the path.
 */
export function toolPrelude(
  tool: string,
  usage: string,
  argv: readonly string[],
  spec: OptSpec,
  streams: ToolIo,
): number | { opts: Map<string, string | true>; path: string } {
  const p = parseOptions(argv, { help: { short: "h", arg: false }, version: { short: "V", arg: false }, ...spec });
  if ("error" in p) {
    streams.stderr.write(`${tool}: ${p.error}\n${usage}`);
    return 1;
  }
  if (p.opts.has("help")) {
    streams.stdout.write(usage);
    return 0;
  }
  if (p.opts.has("version")) {
    streams.stdout.write(`${VERSION}\n`);
    return 0;
  }
  const path = p.positional[0];
  if (!path) {
    streams.stderr.write(`No input file provided.\n${usage}`);
    return 1;
  }
  return { opts: p.opts, path };
}

/**
 * Buffered output for millions of lines, honouring back-pressure (a pipe to stdout may be non-blocking, where
 * fs.writeSync would fail with EAGAIN). `line` returns true when the caller should `await flush()`.
 */
export class LineWriter {
  private parts: string[] = [];
  private size = 0;
  constructor(
    private readonly out: NodeJS.WritableStream,
    /** A file stream this writer opened: ended (and waited for) by end(). */
    private readonly owned = false,
  ) {}
  line(s: string): boolean {
    this.parts.push(s, "\n");
    this.size += s.length + 1;
    return this.size > 1 << 20;
  }
  async flush(): Promise<void> {
    if (!this.parts.length) return;
    const chunk = this.parts.join("");
    this.parts = [];
    this.size = 0;
    if (!this.out.write(chunk)) await new Promise<void>((resolve) => this.out.once("drain", () => resolve()));
  }
  /** Flush and wait until a file stream is closed (no-op for stdout). */
  async end(): Promise<void> {
    await this.flush();
    if (this.owned) await new Promise<void>((resolve) => this.out.end(() => resolve()));
  }
}

export const VERSION = "0.9.0";

/**
 * `-o FILE`; no -o, or `-o -`, is stdout (0.9.0's STDOUT_PATH). The file is opened here, so a path that cannot
 * be created is an error the caller reports (0.9.0 ignores it and exits 0 having written nothing).
 */
export function outputWriter(output: string | true | undefined, streams: ToolIo): LineWriter {
  if (typeof output !== "string" || output === "-") return new LineWriter(streams.stdout);
  return new LineWriter(fs.createWriteStream(output, { fd: fs.openSync(output, "w") }), true);
}

/** Where a tool writes: the process's streams, or others (tests run the tools in-process). */
export interface ToolIo {
  readonly stdout: NodeJS.WritableStream;
  readonly stderr: NodeJS.WritableStream;
}
export const processIo = (): ToolIo => ({ stdout: process.stdout, stderr: process.stderr });
