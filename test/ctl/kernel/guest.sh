#!/bin/bash
# Runs INSIDE the kernel VM (../shared/tools/kvm): the oracle scenario with the real dmsetup against the guest
# kernel, everything removed, then the same scenario with tsdmsetup against a tsdmd started here (dist/ of the
# checkout $REPO, shared read-only). Writes $OUT/kernel.json, $OUT/tsdm.json and $OUT/guest-facts.
set -uo pipefail
HERE="$REPO/test/ctl/kernel"
# `targets` lists loaded targets only: load every one tsdm implements (linear/striped/error are in dm-mod).
for m in dm_mod dm_zero dm_flakey dm_delay dm_log_writes dm_era; do modprobe "$m" || echo "modprobe $m failed"; done
mkdir -p /tmp/oracle
loops=()
for i in 0 1 2 3 4 5 6; do
  truncate -s 8M "/tmp/oracle/back$i.img"
  loops+=("$(losetup -f --show "/tmp/oracle/back$i.img")")
done
echo "loops: ${loops[*]}"
{
  echo "dm_major $(awk '$2 == "device-mapper" {print $1}' /proc/devices)"
  for l in "${loops[@]}"; do echo "loop $l $(stat -c '%t:%T' "$l")"; done
} > "$OUT/guest-facts"

rc=0
node "$HERE/runner.mjs" kernel "$OUT/kernel.json" "${loops[@]}" || rc=1
dmsetup remove_all
left=$(dmsetup ls)
if [ "$left" != "No devices found" ]; then echo "kernel devices left: $left"; rc=1; fi

# The same loop devices again, zeroed: era formats fresh metadata only on an all-zero device, and the
# log-writes log starts empty.
for l in "${loops[@]}"; do dd if=/dev/zero of="$l" bs=1M count=8 oflag=direct status=none || rc=1; done

# tsdmd without kernel block devices (--attach none): see run.sh.
mkdir -p /tmp/tsdm
export TSDM_SOCKET=/tmp/tsdm/tsdmd.sock
node "$REPO/bin/tsdmd.js" --socket "$TSDM_SOCKET" --nbd-socket /tmp/tsdm/nbd.sock --state-dir /tmp/tsdm/state --attach none --log-level warn 2> "$OUT/tsdmd.log" &
tsdmd=$!
for _ in $(seq 600); do [ -S "$TSDM_SOCKET" ] && break; sleep 0.1; done
node "$HERE/runner.mjs" tsdm "$OUT/tsdm.json" "${loops[@]}" || rc=1
kill "$tsdmd"; wait "$tsdmd"
for l in "${loops[@]}"; do losetup -d "$l"; done
exit $rc
