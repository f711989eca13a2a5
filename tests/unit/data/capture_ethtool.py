"""Capture the real ethtool's feature output for a TUN, the oracle of test_features.py.

Run as root on the target system (Debian 12, ethtool 6.1, netlink path):

    python3 tests/unit/data/capture_ethtool.py

It makes a scratch network namespace with a fresh `tun0` (`ip tuntap add tun0 mode tun`) and
writes, next to this file:

- ethtool-k-tun0.txt: `ethtool -k tun0` of the fresh TUN;
- ethtool-json-k-tun0.txt: `ethtool --json -k tun0` of the fresh TUN;
- eth-ss-features.txt: the kernel's netdev feature names (ETH_SS_FEATURES, read with the
  SIOCETHTOOL ioctl ETHTOOL_GSTRINGS) in bit order, one a line, empty lines for unused bits;
- ethtool-K-tun0.json: a sequence of `ethtool -K tun0 ...` runs on that TUN, each with its
  stdout, stderr and exit status, and `ethtool -k tun0` after it.

The namespace is removed at the end. Nothing else on the machine is touched.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import platform
import socket
import struct
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
NETNS = "ipoibfs-capture13"
SIOCETHTOOL = 0x8946
ETHTOOL_GSSET_INFO = 0x37
ETHTOOL_GSTRINGS = 0x1B
ETH_SS_FEATURES = 4
ETH_GSTRING_LEN = 32

#: `ethtool -K tun0` arguments, run in this order on one TUN.
CASES = [
    "lro on",
    "gro off",
    "gro off",
    "gro on",
    "tso on",
    "tx on",
    "tx off",
    "sg off",
    "sg on",
    "rx on",
    "foo on",
    "gro on foo on",
    "gro off foo on",
    "tx off foo on",
    "gro maybe",
    "gro",
    "",
    "--",
    "-- gro off",
    "gro off --",
    "gro off gro on",
    "tx-checksum-ipv4 on gro off",
    "vlan-challenged on",
    "loopback on",
    "highdma off",
    "generic-receive-offload off",
    "rx-gro on",
    "gso off",
    "gso on",
    "tx-nocache-copy on",
    "tx-nocache-copy off",
    "rx-gro-list on",
    "rx-gro-list off",
    "large-receive-offload on",
    "tcp-segmentation-offload off",
    "tcp-segmentation-offload on",
    "scatter-gather off",
    "scatter-gather on",
    "ufo on",
    "rxvlan on",
    "txvlan off",
    "txvlan on",
    "ntuple on",
    "rxhash on",
    "gro on lro on",
    "tx-udp-segmentation off",
    "tx-udp-segmentation on",
    "tx-tcp-mangleid-segmentation on",
    "sg off gso on",
    "sg on",
    "GRO off",
    "rx-checksumming on",
    "tx-checksumming off",
    "generic-segmentation-offload off",
    "generic-segmentation-offload on",
]


def feature_names(ifname: str) -> list[str]:
    """ETH_SS_FEATURES through SIOCETHTOOL (ETHTOOL_GSSET_INFO, then ETHTOOL_GSTRINGS)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        info = ctypes.create_string_buffer(
            struct.pack("IIQI", ETHTOOL_GSSET_INFO, 0, 1 << ETH_SS_FEATURES, 0)
        )
        fcntl.ioctl(
            s.fileno(), SIOCETHTOOL, struct.pack("16sP", ifname.encode(), ctypes.addressof(info))
        )
        count = struct.unpack_from("IIQI", info.raw)[3]
        buf = ctypes.create_string_buffer(
            struct.pack("III", ETHTOOL_GSTRINGS, ETH_SS_FEATURES, count)
            + bytes(ETH_GSTRING_LEN * count)
        )
        fcntl.ioctl(
            s.fileno(), SIOCETHTOOL, struct.pack("16sP", ifname.encode(), ctypes.addressof(buf))
        )
    raw = buf.raw[12:]
    return [
        raw[i * ETH_GSTRING_LEN : (i + 1) * ETH_GSTRING_LEN].split(b"\0", 1)[0].decode()
        for i in range(count)
    ]


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def inside() -> None:
    """In the namespace (re-executed under `ip netns exec`)."""
    subprocess.run(["ip", "tuntap", "add", "tun0", "mode", "tun"], check=True)
    (HERE / "ethtool-k-tun0.txt").write_text(run("ethtool", "-k", "tun0").stdout)
    (HERE / "ethtool-json-k-tun0.txt").write_text(run("ethtool", "--json", "-k", "tun0").stdout)
    (HERE / "eth-ss-features.txt").write_text("".join(n + "\n" for n in feature_names("tun0")))
    runs = []
    for case in CASES:
        r = run("ethtool", "-K", "tun0", *case.split())
        runs.append(
            {
                "args": case,
                "stdout": r.stdout,
                "stderr": r.stderr,
                "status": r.returncode,
                "after": run("ethtool", "-k", "tun0").stdout,
            }
        )
    meta = {
        "ethtool": run("ethtool", "--version").stdout.strip(),
        "kernel": platform.release(),
        "runs": runs,
    }
    (HERE / "ethtool-K-tun0.json").write_text(json.dumps(meta, indent=1) + "\n")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--inside":
        inside()
        return
    subprocess.run(["ip", "netns", "add", NETNS], check=True)
    try:
        subprocess.run(
            ["ip", "netns", "exec", NETNS, sys.executable, os.path.abspath(__file__), "--inside"],
            check=True,
        )
    finally:
        subprocess.run(["ip", "netns", "del", NETNS], check=False)


if __name__ == "__main__":
    main()
