#!/bin/bash
# run.sh [OUTDIR] - boot the kernel VM (../shared/tools/kvm) and attach tsdm devices via kernel nbd and ublk.
# Env: METHODS="nbd ublk" (default), KVM_TOOLS (default: ../shared/tools/kvm relative to the repo).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../../.." && pwd)"
KVM_TOOLS="${KVM_TOOLS:-$(cd "$REPO/../shared/tools/kvm" && pwd)}"
OUT="${1:-$(mktemp -d /tmp/tsdm-kvm-attach.XXXXXX)}"
METHODS="${METHODS:-nbd ublk}"
disks=()
for m in $METHODS; do disks+=(-d "$m=64M"); done
# A worktree's node_modules may be a symlink to another checkout's: share its target too (read-only).
shares=(-r "$REPO")
if [ -L "$REPO/node_modules" ]; then shares+=(-r "$(readlink -f "$REPO/node_modules")"); fi
rc=0
"$KVM_TOOLS/run-guest.sh" -q -o "$OUT" -t 560 -m 1536 "${shares[@]}" -e REPO="$REPO" -e METHODS="$METHODS" "${disks[@]}" "$HERE/guest.sh" || rc=$?
grep -v '^\[ *[0-9.]*\]' "$OUT/console.log" || true
echo "guest exit $rc; outputs in $OUT"
exit $rc
