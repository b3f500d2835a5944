#!/bin/bash
# dmsetup oracle: the same scenario of dmsetup command lines (scenario.mjs) run in the kernel VM
# (../shared/tools/kvm, Debian 6.12 under TCG) with the real /usr/sbin/dmsetup against the kernel's
# device-mapper, then with tsdmsetup against tsdmd; every step's exit code, stdout and stderr compared after
# compare.mjs has normalised what legitimately differs. Exit 0 when the transcripts are identical.
#   test/ctl/kernel/run.sh [OUTDIR]      (root; KVM_TOOLS overrides the harness; TSDM_SKIP_BUILD=1 skips tsc)
# tsdmd runs with --attach none: the oracle compares dmsetup's text, and a kernel block device per tsdm device
# (ublk/nbd) would only change the mapped devices' own major:minor (normalised anyway) at seconds per device
# under TCG. Nothing opens the devices on either side, so open counts agree.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../../.." && pwd)"
KVM_TOOLS="${KVM_TOOLS:-$REPO/../shared/tools/kvm}"
OUT="${1:-$(mktemp -d /tmp/tsdm-dmsetup-oracle.XXXXXX)}"
mkdir -p "$OUT"
trap 'echo "outputs in $OUT"' EXIT
cd "$REPO"
# The guest runs bin/tsdmd.js and dist/ctl/tsdmsetup.js: build dist/ as test/setup/global.ts does.
if [ "${TSDM_SKIP_BUILD:-}" != 1 ]; then
  [ -f gen/tsdm/v1/tsdm.ts ] || npm run -s gen
  node node_modules/typescript/bin/tsc -p tsconfig.build.json
  mkdir -p dist/gen && cp gen/descriptors.binpb dist/gen/
fi
# A worktree's node_modules may be a symlink to another checkout's: share its target too (read-only).
shares=(-r "$REPO")
if [ -L "$REPO/node_modules" ]; then shares+=(-r "$(readlink -f "$REPO/node_modules")"); fi
start=$(date +%s)
rc=0
"$KVM_TOOLS/run-guest.sh" -q -c 1 -o "$OUT" -t 400 "${shares[@]}" -e REPO="$REPO" "$HERE/guest.sh" || rc=$?
grep -v '^\[ *[0-9.]*\]' "$OUT/console.log" || true
echo "guest exit $rc after $(($(date +%s) - start)) s"
[ "$rc" = 0 ] || exit "$rc"
node "$HERE/compare.mjs" "$OUT"
