import { describe, expect, it } from "vitest";
import { formatConciseDevice, parseConcise } from "../../ctl/concise.js";
import { ioctlErrorLine } from "../../ctl/errno.js";
import { formatDepsLine, formatInfoBlock, formatLsLine, formatLsTargetLine, formatTargetLine, formatTargetText, hideKeys, type DeviceView } from "../../ctl/format.js";

const dev = (over: Partial<DeviceView> = {}): DeviceView => ({
  name: "flakey-test",
  uuid: "",
  major: 253,
  minor: 0,
  suspended: false,
  readOnly: false,
  liveTable: true,
  inactiveTable: false,
  openCount: 0,
  eventNr: 0,
  targetCount: 1,
  deferredRemove: false,
  readAhead: 256,
  ...over,
});

describe("info block", () => {
  it("matches dmsetup byte for byte", () => {
    expect(formatInfoBlock(dev({ uuid: "TEST-flakey-test" }))).toBe(
      "Name:              flakey-test\n" +
        "State:             ACTIVE\n" +
        "Read Ahead:        256\n" +
        "Tables present:    LIVE\n" +
        "Open count:        0\n" +
        "Event number:      0\n" +
        "Major, minor:      253, 0\n" +
        "Number of targets: 1\n" +
        "UUID: TEST-flakey-test\n" +
        "\n",
    );
  });

  it("states and table slots", () => {
    const b = formatInfoBlock(dev({ suspended: true, readOnly: true, liveTable: true, inactiveTable: true, uuid: "" }));
    expect(b).toContain("State:             SUSPENDED (READ-ONLY)\n");
    expect(b).toContain("Tables present:    LIVE & INACTIVE\n");
    expect(b).not.toContain("UUID");
    expect(formatInfoBlock(dev({ deferredRemove: true }))).toContain("State:             ACTIVE (DEFERRED REMOVE)\n");
    expect(formatInfoBlock(dev({ liveTable: false, targetCount: 0 }))).toContain("Tables present:    None\n");
    expect(formatInfoBlock(dev({ liveTable: false, inactiveTable: true }))).toContain("Tables present:    INACTIVE\n");
    expect(formatInfoBlock(dev({ readAhead: undefined }))).not.toContain("Read Ahead");
  });
});

describe("one-line formats", () => {
  it("ls, deps, targets, table lines", () => {
    expect(formatLsLine("a b", { major: 253, minor: 4 })).toBe("a b\t(253:4)\n");
    expect(formatLsLine("x", "dm-4")).toBe("x\t(dm-4)\n");
    expect(formatLsTargetLine("x", 253, 4)).toBe("x\t(253, 4)\n");
    expect(formatDepsLine([])).toBe("0 dependencies\t:\n");
    expect(formatDepsLine([{ major: 7, minor: 0 }, "loop1"], "x: ")).toBe("x: 2 dependencies\t: (7, 0) (loop1)\n");
    expect(formatTargetLine({ name: "linear", major: 1, minor: 4, patch: 0 })).toBe("linear           v1.4.0\n");
    expect(formatTargetLine({ name: "a-very-long-target", major: 1, minor: 0, patch: 2 })).toBe("a-very-long-target v1.0.2\n");
    expect(formatTargetText({ start: 0n, length: 8n, type: "zero", params: "" })).toBe("0 8 zero ");
  });

  it("ioctl error lines: double space without uuid/devno, devno glued to uuid", () => {
    expect(ioctlErrorLine("remove", { name: "root" }, "EBUSY")).toBe("device-mapper: remove ioctl on root  failed: Device or resource busy");
    expect(ioctlErrorLine("reload", { name: "foo", devno: { major: 253, minor: 3 } }, "EINVAL")).toBe(
      "device-mapper: reload ioctl on foo (253:3) failed: Invalid argument",
    );
    expect(ioctlErrorLine("create", { name: "foo", uuid: "U" }, "EBUSY")).toBe("device-mapper: create ioctl on foo U failed: Device or resource busy");
    expect(ioctlErrorLine("info", { name: "", uuid: "U", devno: { major: 253, minor: 0 } }, "ENXIO")).toBe(
      "device-mapper: info ioctl on  U(253:0) failed: No such device or address",
    );
  });
});

describe("key hiding", () => {
  it("zero-fills crypt keys of the same length, keeps keyring references", () => {
    expect(hideKeys("crypt", "aes-xts-plain64 0123abcd 0 7:0 0")).toBe("aes-xts-plain64 00000000 0 7:0 0");
    expect(hideKeys("crypt", "aes-xts-plain64 :32:logon:desc 0 7:0 0")).toBe("aes-xts-plain64 :32:logon:desc 0 7:0 0");
    expect(hideKeys("crypt", "single")).toBe("single");
  });

  it("zero-fills integrity keys after alg:, leaves bare algorithms", () => {
    expect(hideKeys("integrity", "7:0 0 32 J 2 internal_hash:hmac(sha256):abcdef journal_crypt:ctr(aes):1234")).toBe(
      "7:0 0 32 J 2 internal_hash:hmac(sha256):000000 journal_crypt:ctr(aes):0000",
    );
    expect(hideKeys("integrity", "7:0 0 4 J 1 internal_hash:crc32")).toBe("7:0 0 4 J 1 internal_hash:crc32");
    expect(hideKeys("linear", "7:0 0")).toBe("7:0 0");
  });
});

describe("concise format", () => {
  it("parses devices, extra table lines and escapes", () => {
    expect(parseConcise("a,,,ro,0 8 zero;b,U,3,,0 8 zero,8 8 error")).toEqual([
      { kind: "device", device: { name: "a", uuid: "", minor: "", flags: "ro", table: "0 8 zero" } },
      { kind: "device", device: { name: "b", uuid: "U", minor: "3", flags: "", table: "0 8 zero\n8 8 error" } },
    ]);
    expect(parseConcise("a\\,b, u\\;v,,,0 1 zero")).toEqual([{ kind: "device", device: { name: "a,b", uuid: "u;v", minor: "", flags: "", table: "0 1 zero" } }]);
  });

  it("reproduces dmsetup's diagnostics", () => {
    expect(parseConcise("a,,;b,,,,0 1 zero")).toEqual([
      {
        kind: "error",
        lines: ["Five comma-separated fields are required for each device", "Parsed 3 fields: name: a uuid:  minor:  flags: (null) table: (null)"],
      },
    ]);
    expect(parseConcise("a,,,")).toEqual([
      {
        kind: "error",
        lines: ["Incomplete entry: five comma-separated fields are required for each device", "Parsed 4 fields: name: a uuid:  minor:  flags:  table: (null)"],
      },
    ]);
    expect(parseConcise("a,,,,0 1 zero;b\\")[1]).toEqual({
      kind: "error",
      lines: ["Backslash must be followed by another character at end of string.", "Parsed 1 fields: name: b uuid: (null) minor: (null) flags: (null) table: (null)"],
    });
  });

  it("formats what it parses back", () => {
    const text = formatConciseDevice("a,b", "U;1", 3, true, [
      { start: 0n, length: 8n, type: "zero", params: "" },
      { start: 8n, length: 8n, type: "linear", params: "7:0 0" },
    ]);
    expect(text).toBe("a\\,b,U\\;1,3,ro,0 8 zero ,8 8 linear 7:0 0");
    expect(parseConcise(text)).toEqual([{ kind: "device", device: { name: "a,b", uuid: "U;1", minor: "3", flags: "ro", table: "0 8 zero \n8 8 linear 7:0 0" } }]);
  });
});
