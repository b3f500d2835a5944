import fs from "node:fs";
import { DmError } from "../../core/errors.js";
import { native } from "../../io/native.js";

/**
 * An advisory lock (flock(2), shared) on the image file under a bow device, held while the target exists.
 * `tsdm bow-restore` takes the same lock exclusively and refuses an image that has it: a restore under a live
 * state-1 device would fight it for block 0 and the backups. Files have no O_EXCL claim as block devices
 * do, hence the lock. It is shared so that a table reload opening the same file beside the live table works,
 * and it sits on a descriptor of its own so that closing it releases exactly this holder's lock.
 */
export class ImageLock {
  private constructor(private fd: number) {}

  /** Take the shared lock; EBUSY when a restore (or anything else) holds it exclusively. */
  static shared(path: string): ImageLock {
    const fd = fs.openSync(path, "r");
    try {
      if (!native.tryFlock(fd, false)) throw new DmError("EBUSY", `${path} is locked by another process (a 'tsdm bow-restore' running on it?)`);
      return new ImageLock(fd);
    } catch (err) {
      fs.closeSync(fd);
      throw err;
    }
  }

  release(): void {
    if (this.fd < 0) return;
    fs.closeSync(this.fd); // closing the only descriptor of this open file drops its lock
    this.fd = -1;
  }
}
