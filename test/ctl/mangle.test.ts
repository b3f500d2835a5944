import { describe, expect, it } from "vitest";
import { MangleError, mangleString, manglingMode, nameForKernel, newNameForKernel, unmangleString, uuidForKernel } from "../../ctl/mangle.js";

const lines = (fn: () => unknown): string[] => {
  try {
    fn();
  } catch (e) {
    if (e instanceof MangleError) return e.lines;
    throw e;
  }
  throw new Error("expected a mangling error");
};

describe("name mangling (lvm2 name-mangling.sh matrix)", () => {
  it("auto: mangles blacklisted bytes, keeps whitelisted and already-mangled names", () => {
    expect(nameForKernel("a b", "auto")).toBe("a\\x20b");
    expect(nameForKernel("a\\x20b", "auto")).toBe("a\\x20b");
    expect(nameForKernel("abc#+-.:=@_XYZ019", "auto")).toBe("abc#+-.:=@_XYZ019");
    expect(nameForKernel("ä", "auto")).toBe("\\xc3\\xa4");
  });

  it("auto: rejects mixtures and double mangling", () => {
    expect(lines(() => nameForKernel("a b\\x20c", "auto"))).toEqual([
      'The name "a b\\x20c" contains mixed mangled and unmangled characters or it\'s already mangled improperly.',
      'Failed to mangle device name "a b\\x20c".',
    ]);
    expect(lines(() => nameForKernel("a\\x5cx20b", "auto"))).toEqual(['The name "a\\x5cx20b" seems to be mangled more than once. This is not allowed in auto mode.']);
  });

  it("hex: always mangles, including backslashes", () => {
    expect(nameForKernel("a\\x20b", "hex")).toBe("a\\x5cx20b");
    expect(nameForKernel("a b\\x20c", "hex")).toBe("a\\x20b\\x5cx20c");
  });

  it("none: passes bytes through", () => {
    expect(nameForKernel("a b", "none")).toBe("a b");
    expect(nameForKernel("a\\x5cx20b", "none")).toBe("a\\x5cx20b");
  });

  it("enforces the 127-byte name limit before mangling, and the mangled length after", () => {
    expect(nameForKernel("n".repeat(127), "auto")).toBe("n".repeat(127));
    expect(lines(() => nameForKernel("n".repeat(128), "auto"))).toEqual([`Name "${"n".repeat(128)}" too long.`]);
    const spaced = " ".repeat(40);
    expect(lines(() => nameForKernel(spaced, "auto"))).toEqual([`Mangled form of the name too long for "${spaced}".`, `Failed to mangle device name "${spaced}".`]);
  });

  it("uuid: 128 bytes fit, 129 do not", () => {
    expect(uuidForKernel("u".repeat(128), "auto")).toBe("u".repeat(128));
    const long = "u".repeat(129);
    expect(lines(() => uuidForKernel(long, "auto"))).toEqual([`Mangled form of the UUID too long for "${long}".`, `Failed to mangle device uuid "${long}".`]);
  });

  it("rename target checks", () => {
    expect(lines(() => newNameForKernel("x/y", "auto"))).toEqual(['Name "x/y" invalid. It contains "/".']);
    expect(lines(() => newNameForKernel("", "auto"))).toEqual(["Non empty new name is required."]);
    expect(lines(() => newNameForKernel("n".repeat(128), "auto"))).toEqual([`Name "${"n".repeat(128)}" too long`]);
  });

  it("unmangles for display, and flags raw blacklisted names in strict modes", () => {
    expect(unmangleString("a\\x20b", "name", "auto")).toEqual({ value: "a b" });
    expect(unmangleString("\\xc3\\xa4", "name", "auto")).toEqual({ value: "ä" });
    expect(unmangleString("a b", "name", "auto")).toEqual({ value: "a b", error: 'The name "a b" should be mangled but it contains blacklisted characters.' });
    expect(unmangleString("a b", "name", "none")).toEqual({ value: "a b" });
  });

  it("round-trips arbitrary byte strings", () => {
    for (const s of ["plain", "a b c", "tab\there", "quote'\"", "ünïcödé", "x\\y"]) {
      const m = mangleString(s, "name", 1024, "hex");
      expect(unmangleString(m, "name", "hex").value).toBe(s);
    }
  });

  it("takes the default mode from the environment", () => {
    expect(manglingMode(undefined, {})).toBe("auto");
    expect(manglingMode(undefined, { DM_DEFAULT_NAME_MANGLING_MODE: "none" })).toBe("none");
    expect(manglingMode("hex", { DM_DEFAULT_NAME_MANGLING_MODE: "none" })).toBe("hex");
  });
});
