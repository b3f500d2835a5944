#!/bin/bash
# Kernel oracle for the striped, flakey and delay targets: runs INSIDE a guest booted by the shared kvm harness,
#   ../shared/tools/kvm/run-guest.sh -q -o OUT -d a=8M -d b=8M test/targets/kernel-oracle/guest.sh
# and writes OUT/results.txt: for each table, whether the kernel accepted it, what `dmsetup table` and
# `dmsetup status` print, or the constructor's reason from dmesg. results-6.12.txt is that file from the Debian
# 6.12 kernel; conformance.test.ts replays every line against tsdm. After the tables, a few I/O behaviours
# (flakey while down, delay's held-bio counters, striped's error accounting) are printed for reference.
exec >"$OUT/results.txt" 2>&1
A=$DISK_a; B=$DISK_b
echo "kernel $(uname -r)"
n=0
try() { # one table line
  n=$((n+1)); local name=t$n
  dmesg -C
  if dmsetup create $name --table "$1" 2>/tmp/err; then
    echo "OK   [$1]"
    echo "  table : [$(dmsetup table $name)]"
    echo "  status: [$(dmsetup status $name)]"
    dmsetup remove $name
  else
    echo "FAIL [$1] rc: $(tail -1 /tmp/err | sed 's/.*failed: //')"
    echo "  dmesg: $(dmesg | grep -v 'ioctl' | tail -2 | tr '\n' '|')"
    dmsetup remove $name 2>/dev/null
  fi
}
# striped
try "0 1024 striped 2 8 $A 0 $B 0"
try "0 1024 striped 2 8 $A 16 $B 32"
try "0 1536 striped 3 8 $A 0 $B 0 $A 4096"
try "0 1000 striped 2 12 $A 0 $B 0"
try "0 1200 striped 2 12 $A 0 $B 0"
try "0 1024 striped 2 7 $A 0 $B 0"
try "0 1024 striped 1 1 $A 0"
try "0 1025 striped 2 8 $A 0 $B 0"
try "0 1024 striped 0 8 $A 0 $B 0"
try "0 1024 striped x 8 $A 0 $B 0"
try "0 1024 striped 2 0 $A 0 $B 0"
try "0 1024 striped 2 -8 $A 0 $B 0"
try "0 1024 striped 2 +8 $A 0 $B 0"
try "0 1024 striped 2 8 $A 0"
try "0 1024 striped 2 8 $A 0 $B 0 $A 0"
try "0 1024 striped 2"
try "0 1024 striped 2 8 $A x $B 0"
try "0 1024 striped 2 8 $A 0 $B 1z"
try "0 1024 striped 2 8 $A 0 $B 99999999"
try "0 1024 striped 2 8 /dev/nonexist 0 $B 0"
try "0 1024 striped 2 999999 $A 0 $B 0"
try "0 1024 striped 4294967296 8 $A 0 $B 0"
try "0 1024 striped 2 08 $A 0 $B 0"
try "0 1024 striped 2 8 $A 00 $B 0"
# striped I/O error -> D status
# flakey
try "0 1024 flakey $A 0 180 0"
try "0 1024 flakey $A 0 0 1"
try "0 1024 flakey $A 8 1 1 1 drop_writes"
try "0 1024 flakey $A 0 1 1 1 error_writes"
try "0 1024 flakey $A 0 1 1 1 error_reads"
try "0 1024 flakey $A 0 1 1 2 error_reads drop_writes"
try "0 1024 flakey $A 0 1 1 2 error_writes error_reads"
try "0 1024 flakey $A 0 1 1 5 corrupt_bio_byte 32 r 1 0"
try "0 1024 flakey $A 0 1 1 5 corrupt_bio_byte 32 W 255 16"
try "0 1024 flakey $A 0 1 1 6 drop_writes corrupt_bio_byte 32 r 1 0"
try "0 1024 flakey $A 0 1 1 6 drop_writes corrupt_bio_byte 32 w 1 0"
try "0 1024 flakey $A 0 1 1 6 error_writes corrupt_bio_byte 32 w 1 0"
try "0 1024 flakey $A 0 1 1 6 error_reads corrupt_bio_byte 32 r 1 0"
try "0 1024 flakey $A 0 1 1 2 drop_writes drop_writes"
try "0 1024 flakey $A 0 1 1 2 drop_writes error_writes"
try "0 1024 flakey $A 0 1 1 2 error_writes drop_writes"
try "0 1024 flakey $A 0 1 1 2 error_reads error_reads"
try "0 1024 flakey $A 0 1 1 1 bogus"
try "0 1024 flakey $A 0 1 1 2 drop_writes"
try "0 1024 flakey $A 0 1 1 12 drop_writes"
try "0 1024 flakey $A 0 1 1 x drop_writes"
try "0 1024 flakey $A 0 1 1 0"
try "0 1024 flakey $A 0 1 1 0 extra"
try "0 1024 flakey $A 0 1 1 1 corrupt_bio_byte"
try "0 1024 flakey $A 0 1 1 4 corrupt_bio_byte 1 r 1"
try "0 1024 flakey $A 0 1 1 5 corrupt_bio_byte 0 r 1 0"
try "0 1024 flakey $A 0 1 1 5 corrupt_bio_byte 1 x 1 0"
try "0 1024 flakey $A 0 1 1 5 corrupt_bio_byte 1 r 256 0"
try "0 1024 flakey $A 0 1 1 5 corrupt_bio_byte 1 r 1 x"
try "0 1024 flakey $A 0 1 1 10 corrupt_bio_byte 1 r 1 0 corrupt_bio_byte 2 r 1 0"
try "0 1024 flakey $A 0 1 1 2 random_read_corrupt 500000000"
try "0 1024 flakey $A 0 1 1 4 random_read_corrupt 1 random_write_corrupt 1000000000"
try "0 1024 flakey $A 0 1 1 2 random_read_corrupt 1000000001"
try "0 1024 flakey $A 0 1 1 3 drop_writes random_write_corrupt 5"
try "0 1024 flakey $A 0 1 1 3 error_reads random_read_corrupt 5"
try "0 1024 flakey $A 0 1 1 1 random_read_corrupt"
try "0 1024 flakey $A 0 1 1 2 random_read_corrupt 0"
try "0 1024 flakey $A 0 0 0"
try "0 1024 flakey $A 0 4294967295 1"
try "0 1024 flakey $A 0 4294967296 1"
try "0 1024 flakey $A 0 1"
try "0 1024 flakey $A x 1 1"
try "0 1024 flakey $A 0 x 1"
try "0 1024 flakey $A 0 1 x"
try "0 1024 flakey $A 99999999 1 1"
try "0 1024 flakey /dev/nonexist 0 1 1"
try "0 1024 flakey $A 0 01 1 1 DROP_WRITES"
try "0 1024 flakey $A 0 1 1 1 drop_writes extra"
# delay
try "0 1024 delay $A 0 100"
try "0 1024 delay $A 0 0"
try "0 1024 delay $A 8 10 $B 16 20"
try "0 1024 delay $A 8 10 $B 16 20 $A 24 30"
try "0 1024 delay $A 0"
try "0 1024 delay $A 0 1 $B"
try "0 1024 delay $A x 1"
try "0 1024 delay $A 0 x"
try "0 1024 delay $A 0 -1"
try "0 1024 delay $A 0 4294967296"
try "0 1024 delay $A 0 1 $B x 1"
try "0 1024 delay $A 0 1 $B 0 x"
try "0 1024 delay $A 0 1 $B 0 1 $A 0 x"
try "0 1024 delay $A 99999999 1"
try "0 1024 delay /dev/nonexist 0 1"
try "0 1024 delay $A 0 1 /dev/nonexist 0 1"
try "0 1024 flakey $A 0 1 1 11 drop_writes corrupt_bio_byte 1 r 1 0 corrupt_bio_byte 2 r 1 0"
try "0 1024 flakey $A 0 1 1 12 drop_writes corrupt_bio_byte 1 r 1 0 corrupt_bio_byte 2 r 1 0 x"
try "0 1024 flakey $A 0 1 1 4 random_read_corrupt 1 random_read_corrupt 2"
try "0 1024 flakey $A 0 1 1 2 corrupt_bio_byte 1"
try "0 1024 flakey $A 0 1 1 4 corrupt_bio_byte 1 r 1 0"
try "0 1024 flakey $A 0 1 1 4 corrupt_bio_byte 1 r 1 0 drop_writes"
try "0 1024 flakey $A 0 1 1 3 corrupt_bio_byte 1 r 1 0 drop_writes"
try "0 1024 flakey $A 0 4294967295 2"
try "0 1024 flakey $A 18446744073709551616 1 1"
try "0 1024 flakey $A 0 1 1 1 Error_Reads"
try "0 1024 flakey $A 0 1 1 5 corrupt_bio_byte 4294967296 r 1 0"
try "0 1024 flakey $A 0 1 1 5 corrupt_bio_byte 1 r 1 4294967295"
try "0 1024 flakey $A 0 1 1 5 corrupt_bio_byte 1 r 1 4294967296"
try "0 1024 flakey $A 0 1 1 2 random_write_corrupt 1000000000"
try "0 1024 flakey $A 0 1 1 1 random_write_corrupt"
try "0 1024 flakey $A 0 1 1 3 error_writes random_write_corrupt 5"
try "0 1023 flakey $A 0 1 1"
try "0 1024 delay $A 0 1 $A 00 02"
try "0 1024 delay $A 0 +1"
try "0 1024 delay $A +0 1"
try "0 1024 striped 2 8 $A +0 $B 0"
try "0 1024 striped 2 8\\\\n $A 0 $B 0"
try "0 1024 striped 2 4 $L1 0 $L2 0"
try "0 1024 striped 2 8 $L1 4 $L2 0"
try "0 1024 striped 2 8 $L1 8 $L2 0"
try "0 1020 striped 2 2 $L1 0 $L2 0"
try "0 1024 flakey $L1 4 1 1"
try "0 1024 delay $L1 4 1"
try "0 1024 delay $A 0 1 $L1 4 1"
# 4k logical block size stripes
dd if=/dev/zero of=/tmp/l1 bs=1M count=4 status=none; dd if=/dev/zero of=/tmp/l2 bs=1M count=4 status=none
L1=$(losetup -f --show -b 4096 /tmp/l1); L2=$(losetup -f --show -b 4096 /tmp/l2)
echo "loop lbs: $(blockdev --getss $L1)"
try "0 1024 striped 2 4 $L1 0 $L2 0"
try "0 1024 striped 2 8 $L1 4 $L2 0"
try "0 1024 striped 2 8 $L1 8 $L2 0"
try "0 1020 striped 2 2 $L1 0 $L2 0"
try "0 1024 flakey $L1 4 1 1"
try "0 1024 delay $L1 4 1"
try "0 1024 delay $A 0 1 $L1 4 1"
losetup -d $L1 $L2
# delay ops counters while held
dmsetup create dl --table "0 1024 delay $A 0 3000 $B 0 3000"
(dd if=/dev/mapper/dl of=/dev/null bs=4096 count=1 iflag=direct status=none &) 
(dd if=/dev/zero of=/dev/mapper/dl bs=4096 count=1 oflag=direct status=none &)
sleep 1
echo "delay held status: [$(dmsetup status dl)]"
dmsetup suspend dl; echo "delay after suspend: [$(dmsetup status dl)]"; dmsetup resume dl
dmsetup remove dl
# flakey behaviour while down with no features
dmsetup create fk --table "0 1024 flakey $A 0 0 5"
dd if=/dev/mapper/fk of=/dev/null bs=4096 count=1 iflag=direct status=none && echo "fk read OK" || echo "fk read FAIL"
dd if=/dev/zero of=/dev/mapper/fk bs=4096 count=1 oflag=direct status=none && echo "fk write OK" || echo "fk write FAIL"
dmsetup remove fk
# striped error count
dmsetup create er --table "0 2048 error"
ER=$(dmsetup info -c --noheadings -o major,minor er | tr -d ' ')
dmsetup create st --table "0 1024 striped 2 8 $A 0 /dev/mapper/er 0"
dd if=/dev/mapper/st of=/dev/null bs=4096 count=2 skip=0 iflag=direct status=none; echo "st read rc=$?"
echo "striped after error: [$(dmsetup status st)] events=$(dmsetup info st | grep Event)"
dmsetup remove st; dmsetup remove er
# flakey behaviour while down
for c in A B C; do head -c 4096 /dev/zero | tr '\0' "$c" > /tmp/blk.$c; done
dd if=/tmp/blk.A of=$A bs=4096 count=1 oflag=direct status=none
dmsetup create fd --table "0 1024 flakey $A 0 0 5 1 drop_writes"
dd if=/tmp/blk.B of=/dev/mapper/fd bs=4096 count=1 oflag=direct status=none && echo "drop_writes write OK"
dd if=/dev/mapper/fd bs=4096 count=1 iflag=direct status=none | head -c 1; echo " <- first byte read via drop_writes"
dd if=$A bs=4096 count=1 iflag=direct status=none | head -c 1; echo " <- first byte on disk"
blkdiscard /dev/mapper/fd && echo "drop_writes discard OK"
dmsetup remove fd
dmsetup create fc --table "0 1024 flakey $A 0 0 5 5 corrupt_bio_byte 10 r 88 0"
dd if=/dev/mapper/fc bs=4096 count=1 iflag=direct status=none | od -An -c | head -2
dd if=/tmp/blk.C of=/dev/mapper/fc bs=4096 count=1 oflag=direct status=none && echo "corrupt r: write OK"
dd if=$A bs=4096 count=1 iflag=direct status=none | od -An -c | head -1
dmsetup remove fc
dmsetup create fw --table "0 1024 flakey $A 0 0 5 5 corrupt_bio_byte 3 w 90 0"
dd if=/tmp/blk.B of=/dev/mapper/fw bs=4096 count=1 oflag=direct status=none && echo "corrupt w: write OK"
dd if=$A bs=4096 count=1 iflag=direct status=none | od -An -c | head -1
dd if=/dev/mapper/fw bs=4096 count=1 iflag=direct status=none | od -An -c | head -1
dmsetup remove fw
dmsetup create fe --table "0 1024 flakey $A 0 0 5 1 error_reads"
dd if=/tmp/blk.C of=/dev/mapper/fe bs=4096 count=1 oflag=direct status=none && echo "error_reads: write OK"
dd if=/dev/mapper/fe of=/dev/null bs=4096 count=1 iflag=direct status=none && echo "error_reads: read OK" || echo "error_reads: read FAIL"
dmsetup remove fe
dmsetup create fu --table "0 1024 flakey $A 0 1 0"
dd if=/dev/mapper/fu of=/dev/null bs=4096 count=1 iflag=direct status=none && echo "up-only read OK"
dmsetup remove fu
echo DONE
