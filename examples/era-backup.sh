#!/usr/bin/env bash
# Incremental block-level backup of a tsdm era device, with standard tools only:
#
#   full:         checkpoint, note the era E from the status, copy the whole device (nbdcopy).
#   incremental:  checkpoint, note the new era E', ask the NBD server which extents were written since E
#                 (nbdinfo --map=tsdm-era:written-since:E), copy only those (qemu-img convert with an
#                 offset/size window on both sides), keep E' for the next run.
#   offline:      take_metadata_snap (archives the current era, era + 1), list the blocks written since E from
#                 the snapshot with `tsdm era invalidate --metadata-snapshot`, copy them, drop_metadata_snap.
#
# Writes made while a copy runs land in era >= E' and are picked up by the next run. After each step the
# backup is compared with the device (qemu-img compare, md5sum). The device here is quiescent between steps;
# on a live device, compare a snapshot of the origin instead.
#
# Why not `tsdm era invalidate --written-since E meta.img` on the live metadata: the offline tools read only
# archived eras (the current writeset is not consulted, as in thin-provisioning-tools 0.9.0), and the live
# metadata changes under a reader; the snapshot is a consistent, frozen view.
#
# Usage: examples/era-backup.sh            (tsdmd running; no root needed: everything goes through NBD)
# Environment: WORK (a scratch directory; default: a new temp dir), SIZE_MB (64), BLOCK (era block in sectors,
#   128 = 64 KiB), NAME (device name, "backed"), TSDMSETUP and TSDM (default: this repository's bin/*.js),
#   TSDM_SOCKET (as for tsdmsetup).
set -euo pipefail

HERE=$(cd "$(dirname "$0")/.." && pwd)
WORK=${WORK:-$(mktemp -d -t era-backup.XXXXXX)}
SIZE_MB=${SIZE_MB:-64}
BLOCK=${BLOCK:-128}
NAME=${NAME:-backed}
read -r -a TSDMSETUP <<<"${TSDMSETUP:-node $HERE/bin/tsdmsetup.js}"
read -r -a TSDM <<<"${TSDM:-node $HERE/bin/tsdm.js}"

ORIGIN=$WORK/origin.img
META=$WORK/meta.img
BACKUP=$WORK/backup.img
BLOCK_BYTES=$((BLOCK * 512))
DEV_BYTES=$((SIZE_MB << 20))

say() { printf '\n== %s\n' "$*"; }
dm() { "${TSDMSETUP[@]}" "$@"; }
# `dmsetup status NAME`: "<start> <length> era <md block size> <used>/<total> <current era> <snap|->"
era_now() { dm status "$NAME" | awk '{print $6}'; }

# Copy bytes [offset, offset+length) of the device into the same place in the backup, through NBD.
copy_extent() {
  local off=$1 len=$2
  (( off + len > DEV_BYTES )) && len=$((DEV_BYTES - off))   # a partial last era block
  qemu-img convert -n \
    --image-opts "driver=raw,offset=$off,size=$len,$NBD_OPTS" \
    --target-image-opts "driver=raw,offset=$off,size=$len,file.driver=file,file.filename=$BACKUP"
}

# qemu's options for the NBD export behind $URI (nbd+unix:///NAME?socket=PATH or nbd://HOST:PORT/NAME).
nbd_opts() {
  local rest hp
  case $URI in
    nbd+unix://*) rest=${URI#nbd+unix:///}; echo "file.driver=nbd,file.server.type=unix,file.server.path=${rest#*\?socket=},file.export=${rest%%\?*}" ;;
    nbd://*) rest=${URI#nbd://}; hp=${rest%%/*}; echo "file.driver=nbd,file.server.type=inet,file.server.host=${hp%:*},file.server.port=${hp##*:},file.export=${rest#*/}" ;;
    *) echo "unsupported NBD URI $URI" >&2; return 1 ;;
  esac
}

verify() {
  qemu-img compare -q -f raw -F raw "$BACKUP" "$URI"
  echo "backup equals the device: $(md5sum <"$BACKUP" | cut -d' ' -f1)"
}

cleanup() { dm remove "$NAME" >/dev/null 2>&1 || true; }
trap cleanup EXIT

say "origin ${SIZE_MB} MiB with data, era metadata, device '$NAME' (era blocks of $BLOCK sectors)"
mkdir -p "$WORK"
head -c "$((SIZE_MB << 20))" /dev/urandom >"$ORIGIN"
rm -f "$META"; truncate -s 4M "$META"                      # all zeroes: formatted at the first load
dm create "$NAME" --table "0 $((SIZE_MB * 2048)) era $META $ORIGIN $BLOCK"
URI=$(dm nbd-uri "$NAME")
NBD_OPTS=$(nbd_opts)
echo "NBD: $URI"

say "full backup"
dm message "$NAME" 0 checkpoint
SINCE=$(era_now)                                            # everything written from now on is in era >= SINCE
nbdcopy "$URI" "$BACKUP"
echo "copied $(stat -c %s "$BACKUP") bytes; next backup: written since era $SINCE"
verify

say "workload: writes, a discard and write-zeroes through NBD"
qemu-io -f raw "$URI" \
  -c "write -P 0x5a 1M 4k" -c "write -P 0x33 $((10 << 20)) 192k" -c "write -P 0x77 $((SIZE_MB - 1))M 1M" \
  -c "discard $((20 << 20)) 128k" -c "write -z $((30 << 20)) 64k" >/dev/null

say "incremental backup over NBD (written since era $SINCE)"
dm message "$NAME" 0 checkpoint
NEXT=$(era_now)
copied=0 extents=0
# nbdinfo --map: "<offset> <length> <flags> [description]"; flag 1 = written in era SINCE or later.
while read -r off len flags _; do
  if (( flags & 1 )); then
    copy_extent "$off" "$len"
    copied=$((copied + len)); extents=$((extents + 1))
  fi
done < <(nbdinfo --map="tsdm-era:written-since:$SINCE" "$URI")
echo "copied $copied bytes in $extents extents; next backup: written since era $NEXT"
SINCE=$NEXT
verify

say "workload"
qemu-io -f raw "$URI" -c "write -P 0x44 $((5 << 20)) 64k" -c "write -P 0x45 $((40 << 20)) 300k" >/dev/null

say "incremental backup offline, from a metadata snapshot (written since era $SINCE)"
dm message "$NAME" 0 take_metadata_snap                      # archives the current era; era + 1
NEXT=$(era_now)
echo "status: $(dm status "$NAME")"
copied=0 extents=0
# <blocks><range begin="B" end = "E"/><block block="B"/>...</blocks>, in era blocks
while read -r first end; do
  copy_extent $((first * BLOCK_BYTES)) $(((end - first) * BLOCK_BYTES))
  copied=$((copied + (end - first) * BLOCK_BYTES)); extents=$((extents + 1))
done < <("${TSDM[@]}" era invalidate --metadata-snapshot --written-since "$SINCE" "$META" |
  sed -n -e 's|.*<range begin="\([0-9]*\)" end = "\([0-9]*\)"/>.*|\1 \2|p' \
         -e 's|.*<block block="\([0-9]*\)"/>.*|\1 \1|p' | awk '$1 == $2 { $2 = $1 + 1 } { print $1, $2 }')
dm message "$NAME" 0 drop_metadata_snap
echo "copied $copied bytes in $extents extents; next backup: written since era $NEXT"
verify

say "OK: full + 2 incremental backups equal the device"
