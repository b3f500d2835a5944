/**
 * dmsetup's concise device format: `name,uuid,minor,flags,table[,table...][;next device...]` with `\`
 * quoting `,` `;` `\`. Parsed exactly as _create_concise() does, including its diagnostics.
 */

export interface ConciseDevice {
  name: string;
  uuid: string;
  minor: string;
  flags: string;
  /** Table lines joined with newlines (dmsetup turns the extra commas into line breaks). */
  table: string;
}

export type ConciseItem = { kind: "device"; device: ConciseDevice } | { kind: "error"; lines: string[] };

const isSpace = (c: string | undefined): boolean => c === " " || c === "\t" || c === "\n" || c === "\v" || c === "\f" || c === "\r";

/**
 * Parse a spec into devices in order; parsing stops at the first malformed entry, which becomes a final
 * error item (the devices before it are still created, as with dmsetup).
 */
export function parseConcise(spec: string): ConciseItem[] {
  const items: ConciseItem[] = [];
  let fields: (string | undefined)[] = [""];
  let f = 0;
  let pending = false; // characters (or separators) consumed for the current entry
  const parsedLine = (): string => {
    const show = (i: number): string => fields[i] ?? "(null)";
    return `Parsed ${f + 1} fields: name: ${show(0)} uuid: ${show(1)} minor: ${show(2)} flags: ${show(3)} table: ${show(4)}`;
  };
  const append = (ch: string): void => {
    fields[f] = (fields[f] ?? "") + ch;
    pending = true;
  };
  let i = 0;
  while (i < spec.length) {
    const c = spec[i]!;
    if (c === "\\") {
      i++;
      if (i >= spec.length) {
        items.push({ kind: "error", lines: ["Backslash must be followed by another character at end of string.", parsedLine()] });
        return items;
      }
      append(spec[i++]!);
      continue;
    }
    if (c === "," && f < 4) {
      i++;
      fields[++f] = "";
      pending = true;
      while (isSpace(spec[i])) i++;
      continue;
    }
    if (c === "," && f >= 4) {
      append("\n");
      i++;
      continue;
    }
    if (c === ";" || i + 1 === spec.length) {
      if (c !== ";") append(c);
      i++;
      if (f !== 4) {
        items.push({ kind: "error", lines: ["Five comma-separated fields are required for each device", parsedLine()] });
        return items;
      }
      items.push({ kind: "device", device: { name: fields[0]!, uuid: fields[1]!, minor: fields[2]!, flags: fields[3]!, table: fields[4]! } });
      fields = [""];
      f = 0;
      pending = false;
      while (isSpace(spec[i])) i++;
      continue;
    }
    append(c);
    i++;
  }
  if (pending) items.push({ kind: "error", lines: ["Incomplete entry: five comma-separated fields are required for each device", parsedLine()] });
  return items;
}

/** Quote `,` `;` `\` with a backslash (dmsetup's _print_string_quoted). */
export const quoteConcise = (s: string): string => s.replace(/[,;\\]/g, (m) => `\\${m}`);

export interface ConciseTarget {
  start: bigint;
  length: bigint;
  type: string;
  params: string;
}

/** One device in `table --concise` form (without the `;` separator). */
export function formatConciseDevice(name: string, uuid: string, minor: number, readOnly: boolean, targets: readonly ConciseTarget[]): string {
  let s = `${quoteConcise(name)},${quoteConcise(uuid)},${minor},${readOnly ? "ro" : "rw"}`;
  for (const t of targets) s += `,${t.start} ${t.length} ${t.type} ${quoteConcise(t.params)}`;
  return s;
}
