#!/bin/bash
# Runs INSIDE the kernel VM: loads nbd and ublk_drv, then attaches a tsdm device through each (and, for ublk,
# kills tsdmd with SIGKILL and checks that the next start deletes the ublk device it left).
# Env: METHODS (default "nbd ublk"), REPO (the tsdm checkout, shared read-only at the same path).
set -uo pipefail
modprobe nbd nbds_max=4 || true
modprobe ublk_drv || echo "ublk_drv: not available in $(uname -r)"
export TSX_TSCONFIG_PATH="$REPO/tsconfig.json"
rc=0
for m in ${METHODS:-nbd ublk}; do
  disk_var="DISK_$m"
  node --import "$REPO/node_modules/tsx/dist/esm/index.mjs" "$REPO/test/attach/kvm/guest-attach.ts" "$m" "${!disk_var}" || rc=1
  # The real tsdmd killed with SIGKILL: its ublk device must be deleted by the next start.
  if [ "$m" = ublk ]; then
    node --import "$REPO/node_modules/tsx/dist/esm/index.mjs" "$REPO/test/attach/kvm/guest-ublk-crash.ts" "${!disk_var}" || rc=1
  fi
done
exit $rc
