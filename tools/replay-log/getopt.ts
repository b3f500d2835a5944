/**
 * A getopt_long work-alike, so scripts written for the C replay-log parse the same way: `--name value`,
 * `--name=value`, unambiguous prefixes (`--num` for `--num-entries`), an exact name beating a longer one that
 * shares its prefix, bundled short flags (`-vv`) and `--` ending the options.
 */
export interface LongOption {
  readonly name: string;
  readonly hasArg: boolean;
  /** Short alias (a single letter), if any. */
  readonly short?: string;
}

export interface ParsedOption {
  readonly name: string;
  readonly value?: string;
}

export class GetoptError extends Error {
  override readonly name = "GetoptError";
}

export function getoptLong(argv: readonly string[], options: readonly LongOption[]): { opts: ParsedOption[]; operands: string[] } {
  const opts: ParsedOption[] = [];
  const operands: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === "--") {
      operands.push(...argv.slice(i + 1));
      break;
    }
    if (arg.startsWith("--")) {
      const eq = arg.indexOf("=");
      const given = arg.slice(2, eq < 0 ? undefined : eq);
      const opt = resolveLong(given, options);
      if (opt.hasArg) {
        if (eq >= 0) opts.push({ name: opt.name, value: arg.slice(eq + 1) });
        else if (i + 1 < argv.length) opts.push({ name: opt.name, value: argv[++i]! });
        else throw new GetoptError(`option '--${opt.name}' requires an argument`);
      } else {
        if (eq >= 0) throw new GetoptError(`option '--${opt.name}' doesn't allow an argument`);
        opts.push({ name: opt.name });
      }
      continue;
    }
    if (arg.startsWith("-") && arg.length > 1) {
      for (let j = 1; j < arg.length; j++) {
        const opt = options.find((o) => o.short === arg[j]);
        if (!opt) throw new GetoptError(`invalid option -- '${arg[j]}'`);
        if (!opt.hasArg) {
          opts.push({ name: opt.name });
          continue;
        }
        const rest = arg.slice(j + 1);
        if (rest) opts.push({ name: opt.name, value: rest });
        else if (i + 1 < argv.length) opts.push({ name: opt.name, value: argv[++i]! });
        else throw new GetoptError(`option requires an argument -- '${arg[j]}'`);
        break;
      }
      continue;
    }
    operands.push(arg);
  }
  return { opts, operands };
}

function resolveLong(given: string, options: readonly LongOption[]): LongOption {
  const exact = options.find((o) => o.name === given);
  if (exact) return exact;
  const matches = given.length > 0 ? options.filter((o) => o.name.startsWith(given)) : [];
  if (matches.length === 1) return matches[0]!;
  if (matches.length > 1) {
    throw new GetoptError(`option '--${given}' is ambiguous; possibilities: ${matches.map((m) => `'--${m.name}'`).join(" ")}`);
  }
  throw new GetoptError(`unrecognized option '--${given}'`);
}

/** strtoull(text, &end, 0) accepting the whole string: decimal, 0x hex or 0-prefixed octal; no sign, not empty. */
export function parseCUnsigned(text: string): bigint | undefined {
  let digits: string;
  let radix: number;
  if (/^0[xX][0-9a-fA-F]+$/.test(text)) {
    digits = text.slice(2);
    radix = 16;
  } else if (/^0[0-7]*$/.test(text)) {
    digits = text;
    radix = 8;
  } else if (/^[1-9][0-9]*$/.test(text)) {
    digits = text;
    radix = 10;
  } else return undefined;
  let n = 0n;
  for (const c of digits) n = n * BigInt(radix) + BigInt(parseInt(c, radix));
  return n <= 0xffffffffffffffffn ? n : undefined;
}
