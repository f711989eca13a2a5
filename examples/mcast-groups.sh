#!/bin/sh
# Summarise the multicast groups an IPoIB interface has joined, from debugfs:
# one line per group with its join state, as a runbook check.
#   usage: mcast-groups.sh [IFACE]        (default ib0)
# SYSFS points at the sysfs root: /sys on a kernel host, an ipoibfs mountpoint otherwise.
set -eu
SYSFS=${SYSFS:-/sys}
iface=${1:-ib0}
mcg="$SYSFS/kernel/debug/ipoib/${iface}_mcg"
[ -r "$mcg" ] || { echo "no debugfs entry for $iface ($mcg)" >&2; exit 1; }

awk '
    /^GID:/      { gid = $2 }
    /complete:/  { complete = $2 }
    /send_only:/ { printf "%-40s %s%s\n", gid, (complete == "yes" ? "joined" : "joining"),
                          ($2 == "yes" ? " (send-only)" : ""); n++ }
    END          { if (!n) print "no groups (interface down?)" }
' "$mcg"
