import { describe, expect, it } from "vitest";
import type { ReportObject } from "../../ctl/report.js";
import { parseSelection, SelectionError } from "../../ctl/select.js";

const obj = (name: string, openCount: number, uuid = ""): ReportObject => ({
  name,
  mangledName: name,
  unmangledName: name,
  uuid,
  mangledUuid: uuid,
  unmangledUuid: uuid,
  readAhead: 256,
  blkdevname: "dm-0",
  diskAdded: true,
  major: 253,
  minor: 0,
  liveTable: true,
  inactiveTable: false,
  suspended: false,
  readOnly: false,
  openCount,
  targetCount: 1,
  eventNr: 0,
});
const pick = (expr: string, objs: ReportObject[]) => {
  const s = parseSelection(expr);
  return objs.filter((o) => s.test(o)).map((o) => o.name);
};
const devs = [obj("LVMTEST1pv1", 0, "TEST-1"), obj("LVMTEST1pv2", 2, "TEST-2"), obj("other", 1)];

describe("selection", () => {
  it("regex, equality and numbers", () => {
    expect(pick("name=~LVMTEST1", devs)).toEqual(["LVMTEST1pv1", "LVMTEST1pv2"]);
    expect(pick("name!~^LVM", devs)).toEqual(["other"]);
    expect(pick("name=other", devs)).toEqual(["other"]);
    expect(pick("open>0", devs)).toEqual(["LVMTEST1pv2", "other"]);
    expect(pick("open<=1 && uuid=~TEST", devs)).toEqual(["LVMTEST1pv1"]);
    expect(pick("open=2 || name='other'", devs)).toEqual(["LVMTEST1pv2", "other"]);
    expect(pick("!(open=0), name=~pv", devs)).toEqual(["LVMTEST1pv2"]);
    expect(pick("open=2 # open=0", devs)).toEqual(["LVMTEST1pv1", "LVMTEST1pv2"]);
  });

  it("reports what it needs and rejects bad input", () => {
    expect([...parseSelection("devs_used=~x").needs]).toEqual(["tree"]);
    expect(() => parseSelection("bogus=1")).toThrow(SelectionError);
    expect(() => parseSelection("open=x")).toThrow(SelectionError);
    expect(() => parseSelection("name=")).toThrow(SelectionError);
    expect(() => parseSelection("(name=a")).toThrow(SelectionError);
  });
});
