#!/bin/bash
# nbd-kernel.sh [PORT] - interop check of tsdm's NBD server with the Linux kernel NBD client: start bench/serve.ts
# (a linear device over a 256 MiB file) on TCP 127.0.0.1:PORT, boot the kvm guest of ../shared/tools/kvm and run
# nbd-kernel.guest.sh there (two connections: CAN_MULTI_CONN). Takes a few minutes under TCG.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
KVM="${KVM_TOOLS:-$ROOT/../shared/tools/kvm}"
PORT="${1:-10931}"
WORK="$(mktemp -d /tmp/tsdm-kernel-nbd.XXXXXX)"
truncate -s 256M "$WORK/disk.img"
(cd "$ROOT" && npm run -s build && exec node dist/bench/serve.js --socket "$WORK/nbd.sock" --tcp "127.0.0.1:$PORT" \
  --device "lin=0 524288 linear $WORK/disk.img 0") > "$WORK/serve.out" &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; rm -rf "$WORK"' EXIT
for _ in $(seq 100); do grep -q ready "$WORK/serve.out" 2>/dev/null && break; sleep 0.1; done
rc=0
"$KVM/run-guest.sh" -q -o "$WORK/out" -t 600 -f "$PORT" -e NBD_PORT="$PORT" -e NBD_EXPORT=lin "$HERE/nbd-kernel.guest.sh" || rc=$?
grep -v '^\[ *[0-9.]*\]' "$WORK/out/console.log" || true
echo "guest exit $rc"
exit $rc
