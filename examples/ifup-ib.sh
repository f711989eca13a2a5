#!/bin/sh
# Bring up an IPoIB interface the way network-scripts' ifup-ib does: a P_Key child is made
# through create_child and must exist at once; connected mode and the MTU go through sysfs.
# Configuration comes from the environment, as from an ifcfg file:
#   DEVICE=ib0.8001 PHYSDEV=ib0 PKEY=yes PKEY_ID=0x8001 CONNECTED_MODE=yes MTU=65520 \
#   IPADDR=198.18.1.1 PREFIX=24 ifup-ib.sh
set -u
DEVICE=${DEVICE:?DEVICE is required}
PKEY=${PKEY:-no}
CONNECTED_MODE=${CONNECTED_MODE:-no}

if [ "$PKEY" = yes ]; then
    PHYSDEV=${PHYSDEV:-${DEVICE%%.*}}
    if [ ! -d "/sys/class/net/$DEVICE" ]; then
        echo "$PKEY_ID" > "/sys/class/net/$PHYSDEV/create_child"
    fi
fi
if [ ! -d "/sys/class/net/$DEVICE" ]; then
    echo "ifup-ib: device $DEVICE does not seem to be present, delaying initialization." >&2
    exit 1
fi
if [ "$CONNECTED_MODE" = yes ] && [ -e "/sys/class/net/$DEVICE/mode" ]; then
    echo connected > "/sys/class/net/$DEVICE/mode" || exit 1
fi
if [ -n "${MTU:-}" ]; then
    ip link set dev "$DEVICE" mtu "$MTU" || exit 1
fi
if [ -n "${IPADDR:-}" ]; then
    ip addr add "$IPADDR/${PREFIX:-24}" dev "$DEVICE" || exit 1
fi
ip link set dev "$DEVICE" up
