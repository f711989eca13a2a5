#!/bin/sh
# Report every IPoIB interface (type 32) with its mode, MTU, P_Key, state and parent.
# SYSFS points at the sysfs root: /sys on a kernel host, an ipoibfs mountpoint otherwise.
set -eu
SYSFS=${SYSFS:-/sys}

value() { cat "$1" 2>/dev/null || echo -; }

printf '%-14s %-10s %6s %-7s %-15s %s\n' IFACE MODE MTU PKEY STATE PARENT
for dev in "$SYSFS"/class/net/*; do
    [ "$(cat "$dev/type" 2>/dev/null)" = 32 ] || continue
    printf '%-14s %-10s %6s %-7s %-15s %s\n' "${dev##*/}" "$(value "$dev/mode")" \
        "$(value "$dev/mtu")" "$(value "$dev/pkey")" "$(value "$dev/operstate")" \
        "$(value "$dev/parent")"
done
