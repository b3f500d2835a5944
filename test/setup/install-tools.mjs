#!/usr/bin/env node
// Installs the Debian packages the test suite drives (real NBD clients, filesystems, thin-provisioning-tools).
// As root it installs what is missing; in CI (CI=true) a tool that cannot be installed is a failure, so that no
// test ever skips for a missing tool there.
import { execFileSync } from "node:child_process";

/** command the tests run → the Debian package that provides it */
export const TOOLS = {
  "qemu-img": "qemu-utils",
  "qemu-io": "qemu-utils",
  "qemu-nbd": "qemu-utils",
  nbdinfo: "libnbd-bin",
  nbdcopy: "libnbd-bin",
  nbdfuse: "libnbd-bin",
  nbdkit: "nbdkit",
  // libnbd's Python binding (test/nbd/unaligned.test.ts drives it with /usr/bin/python3: a client that does not
  // negotiate block sizes)
  nbdsh: "python3-libnbd",
  fio: "fio",
  era_check: "thin-provisioning-tools",
  era_dump: "thin-provisioning-tools",
  era_invalidate: "thin-provisioning-tools",
  era_restore: "thin-provisioning-tools",
  fusermount3: "fuse3",
  "mkfs.xfs": "xfsprogs",
  "xfs_repair": "xfsprogs",
  "mkfs.ext4": "e2fsprogs",
  e2fsck: "e2fsprogs",
  losetup: "mount",
  fstrim: "util-linux",
  openssl: "openssl",
  ss: "iproute2",
  // the kernel VM of ../shared/tools/kvm (test/kernel, test/attach/kvm)
  "qemu-system-x86_64": "qemu-system-x86",
};

const has = (cmd) => {
  try {
    execFileSync("sh", ["-c", `command -v ${cmd}`], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
};

export function missingPackages() {
  return [...new Set(Object.entries(TOOLS).filter(([cmd]) => !has(cmd)).map(([, pkg]) => pkg))];
}

export function installTools({ log = console.error } = {}) {
  const missing = missingPackages();
  if (missing.length === 0) return;
  const ci = process.env.CI === "true";
  if (process.getuid?.() !== 0) {
    const msg = `missing test tools (install as root: apt-get install ${missing.join(" ")})`;
    if (ci) throw new Error(msg);
    log(`warning: ${msg}; tests that need them will fail`);
    return;
  }
  log(`installing test tools: ${missing.join(" ")}`);
  const env = { ...process.env, DEBIAN_FRONTEND: "noninteractive" };
  execFileSync("apt-get", ["update", "-qq"], { stdio: "inherit", env });
  execFileSync("apt-get", ["install", "-y", "-qq", "--no-install-recommends", ...missing], { stdio: "inherit", env });
  const still = missingPackages();
  if (still.length) throw new Error(`could not install: ${still.join(" ")}`);
}

if (import.meta.url === `file://${process.argv[1]}`) installTools();
