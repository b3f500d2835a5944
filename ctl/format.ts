/**
 * dmsetup's plain-text outputs, byte for byte: the `info` block, `ls` lines, `deps` lines, `targets` lines,
 * `table`/`status` lines (with key hiding) and `version`.
 */

/** What the formatters need to know about a device (a subset of the API's DeviceInfo, names unmangled). */
export interface DeviceView {
  name: string;
  uuid: string;
  major: number;
  minor: number;
  suspended: boolean;
  readOnly: boolean;
  liveTable: boolean;
  inactiveTable: boolean;
  /** undefined with --noopencount (the kernel then does not count; the line is omitted). */
  openCount?: number;
  eventNr: number;
  targetCount: number;
  deferredRemove: boolean;
  /** undefined when unknown (the line is then omitted). */
  readAhead?: number;
}

/** The long `info` block, ending with an empty line. */
export function formatInfoBlock(d: DeviceView): string {
  const state = `${d.suspended ? "SUSPENDED" : "ACTIVE"}${d.readOnly ? " (READ-ONLY)" : ""}${d.deferredRemove ? " (DEFERRED REMOVE)" : ""}`;
  const tables =
    !d.liveTable && !d.inactiveTable ? "None" : `${d.liveTable ? "LIVE" : ""}${d.liveTable && d.inactiveTable ? " & " : ""}${d.inactiveTable ? "INACTIVE" : ""}`;
  let s = `Name:              ${d.name}\n`;
  s += `State:             ${state}\n`;
  if (d.readAhead !== undefined) s += `Read Ahead:        ${d.readAhead}\n`;
  s += `Tables present:    ${tables}\n`;
  if (d.openCount !== undefined) s += `Open count:        ${d.openCount}\n`;
  s += `Event number:      ${d.eventNr}\n`;
  s += `Major, minor:      ${d.major}, ${d.minor}\n`;
  s += `Number of targets: ${d.targetCount}\n`;
  if (d.uuid) s += `UUID: ${d.uuid}\n`;
  return `${s}\n`;
}

/** `ls`: `name<TAB>(maj:min)`, or `name<TAB>(label)` with -o blkdevname/devname. */
export const formatLsLine = (name: string, dev: { major: number; minor: number } | string): string =>
  typeof dev === "string" ? `${name}\t(${dev})\n` : `${name}\t(${dev.major}:${dev.minor})\n`;

/** `ls --target` (and `ls --exec -v`) use the old comma form. */
export const formatLsTargetLine = (name: string, major: number, minor: number): string => `${name}\t(${major}, ${minor})\n`;

/** `deps`: `N dependencies\t: (maj, min) ...` or with names ` (name)`. */
export function formatDepsLine(deps: ReadonlyArray<{ major: number; minor: number } | string>, prefix = ""): string {
  let s = `${prefix}${deps.length} dependencies\t:`;
  for (const d of deps) s += typeof d === "string" ? ` (${d})` : ` (${d.major}, ${d.minor})`;
  return `${s}\n`;
}

/** `targets` / `target-version`: `%-16s v%d.%d.%d`. */
export const formatTargetLine = (t: { name: string; major: number; minor: number; patch: number }): string =>
  `${t.name.padEnd(16)} v${t.major}.${t.minor}.${t.patch}\n`;

export const LIBRARY_VERSION = "1.02.185 (2022-05-18)";

export const formatLibraryVersion = (): string => `Library version:   ${LIBRARY_VERSION}\n`;
export const formatDriverVersion = (v: string): string => `Driver version:    ${v}\n`;

/** One `table`/`status` line: a space always follows the type, so empty params leave a trailing space. */
export const formatTargetText = (t: { start: bigint; length: bigint; type: string; params: string }): string =>
  `${t.start} ${t.length} ${t.type} ${t.params}`;

/** dmsetup's hide_key(): zero-fill the key after `<name><alg>:` (a bare `<name><alg>` has no key). */
function hideKey(params: string, name: string): string {
  const at = params.indexOf(name);
  if (at < 0) return params;
  let i = at + name.length;
  while (i < params.length && params[i] !== " " && params[i] !== ":") i++;
  if (i >= params.length || params[i] !== ":") return params;
  i++;
  let end = i;
  while (end < params.length && params[end] !== " ") end++;
  return params.slice(0, i) + "0".repeat(end - i) + params.slice(end);
}

/**
 * Key suppression in `table` output unless --showkeys: crypt's second parameter (unless a `:keyring`
 * reference), integrity's internal_hash/journal_crypt/journal_mac keys.
 */
export function hideKeys(type: string, params: string): string {
  if (type === "crypt") {
    let i = 0;
    while (i < params.length && params[i] !== " ") i++;
    if (i < params.length) i++;
    if (params[i] === ":") return params;
    let end = i;
    while (end < params.length && params[end] !== " ") end++;
    return params.slice(0, i) + "0".repeat(end - i) + params.slice(end);
  }
  if (type === "integrity") {
    let p = params;
    for (const k of ["internal_hash:", "journal_crypt:", "journal_mac:"]) p = hideKey(p, k);
    return p;
  }
  return params;
}
