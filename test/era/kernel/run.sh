#!/bin/bash
# Kernel interoperability for dm-era metadata, both directions, in a real 6.12 kernel (TCG guest).
# Usage: test/era/kernel/run.sh [OUTDIR]     (needs ../shared/tools/kvm, qemu-system-x86, thin-provisioning-tools)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../../.." && pwd)"
KVM="${KVM_TOOLS:-$ROOT/../shared/tools/kvm}"
OUT="${1:-$(mktemp -d /tmp/tsdm-era-kernel.XXXXXX)}"
mkdir -p "$OUT"
trap 'echo "outputs in $OUT"' EXIT
cd "$ROOT"
node --import tsx "$HERE/prepare.mts" "$OUT"
"$KVM/run-guest.sh" -q -c 1 -o "$OUT" -t 900 -D "tmeta=$OUT/tmeta.img" -D "torig=$OUT/torig.img" -d kmeta=8M -d korig=64M -d cmeta=8M -d corig=64M "$HERE/guest.sh"
cat "$OUT/status.txt"
node --import tsx "$HERE/verify.mts" "$OUT"
node --import tsx "$HERE/compare.mts" "$OUT"
