/**
 * Table text as dmsetup reads it (_parse_line/_parse_table_lines/_parse_file in dmsetup.c): one target per
 * line, `<start> <length> <type> [<params>]`, blank lines and `#` lines skipped, everything from the first
 * `#` in the params dropped. The lines go to the daemon as TableLine messages.
 */

/** DM_MAX_TYPE_NAME: a target type name must be shorter than this. */
export const DM_MAX_TYPE_NAME = 16;

export interface TableLineText {
  start: bigint;
  length: bigint;
  type: string;
  /** Params as the user wrote them (internal spacing kept). */
  params: string;
}

export class TableParseError extends Error {
  constructor(readonly line: string) {
    super(line);
  }
}

const U64_MAX = (1n << 64n) - 1n;
const isSpace = (c: string | undefined): boolean => c === " " || c === "\t" || c === "\n" || c === "\v" || c === "\f" || c === "\r";

/** sscanf %llu: skip white space, optional sign, at least one digit; negative values wrap, overflow saturates. */
function scanU64(s: string, pos: number): { value: bigint; end: number } | undefined {
  let i = pos;
  while (isSpace(s[i])) i++;
  let neg = false;
  if (s[i] === "+" || s[i] === "-") neg = s[i++] === "-";
  const startDigits = i;
  while (i < s.length && s[i]! >= "0" && s[i]! <= "9") i++;
  if (i === startDigits) return undefined;
  let v = BigInt(s.slice(startDigits, i));
  if (v > U64_MAX) v = U64_MAX;
  else if (neg) v = (U64_MAX + 1n - v) & U64_MAX;
  return { value: v, end: i };
}

/** sscanf %s: skip white space, then a run of non-space characters. */
function scanWord(s: string, pos: number): { value: string; end: number } | undefined {
  let i = pos;
  while (isSpace(s[i])) i++;
  const start = i;
  while (i < s.length && !isSpace(s[i])) i++;
  return i === start ? undefined : { value: s.slice(start, i), end: i };
}

/** Trim like dmsetup (C isspace on both ends). */
function trim(s: string): string {
  let a = 0;
  let b = s.length;
  while (a < b && isSpace(s[a])) a++;
  while (b > a && isSpace(s[b - 1])) b--;
  return s.slice(a, b);
}

/**
 * One line: undefined for blank/comment lines, else the target. `src` is how dmsetup names the source in its
 * error: the file path, "on stdin", or "" for --table.
 */
export function parseTableLine(raw: string, src: string, lineNo: number): TableLineText | undefined {
  const line = trim(raw);
  if (line === "" || line.startsWith("#")) return undefined;
  const bad = (): never => {
    throw new TableParseError(`Invalid format on line ${lineNo} of table ${src}.`);
  };
  const start = scanU64(line, 0) ?? bad();
  const length = scanU64(line, start.end) ?? bad();
  const type = scanWord(line, length.end) ?? bad();
  let p = type.end;
  while (isSpace(line[p])) p++;
  let params = line.slice(p);
  const hash = params.indexOf("#");
  if (hash >= 0) params = params.slice(0, hash);
  return { start: start.value, length: length.value, type: type.value, params };
}

/**
 * A whole table. `--table` text is split on newlines (so `a\nb` is two lines); a file or stdin likewise
 * (a final newline does not start another line).
 */
export function parseTableText(text: string, src: string, fromFile: boolean): TableLineText[] {
  const lines = text.split("\n");
  if (fromFile && lines.length > 0 && lines[lines.length - 1] === "") lines.pop();
  const out: TableLineText[] = [];
  lines.forEach((l, i) => {
    const t = parseTableLine(l, src, i + 1);
    if (t) out.push(t);
  });
  checkTypeNames(out);
  return out;
}

/** libdm checks type names only when it builds the ioctl, i.e. after the whole table parsed. */
export function checkTypeNames(lines: readonly TableLineText[]): void {
  for (const l of lines) {
    if (Buffer.byteLength(l.type) >= DM_MAX_TYPE_NAME) throw new TableParseError(`Target type name ${l.type} is too long.`);
  }
}

/** libdm doubles backslashes so that the kernel's argument splitter passes them through literally. */
export const escapeParamsForKernel = (params: string): string => params.replace(/\\/g, "\\\\");
