/**
 * The kernel's dm_split_args(): table params and messages are split on white space; a backslash makes the
 * next character literal (so "a\ b" is one argument "a b").
 */
export function splitArgs(input: string): string[] {
  const out: string[] = [];
  let cur = "";
  let inArg = false;
  for (let i = 0; i < input.length; i++) {
    const c = input[i]!;
    if (c === "\\" && i + 1 < input.length) {
      cur += input[++i];
      inArg = true;
    } else if (c === " " || c === "\t" || c === "\n" || c === "\r" || c === "\v" || c === "\f") {
      if (inArg) out.push(cur);
      cur = "";
      inArg = false;
    } else {
      cur += c;
      inArg = true;
    }
  }
  if (inArg) out.push(cur);
  return out;
}
