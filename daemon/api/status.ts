import { Metadata, status as Code, type ServiceError } from "@grpc/grpc-js";
import { DmError, type DmOp, type Errno } from "../core/errors.js";

/**
 * The one place where daemon errors become gRPC statuses. The status code says what kind of failure it is;
 * trailer metadata carries what dmsetup needs to print the kernel's line: the errno name (tsdm-errno), the
 * ioctl step (tsdm-op) and, for a failed table load inside create, the device number (tsdm-devno).
 */
export function toServiceError(err: unknown, defaultOp: DmOp, devno?: string): Partial<ServiceError> {
  const e = err instanceof DmError ? err : new DmError("EIO", err instanceof Error ? err.message : String(err));
  const op = e.op ?? defaultOp;
  const md = new Metadata();
  md.set("tsdm-errno", e.errno);
  md.set("tsdm-op", op);
  if (devno) md.set("tsdm-devno", devno);
  return { code: grpcCode(e.errno, op), details: e.message, metadata: md };
}

function grpcCode(errno: Errno, op: DmOp): Code {
  switch (errno) {
    case "ENXIO":
    case "ENODEV":
      return Code.NOT_FOUND;
    case "EBUSY":
    case "EEXIST":
      return op === "create" || op === "rename" ? Code.ALREADY_EXISTS : Code.FAILED_PRECONDITION;
    case "EINVAL":
    case "ENOENT":
    case "ENOTDIR":
    case "ERANGE":
    case "E2BIG":
      return Code.INVALID_ARGUMENT;
    case "ENOSPC":
    case "ENOMEM":
    case "EFBIG":
    case "EAGAIN":
      return Code.RESOURCE_EXHAUSTED;
    case "EPERM":
    case "EACCES":
      return Code.PERMISSION_DENIED;
    case "EROFS":
    case "ENODATA":
      return Code.FAILED_PRECONDITION;
    case "EOPNOTSUPP":
    case "ENOSYS":
    case "ENOTTY":
      return Code.UNIMPLEMENTED;
    case "ETIMEDOUT":
      return Code.DEADLINE_EXCEEDED;
    case "ESHUTDOWN":
      return Code.UNAVAILABLE;
    default:
      return Code.INTERNAL;
  }
}

/** Tag a DmError with the step it failed in (create = create → reload → resume). */
export function inStep<T>(op: DmOp, p: Promise<T>): Promise<T> {
  return p.catch((err: unknown) => {
    if (err instanceof DmError) {
      err.op ??= op;
      throw err;
    }
    throw new DmError("EIO", err instanceof Error ? err.message : String(err), op);
  });
}
