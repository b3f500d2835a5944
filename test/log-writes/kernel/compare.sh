#!/bin/bash
# Kernel byte-identity check for tsdm's log-writes target.
#   test/log-writes/kernel/compare.sh [OUTDIR]
# Boots a Debian kernel (../shared/tools/kvm, TCG here: ~30-60 s) and runs workload.txt through the kernel's
# dm-log-writes on two 16 MiB virtio disks, runs the same workload through tsdm on two 16 MiB files, then
# compares: the log images byte for byte (the super's padding bytes 28-31, which the kernel leaves
# uninitialised, are reported separately), the data images, and the status lines.
# Exit 0 when identical. KVM_TOOLS overrides the harness location. SECTOR=4096 runs both sides on a 4 KiB-sector
# data device (a loop device in the guest and on the host; needs root), so the log is in 4 KiB units.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../../.." && pwd)"
KVM_TOOLS="${KVM_TOOLS:-$ROOT/../shared/tools/kvm}"
OUT="${1:-$(mktemp -d /tmp/tsdm-lw-kernel.XXXXXX)}"
mkdir -p "$OUT"
trap 'echo "outputs in $OUT"' EXIT
SECTOR="${SECTOR:-512}"
"$KVM_TOOLS/run-guest.sh" -q -c 1 -o "$OUT/kernel" -t 600 -e SECTOR="$SECTOR" -d data=16M -d log=16M "$HERE/guest.sh" "$HERE/workload.txt"
mkdir -p "$OUT/tsdm"
rm -f "$OUT/tsdm/data.img" "$OUT/tsdm/log.img"
truncate -s 16M "$OUT/tsdm/data.img" "$OUT/tsdm/log.img"
DATA="$OUT/tsdm/data.img"
if [ "$SECTOR" != 512 ]; then
  DATA=$(losetup -f --show --sector-size "$SECTOR" "$OUT/tsdm/data.img")
  trap 'losetup -d "$DATA"; echo "outputs in $OUT"' EXIT
fi
node --import tsx "$HERE/tsdm-run.ts" "$HERE/workload.txt" "$DATA" "$OUT/tsdm/log.img" > "$OUT/tsdm/status.txt"
rc=0
# Each log, replayed by tsdm replay-log onto a zeroed image, must give that side's data image.
for side in kernel tsdm; do
  truncate -s 16M "$OUT/$side/replay.img"
  node --import tsx "$ROOT/tools/tsdm.ts" replay-log -v --log "$OUT/$side/log.img" --replay "$OUT/$side/replay.img" > "$OUT/$side/entries.txt"
  if cmp -s "$OUT/$side/replay.img" "$OUT/$side/data.img"; then echo "$side log replays to the $side data image"; else echo "$side LOG REPLAY DIFFERS FROM ITS DATA IMAGE"; rc=1; fi
done
echo "kernel status: $(cat "$OUT/kernel/status.txt")"; echo "tsdm status:   $(cat "$OUT/tsdm/status.txt")"
k_status=$(awk '{print $4, $5}' "$OUT/kernel/status.txt")
[ "$k_status" = "$(cat "$OUT/tsdm/status.txt")" ] || { echo "STATUS DIFFERS"; rc=1; }
if cmp -s "$OUT/kernel/data.img" "$OUT/tsdm/data.img"; then echo "data images identical"; else echo "DATA IMAGES DIFFER"; rc=1; fi
# Padding bytes 28-31 of the super are unspecified in the kernel: compare them apart.
pad() { od -An -tx1 -j 28 -N 4 "$1" | tr -d ' '; }
echo "super padding: kernel $(pad "$OUT/kernel/log.img"), tsdm $(pad "$OUT/tsdm/log.img")"
cp "$OUT/kernel/log.img" "$OUT/kernel.log.nopad"; cp "$OUT/tsdm/log.img" "$OUT/tsdm.log.nopad"
printf '\0\0\0\0' | dd of="$OUT/kernel.log.nopad" bs=1 seek=28 conv=notrunc status=none
printf '\0\0\0\0' | dd of="$OUT/tsdm.log.nopad" bs=1 seek=28 conv=notrunc status=none
if cmp "$OUT/kernel.log.nopad" "$OUT/tsdm.log.nopad"; then
  echo "log images byte-identical (16 MiB, padding aside)"
else
  rc=1; echo "LOG IMAGES DIFFER"; diff "$OUT/kernel/entries.txt" "$OUT/tsdm/entries.txt" || true
fi
echo "entries (kernel):"; cat "$OUT/kernel/entries.txt"
exit $rc
