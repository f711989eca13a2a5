#!/bin/sh
# Create a P_Key child of an IPoIB interface through sysfs, set its mode and bring it up,
# as kernel-IPoIB administration scripts do.
#   usage: create-pkey-child.sh PARENT PKEY [datagram|connected]
#   e.g.:  create-pkey-child.sh ib0 0x8001 connected
# SYSFS points at the sysfs root: /sys on a kernel host, an ipoibfs mountpoint otherwise.
set -eu
SYSFS=${SYSFS:-/sys}
parent=$1
pkey=$2
mode=${3:-datagram}

child=$(printf '%s.%04x' "$parent" "$pkey")
if [ ! -d "$SYSFS/class/net/$child" ]; then
    echo "$pkey" > "$SYSFS/class/net/$parent/create_child"
fi
[ -d "$SYSFS/class/net/$child" ] || { echo "$child did not appear" >&2; exit 1; }
echo "$mode" > "$SYSFS/class/net/$child/mode"
ip link set "$child" up
echo "$child: pkey $(cat "$SYSFS/class/net/$child/pkey") mode $(cat "$SYSFS/class/net/$child/mode") mtu $(cat "$SYSFS/class/net/$child/mtu")"
