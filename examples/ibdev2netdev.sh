#!/bin/sh
# Map each InfiniBand HCA port to its netdevs, in ibdev2netdev's output format:
#   mlx5_0 port 1 ==> ib0 (Up)
# The netdevs of an HCA are those under its PCI function (device/net/); the port is
# dev_port (or dev_id) + 1; the state comes from carrier. `-v` adds the PCI function and ids.
# SYSFS points at the sysfs root: /sys on a kernel host, an ipoibfs mountpoint otherwise.
set -eu
SYSFS=${SYSFS:-/sys}
verbose=${1:-}

for hca in "$SYSFS"/class/infiniband/*; do
    [ -e "$hca/device" ] || continue
    ibdev=${hca##*/}
    fn=$(basename "$(readlink -f "$hca/device")")
    for netdir in "$hca"/device/net/*; do
        [ -e "$netdir" ] || continue
        eth=${netdir##*/}
        port=$(printf '%d' "$(cat "$netdir/dev_id")")
        devport=$(printf '%d' "$(cat "$netdir/dev_port" 2>/dev/null || echo 0)")
        [ "$devport" -gt "$port" ] && port=$devport
        if [ "$(cat "$netdir/carrier" 2>/dev/null || echo 0)" = 1 ]; then
            state=Up
        else
            state=Down
        fi
        if [ "$verbose" = -v ]; then
            ids="$(cat "$hca/device/vendor"):$(cat "$hca/device/device")"
            echo "$fn $ibdev ($ids $(cat "$hca/fw_ver")) port $((port + 1)) ==> $eth ($state)"
        else
            echo "$ibdev port $((port + 1)) ==> $eth ($state)"
        fi
    done
done
