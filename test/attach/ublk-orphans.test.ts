import fs from "node:fs";
import { describe, expect, it } from "vitest";
import { nativeAttach } from "../../daemon/attach/native-attach.js";
import { bootId, type AttachRecord } from "../../daemon/attach/records.js";
import { releaseRecordedUblk } from "../../daemon/attach/ublk.js";
import { createLogger } from "../../daemon/core/log.js";

// The start-up sweep's decisions about ublk devices of a previous daemon that need no ublk_drv; the deletion
// itself (SIGKILLed tsdmd, then a restart) is tested in the kernel VM: test/attach/kvm/guest-ublk-crash.ts.
describe("ublk devices left by a killed daemon", () => {
  const record = (over: Partial<AttachRecord> = {}): AttachRecord => ({
    device: "vol",
    method: "ublk",
    node: "/dev/mapper/vol",
    kernel: { path: "/dev/ublkb7", major: 259, minor: 7 },
    diskseq: undefined,
    bootId: bootId(),
    pid: 999_999,
    ublkCookie: "0123456789abcdef",
    ...over,
  });
  const logged = (): { log: ReturnType<typeof createLogger>; lines: string[] } => {
    const lines: string[] = [];
    return { log: createLogger({ level: "debug", write: (l) => lines.push(l) }), lines };
  };

  it("records of other methods or another boot are dropped without asking the kernel", async () => {
    const { log, lines } = logged();
    expect(await releaseRecordedUblk(record({ method: "fuse" }), log)).toBe(true);
    expect(await releaseRecordedUblk(record({ bootId: "another-boot" }), log)).toBe(true);
    expect(lines).toEqual([]);
  });

  it("a record of an older version (no pid, no cookie) cannot name its device: left alone, said so, dropped", async () => {
    const { log, lines } = logged();
    expect(await releaseRecordedUblk(record({ pid: undefined, ublkCookie: undefined }), log)).toBe(true);
    expect(lines.join("\n")).toContain("ublk device of a previous run left alone");
  });

  it("the native delete refuses this process's own pid before touching /dev/ublk-control", async () => {
    const r = await nativeAttach.ublkDeleteOrphan(7, process.pid, "0123456789abcdef", false);
    expect(r).toMatchObject({ deleted: false, status: "foreign" });
    expect(() => nativeAttach.ublkDeleteOrphan(7, 999_999, "xyz", false)).toThrow(/16 hex digits/);
  });

  it.runIf(!fs.existsSync("/dev/ublk-control"))("without ublk_drv the device is gone: the record is dropped quietly", async () => {
    const { log, lines } = logged();
    expect(await nativeAttach.ublkDeleteOrphan(7, 999_999, "0123456789abcdef", true)).toMatchObject({ deleted: false, status: "gone" });
    expect(await releaseRecordedUblk(record(), log)).toBe(true);
    expect(lines).toEqual([]);
  });
});
