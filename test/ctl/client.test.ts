import { Metadata, status, type ServiceError } from "@grpc/grpc-js";
import { describe, expect, it } from "vitest";
import { resolveEndpoint, toDaemonError } from "../../ctl/client.js";

const err = (code: status, md: Record<string, string> = {}, details = "why"): ServiceError => {
  const m = new Metadata();
  for (const [k, v] of Object.entries(md)) m.set(k, v);
  return Object.assign(new Error(details), { code, details, metadata: m }) as ServiceError;
};

describe("daemon errors", () => {
  it("reads errno, step and device number from the trailers", () => {
    const e = toDaemonError(err(status.INVALID_ARGUMENT, { "tsdm-errno": "EINVAL", "tsdm-op": "reload", "tsdm-devno": "253:4" }));
    expect([e.errno, e.op, e.devno, e.unreachable, e.denied]).toEqual(["EINVAL", "reload", { major: 253, minor: 4 }, false, false]);
  });

  it("classifies failures without errno", () => {
    expect(toDaemonError(err(status.UNAVAILABLE)).unreachable).toBe(true);
    expect(toDaemonError(err(status.UNAVAILABLE, { "tsdm-errno": "ESHUTDOWN", "tsdm-op": "waitevent" })).unreachable).toBe(false);
    const denied = toDaemonError(err(status.PERMISSION_DENIED));
    expect([denied.errno, denied.denied]).toEqual(["EACCES", true]);
    expect(toDaemonError(err(status.UNIMPLEMENTED)).errno).toBe("ENOTTY");
    expect(toDaemonError(err(status.INTERNAL)).errno).toBe("EIO");
  });
});

describe("endpoint resolution", () => {
  it("--socket, then TSDM_SOCKET, then the default", () => {
    expect(resolveEndpoint({ socket: "/a.sock" }, { TSDM_SOCKET: "/b.sock" })).toEqual({ kind: "unix", path: "/a.sock" });
    expect(resolveEndpoint({}, { TSDM_SOCKET: "/b.sock" })).toEqual({ kind: "unix", path: "/b.sock" });
    expect(resolveEndpoint({}, {}).kind).toBe("unix");
  });
});
