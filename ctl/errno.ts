/**
 * errno names (as the daemon sends them in `tsdm-errno`) to glibc's strerror() text, and libdm's error line
 * for a failed ioctl.
 */

const STRERROR: Record<string, string> = {
  EPERM: "Operation not permitted",
  ENOENT: "No such file or directory",
  ESRCH: "No such process",
  EINTR: "Interrupted system call",
  EIO: "Input/output error",
  ENXIO: "No such device or address",
  E2BIG: "Argument list too long",
  ENOEXEC: "Exec format error",
  EBADF: "Bad file descriptor",
  EAGAIN: "Resource temporarily unavailable",
  ENOMEM: "Cannot allocate memory",
  EACCES: "Permission denied",
  EFAULT: "Bad address",
  ENOTBLK: "Block device required",
  EBUSY: "Device or resource busy",
  EEXIST: "File exists",
  EXDEV: "Invalid cross-device link",
  ENODEV: "No such device",
  ENOTDIR: "Not a directory",
  EISDIR: "Is a directory",
  EINVAL: "Invalid argument",
  ENFILE: "Too many open files in system",
  EMFILE: "Too many open files",
  ENOTTY: "Inappropriate ioctl for device",
  EFBIG: "File too large",
  ENOSPC: "No space left on device",
  ESPIPE: "Illegal seek",
  EROFS: "Read-only file system",
  EPIPE: "Broken pipe",
  ERANGE: "Numerical result out of range",
  ENAMETOOLONG: "File name too long",
  ENOSYS: "Function not implemented",
  ENODATA: "No data available",
  ETIME: "Timer expired",
  EOVERFLOW: "Value too large for defined data type",
  EILSEQ: "Invalid or incomplete multibyte or wide character",
  EOPNOTSUPP: "Operation not supported",
  ECONNREFUSED: "Connection refused",
  ESHUTDOWN: "Cannot send after transport endpoint shutdown",
  ETIMEDOUT: "Connection timed out",
  EDQUOT: "Disk quota exceeded",
  ECANCELED: "Operation canceled",
};

export function strerror(errno: string): string {
  return STRERROR[errno] ?? `Unknown error ${errno}`;
}

/** How the failed request addressed the device: what libdm puts between "on" and "failed". */
export interface IoctlTarget {
  /** The name as sent to the kernel (mangled form), or "" when addressed otherwise. */
  name: string;
  uuid?: string;
  devno?: { major: number; minor: number };
}

/**
 * `device-mapper: <op> ioctl on <name> <uuid><(maj:min)> failed: <strerror>` — note the double space when
 * there is neither uuid nor device number, and no space between uuid and the device number.
 */
export function ioctlErrorLine(op: string, t: IoctlTarget, errno: string): string {
  const devno = t.devno && t.devno.major > 0 ? `(${t.devno.major}:${t.devno.minor})` : "";
  return `device-mapper: ${op} ioctl on ${t.name} ${t.uuid ?? ""}${devno} failed: ${strerror(errno)}`;
}
