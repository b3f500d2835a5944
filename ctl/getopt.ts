/**
 * A faithful emulation of glibc getopt_long() in its default (permuting) mode, because dmsetup's callers see
 * getopt's exact diagnostics (`<prog>: unrecognized option '--foo'` ...) and rely on its rules: options
 * anywhere on the line, `--` ends options, short options bundle, a long option may be abbreviated to any
 * unambiguous prefix. A generic CLI parser reproduces none of this, hence this module.
 */

export type ArgMode = "none" | "required";

export interface LongOption {
  readonly name: string;
  readonly arg: ArgMode;
  /** What the caller receives for this option (dmsetup maps -c and --columns to the same switch). */
  readonly key: string;
}

export interface ParsedOption {
  readonly key: string;
  /** The option as the user wrote it (for messages): "-o" or "--options". */
  readonly spelled: string;
  readonly value?: string;
}

export interface GetoptResult {
  /** Options in command-line order, up to (not including) the first error. */
  readonly options: ParsedOption[];
  /** Non-option arguments in order (everything after `--` included). */
  readonly operands: string[];
  /** getopt's own diagnostic (without trailing newline) when parsing stopped at a bad option. */
  readonly error?: string;
}

/**
 * Parse `argv` (without the program name) with a getopt short-option string ("ab:c") and a long-option
 * table. Parsing stops at the first error, as dmsetup does (it returns on the first '?').
 */
export function getoptLong(
  prog: string,
  argv: readonly string[],
  shortopts: string,
  longopts: readonly LongOption[],
  /** POSIXLY_CORRECT: the first operand ends the options (no permutation). */
  posix = false,
): GetoptResult {
  const shortArg = parseShortSpec(shortopts);
  const options: ParsedOption[] = [];
  const operands: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === "--") {
      operands.push(...argv.slice(i + 1));
      break;
    }
    if (a.startsWith("--")) {
      const body = a.slice(2);
      const eq = body.indexOf("=");
      const name = eq >= 0 ? body.slice(0, eq) : body;
      const found = matchLong(name, longopts);
      if (found.kind === "none") return { options, operands, error: `${prog}: unrecognized option '--${body}'` };
      if (found.kind === "ambiguous") {
        const poss = found.candidates.map((o) => ` '--${o.name}'`).join("");
        return { options, operands, error: `${prog}: option '--${body}' is ambiguous; possibilities:${poss}` };
      }
      const opt = found.option;
      if (opt.arg === "none") {
        if (eq >= 0) return { options, operands, error: `${prog}: option '--${opt.name}' doesn't allow an argument` };
        options.push({ key: opt.key, spelled: `--${opt.name}` });
      } else if (eq >= 0) {
        options.push({ key: opt.key, spelled: `--${opt.name}`, value: body.slice(eq + 1) });
      } else if (i + 1 < argv.length) {
        options.push({ key: opt.key, spelled: `--${opt.name}`, value: argv[++i]! });
      } else {
        return { options, operands, error: `${prog}: option '--${opt.name}' requires an argument` };
      }
      continue;
    }
    if (a.startsWith("-") && a.length > 1) {
      for (let j = 1; j < a.length; j++) {
        const c = a[j]!;
        const mode = shortArg.get(c);
        if (mode === undefined) return { options, operands, error: `${prog}: invalid option -- '${c}'` };
        if (mode === "none") {
          options.push({ key: c, spelled: `-${c}` });
          continue;
        }
        const rest = a.slice(j + 1);
        if (rest.length > 0) options.push({ key: c, spelled: `-${c}`, value: rest });
        else if (i + 1 < argv.length) options.push({ key: c, spelled: `-${c}`, value: argv[++i]! });
        else return { options, operands, error: `${prog}: option requires an argument -- '${c}'` };
        break;
      }
      continue;
    }
    if (posix) {
      operands.push(...argv.slice(i));
      break;
    }
    operands.push(a);
  }
  return { options, operands };
}

function parseShortSpec(spec: string): Map<string, ArgMode> {
  const m = new Map<string, ArgMode>();
  for (let i = 0; i < spec.length; i++) {
    const c = spec[i]!;
    if (c === ":") continue;
    m.set(c, spec[i + 1] === ":" ? "required" : "none");
  }
  return m;
}

type LongMatch = { kind: "none" } | { kind: "ambiguous"; candidates: LongOption[] } | { kind: "found"; option: LongOption };

/** Exact name wins; otherwise a unique prefix. Different options sharing a prefix are ambiguous. */
function matchLong(name: string, longopts: readonly LongOption[]): LongMatch {
  const exact = longopts.find((o) => o.name === name);
  if (exact) return { kind: "found", option: exact };
  const candidates = name.length === 0 ? [] : longopts.filter((o) => o.name.startsWith(name));
  if (candidates.length === 0) return { kind: "none" };
  const first = candidates[0]!;
  // glibc treats prefix matches that lead to the identical option (same key and argument mode) as one.
  if (candidates.every((o) => o.key === first.key && o.arg === first.arg)) return { kind: "found", option: first };
  return { kind: "ambiguous", candidates };
}
