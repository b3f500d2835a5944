#!/usr/bin/env bash
# An Android-like checkpointed update of an ext4 "userdata" image with tsdm's bow target, the way init, fs_mgr
# and vold drive dm-bow on a phone:
#
#   boot:    tsdm bow-restore on the raw image (always; rolls back an uncommitted checkpoint), then, if a
#            checkpoint was requested, a dm device named "bow" over the image; mount it; count a boot attempt;
#            fstrim (bow learns the free space) and `message bow 0 state 1` (checkpoint).
#   update:  write, overwrite and delete files.
#   commit:  `message bow 0 state 2` (the boot was good) — or a failed boot: unmount, remove the device without
#            committing, boot again, and the rollback brings the pre-update filesystem back.
#
# The retry counter is vold's /metadata/vold/checkpoint: startCheckpoint N writes N+1, each boot attempt
# decrements it, "0" means retries are used up (needsRollback).
#
# Usage (as root, tsdmd running with kernel attach so /dev/mapper/NAME exists):
#   examples/bow-update.sh demo commit      # whole flow, the update is kept
#   examples/bow-update.sh demo fail        # whole flow, the update is rolled back
#   examples/bow-update.sh init | start-checkpoint N | boot | update | commit | reboot | status | cleanup
# Environment: IMG (default /var/tmp/bow-userdata.img), MNT (/mnt/bow-demo), META (/var/tmp/bow-metadata),
#   SIZE_MB (64), TSDMSETUP and TSDM (default: this repository's bin/tsdmsetup.js and bin/tsdm.js).
set -euo pipefail

HERE=$(cd "$(dirname "$0")/.." && pwd)
IMG=${IMG:-/var/tmp/bow-userdata.img}
MNT=${MNT:-/mnt/bow-demo}
META=${META:-/var/tmp/bow-metadata}
SIZE_MB=${SIZE_MB:-64}
DM_DEV_DIR=${DM_DEV_DIR:-/dev}
read -r -a TSDMSETUP <<<"${TSDMSETUP:-node $HERE/bin/tsdmsetup.js}"
read -r -a TSDM <<<"${TSDM:-node $HERE/bin/tsdm.js}"
NAME=bow          # fs_mgr's name: vold finds the bow device by it
CKPT=$META/checkpoint

say() { printf '\n== %s\n' "$*"; }
dm() { "${TSDMSETUP[@]}" "$@"; }
node_path() { echo "$DM_DEV_DIR/mapper/$1"; }

wait_node() { # the daemon creates /dev/mapper/NAME once the kernel device is attached
  local i
  for i in $(seq 1 100); do [ -b "$(node_path "$1")" ] && return 0; sleep 0.1; done
  echo "no block device $(node_path "$1") (is tsdmd running with --attach?)" >&2
  return 1
}

# ---- vold's checkpoint file ----
start_checkpoint() { mkdir -p "$META"; echo $(($1 + 1)) >"$CKPT"; echo "checkpoint requested, $1 retries"; }
needs_checkpoint() { [ -r "$CKPT" ] && [ "$(cut -d' ' -f1 <"$CKPT")" != 0 ]; }
needs_rollback() { [ -r "$CKPT" ] && [ "$(cut -d' ' -f1 <"$CKPT")" = 0 ]; }
mark_boot_attempt() {
  [ -r "$CKPT" ] || return 0
  local n; n=$(cut -d' ' -f1 <"$CKPT")
  if [ "$n" -gt 0 ]; then echo $((n - 1)) >"$CKPT"; fi
  echo "boot attempt recorded, checkpoint file now: $(cat "$CKPT")"
}

init() {
  say "creating $IMG (${SIZE_MB} MiB ext4) with some original files"
  rm -f "$IMG"; truncate -s "${SIZE_MB}M" "$IMG"
  # No lazy inode-table init: ext4lazyinit zeroes tables after mount, and through loop+nbdfuse that zeroing
  # arrives as an NBD TRIM, which bow (state 0) would take for free space. See docs/bow.md.
  mkfs.ext4 -q -F -b 4096 -E nodiscard,lazy_itable_init=0,lazy_journal_init=0 "$IMG"
  local sectors=$(( $(stat -c %s "$IMG") / 512 / 8 * 8 ))
  dm create data --table "0 $sectors linear $IMG 0"
  wait_node data; mkdir -p "$MNT"; mount "$(node_path data)" "$MNT"
  echo "Original" >"$MNT/file"
  head -c 2M /dev/urandom >"$MNT/old.bin"
  mkdir -p "$MNT/apps"; for i in 1 2 3; do echo "app $i v1" >"$MNT/apps/app$i"; done
  sync; umount "$MNT"; dm remove data
  rm -f "$CKPT"
}

boot() {
  say "boot: restoreCheckpoint on the raw image (always)"
  local rc=0; "${TSDM[@]}" bow-restore "$IMG" || rc=$?
  case $rc in 0) ;; 2) echo "(log was invalid: rolled forward)";; *) echo "restore failed ($rc)" >&2; return 1;; esac
  local sectors=$(( $(stat -c %s "$IMG") / 512 / 8 * 8 ))   # fs_mgr: dm-bow needs a multiple of 4096 bytes
  if needs_checkpoint; then
    say "needsCheckpoint: creating '$NAME' = bow over $IMG"
    dm create "$NAME" --table "0 $sectors bow $IMG 1 block_size:4096"
    wait_node "$NAME"; mkdir -p "$MNT"; mount "$(node_path "$NAME")" "$MNT"
    mark_boot_attempt
    say "prepareCheckpoint: fstrim, then state 1"
    fstrim -v "$MNT"
    dm message "$NAME" 0 state 1
    echo "bow state $(dm message "$NAME" 0 state), free $(dm message "$NAME" 0 free) bytes; status: $(dm status "$NAME")"
  else
    say "no checkpoint requested: plain linear device"
    dm create data --table "0 $sectors linear $IMG 0"
    wait_node data; mkdir -p "$MNT"; mount "$(node_path data)" "$MNT"
  fi
}

update() {
  say "update: write, overwrite, delete"
  echo "Changed" >"$MNT/file"
  rm -f "$MNT/old.bin"
  head -c 3M /dev/urandom >"$MNT/new.bin"
  for i in 1 2 3; do echo "app $i v2" >"$MNT/apps/app$i"; done
  sync
  echo "bow free after the update: $(dm message "$NAME" 0 free) bytes"
}

commit() {
  say "commitChanges: state 2, checkpoint file removed"
  dm message "$NAME" 0 state 2
  rm -f "$CKPT"
}

shutdown() {
  say "shutdown"
  umount "$MNT" 2>/dev/null || true
  dm remove "$NAME" 2>/dev/null || true
  dm remove data 2>/dev/null || true
}

show() {
  echo "file: $(cat "$MNT/file")  apps/app1: $(cat "$MNT/apps/app1")  old.bin: $([ -e "$MNT/old.bin" ] && echo present || echo gone)  new.bin: $([ -e "$MNT/new.bin" ] && echo present || echo gone)"
}

demo() {
  local outcome=${1:?commit or fail}
  init
  start_checkpoint 1
  boot; show
  update; show
  if [ "$outcome" = commit ]; then
    commit
    shutdown
    say "next boot"
    boot; show
    [ "$(cat "$MNT/file")" = Changed ] || { echo "FAIL: update lost" >&2; exit 1; }
  else
    say "failed boot: the device goes away without commitChanges"
    shutdown
    boot; show
    [ "$(cat "$MNT/file")" = Original ] && [ -e "$MNT/old.bin" ] && [ ! -e "$MNT/new.bin" ] || { echo "FAIL: not rolled back" >&2; exit 1; }
    needs_rollback && echo "retries used up: needsRollback is true (higher layers would give up the update)"
  fi
  shutdown
  "${TSDM[@]}" bow-restore -q "$IMG" >/dev/null   # a checkpoint still open (fail path) is rolled back first
  e2fsck -fn "$IMG" >/dev/null && echo "e2fsck: clean"
  say "OK ($outcome)"
}

cmd=${1:-demo}; shift || true
case $cmd in
  demo) demo "${1:-commit}" ;;
  init) init ;;
  start-checkpoint) start_checkpoint "${1:-1}" ;;
  boot) boot ;;
  update) update ;;
  commit) commit ;;
  reboot) shutdown; boot ;;
  status) dm status "$NAME"; dm message "$NAME" 0 ranges | head -20 ;;
  cleanup) shutdown; rm -f "$IMG" "$CKPT" ;;
  *) sed -n '2,22p' "$0"; exit 2 ;;
esac
