import { describe, expect, it } from "vitest";
import { escapeParamsForKernel, parseTableLine, parseTableText, TableParseError } from "../../ctl/table-text.js";

const err = (fn: () => unknown): string => {
  try {
    fn();
  } catch (e) {
    if (e instanceof TableParseError) return e.line;
    throw e;
  }
  throw new Error("expected a parse error");
};

describe("table text", () => {
  it("parses start, length, type and params with internal spacing kept", () => {
    expect(parseTableLine("0 2048 linear /dev/loop0   0", "", 1)).toEqual({ start: 0n, length: 2048n, type: "linear", params: "/dev/loop0   0" });
    expect(parseTableLine("  0 8 zero  ", "", 1)).toEqual({ start: 0n, length: 8n, type: "zero", params: "" });
  });

  it("skips blank and comment lines but counts them", () => {
    const text = "# header\n\n   \n0 8 zero\n\t# indented comment\n8 8 error # trailing comment\n";
    expect(parseTableText(text, "on stdin", true)).toEqual([
      { start: 0n, length: 8n, type: "zero", params: "" },
      { start: 8n, length: 8n, type: "error", params: "" },
    ]);
    expect(err(() => parseTableText("# c\n\n0 8 zero\nbad line\n", "/t.table", true))).toBe("Invalid format on line 4 of table /t.table.");
  });

  it("cuts params at the first #", () => {
    expect(parseTableLine("0 8 linear /dev/x 0#c", "", 1)!.params).toBe("/dev/x 0");
  });

  it("names the source like dmsetup", () => {
    expect(err(() => parseTableText("garbage", "", false))).toBe("Invalid format on line 1 of table .");
    expect(err(() => parseTableText("garbage\n", "on stdin", true))).toBe("Invalid format on line 1 of table on stdin.");
    expect(err(() => parseTableText("0 8", "", false))).toBe("Invalid format on line 1 of table .");
    expect(err(() => parseTableText("0 8 zero\nx 8 zero", "", false))).toBe("Invalid format on line 2 of table .");
  });

  it("treats an empty table as no lines", () => {
    expect(parseTableText("", "on stdin", true)).toEqual([]);
    expect(parseTableText("", "", false)).toEqual([]);
    expect(parseTableText("\n\n# only comments\n", "f", true)).toEqual([]);
  });

  it("reads numbers the way sscanf %llu does", () => {
    expect(parseTableLine("+0 8 zero", "", 1)!.start).toBe(0n);
    expect(parseTableLine("0 -1 zero", "", 1)!.length).toBe((1n << 64n) - 1n);
    expect(parseTableLine("0 99999999999999999999999 zero", "", 1)!.length).toBe((1n << 64n) - 1n);
    // %llu stops at the first non-digit; %s then takes the rest of the word
    expect(parseTableLine("0 8zero x", "", 1)).toEqual({ start: 0n, length: 8n, type: "zero", params: "x" });
  });

  it("rejects type names of 16 bytes or more after parsing the whole table", () => {
    expect(err(() => parseTableText("0 8 aaaaaaaaaaaaaaaa", "", false))).toBe("Target type name aaaaaaaaaaaaaaaa is too long.");
    expect(parseTableText("0 8 aaaaaaaaaaaaaaa", "", false)[0]!.type).toBe("aaaaaaaaaaaaaaa");
    // a format error later in the table is reported first
    expect(err(() => parseTableText("0 8 aaaaaaaaaaaaaaaaaaaa\nbad", "", false))).toBe("Invalid format on line 2 of table .");
  });

  it("doubles backslashes for the kernel's argument splitter", () => {
    expect(escapeParamsForKernel("a\\b c")).toBe("a\\\\b c");
  });
});
