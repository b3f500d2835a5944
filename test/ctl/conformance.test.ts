/**
 * dmsetup conformance of tsdmsetup against a real tsdmd (the checklist of specs/dmsetup.md §8): exit status,
 * stdout and stderr compared byte for byte.
 */
import fs from "node:fs";
import path from "node:path";
import { Readable, Writable } from "node:stream";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { main } from "../../ctl/tsdmsetup.js";
import { startDaemon, type RunOptions, type RunResult, type TestDaemon } from "../helpers/daemon.js";

let d: TestDaemon;

class Capture extends Writable {
  text = "";
  override _write(chunk: Buffer | string, _enc: BufferEncoding, cb: () => void): void {
    this.text += chunk.toString();
    cb();
  }
}

/**
 * Run tsdmsetup's main() in this process against the real daemon (a node start per call would make the
 * suite crawl on a small machine); the spawned binary is exercised separately below.
 */
async function ts(args: string[], opts: RunOptions = {}): Promise<RunResult> {
  const stdout = new Capture();
  const stderr = new Capture();
  const stdin = Readable.from(opts.input === undefined ? [] : [Buffer.from(opts.input)]);
  const env = { ...process.env, TSDM_SOCKET: d.socket, DM_DEV_DIR: d.devDir, ...opts.env };
  const code = await main(args, { stdin, stdout, stderr, env, prog: "tsdmsetup" });
  return { code, stdout: stdout.text, stderr: stderr.text };
}

/** Expect success with exactly this stdout and nothing on stderr. */
async function ok(args: string[], stdout = "", opts?: RunOptions): Promise<void> {
  const r = await ts(args, opts);
  expect({ args, ...r }).toEqual({ args, code: 0, stdout, stderr: "" });
}

/** Expect failure (exit 1) with exactly these stderr lines and this stdout. */
async function fails(args: string[], stderrLines: string[], stdout = "", opts?: RunOptions): Promise<void> {
  const r = await ts(args, opts);
  expect({ args, ...r }).toEqual({ args, code: 1, stdout, stderr: stderrLines.map((l) => `${l}\n`).join("") });
}

const USAGE_START = "Usage:\n\ndmsetup\n        [--version] [-h|--help [-c|-C|--columns]]\n";

beforeAll(async () => {
  d = await startDaemon();
});
afterAll(async () => {
  await d?.stop();
  d?.cleanup();
});
afterEach(async () => {
  // Top-down removal of whatever a test left behind (stacked devices hold their lower devices open).
  for (let i = 0; i < 3; i++) {
    const r = await ts(["ls"]);
    if (r.stdout === "No devices found\n") return;
    await ts(["remove_all"]);
  }
});

describe("the installed binary", () => {
  it("runs as a process: exit codes, streams, stdin tables", async () => {
    expect(await d.tsdmsetup(["create", "bin1"], { input: "0 8 zero\n" })).toEqual({ code: 0, stdout: "", stderr: "" });
    expect(await d.tsdmsetup(["table", "bin1"])).toEqual({ code: 0, stdout: "0 8 zero \n", stderr: "" });
    const bad = await d.tsdmsetup(["--bogus"]);
    expect(bad).toEqual({ code: 1, stdout: "", stderr: "tsdmsetup: unrecognized option '--bogus'\nCouldn't process command line.\n" });
    const missing = await d.tsdmsetup(["remove", "bin1", "bin2"]);
    expect(missing).toEqual({ code: 1, stdout: "", stderr: "device-mapper: remove ioctl on bin2  failed: No such device or address\nCommand failed.\n" });
  });
});

describe("command line (items 1-5)", () => {
  it("no arguments: usage on stderr, exit 1; help forms exit 0", async () => {
    const none = await ts([]);
    expect(none.code).toBe(1);
    expect(none.stdout).toBe("");
    expect(none.stderr.startsWith(USAGE_START)).toBe(true);
    expect(none.stderr).toContain("\tcreate <dev_name>\n\t    [-j|--major <major> -m|--minor <minor>]\n");
    expect(none.stderr.endsWith("blkdevname, [no]device, active, open, rw and uuid.\n\n")).toBe(true);
    for (const args of [["--help"], ["-h"], ["help"], ["info", "--help"]]) {
      const r = await ts(args);
      expect({ args, code: r.code, stdout: r.stdout, stderr: r.stderr }).toEqual({ args, code: 0, stdout: "", stderr: none.stderr });
    }
    const cols = await ts(["help", "-c"]);
    expect(cols.code).toBe(0);
    expect(cols.stderr).toContain("Mapped Device Information Fields\n");
  });

  it("unknown command and wrong argument counts", async () => {
    const usage = (await ts([])).stderr;
    const unknown = await ts(["bogus"]);
    expect(unknown).toEqual({ code: 1, stdout: "", stderr: `Unknown command.\n${usage}` });
    for (const args of [["message", "a"], ["rename", "a", "b", "c"], ["setgeometry", "a", "1", "2", "3"], ["load", "a", "b", "c"], ["targets", "x"], ["ls", "x"]]) {
      const r = await ts(args);
      expect({ args, ...r }).toEqual({ args, code: 1, stdout: "", stderr: `Incorrect number of arguments.\n${usage}` });
    }
  });

  it("getopt errors", async () => {
    await fails(["--foo"], ["tsdmsetup: unrecognized option '--foo'", "Couldn't process command line."]);
    await fails(["-Z"], ["tsdmsetup: invalid option -- 'Z'", "Couldn't process command line."]);
    await fails(["ls", "--table"], ["tsdmsetup: option '--table' requires an argument", "Couldn't process command line."]);
    await fails(
      ["--no"],
      [
        "tsdmsetup: option '--no' is ambiguous; possibilities: '--noflush' '--nogroup' '--noheadings' '--nolockfs' '--nomonitor' '--noopencount' '--nosuffix' '--notable' '--notimesuffix' '--noudevrules' '--noudevsync'",
        "Couldn't process command line.",
      ],
    );
  });

  it("prefixes, options after operands, --", async () => {
    await ok(["create", "p1", "--table", "0 8 zero"]);
    await ok(["info", "-c", "--nohead", "-o", "name", "p1"], "p1\n");
    await ok(["--mangle", "none", "info", "-c", "--nohead", "-o", "name", "p1"], "p1\n");
    await ok(["table", "p1", "--showkeys"], "0 8 zero \n");
    await ok(["remove", "--noudevsync", "--", "p1"]);
  });

  it("option conflicts (item 5)", async () => {
    await fails(["create", "x", "--table", "0 8 zero", "--notable"], ["--table and --notable are incompatible.", "Couldn't process command line."]);
    await fails(["info", "-j", "1"], ["Please specify both major number and minor number.", "Couldn't process command line."]);
    await fails(["resume", "x", "--addnodeonresume", "--addnodeoncreate"], ["--addnodeonresume and --addnodeoncreate are incompatible.", "Couldn't process command line."]);
    await fails(["--manglename", "bad", "ls"], ["Unknown name mangling mode.", "Couldn't process command line."]);
    await fails(["ls", "-o", "bogus"], ["Option not recognised: bogus.", "Couldn't process command line."]);
    await fails(["ls", "--tree", "-o", "ascii,bogus"], ["Tree options not recognised: bogus.", "Couldn't process command line."]);
    await ok(["create", "n5", "--table", "0 8 zero"]);
    await fails(["load", "n5", "--notable"], ["--notable only available when creating new device.", "Command failed."]);
  });
});

describe("create and tables (items 6-13)", () => {
  it("create --table, then ls (item 6)", async () => {
    await ok(["create", "c6", "--table", "0 8 zero"]);
    await ok(["ls"], "c6\t(253:0)\n");
  });

  it("the same table from --table, a file and stdin, with comments and blank lines (item 7)", async () => {
    const text = "# a comment\n\n  0 8 zero   \n8 16 error # trailing comment\n\n";
    const file = path.join(d.dir, "t7.table");
    fs.writeFileSync(file, text);
    await ok(["create", "t7a", "--table", text]);
    await ok(["create", "t7b", file]);
    await ok(["create", "t7c"], "", { input: text });
    for (const n of ["t7a", "t7b", "t7c"]) await ok(["table", n], "0 8 zero \n8 16 error \n");
    await ok(["table"], "t7a: 0 8 zero \nt7a: 8 16 error \nt7b: 0 8 zero \nt7b: 8 16 error \nt7c: 0 8 zero \nt7c: 8 16 error \n");
  });

  it("empty table and --notable create a device without a table (item 8)", async () => {
    await ok(["create", "e8"], "", { input: "" });
    await ok(["create", "n8", "--notable"]);
    for (const n of ["e8", "n8"]) {
      const r = await ts(["info", n]);
      expect(r.code).toBe(0);
      expect(r.stdout).toContain("State:             ACTIVE\n");
      expect(r.stdout).toContain("Tables present:    None\n");
      expect(r.stdout).toContain("Number of targets: 0\n");
      await ok(["table", n], "\n");
    }
    await ok(["table", "e8", "n8"], "e8: \nn8: \n");
  });

  it("a device that never had a table has no disk: no read-ahead, no block device name, until its first load (dmsetup oracle)", async () => {
    await ok(["create", "a8", "--table", "0 8 zero"]);
    await ok(["create", "n8", "--notable"]);
    const node = `${d.devDir}/mapper/n8`;
    const openFailed = `${node}: open failed: No such file or directory\n`;
    const block = "Name:              n8\nState:             ACTIVE\nTables present:    None\nOpen count:        0\nEvent number:      0\nMajor, minor:      253, 1\nNumber of targets: 0\n\n";
    expect(await ts(["info", "n8"])).toEqual({ code: 0, stdout: block, stderr: openFailed });
    expect(await ts(["info", "-c", "-o", "name,read_ahead", "n8"])).toEqual({ code: 0, stdout: "Name             RAhead\nn8                    0\n", stderr: openFailed });
    await ok(["info", "-c", "--noheadings", "n8"], "n8:253:1:---w:0:0:0:\n");
    await fails(["info", "-c", "-o", "name,blkdevname", "n8"], ["Could not resolve block device name for 253:1.", "_do_report_object: report function failed for field blkdevname", "Command failed."]);
    await fails(
      ["info", "-c", "-o", "name,blkdevname"],
      ["Could not resolve block device name for 253:1.", "_do_report_object: report function failed for field blkdevname", "Command failed."],
      "Name             BlkDevName      \na8               dm-0            \n",
    );
    await ok(["ls", "-o", "blkdevname"], "a8\t(dm-0)\nn8\t(253:1)\n");
    await ok(["ls", "-o", "devname"], "a8\t(a8)\nn8\t(253:1)\n");
    await ok(["ls", "--tree", "-o", "ascii,blkdevname"], "a8 <dm-0> (253:0)\nn8 (253:1)\n");
    // A failed load registers nothing; a successful one does, and the disk stays after clear.
    await fails(["load", "n8", "--table", "0 8 nosuch"], ["device-mapper: reload ioctl on n8  failed: Invalid argument", "Command failed."]);
    await ok(["ls", "-o", "blkdevname"], "a8\t(dm-0)\nn8\t(253:1)\n");
    await ok(["load", "n8", "--table", "0 8 zero"]);
    await ok(["clear", "n8"]);
    await ok(["info", "-c", "--noheadings", "-o", "name,blkdevname,read_ahead", "n8"], "n8:dm-1:256\n");
    await ok(["ls", "-o", "blkdevname"], "a8\t(dm-0)\nn8\t(dm-1)\n");
    expect((await ts(["info", "n8"])).stdout).toContain("Read Ahead:        256\n");
  });

  it("malformed lines name their source and leave nothing behind (item 9)", async () => {
    const file = path.join(d.dir, "bad9.table");
    fs.writeFileSync(file, "0 8 zero\ngarbage\n");
    await fails(["create", "m9", "--table", "garbage"], ["Invalid format on line 1 of table .", "Command failed."]);
    await fails(["create", "m9"], ["Invalid format on line 1 of table on stdin.", "Command failed."], "", { input: "garbage\n" });
    await fails(["create", "m9", file], [`Invalid format on line 2 of table ${file}.`, "Command failed."]);
    await fails(["create", "m9", path.join(d.dir, "nonexistent")], [`Couldn't open '${path.join(d.dir, "nonexistent")}' for reading.`, "Command failed."]);
    await ok(["ls"], "No devices found\n");
  });

  it("kernel validation on create: reload error with the device number, rolled back (item 10)", async () => {
    // The last two: beyond tsdm's 8 PiB (2^44 sectors), the second also beyond 2^53 (exact in no double).
    for (const table of ["8 8 zero", "0 8 zero\n16 8 zero", "0 8 zero\n4 8 zero", "0 0 zero", "0 8 bogus", "0 17592186044417 zero", "0 9007199254740993 zero"]) {
      await fails(["create", "k10", "--table", table], ["device-mapper: reload ioctl on k10 (253:0) failed: Invalid argument", "Command failed."]);
      await ok(["ls"], "No devices found\n");
    }
    await ok(["create", "l10", "--table", "0 8 zero"]);
    await fails(["load", "l10", "--table", "8 8 zero"], ["device-mapper: reload ioctl on l10  failed: Invalid argument", "Command failed."]);
    await fails(["load", "l10"], ["device-mapper: reload ioctl on l10  failed: Invalid argument", "Command failed."], "", { input: "" });
    await ok(["info", "-c", "--noheadings", "-o", "attr", "l10"], "L--w\n");
  });

  it("type names of 16 bytes are rejected (item 11)", async () => {
    await fails(["create", "x11", "--table", "0 8 abcdefghijklmnop"], ["Target type name abcdefghijklmnop is too long.", "Command failed."]);
    await ok(["ls"], "No devices found\n");
  });

  it("-j/-m request a minor; a taken minor is EBUSY", async () => {
    await ok(["create", "m7", "-j", "253", "-m", "7", "--table", "0 8 zero"]);
    await ok(["ls"], "m7\t(253:7)\n");
    await fails(["create", "m8", "-j", "253", "-m", "7", "--notable"], ["device-mapper: create ioctl on m8 (253:7) failed: Device or resource busy", "Command failed."]);
  });

  it("duplicate names and uuids (item 12)", async () => {
    await ok(["create", "d12", "-u", "U12", "--table", "0 8 zero"]);
    await fails(["create", "d12", "--table", "0 8 error"], ["device-mapper: create ioctl on d12  failed: Device or resource busy", "Command failed."]);
    await fails(["create", "e12", "-u", "U12", "--table", "0 8 error"], ["device-mapper: create ioctl on e12 U12 failed: Device or resource busy", "Command failed."]);
    await ok(["table", "d12"], "0 8 zero \n");
    await ok(["ls"], "d12\t(253:0)\n");
  });

  it("name and uuid limits (item 13)", async () => {
    const n127 = "n".repeat(127);
    await ok(["create", n127, "--notable"]);
    await fails(["create", "n".repeat(128), "--notable"], [`Name "${"n".repeat(128)}" too long.`, "Command failed."]);
    await fails(["create", "a/b", "--notable"], ['Name "a/b" invalid. It contains "/".', "Command failed."]);
    for (const bad of ["control", ".", ".."]) {
      await fails(["create", bad, "--notable"], [`device-mapper: create ioctl on ${bad}  failed: Invalid argument`, "Command failed."]);
    }
    await ok(["create", "u13", "-u", "u".repeat(128), "--notable"]);
    const u129 = "u".repeat(129);
    await fails(["create", "v13", "-u", u129, "--notable"], [`Mangled form of the UUID too long for "${u129}".`, `Failed to mangle device uuid "${u129}".`, "Command failed."]);
  });
});

describe("name mangling (item 14)", () => {
  it("auto mode stores the mangled form and shows the plain one", async () => {
    await ok(["create", "a b", "--table", "0 8 zero"]);
    await ok(["ls"], "a b\t(253:0)\n");
    await ok(["info", "-c", "--noheadings", "-o", "name,mangled_name,unmangled_name", "a b"], "a b:a\\x20b:a b\n");
    await ok(["info", "-c", "--noheadings", "-o", "name", "a\\x20b"], "a b\n");
    await fails(["create", "a b\\x20c", "--notable"], [
      'The name "a b\\x20c" contains mixed mangled and unmangled characters or it\'s already mangled improperly.',
      'Failed to mangle device name "a b\\x20c".',
      "Command failed.",
    ]);
    await fails(["create", "a\\x5cx20b", "--notable"], ['The name "a\\x5cx20b" seems to be mangled more than once. This is not allowed in auto mode.', "Command failed."]);
    await ok(["--manglename", "none", "ls"], "a\\x20b\t(253:0)\n");
  });

  it("hex and none modes", async () => {
    await ok(["--manglename", "hex", "create", "h\\x20x", "--notable"]);
    await ok(["--manglename", "none", "info", "-c", "--noheadings", "-o", "name", "h\\x5cx20x"], "h\\x5cx20x\n");
    await ok(["--manglename", "none", "create", "raw name", "--notable"]);
    const r = await ts(["ls"]);
    expect(r.stdout).toContain("raw name\t(253:1)\n");
    expect(r.stderr).toBe('The name "raw name" should be mangled but it contains blacklisted characters.\n');
    await ok(["ls"], "h\\x5cx20x\t(253:0)\nraw name\t(253:1)\n", { env: { DM_DEFAULT_NAME_MANGLING_MODE: "none" } });
  });
});

describe("mangle command (name-mangling.sh)", () => {
  it("renames raw names into mangled form and back", async () => {
    await ok(["--manglename", "none", "create", "m b", "--notable"]);
    await ok(["create", "plain", "-u", "U-plain", "--notable"]);
    await ok(["mangle"], "m b: renaming to m\\x20b\nplain: U-plain: name and UUID already in correct form\n");
    await ok(["--manglename", "none", "ls"], "m\\x20b\t(253:0)\nplain\t(253:1)\n");
    await ok(["mangle", "m\\x20b"], "m\\x20b: [no UUID]: name already in correct form\n");
    await ok(["--manglename", "none", "mangle", "m\\x20b"], "m\\x20b: renaming to m b\n");
    await ok(["--manglename", "none", "ls"], "m b\t(253:0)\nplain\t(253:1)\n");
  });
});

describe("slots and state (items 15-17)", () => {
  it("load, table --inactive, resume swaps, clear drops (item 15)", async () => {
    await ok(["create", "s15", "--table", "0 8 zero"]);
    await ok(["load", "s15"], "", { input: "0 16 error\n" });
    const info = await ts(["info", "s15"]);
    expect(info.stdout).toContain("Tables present:    LIVE & INACTIVE\n");
    await ok(["info", "-c", "--noheadings", "-o", "attr", "s15"], "LI-w\n");
    await ok(["table", "s15"], "0 8 zero \n");
    await ok(["table", "--inactive", "s15"], "0 16 error \n");
    await ok(["resume", "s15"]);
    await ok(["table", "s15"], "0 16 error \n");
    await ok(["info", "-c", "--noheadings", "-o", "tables_loaded", "s15"], "Live\n");
    await ok(["reload", "s15", "--table", "0 8 zero"]);
    await ok(["clear", "s15"]);
    await ok(["info", "-c", "--noheadings", "-o", "attr", "s15"], "L--w\n");
    await ok(["clear", "s15"]);
  });

  it("suspend/resume are idempotent (item 16)", async () => {
    await ok(["create", "s16", "--table", "0 8 zero"]);
    await ok(["suspend", "s16"]);
    expect((await ts(["info", "s16"])).stdout).toContain("State:             SUSPENDED\n");
    await ok(["info", "-c", "--noheadings", "-o", "attr", "s16"], "L-sw\n");
    await ok(["info", "-c", "--noheadings", "-o", "suspended", "s16"], "Suspended\n");
    await ok(["suspend", "--nolockfs", "--noflush", "s16"]);
    await ok(["resume", "--nolockfs", "s16"]);
    await ok(["resume", "s16"]);
    await ok(["info", "-c", "--noheadings", "-o", "suspended", "s16"], "Active\n");
  });

  it("read-only create and load (item 17)", async () => {
    await ok(["create", "r17", "-r", "--table", "0 8 zero"]);
    expect((await ts(["info", "r17"])).stdout).toContain("State:             ACTIVE (READ-ONLY)\n");
    await ok(["info", "-c", "--noheadings", "-o", "attr", "r17"], "L--r\n");
  });
});

describe("info (items 18-20)", () => {
  it("the exact block, uuid line only when set, all devices in name order (item 18)", async () => {
    await ok(["info"], "No devices found\n");
    await ok(["create", "i18b", "-u", "TEST-i18b", "--table", "0 8 zero"]);
    await ok(["create", "i18a", "--table", "0 8 zero"]);
    const a =
      "Name:              i18a\nState:             ACTIVE\nRead Ahead:        256\nTables present:    LIVE\nOpen count:        0\n" +
      "Event number:      0\nMajor, minor:      253, 1\nNumber of targets: 1\n\n";
    const b =
      "Name:              i18b\nState:             ACTIVE\nRead Ahead:        256\nTables present:    LIVE\nOpen count:        0\n" +
      "Event number:      0\nMajor, minor:      253, 0\nNumber of targets: 1\nUUID: TEST-i18b\n\n";
    await ok(["info", "i18a"], a);
    await ok(["info"], a + b);
  });

  it("--count repeats a report with a blank line between rounds", async () => {
    await ok(["create", "cnt", "--table", "0 8 zero"]);
    await ok(["info", "-c", "--noheadings", "-o", "name", "--count", "2", "--interval", "1", "cnt"], "cnt\n\ncnt\n");
    await ok(["info", "-c", "-o", "name", "--count", "2", "--interval", "1", "cnt"], `Name            \ncnt             \n\nName            \ncnt             \n`);
  });

  it("--noopencount drops the open count", async () => {
    await ok(["create", "oc", "--table", "0 8 zero"]);
    const r = await ts(["info", "--noopencount", "oc"]);
    expect(r.stdout).not.toContain("Open count");
    await ok(["info", "-c", "--noheadings", "--noopencount", "-o", "open", "oc"], "-1\n");
  });

  it("missing devices stop the list (item 19)", async () => {
    await ok(["create", "i19a", "--table", "0 8 zero"]);
    await ok(["create", "i19b", "--table", "0 8 zero"]);
    await fails(["info", "MISSING"], ["Device does not exist.", "Command failed."]);
    const r = await ts(["info", "i19a", "MISSING", "i19b"]);
    expect(r.code).toBe(1);
    expect(r.stdout).toContain("Name:              i19a\n");
    expect(r.stdout).not.toContain("i19b");
    expect(r.stderr).toBe("Device does not exist.\nCommand failed.\n");
  });

  it("info -c forms (item 20)", async () => {
    await ok(["info", "-c"], "No devices found\n");
    await ok(["create", "flakey-test", "--table", "0 8 zero"]);
    await ok(["create", "thin-pool", "-u", "TEST-thin-pool", "--table", "0 8 zero"]);
    await ok(["load", "thin-pool", "--table", "0 8 error"]);
    await ok(["suspend", "thin-pool"]);
    await ok(
      ["info", "-c"],
      "Name             Maj Min Stat Open Targ Event  UUID                            \n" +
        "flakey-test      253   0 L--w    0    1      0                                 \n" +
        "thin-pool        253   1 LIsw    0    1      0 TEST-thin-pool                  \n",
    );
    await ok(["info", "-c", "--noheadings"], "flakey-test:253:0:L--w:0:1:0:\nthin-pool:253:1:LIsw:0:1:0:TEST-thin-pool\n");
    await ok(["info", "-c", "-o", "name,open", "--noheadings", "flakey-test"], "flakey-test:0\n");
    await ok(["info", "-c", "--noheadings", "-o", "major,minor", "thin-pool"], "253:1\n");
    await ok(["info", "-c", "--noheadings", "-o", "+devno", "flakey-test"], "flakey-test:253:0:L--w:0:1:0::253:0\n");
    await ok(["info", "-c", "--separator", ";", "-o", "name,uuid", "thin-pool"], "Name;UUID\nthin-pool;TEST-thin-pool\n");
    await ok(["info", "-c", "--noheadings", "--nameprefixes", "-o", "name,open", "flakey-test"], "DM_NAME='flakey-test':DM_OPEN='0'\n");
    await ok(
      ["info", "-c", "--noheadings", "--separator", ";", "--nameprefixes", "--unquoted", "-o", "name,open", "--sort", "-name"],
      "DM_NAME=thin-pool;DM_OPEN=0\nDM_NAME=flakey-test;DM_OPEN=0\n",
    );
    const bogus = await ts(["info", "-c", "-o", "bogus"]);
    expect(bogus.code).toBe(1);
    expect(bogus.stdout).toBe("");
    expect(bogus.stderr.endsWith(" \nUnrecognised field: bogus\n")).toBe(true);
  });
});

describe("ls, table, status, deps (items 21-25)", () => {
  it("ls forms (item 21)", async () => {
    await ok(["ls"], "No devices found\n");
    await ok(["create", "b21", "--table", "0 8 error"]);
    await ok(["create", "a21", "--table", "0 8 zero"]);
    await ok(["ls"], "a21\t(253:1)\nb21\t(253:0)\n");
    await ok(["ls", "--target", "zero"], "a21\t(253, 1)\n");
    await ok(["ls", "--target", "linear"], "");
    await ok(["ls", "-o", "blkdevname"], "a21\t(dm-1)\nb21\t(dm-0)\n");
    await ok(["ls", "--target", "zero", "--exec", "echo hit"], `hit ${d.devDir}/mapper/a21\n`);
    await ok(["ls", "--target", "zero", "--exec", "echo hit", "-v"], `a21\t(253, 1)\nhit ${d.devDir}/mapper/a21\n`);
  });

  it("ls --exec appends the node path", async () => {
    await ok(["create", "x21", "--table", "0 8 zero"]);
    await ok(["ls", "--exec", "echo node"], `node ${d.devDir}/mapper/x21\n`);
  });

  it("table and status shapes (items 22-23)", async () => {
    await ok(["create", "t22", "--table", "0 8 zero\n8 8 error"]);
    await ok(["create", "u22", "--notable"]);
    await ok(["table", "t22"], "0 8 zero \n8 8 error \n");
    await ok(["table", "t22", "u22"], "t22: 0 8 zero \nt22: 8 8 error \nu22: \n");
    await ok(["status", "t22"], "0 8 zero \n8 8 error \n");
    await ok(["status"], "t22: 0 8 zero \nt22: 8 8 error \nu22: \n");
    await fails(["status", "MISSING"], ["Device does not exist.", "Command failed."]);
    await fails(["table", "MISSING"], ["device-mapper: table ioctl on MISSING  failed: No such device or address", "Command failed."]);
    await ok(["table", "--target", "error"], "t22: 8 8 error \n");
    await ok(["table", "t22", "--target", "zero"], "0 8 zero \n");
  });

  it("--concise round-trips into create --concise (item 36 with 22)", async () => {
    await ok(["create", "--concise", "a36,,,ro,0 8 zero;b36,U36,,,0 8 zero,8 8 error"]);
    expect((await ts(["info", "a36"])).stdout).toContain("State:             ACTIVE (READ-ONLY)\n");
    await ok(["table", "b36"], "0 8 zero \n8 8 error \n");
    const concise = await ts(["table", "--concise"]);
    expect(concise).toEqual({ code: 0, stdout: "a36,,0,ro,0 8 zero ;b36,U36,1,rw,0 8 zero ,8 8 error \n", stderr: "" });
    await ok(["remove", "a36", "b36"]);
    await ok(["create", "--concise"], "", { input: concise.stdout.trimEnd() });
    await ok(["table", "b36"], "0 8 zero \n8 8 error \n");
    await ok(["info", "-c", "--noheadings", "-o", "name,uuid,attr"], "a36::L--r\nb36:U36:L--w\n");
  });

  it("malformed concise specs (item 36)", async () => {
    await fails(["create", "--concise", "a,,;b,,,,0 1 zero"], [
      "Five comma-separated fields are required for each device",
      "Parsed 3 fields: name: a uuid:  minor:  flags: (null) table: (null)",
      "Command failed.",
    ]);
    await fails(["create", "--concise", "a,,,"], [
      "Incomplete entry: five comma-separated fields are required for each device",
      "Parsed 4 fields: name: a uuid:  minor:  flags:  table: (null)",
      "Command failed.",
    ]);
    await fails(["create", "--concise", "a,,,xx,0 1 zero"], ["Invalid flags parameter 'xx' must be 'ro' or 'rw' or empty.", "Command failed."]);
    await ok(["ls"], "No devices found\n");
  });

  it("deps and stacking (item 25)", async () => {
    await ok(["create", "low25", "--table", "0 8 zero"]);
    await ok(["create", "top25", "--table", `0 8 linear ${d.devDir}/mapper/low25 0`]);
    await ok(["deps", "top25"], "1 dependencies\t: (253, 0)\n");
    await ok(["deps", "-o", "devname", "top25"], "1 dependencies\t: (low25)\n");
    await ok(["deps", "low25"], "0 dependencies\t:\n");
    await ok(["deps"], "low25: 0 dependencies\t:\ntop25: 1 dependencies\t: (253, 0)\n");
    await ok(["info", "-c", "--noheadings", "-o", "name,open,devs_used,names_using_dev"], "low25:1::top25\ntop25:0:low25:\n");
    await ok(["ls", "--tree", "-o", "ascii"], "top25 (253:1)\n `-low25 (253:0)\n");
    await fails(["deps", "MISSING"], ["device-mapper: deps ioctl on MISSING  failed: No such device or address", "Command failed."]);
  });
});

describe("file-backed devices", () => {
  it("deps and the tree name backing files by path", async () => {
    const a = path.join(d.dir, "fa.img");
    const b = path.join(d.dir, "fb.img");
    fs.writeFileSync(a, Buffer.alloc(8 * 512));
    fs.writeFileSync(b, Buffer.alloc(8 * 512));
    await ok(["create", "fa", "--table", `0 8 linear ${a} 0`]);
    await ok(["create", "fb", "--table", `0 8 linear ${b} 0`]);
    await ok(["deps", "-o", "blkdevname", "fa"], `1 dependencies\t: (${a})\n`);
    await ok(["ls", "--tree", "-o", "ascii,blkdevname"], `fa <dm-0> (253:0)\n \`- <${a}> (0:0)\nfb <dm-1> (253:1)\n \`- <${b}> (0:0)\n`);
  });

  it("deps lists a table's devices newest first, as the kernel's DM_TABLE_DEPS does (dmsetup oracle)", async () => {
    const a = path.join(d.dir, "sa.img");
    const b = path.join(d.dir, "sb.img");
    fs.writeFileSync(a, Buffer.alloc(64 * 512));
    fs.writeFileSync(b, Buffer.alloc(64 * 512));
    await ok(["create", "st2", "--table", `0 32 striped 2 8 ${a} 0 ${b} 0`]);
    await ok(["deps", "-o", "blkdevname", "st2"], `2 dependencies\t: (${b}) (${a})\n`);
    await ok(["info", "-c", "--noheadings", "-o", "blkdevs_used", "st2"], `${b},${a}\n`);
    await ok(["remove", "st2"]);
  });

  it("error 1.7.0: two arguments are a device and offset, opened and listed by deps; other arguments ignored", async () => {
    const a = path.join(d.dir, "ea.img");
    fs.writeFileSync(a, Buffer.alloc(8 * 512));
    await ok(["create", "e1", "--table", `0 8 error ${a} 0`]);
    await ok(["deps", "-o", "blkdevname", "e1"], `1 dependencies\t: (${a})\n`);
    await ok(["table", "e1"], "0 8 error \n");
    await ok(["create", "e2", "--table", "0 8 error x y z"]);
    await ok(["deps", "e2"], "0 dependencies\t:\n");
    const missing = path.join(d.dir, "nonexistent");
    await fails(["create", "e3", "--table", `0 8 error ${missing} 0`], ["device-mapper: reload ioctl on e3 (253:2) failed: No such file or directory", "Command failed."]);
    await ok(["remove", "e1", "e2"]);
  });
});

describe("targets and version (items 26-27)", () => {
  it("targets lines and target-version", async () => {
    const r = await ts(["targets"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^linear {11}v\d+\.\d+\.\d+$/m);
    expect(r.stdout).toMatch(/^zero {13}v\d+\.\d+\.\d+$/m);
    const linear = r.stdout.split("\n").find((l) => l.startsWith("linear "))!;
    // The versions of Linux 6.12's targets (the dmsetup oracle compares them with the kernel's).
    await ok(
      ["target-version", "linear", "striped", "zero", "error", "flakey", "delay", "log-writes", "era"],
      "linear           v1.4.0\nstriped          v1.6.0\nzero             v1.2.0\nerror            v1.7.0\n" +
        "flakey           v1.5.0\ndelay            v1.4.0\nlog-writes       v1.1.0\nera              v1.0.0\n",
    );
    await ok(["target-version", "linear"], `${linear}\n`);
    await fails(["target-version", "bogus"], ["device-mapper: target-version ioctl on bogus  failed: Invalid argument", "Command failed."]);
  });

  it("version and --version", async () => {
    await ok(["version"], "Library version:   1.02.185 (2022-05-18)\nDriver version:    4.48.0\n");
    await ok(["--version"], "Library version:   1.02.185 (2022-05-18)\nDriver version:    4.48.0\n");
  });
});

describe("remove (items 28-31)", () => {
  it("remove forms (item 28)", async () => {
    await ok(["create", "r28a", "--table", "0 8 zero"]);
    await ok(["create", "r28b", "--table", "0 8 zero"]);
    await ok(["create", "r28c", "--table", "0 8 zero"]);
    await ok(["remove", "r28a", "r28b", "r28c"]);
    await fails(["remove", "MISSING"], ["device-mapper: remove ioctl on MISSING  failed: No such device or address", "Command failed."]);
    await fails(["remove"], ["No device specified.", "Command failed."]);
    await ok(["create", "r28d", "--table", "0 8 zero"]);
    await fails(["remove", "r28d", "MISSING", "r28e"], ["device-mapper: remove ioctl on MISSING  failed: No such device or address", "Command failed."]);
    await ok(["ls"], "No devices found\n");
  });

  it("open devices: EBUSY, --force leaves an error table (item 29)", async () => {
    await ok(["create", "low29", "--table", "0 8 zero"]);
    await ok(["create", "top29", "--table", `0 8 linear ${d.devDir}/mapper/low29 0`]);
    await fails(["remove", "low29"], ["device-mapper: remove ioctl on low29  failed: Device or resource busy", "Command failed."]);
    await fails(["remove", "--force", "low29"], ["device-mapper: remove ioctl on low29  failed: Device or resource busy", "Command failed."]);
    await ok(["table", "low29"], "0 8 error \n");
  });

  it("--force on a missing device fails each of dmsetup's steps", async () => {
    await fails(["remove", "--force", "MISSING"], [
      "device-mapper: table ioctl on MISSING  failed: No such device or address",
      "device-mapper: reload ioctl on MISSING  failed: No such device or address",
      "device-mapper: remove ioctl on MISSING  failed: No such device or address",
      "Command failed.",
    ]);
  });

  it("wipe_table turns a device into an error device of the same size", async () => {
    await ok(["create", "w29", "--table", "0 8 zero\n8 8 zero"]);
    await ok(["wipe_table", "w29"]);
    await ok(["table", "w29"], "0 16 error \n");
    await ok(["info", "-c", "--noheadings", "-o", "attr", "w29"], "L--w\n");
  });

  it("--retry tries EBUSY 25 times in all, logging each attempt like 1.02.185 (item 29; dmsetup oracle)", async () => {
    await ok(["create", "low29r", "--table", "0 8 zero"]);
    await ok(["create", "top29r", "--table", `0 8 linear ${d.devDir}/mapper/low29r 0`]);
    const r = await ts(["remove", "--retry", "low29r"]);
    expect(r.code).toBe(1);
    const line = "device-mapper: remove ioctl on low29r  failed: Device or resource busy\n";
    expect(r.stderr).toBe(`${line.repeat(25)}Command failed.\n`);
  });

  it("--deferred on an open device, cancel, removal at last close (item 30)", async () => {
    await ok(["create", "low30", "--table", "0 8 zero"]);
    await ok(["create", "top30", "--table", `0 8 linear ${d.devDir}/mapper/low30 0`]);
    await ok(["remove", "--deferred", "low30"]);
    expect((await ts(["info", "low30"])).stdout).toContain("State:             ACTIVE (DEFERRED REMOVE)\n");
    await ok(["message", "low30", "0", "@cancel_deferred_remove"]);
    expect((await ts(["info", "low30"])).stdout).toContain("State:             ACTIVE\n");
    await ok(["remove", "--deferred", "low30"]);
    await ok(["remove", "top30"]);
    await ok(["ls"], "No devices found\n");
    await ok(["create", "c30", "--table", "0 8 zero"]);
    await ok(["remove", "--deferred", "c30"]);
    await ok(["ls"], "No devices found\n");
  });

  it("remove_all (item 31)", async () => {
    await ok(["create", "a31", "--table", "0 8 zero"]);
    await ok(["create", "b31", "--notable"]);
    await ok(["remove_all"]);
    await ok(["ls"], "No devices found\n");
  });
});

describe("rename, message, wait, selection, misc (items 32-37)", () => {
  it("rename (item 32)", async () => {
    await ok(["create", "A32", "--table", "0 8 zero"]);
    await ok(["create", "C32", "--notable"]);
    await ok(["rename", "A32", "B32"]);
    await ok(["ls"], "B32\t(253:0)\nC32\t(253:1)\n");
    await fails(["rename", "B32", "C32"], ["device-mapper: rename ioctl on B32  failed: Device or resource busy", "Command failed."]);
    await fails(["rename", "MISSING", "X"], ["device-mapper: rename ioctl on MISSING  failed: No such device or address", "Command failed."]);
    await ok(["info", "-c", "--noheadings", "-o", "events", "B32"], "1\n");
    await ok(["rename", "B32", "--setuuid", "U32"]);
    await ok(["info", "-c", "--noheadings", "-o", "uuid", "B32"], "U32\n");
    // --setuuid raises the table event too (kernel dev_rename; the dmsetup oracle saw 2 here); no table, no event
    await ok(["info", "-c", "--noheadings", "-o", "events", "B32"], "2\n");
    await ok(["rename", "C32", "--setuuid", "UC32"]);
    await ok(["info", "-c", "--noheadings", "-o", "events", "C32"], "0\n");
    await fails(["rename", "B32", "--setuuid", "V32"], ["device-mapper: rename ioctl on B32  failed: Invalid argument", "Command failed."]);
    await fails(["rename", "B32", "x/y"], ['Name "x/y" invalid. It contains "/".', "Command failed."]);
  });

  it("message (item 33)", async () => {
    await ok(["create", "m33", "--table", "0 8 zero"]);
    await fails(["message", "m33", "x", "hello"], ["Invalid sector.", "Command failed."]);
    await fails(["message", "m33", "0", "hello"], ["device-mapper: message ioctl on m33  failed: Invalid argument", "Command failed."]);
    await fails(["message", "m33", "99", "hello"], ["device-mapper: message ioctl on m33  failed: Invalid argument", "Command failed."]);
    await fails(["message", "m33", "0"], ["No message supplied.", "device-mapper: message ioctl on m33  failed: Invalid argument", "Command failed."]);
    await fails([`message`, `${d.devDir}/mapper/m33`, "0", "w1", "w2"], ["device-mapper: message ioctl on m33  failed: Invalid argument", "Command failed."]);
  });

  it("a message the target accepts (log-writes mark), by name and by path", async () => {
    const data = path.join(d.dir, "lw-data.img");
    const log = path.join(d.dir, "lw-log.img");
    fs.writeFileSync(data, Buffer.alloc(1 << 20));
    fs.writeFileSync(log, Buffer.alloc(1 << 20));
    await ok(["create", "lw33", "--table", `0 2048 log-writes ${data} ${log}`]);
    await ok(["message", "lw33", "0", "mark", "first"]);
    await ok(["message", `${d.devDir}/mapper/lw33`, "0", "mark", "second"]);
    await fails(["message", "lw33", "0", "mark"], ["device-mapper: message ioctl on lw33  failed: Invalid argument", "Command failed."]);
    await ok(["remove", "lw33"]);
  });

  it("wait returns when the event counter moves (item 34)", async () => {
    await ok(["create", "w34", "--table", "0 8 zero"]);
    const waiting = ts(["wait", "w34"]);
    // a rename of a device with a live table raises an event, as in the kernel
    await ok(["rename", "w34", "w34b"]);
    expect(await waiting).toEqual({ code: 0, stdout: "", stderr: "" });
    expect((await ts(["info", "w34b"])).stdout).toContain("Event number:      1\n");
    await ok(["wait", "w34b", "0"]);
    await fails(["wait"], ["No device specified.", "Command failed."]);
    await fails(["wait", "MISSING"], ["device-mapper: waitevent ioctl on MISSING  failed: No such device or address", "Command failed."]);
  });

  it("-u, -j/-m and path operands (item 35)", async () => {
    await ok(["create", "s35", "-u", "U35", "--table", "0 8 zero"]);
    await ok(["info", "-c", "--noheadings", "-o", "name", "-u", "U35"], "s35\n");
    await ok(["info", "-c", "--noheadings", "-o", "name", "-j", "253", "-m", "0"], "s35\n");
    await ok(["table", "-u", "U35"], "0 8 zero \n");
    await ok(["status", "-j", "253", "-m", "0"], "0 8 zero \n");
    await ok(["suspend", "-u", "U35"]);
    await ok(["resume", "-j", "253", "-m", "0"]);
    await ok(["table", `${d.devDir}/mapper/s35`], "0 8 zero \n");
    await ok(["table", "mapper/s35"], "0 8 zero \n");
    // No node and no such device: libdm's stat fails first (dmsetup oracle).
    await fails(["info", `${d.devDir}/mapper/MISSING`], [`Device ${d.devDir}/mapper/MISSING not found`, "Command failed."]);
    await fails(["remove", "mapper/MISSING"], ["Device mapper/MISSING not found", "Command failed."]);
    await fails(["table", "-u", "NOPE"], ["device-mapper: table ioctl on  NOPE failed: No such device or address", "Command failed."]);
    await fails(["message", "-u", "U35", "0", "x"], ["device-mapper: message ioctl on  U35 failed: Invalid argument", "Command failed."]);
    await ok(["remove", "-u", "U35"]);
    await fails(["ls"], ["Invalid DM_DEV_DIR environment variable value."], "", { env: { DM_DEV_DIR: "relative/dev" } });
  });

  it("mknodes, clear, setgeometry (item 37)", async () => {
    await ok(["create", "g37", "--table", "0 8 zero"]);
    await ok(["mknodes"]);
    await ok(["mknodes", "g37"]);
    await ok(["mknodes", "MISSING"]);
    await ok(["clear", "g37"]);
    await fails(["setgeometry", "g37", "65536", "1", "1", "0"], ["device-mapper: setgeometry ioctl on g37  failed: Invalid argument", "Command failed."]);
    await ok(["setgeometry", "g37", "1024", "255", "63", "0"]);
  });

  it("the daemon being away is a clear failure", async () => {
    const sock = path.join(d.dir, "nope.sock");
    const r = await ts(["ls"], { env: { TSDM_SOCKET: sock } });
    expect(r.code).toBe(1);
    expect(r.stdout).toBe("");
    const lines = r.stderr.split("\n");
    expect(lines[0]).toBe(`tsdmsetup: cannot connect to tsdmd at ${sock}: No such file or directory`);
    expect(lines.slice(1)).toEqual(["Failure to communicate with kernel device-mapper driver.", "Command failed.", ""]);
    // --version still prints the library line and exits 0
    const v = await ts(["--version"], { env: { TSDM_SOCKET: sock } });
    expect(v.code).toBe(0);
    expect(v.stdout).toBe("Library version:   1.02.185 (2022-05-18)\n");
  });

  it("-S selects rows for info -c and devices for other commands", async () => {
    await ok(["create", "sel-a", "--table", "0 8 zero"]);
    await ok(["create", "sel-b", "--table", "0 8 zero\n8 8 error"]);
    await ok(["create", "other", "--table", "0 8 zero"]);
    await ok(
      ["info", "-c", "--noheadings", "--separator", ";", "--nameprefixes", "--unquoted", "-o", "name,open", "--sort", "open,name", "-S", "name=~sel"],
      "DM_NAME=sel-a;DM_OPEN=0\nDM_NAME=sel-b;DM_OPEN=0\n",
    );
    await ok(["table", "-S", "segments>1"], "sel-b: 0 8 zero \nsel-b: 8 8 error \n");
    await ok(["remove", "-S", "name=~^sel-"]);
    await ok(["ls"], "other\t(253:2)\n");
    const bad = await ts(["info", "-c", "-S", "bogus=1"]);
    expect(bad).toEqual({ code: 1, stdout: "", stderr: "Unrecognised selection field: bogus\n" });
  });

  it("-v prints the info block with create and before table lines", async () => {
    const block = (name: string, minor: number) =>
      `Name:              ${name}\nState:             ACTIVE\nRead Ahead:        256\nTables present:    LIVE\nOpen count:        0\n` +
      `Event number:      0\nMajor, minor:      253, ${minor}\nNumber of targets: 1\n\n`;
    await ok(["-v", "create", "v1", "--table", "0 8 zero"], block("v1", 0));
    await ok(["table", "-v", "v1"], `${block("v1", 0)}0 8 zero \n`);
  });

  it("splitname splits LVM names (udev rules' form)", async () => {
    await ok(["splitname", "vg-lv--x-layer"], "VG   LV   LVLayer\nvg   lv-x layer  \n");
    await ok(["splitname", "--nameprefixes", "--noheadings", "--rows", "vg-lv"], "DM_VG_NAME='vg'\nDM_LV_NAME='lv'\nDM_LV_LAYER=''\n");
    await ok(["splitname", "a-b", "OTHER", "--noheadings"], "::\n");
  });

  it("nbd-uri names the export", async () => {
    await ok(["create", "nbd1", "--table", "0 8 zero"]);
    await ok(["nbd-uri", "nbd1"], `${d.nbdUri("nbd1")}\n`);
  });
});
