#!/bin/bash
# Runs INSIDE the kvm guest (run-guest.sh): replays workload.txt against the kernel's dm-log-writes on the
# virtio disks $DISK_data and $DISK_log, then removes the device (end mark). The disk images come back to
# the host as $OUT/data.img and $OUT/log.img. With SECTOR=4096 the data device is a 4 KiB-sector loop device
# over a tmpfs file instead (copied to $OUT/data.img at the end), so the log is in 4 KiB units.
set -euo pipefail
DEV=/dev/mapper/lw
DATA=$DISK_data
if [ "${SECTOR:-512}" != 512 ]; then
  truncate -s 16M /tmp/data4k.img
  DATA=$(losetup -f --show --sector-size "$SECTOR" /tmp/data4k.img)
fi
N=$(blockdev --getsz "$DATA")
dmsetup create lw --table "0 $N log-writes $DATA $DISK_log"
pat() { head -c $((4096 * $2)) /dev/zero | tr '\0' "$1"; }
while read -r op a b c; do
  case "$op" in
    ""|\#*) continue ;;
    write) pat "$b" "${c:-1}" | dd of=$DEV bs=$((4096 * ${c:-1})) seek=$((a * 4096)) count=1 oflag=direct,seek_bytes status=none iflag=fullblock ;;
    fsync) dd if=/dev/null of=$DEV conv=fsync,notrunc status=none ;;
    dsync) pat "$b" 1 | dd of=$DEV bs=4096 seek="$a" count=1 oflag=direct,dsync status=none iflag=fullblock ;;
    discard) blkdiscard -o $((a * 4096)) -l $((b * 4096)) $DEV ;;
    mark) eval "set -- $a $b $c"; dmsetup message lw 0 mark "$(printf '%s' "$1" | sed 's/ /\\ /g')" ;;
    *) echo "unknown op $op" >&2; exit 1 ;;
  esac
done < /job/in/workload.txt
dmsetup status lw | tee "$OUT/status.txt"
dmsetup remove lw
if [ "$DATA" != "$DISK_data" ]; then losetup -d "$DATA"; cp /tmp/data4k.img "$OUT/data.img"; fi
