import { DmError } from "../core/errors.js";
import { NbdErr, type NbdError } from "./protocol.js";

/**
 * Map a failure from the I/O path to the NBD error a client understands. DmErrors carry the kernel errno;
 * Node system errors carry err.code. NBD has few values: everything without a closer match is EIO, which is
 * what a kernel block device would report for a failed bio.
 */
export function nbdErrorOf(err: unknown): NbdError {
  const code = err instanceof DmError ? err.errno : (err as NodeJS.ErrnoException | undefined)?.code;
  switch (code) {
    case "EPERM":
    case "EROFS":
    case "EACCES":
      return NbdErr.EPERM;
    case "EINVAL":
    case "ERANGE":
      return NbdErr.EINVAL;
    case "ENOSPC":
    case "EDQUOT":
    case "EFBIG":
      return NbdErr.ENOSPC;
    case "ENOMEM":
      return NbdErr.ENOMEM;
    case "EOVERFLOW":
      return NbdErr.EOVERFLOW;
    case "EOPNOTSUPP":
    case "ENOTSUP":
    case "ENOSYS":
      return NbdErr.ENOTSUP;
    case "ESHUTDOWN":
    case "ENXIO":
    case "ENODEV":
      // The device went away under the client: tell it to disconnect rather than retry.
      return NbdErr.ESHUTDOWN;
    default:
      return NbdErr.EIO;
  }
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
