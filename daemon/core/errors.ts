/**
 * Errors as typed values. Every failure inside the daemon is a DmError carrying the errno the kernel
 * would have returned; the API layer maps it once to a gRPC status (api/status.ts), and tsdmsetup maps the
 * errno back to strerror text for dmsetup's `device-mapper: <op> ioctl on ... failed: <text>` lines.
 */
export const ERRNO = {
  EPERM: 1,
  ENOENT: 2,
  EIO: 5,
  ENXIO: 6,
  E2BIG: 7,
  EBADF: 9,
  EAGAIN: 11,
  ENOMEM: 12,
  EACCES: 13,
  ENOTBLK: 15,
  EBUSY: 16,
  EEXIST: 17,
  ENODEV: 19,
  ENOTDIR: 20,
  EINVAL: 22,
  ENOTTY: 25,
  EFBIG: 27,
  ENOSPC: 28,
  EROFS: 30,
  ERANGE: 34,
  ENOSYS: 38,
  ENODATA: 61,
  EOVERFLOW: 75,
  EILSEQ: 84,
  EOPNOTSUPP: 95,
  ESHUTDOWN: 108,
  ETIMEDOUT: 110,
} as const;

export type Errno = keyof typeof ERRNO;

export function isErrno(name: string): name is Errno {
  return Object.prototype.hasOwnProperty.call(ERRNO, name);
}

/** The ioctl step a failure belongs to, as dmsetup names it in its error line. */
export type DmOp =
  | "create"
  | "reload"
  | "remove"
  | "remove_all"
  | "suspend"
  | "resume"
  | "info"
  | "deps"
  | "rename"
  | "version"
  | "status"
  | "table"
  | "waitevent"
  | "names"
  | "clear"
  | "mknodes"
  | "versions"
  | "message"
  | "setgeometry"
  | "target-version"
  /** Making the /dev/mapper node (attaching a kernel block device) after create/resume. */
  | "attach";

export class DmError extends Error {
  override readonly name = "DmError";
  constructor(
    readonly errno: Errno,
    message: string,
    /** Set by the API layer when the failure is attributed to one step of a compound call (create). */
    public op?: DmOp,
  ) {
    super(message);
  }
}

export const dmError = (errno: Errno, message: string): DmError => new DmError(errno, message);

/** Turn a Node system error (err.code = "ENOENT", ...) into a DmError, keeping its errno. */
export function fromSystemError(err: unknown, context: string): DmError {
  if (err instanceof DmError) return err;
  const e = err as NodeJS.ErrnoException;
  const code = typeof e?.code === "string" && isErrno(e.code) ? e.code : "EIO";
  return new DmError(code, `${context}: ${e?.message ?? String(err)}`);
}
