#!/bin/bash
# Runs INSIDE the kvm guest (see bench/kernel/nbd-kernel.sh): attaches /dev/nbd0 to tsdm's NBD server on the
# host with the kernel's own NBD client (simple replies only, nbd-client 3.24 handshake with NBD_OPT_GO),
# then mkfs/mount/write/fsck/read-back, discard (fstrim) and a direct-I/O read of the whole device.
set -euo pipefail
modprobe nbd nbds_max=2
HOST=${NBD_HOST:-$HOST_FWD_IP}; PORT=${NBD_PORT:-10809}
nbd-client "$HOST" "$PORT" /dev/nbd0 -N "${NBD_EXPORT:-lin}" -b 4096 -C 2
echo "nbd0 size: $(blockdev --getsize64 /dev/nbd0) bytes"
cat /sys/block/nbd0/queue/write_cache /sys/block/nbd0/queue/discard_max_bytes
mkfs.ext4 -q -F -E nodiscard /dev/nbd0
mkdir -p /mnt/nbd; mount /dev/nbd0 /mnt/nbd
head -c 8388608 /dev/urandom > /mnt/nbd/blob; sha256sum /mnt/nbd/blob | tee "$OUT/blob.sha256"
sync
rm -f /mnt/nbd/blob.tmp; head -c 4194304 /dev/urandom > /mnt/nbd/blob.tmp; rm /mnt/nbd/blob.tmp
fstrim -v /mnt/nbd
umount /mnt/nbd
e2fsck -fn /dev/nbd0
mount -o ro /dev/nbd0 /mnt/nbd && (cd /mnt/nbd && sha256sum -c "$OUT/blob.sha256") && umount /mnt/nbd
dd if=/dev/nbd0 of=/dev/null bs=1M iflag=direct 2>&1 | tail -1
nbd-client -d /dev/nbd0
echo "KERNEL-NBD-OK"
