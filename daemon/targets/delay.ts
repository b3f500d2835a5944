import type { SuspendOptions, Target, TargetContext, TargetType } from "./target.js";
import type { Bio } from "../io/bio.js";
import { remapBio } from "../io/bio.js";
import type { BlockDevice } from "../io/block-device.js";
import { DmError } from "../core/errors.js";
import type { Sector } from "../core/units.js";
import { checkDeviceArea, openTargetDevice, scanSector, scanU32 } from "./kernel-args.js";

/** Reads, writes and flushes each have their own device, offset and delay (struct delay_class). */
interface DelayClass {
  readonly dev: BlockDevice;
  readonly start: Sector;
  /** Milliseconds; 0 passes bios straight through. */
  readonly delay: number;
  /** Bios of this class currently held (status info). */
  ops: number;
}

interface HeldBio {
  readonly cls: DelayClass;
  readonly bio: Bio;
  /** performance.now() time at which the bio may go. */
  readonly expires: number;
  readonly done: (p: Promise<void>) => void;
}

/**
 * dm-delay: `delay <dev> <offset> <delay_ms> [<write_dev> <write_offset> <write_delay_ms>
 * [<flush_dev> <flush_offset> <flush_delay_ms>]]`. Each bio is held for its class's delay, then submitted to
 * that class's device; the bio completes only when the device has completed it, so an acknowledged write is
 * written. With 3 arguments all classes share them; with 6, flushes use the write set. Held bios are released
 * in arrival order; suspend releases them all at once and I/O is not delayed until resume, as in the kernel.
 * Status info is "<held reads> <held writes> <held flushes>".
 */
export const delayTarget: TargetType = {
  name: "delay",
  version: [1, 4, 0],
  async construct(ctx: TargetContext, args: readonly string[], length: Sector): Promise<Target> {
    if (args.length !== 3 && args.length !== 6 && args.length !== 9) throw invalid("Requires exactly 3, 6 or 9 arguments");
    // The kernel's dm_get_device returns the same dm_dev for the same device: open each spec once.
    const opened = new Map<string, BlockDevice>();
    const classCtr = async (at: number): Promise<DelayClass> => {
      const start = scanSector(args[at + 1]);
      if (start === undefined) throw invalid("Invalid device sector");
      const delay = scanU32(args[at + 2]);
      if (delay === undefined) throw invalid("Invalid delay");
      const spec = args[at]!;
      let dev = opened.get(spec);
      if (!dev) {
        dev = await openTargetDevice(ctx, spec, "Device lookup failed");
        opened.set(spec, dev);
      }
      return { dev, start, delay, ops: 0 };
    };
    const read = await classCtr(0);
    const write = await classCtr(args.length === 3 ? 0 : 3);
    const flush = await classCtr(args.length === 9 ? 6 : args.length === 6 ? 3 : 0);
    for (const c of [read, write, flush]) checkDeviceArea(c.dev, c.start, length);
    return new DelayTarget(read, write, flush, args.length);
  },
};

const invalid = (reason: string): DmError => new DmError("EINVAL", reason);

class DelayTarget implements Target {
  private held: HeldBio[] = [];
  private mayDelay = true;
  private timer: NodeJS.Timeout | undefined;
  private timerAt = Infinity;

  constructor(
    private readonly read: DelayClass,
    private readonly write: DelayClass,
    private readonly flush: DelayClass,
    private readonly argc: number,
  ) {}

  map(bio: Bio): Promise<void> {
    const cls = bio.op === "read" ? this.read : bio.op === "flush" ? this.flush : this.write;
    const mapped = bio.op === "flush" ? bio : remapBio(bio, (cls.start + bio.sector) as Sector);
    if (cls.delay === 0 || !this.mayDelay) return cls.dev.submit(mapped);
    return new Promise<void>((resolve, reject) => {
      const expires = performance.now() + cls.delay;
      cls.ops++;
      this.held.push({ cls, bio: mapped, expires, done: (p) => p.then(resolve, reject) });
      this.armTimer(expires);
    });
  }

  /** One timer for the earliest expiry, like the kernel's delay_timer. */
  private armTimer(at: number): void {
    if (this.timer && at >= this.timerAt) return;
    if (this.timer) clearTimeout(this.timer);
    this.timerAt = at;
    // setTimeout may fire a little early; release() re-checks every expiry against the clock.
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.timerAt = Infinity;
      void this.release(false);
    }, Math.max(0, Math.ceil(at - performance.now())));
  }

  /** flush_delayed_bios: submit expired (or, with `all`, every) held bio in arrival order. */
  private release(all: boolean): Promise<void> {
    const now = performance.now();
    const keep: HeldBio[] = [];
    const submitted: Promise<void>[] = [];
    let next = Infinity;
    for (const h of this.held) {
      if (all || now >= h.expires) {
        h.cls.ops--;
        let p: Promise<void>;
        try {
          p = h.cls.dev.submit(h.bio);
        } catch (err) {
          p = Promise.reject(err); // never leave the rest of the list unreleased
        }
        h.done(p);
        submitted.push(p.catch(() => undefined));
      } else {
        keep.push(h);
        next = Math.min(next, h.expires);
      }
    }
    this.held = keep;
    if (next !== Infinity) this.armTimer(next);
    return Promise.all(submitted).then(() => undefined);
  }

  private stopTimer(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.timerAt = Infinity;
  }

  /** Stop delaying and release everything held, so the suspend can drain. */
  async presuspend(_opts: SuspendOptions): Promise<void> {
    this.mayDelay = false;
    this.stopTimer();
    await this.release(true);
  }

  async resume(): Promise<void> {
    this.mayDelay = true;
  }

  status(type: "info" | "table"): string {
    if (type === "info") return `${this.read.ops} ${this.write.ops} ${this.flush.ops}`;
    const emit = (c: DelayClass): string => `${c.dev.label} ${c.start} ${c.delay}`;
    let s = emit(this.read);
    if (this.argc >= 6) s += ` ${emit(this.write)}`;
    if (this.argc >= 9) s += ` ${emit(this.flush)}`;
    return s;
  }

  devices(): readonly BlockDevice[] {
    return [...new Set([this.read.dev, this.write.dev, this.flush.dev])];
  }

  /** A table is suspended before it is destroyed, but never leave a bio unanswered. */
  async destroy(): Promise<void> {
    this.mayDelay = false;
    this.stopTimer();
    await this.release(true);
  }
}
