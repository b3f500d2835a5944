#!/bin/bash
# bench/attach-fuse-loop.sh [SECONDS] - fio on the fallback attach stack (nbdfuse + loop, direct I/O), tsdmd vs nbdkit.
#   A: tsdmd --attach fuse, device `bench` = linear over a 256 MiB file  -> /dev/mapper/bench
#   B: nbdkit file plugin on an identical file, the same nbdfuse -C 4 + losetup --direct-io=on stack -> /dev/loopN
# Both files live in the same directory (BENCH_DIR, default a new dir under /var/tmp). Root only.
# Workloads (libaio, direct): randread/randwrite 4k QD16, read/write 1M QD16; targets alternate per workload.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
SECS="${1:-6}"
DIR="${BENCH_DIR:-$(mktemp -d /var/tmp/tsdm-bench.XXXXXX)}"
mkdir -p "$DIR/dev" "$DIR/kit-mnt"
head -c 256M /dev/urandom > "$DIR/a.img"; cp "$DIR/a.img" "$DIR/b.img"
export DM_DEV_DIR="$DIR/dev" TSDM_SOCKET="$DIR/tsdmd.sock"
node "$REPO/bin/tsdmd.js" --socket "$TSDM_SOCKET" --nbd-socket "$DIR/nbd.sock" --state-dir "$DIR/state" --attach fuse --log-level warn 2>"$DIR/tsdmd.log" &
TSDMD=$!
nbdkit -U "$DIR/kit.sock" -P "$DIR/kit.pid" file "$DIR/b.img"
LOOP=""
cleanup() {
  [ -n "$LOOP" ] && losetup -d "$LOOP" || true
  fusermount3 -u "$DIR/kit-mnt" 2>/dev/null || true
  [ -f "$DIR/kit.pid" ] && kill "$(cat "$DIR/kit.pid")" 2>/dev/null || true
  kill "$TSDMD" 2>/dev/null && wait "$TSDMD" 2>/dev/null || true
  rm -rf "$DIR"
}
trap cleanup EXIT
for _ in $(seq 100); do [ -S "$TSDM_SOCKET" ] && break; sleep 0.1; done
node "$REPO/bin/tsdmsetup.js" create bench --table "0 $((2 * 256 * 1024)) linear $DIR/a.img 0"
nbdfuse -C 4 -P "$DIR/kit-fuse.pid" "$DIR/kit-mnt/disk" "nbd+unix:///?socket=$DIR/kit.sock" &
for _ in $(seq 100); do [ -f "$DIR/kit-fuse.pid" ] && break; sleep 0.1; done
LOOP=$(losetup --direct-io=on --show -f "$DIR/kit-mnt/disk")
declare -A T=([tsdm]="$DM_DEV_DIR/mapper/bench" [nbdkit]="$LOOP")
printf '%-26s %14s %14s %8s\n' workload tsdm nbdkit ratio
for w in "randread 4k" "randwrite 4k" "read 1M" "write 1M"; do
  set -- $w
  declare -A R=()
  for t in tsdm nbdkit; do
    out=$(fio --name=b --filename="${T[$t]}" --ioengine=libaio --direct=1 --rw="$1" --bs="$2" --iodepth=16 \
      --time_based --runtime="$SECS" --ramp_time=1 --output-format=terse --terse-version=3 --group_reporting)
    # terse v3: field 8/49 = read/write IOPS, 7/48 = read/write bandwidth KiB/s
    if [[ $1 == *read* ]]; then iops=$(cut -d';' -f8 <<<"$out"); bw=$(cut -d';' -f7 <<<"$out"); else iops=$(cut -d';' -f49 <<<"$out"); bw=$(cut -d';' -f48 <<<"$out"); fi
    if [ "$2" = 4k ]; then R[$t]="$iops"; else R[$t]=$((bw / 1024)); fi
  done
  unit=$([ "$2" = 4k ] && echo IOPS || echo MiB/s)
  printf '%-26s %14s %14s %8s\n' "$1 $2 QD16 ($unit)" "${R[tsdm]}" "${R[nbdkit]}" "$(awk "BEGIN{printf \"%.2f\", ${R[tsdm]}/${R[nbdkit]}}")"
done
node "$REPO/bin/tsdmsetup.js" remove bench
