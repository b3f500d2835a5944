#!/bin/bash
# Runs INSIDE the kernel guest (run-guest.sh). (a) opens metadata written by tsdm with the kernel's dm-era and
# keeps using it; (b) makes fresh metadata with the kernel's dm-era for tsdm to open on the host.
# Disks: $DISK_tmeta (tsdm's metadata, attached read-write), $DISK_torig, $DISK_kmeta, $DISK_korig.
set -euo pipefail
exec > >(tee -a "$OUT/guest.log") 2>&1
BS=128                                  # 64 KiB era blocks
wblk() { dd if=/dev/urandom of="$1" bs=64k seek="$2" count="${3:-1}" oflag=direct status=none; }
st() { echo "$1: $(dmsetup status "$2")" | tee -a "$OUT/status.txt"; }
: > "$OUT/status.txt"

# (a) tsdm -> kernel
N=$(blockdev --getsz "$DISK_torig")
dmsetup create t --table "0 $N era $DISK_tmeta $DISK_torig $BS"
st t-created t
dmsetup message t 0 drop_metadata_snap          # the snapshot tsdm left held: frees tsdm's shared trees
st t-dropped t
wblk /dev/mapper/t 500; wblk /dev/mapper/t 501
dmsetup message t 0 checkpoint
wblk /dev/mapper/t 600 3
dmsetup message t 0 take_metadata_snap
st t-snap t
dmsetup message t 0 drop_metadata_snap
for i in $(seq 1 20); do wblk /dev/mapper/t $((i * 37 % 1024)); dmsetup message t 0 checkpoint; done
st t-final t
dmsetup remove t
era_check "$DISK_tmeta" > "$OUT/t-era_check.txt" 2>&1 && echo "t era_check rc=0" || echo "t era_check rc=$?"

# (b) kernel -> tsdm
N=$(blockdev --getsz "$DISK_korig")
dmsetup create k --table "0 $N era $DISK_kmeta $DISK_korig $BS"
st k-created k
wblk /dev/mapper/k 3; wblk /dev/mapper/k 7; wblk /dev/mapper/k 100 4
dmsetup message k 0 checkpoint
wblk /dev/mapper/k 9
for i in $(seq 1 30); do wblk /dev/mapper/k $((i * 53 % 1024)); dmsetup message k 0 checkpoint; done
dmsetup message k 0 take_metadata_snap          # left held for tsdm to drop
wblk /dev/mapper/k 11
st k-final k
dmsetup remove k
era_check "$DISK_kmeta" > "$OUT/k-era_check.txt" 2>&1 && echo "k era_check rc=0" || echo "k era_check rc=$?"

# (c) the same short sequence as compare.mts runs in tsdm, for a block-by-block comparison of the images
N=$(blockdev --getsz "$DISK_corig")
dmsetup create c --table "0 $N era $DISK_cmeta $DISK_corig $BS"
wblk /dev/mapper/c 3; wblk /dev/mapper/c 7
dmsetup message c 0 checkpoint
wblk /dev/mapper/c 1000
dmsetup message c 0 take_metadata_snap
dmsetup message c 0 drop_metadata_snap
st c-final c
dmsetup remove c
echo done
