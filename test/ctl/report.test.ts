import fs from "node:fs";
import { describe, expect, it } from "vitest";
import { fieldListing, Report, ReportSetupError, type ReportObject, type ReportOptions } from "../../ctl/report.js";
import { drawTree, parseTreeOptions, treeRoots, TreeOptionError, type TreeNode } from "../../ctl/tree.js";

const obj = (over: Partial<ReportObject>): ReportObject => ({
  name: "x",
  mangledName: over.name ?? "x",
  unmangledName: over.name ?? "x",
  uuid: "",
  mangledUuid: over.uuid ?? "",
  unmangledUuid: over.uuid ?? "",
  readAhead: 256,
  blkdevname: `dm-${over.minor ?? 0}`,
  diskAdded: true,
  major: 253,
  minor: 0,
  liveTable: true,
  inactiveTable: false,
  suspended: false,
  readOnly: false,
  openCount: 0,
  targetCount: 1,
  eventNr: 0,
  ...over,
});
const base: ReportOptions = { noheadings: false, nameprefixes: false, unquoted: false, rows: false };
const run = (opts: Partial<ReportOptions>, rows: ReportObject[]): string => {
  const r = Report.create({ ...base, ...opts });
  rows.forEach((o) => r.addRow(o));
  return r.output();
};
const two = [
  obj({ name: "flakey-test" }),
  obj({ name: "thin-pool", minor: 1, inactiveTable: true, suspended: true, openCount: 2, eventNr: 3, uuid: "TEST-thin-pool" }),
];

describe("info -c report", () => {
  it("default aligned output pads every column, the last one too", () => {
    expect(run({}, two)).toBe(
      "Name             Maj Min Stat Open Targ Event  UUID                            \n" +
        "flakey-test      253   0 L--w    0    1      0                                 \n" +
        "thin-pool        253   1 LIsw    2    1      3 TEST-thin-pool                  \n",
    );
  });

  it("widens columns for long values", () => {
    const out = run({ fields: "name,open" }, [obj({ name: "a-rather-long-device-name", openCount: 12345 })]);
    expect(out).toBe("Name                      Open \na-rather-long-device-name 12345\n");
  });

  it("--noheadings: unaligned, colon-separated", () => {
    expect(run({ noheadings: true }, two)).toBe("flakey-test:253:0:L--w:0:1:0:\nthin-pool:253:1:LIsw:2:1:3:TEST-thin-pool\n");
    expect(run({ noheadings: true, fields: "major,minor" }, [obj({ minor: 7 })])).toBe("253:7\n");
    expect(run({ noheadings: true, fields: "suspended,tables_loaded,readonly,devno" }, [obj({ suspended: true, readOnly: true, minor: 2 })])).toBe(
      "Suspended:Live:Read-only:253:2\n",
    );
  });

  it("+field extends the defaults; names are case-insensitive, underscores optional", () => {
    expect(run({ noheadings: true, fields: "+devno" }, [obj({})])).toBe("x:253:0:L--w:0:1:0::253:0\n");
    expect(run({ noheadings: true, fields: "NAME,TablesLoaded" }, [obj({})])).toBe("x:Live\n");
  });

  it("--separator keeps headings, unaligned", () => {
    expect(run({ separator: ";", fields: "name,open" }, [obj({})])).toBe("Name;Open\nx;0\n");
  });

  it("--nameprefixes with and without quotes", () => {
    expect(run({ noheadings: true, nameprefixes: true, fields: "name,open" }, [obj({})])).toBe("DM_NAME='x':DM_OPEN='0'\n");
    expect(run({ noheadings: true, nameprefixes: true, unquoted: true, separator: ";", fields: "name,open" }, [obj({})])).toBe("DM_NAME=x;DM_OPEN=0\n");
  });

  it("--rows prints one line per field", () => {
    expect(run({ rows: true, noheadings: true, fields: "name,mangled_name" }, [obj({ name: "a b", mangledName: "a\\x20b" })])).toBe("a b\na\\x20b\n");
  });

  it("sorts with -O, descending with -", () => {
    const rows = [obj({ name: "b", openCount: 1 }), obj({ name: "a", openCount: 1 }), obj({ name: "c", openCount: 0 })];
    expect(run({ noheadings: true, fields: "name", sort: "open,name" }, rows)).toBe("c\na\nb\n");
    expect(run({ noheadings: true, fields: "name", sort: "-name" }, rows)).toBe("c\nb\na\n");
  });

  it("prints nothing without rows", () => {
    expect(run({}, [])).toBe("");
  });

  // The listing as the real dmsetup 1.02.185 prints it (captured from /usr/sbin/dmsetup info -c -o bogus; the
  // dmsetup oracle, test/ctl/kernel, compares it too): <prefix>_all lines, the stats sections, ids padded to
  // the longest of all, and a one-space line closing every section including the last.
  const LISTING = fs.readFileSync(new URL("fixtures/field-listing.dmsetup-1.02.185.txt", import.meta.url), "utf8");

  it("unknown field: listing then the error; help: listing only (byte for byte as dmsetup 1.02.185)", () => {
    try {
      Report.create({ ...base, fields: "name,bogus" });
      throw new Error("expected failure");
    } catch (e) {
      const err = e as ReportSetupError;
      expect(err.helpOnly).toBe(false);
      expect(err.stderr).toBe(`${LISTING}Unrecognised field: bogus\n`);
    }
    try {
      Report.create({ ...base, sort: "bogus" });
      throw new Error("expected failure");
    } catch (e) {
      expect((e as ReportSetupError).stderr).toBe(`${LISTING}dm_report: Unrecognised field: bogus\n`);
    }
    try {
      Report.create({ ...base, fields: "help" });
      throw new Error("expected failure");
    } catch (e) {
      expect((e as ReportSetupError).helpOnly).toBe(true);
      expect((e as ReportSetupError).stderr).toBe(LISTING);
    }
    expect(fieldListing()).toBe(LISTING);
  });
});

describe("ls --tree", () => {
  const node = (name: string, major: number, minor: number): TreeNode => ({ name, major, minor, uses: [], usedBy: [] });
  const link = (p: TreeNode, c: TreeNode) => {
    p.uses.push(c);
    c.usedBy.push(p);
  };
  const build = () => {
    const luks = node("luks-root", 253, 2);
    const lv = node("vg-root", 253, 1);
    const disk = node("", 8, 3);
    const other = node("other", 253, 0);
    link(luks, lv);
    link(lv, disk);
    return [other, lv, luks, disk];
  };
  const opts = (spec?: string) => parseTreeOptions(spec, { utf: false, width: 80 });

  it("draws dmsetup's ascii tree", () => {
    const nodes = build();
    expect(drawTree(treeRoots(nodes, false), opts())).toBe("other (253:0)\nluks-root (253:2)\n `-vg-root (253:1)\n    `- (8:3)\n");
  });

  it("draws siblings and the inverted tree", () => {
    const a = node("a", 253, 0);
    const b = node("b", 253, 1);
    const c = node("c", 253, 2);
    link(a, b);
    link(a, c);
    expect(drawTree(treeRoots([a, b, c], false), opts())).toBe("a (253:0)\n |-b (253:1)\n `-c (253:2)\n");
    expect(drawTree(treeRoots([a, b, c], true), opts("inverted"))).toBe("b (253:1)\n `-a (253:0)\nc (253:2)\n `-a (253:0)\n");
  });

  it("truncates at the width unless notrunc", () => {
    const long = node("n".repeat(100), 253, 0);
    const out = drawTree([long], opts());
    // pstree-style: the column counter starts at 1, so 79 characters fit before the ellipsis
    expect(out).toBe(`${"n".repeat(79)}...\n`);
    expect(drawTree([long], opts("notrunc"))).toBe(`${"n".repeat(100)} (253:0)\n`);
  });

  it("options: prefixes, attributes, errors", () => {
    const a = node("a", 253, 0);
    a.info = { suspended: true, readOnly: false, openCount: 1, uuid: "U" };
    expect(drawTree([a], opts("act,rw,open,uuid"))).toBe("a (253:0) [SUSPENDED, RW, 1, U]\n");
    expect(drawTree([a], opts("nodevice"))).toBe("a\n");
    expect(() => opts("bogus,rw")).toThrow(new TreeOptionError("Tree options not recognised: bogus,rw."));
  });
});
