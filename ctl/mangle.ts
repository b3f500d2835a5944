/**
 * libdevmapper's name/uuid mangling (libdm-common.c): bytes outside a udev-safe whitelist travel to the
 * kernel as `\xNN`; names and uuids are mangled on input and unmangled on output. The daemon stores what the
 * kernel would store (the mangled form).
 */

export type ManglingMode = "none" | "auto" | "hex";

/** DM_NAME_LEN and DM_UUID_LEN (with the terminating NUL). */
export const DM_NAME_LEN = 128;
export const DM_UUID_LEN = 129;

/** A failure with the exact lines libdm logs. */
export class MangleError extends Error {
  constructor(readonly lines: string[]) {
    super(lines.join("\n"));
  }
}

const isWhitelisted = (b: number): boolean =>
  (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5a) || (b >= 0x61 && b <= 0x7a) || "#+-.:=@_".includes(String.fromCharCode(b));

const hex2 = (b: number): string => b.toString(16).padStart(2, "0");

/**
 * mangle_string(): returns the mangled string, or throws MangleError. `what` is "name" or "UUID";
 * `bufLen` the kernel field size. Mode none is treated as auto here, as libdm does (callers skip it).
 */
export function mangleString(str: string, what: string, bufLen: number, mode: ManglingMode): string {
  const b = Buffer.from(str, "utf8");
  const m = mode === "none" ? "auto" : mode;
  const out: number[] = [];
  let need: -1 | 0 | 1 = -1;
  const mixed = (): never => {
    throw new MangleError([`The ${what} "${str}" contains mixed mangled and unmangled characters or it's already mangled improperly.`]);
  };
  const tooLong = (): never => {
    throw new MangleError([`Mangled form of the ${what} too long for "${str}".`]);
  };
  let j = 0;
  for (let i = 0; i < b.length; i++) {
    const c = b[i]!;
    if (m === "auto" && c === 0x5c && b[i + 1] === 0x78) {
      if (b.length - i < 4 || need === 1) mixed();
      if (bufLen - j < 4) tooLong();
      out.push(...b.subarray(i, i + 4));
      i += 3;
      j += 4;
      need = 0;
      continue;
    }
    if (isWhitelisted(c)) {
      if (bufLen - j < 1) tooLong();
      out.push(c);
      j++;
    } else {
      if (m !== "hex" && need === 0) mixed();
      if (bufLen - j < 4) tooLong();
      out.push(...Buffer.from(`\\x${hex2(c)}`));
      j += 4;
      need = 1;
    }
  }
  if (bufLen - j < 1) tooLong();
  return Buffer.from(out).toString("utf8");
}

/**
 * unmangle_string(): `\xNN` back to bytes. In auto/hex mode a raw blacklisted byte is an error (the string
 * should have been mangled); the caller then shows the string as it is.
 */
export function unmangleString(str: string, what: string, mode: ManglingMode): { value: string; error?: string } {
  const b = Buffer.from(str, "utf8");
  const strict = mode !== "none";
  const out: number[] = [];
  for (let i = 0; i < b.length; i++) {
    const c = b[i]!;
    if (strict && !(isWhitelisted(c) || c === 0x5c)) {
      return { value: str, error: `The ${what} "${str}" should be mangled but it contains blacklisted characters.` };
    }
    if (c === 0x5c && b[i + 1] === 0x78) {
      const h = /^[0-9a-fA-F]{1,2}/.exec(b.subarray(i + 2, i + 4).toString("latin1"));
      if (!h) break;
      out.push(parseInt(h[0], 16));
      i += 1 + h[0].length;
      continue;
    }
    out.push(c);
  }
  return { value: Buffer.from(out).toString("utf8") };
}

/** The mode in force: --manglename, else DM_DEFAULT_NAME_MANGLING_MODE, else auto. */
export function manglingMode(flag: ManglingMode | undefined, env: NodeJS.ProcessEnv): ManglingMode {
  if (flag) return flag;
  const e = env.DM_DEFAULT_NAME_MANGLING_MODE?.toLowerCase();
  return e === "none" || e === "hex" || e === "auto" ? e : "auto";
}

/** dm_task_set_name() for a plain name (no `/`): length check, then mangling. Returns what goes to the kernel. */
export function nameForKernel(name: string, mode: ManglingMode): string {
  if (Buffer.byteLength(name) >= DM_NAME_LEN) throw new MangleError([`Name "${name}" too long.`]);
  if (mode === "auto" && name.includes("\\x5cx")) {
    throw new MangleError([`The name "${name}" seems to be mangled more than once. This is not allowed in auto mode.`]);
  }
  if (mode === "none") return name;
  try {
    return mangleString(name, "name", DM_NAME_LEN, mode);
  } catch (e) {
    if (e instanceof MangleError) throw new MangleError([...e.lines, `Failed to mangle device name "${name}".`]);
    throw e;
  }
}

/** dm_task_set_uuid(). */
export function uuidForKernel(uuid: string, mode: ManglingMode): string {
  if (mode === "auto" && uuid.includes("\\x5cx")) {
    throw new MangleError([`The UUID "${uuid}" seems to be mangled more than once. This is not allowed in auto mode.`]);
  }
  if (mode === "none") return uuid;
  try {
    return mangleString(uuid, "UUID", DM_UUID_LEN, mode);
  } catch (e) {
    if (e instanceof MangleError) throw new MangleError([...e.lines, `Failed to mangle device uuid "${uuid}".`]);
    throw e;
  }
}

/** dm_task_set_newname() checks for rename (note: no period after "too long", as in libdm). */
export function newNameForKernel(name: string, mode: ManglingMode): string {
  if (name.includes("/")) throw new MangleError([`Name "${name}" invalid. It contains "/".`]);
  if (Buffer.byteLength(name) >= DM_NAME_LEN) throw new MangleError([`Name "${name}" too long`]);
  if (!name) throw new MangleError(["Non empty new name is required."]);
  if (mode === "auto" && name.includes("\\x5cx")) {
    throw new MangleError([`The new name "${name}" seems to be mangled more than once. This is not allowed in auto mode.`]);
  }
  if (mode === "none") return name;
  try {
    return mangleString(name, "new name", DM_NAME_LEN, mode);
  } catch (e) {
    if (e instanceof MangleError) throw new MangleError([...e.lines, `Failed to mangle new device name "${name}"`]);
    throw e;
  }
}

/** dm_task_set_newuuid(). */
export function newUuidForKernel(uuid: string, mode: ManglingMode): string {
  if (Buffer.byteLength(uuid) >= DM_UUID_LEN) throw new MangleError([`Uuid "${uuid}" too long`]);
  if (mode === "auto" && uuid.includes("\\x5cx")) {
    throw new MangleError([`The new UUID "${uuid}" seems to be mangled more than once. This is not allowed in auto mode.`]);
  }
  if (mode === "none") return uuid;
  try {
    return mangleString(uuid, "new UUID", DM_UUID_LEN, mode);
  } catch (e) {
    if (e instanceof MangleError) throw new MangleError([...e.lines, `Failed to mangle new device UUID "${uuid}"`]);
    throw e;
  }
}
