#!/bin/sh
# Make a P_Key child with iproute2, as with the kernel's ipoib link kind, and show it.
#   usage: ip-link-ipoib.sh PARENT NAME PKEY [datagram|connected] [ADDRESS/PREFIX]
#   e.g.:  ip-link-ipoib.sh ib0 ib0.8001 0x8001 connected 198.18.1.1/24
set -eu
parent=$1 name=$2 pkey=$3 mode=${4:-datagram}

ip link add link "$parent" name "$name" type ipoib pkey "$pkey" mode "$mode"
[ -z "${5:-}" ] || ip addr add "$5" dev "$name"
ip link set "$name" up
ip -d link show "$name"
