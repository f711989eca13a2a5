"""make bench: control-surface figures of one emulated host, each against a baseline of the
same run (the machine is shared and noisy, so only ratios mean something).

- create_child latency until the live netdev exists (median of 100) against making a TUN
  typed InfiniBand and setting it up over netlink by hand, as the daemon does;
- reads per second of mirror attribute files against a real sysfs file.
"""

from __future__ import annotations

import fcntl
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from pyroute2 import IPRoute

from ipoibfs.namespaces import enter_netns

REPO = Path(__file__).resolve().parents[1]
IPOIBFS = str(REPO / ".venv" / "bin" / "ipoibfs")
N_CHILDREN = 100
READ_SECONDS = 2.0


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


def timed_write(path: Path, data: bytes) -> float:
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    return time.perf_counter() - t0


def create_child_latency(mp: Path, netns: str, ipr: IPRoute) -> list[float]:
    """Write each P_Key, then check the netdev is there (it must be when the write returns)."""
    cc = mp / "class" / "net" / "ib0" / "create_child"
    times = []
    for i in range(N_CHILDREN):
        pkey = 0x8001 + i
        t0 = time.perf_counter()
        timed_write(cc, f"{pkey:#x}\n".encode())
        if not ipr.link_lookup(ifname=f"ib0.{pkey:04x}"):
            raise SystemExit(f"ib0.{pkey:04x} missing after create_child returned")
        times.append(time.perf_counter() - t0)
    dc = mp / "class" / "net" / "ib0" / "delete_child"
    for i in range(N_CHILDREN):
        timed_write(dc, f"{0x8001 + i:#x}\n".encode())
    return times


def tun_by_hand_latency(ipr: IPRoute) -> list[float]:
    """The baseline: TUNSETIFF + TUNSETLINK + one netlink set + a lookup, fds kept open."""
    fds, times = [], []
    for i in range(N_CHILDREN):
        name = f"bt{i:04x}"
        t0 = time.perf_counter()
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
        fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH22x", name.encode(), 0x0001 | 0x1000))
        fcntl.ioctl(fd, 0x400454CD, 32)
        index = ipr.link_lookup(ifname=name)[0]
        ipr.link("set", index=index, mtu=4092, txqlen=256, flags=0, change=0x80)
        if not ipr.link_lookup(ifname=name):
            raise SystemExit(f"{name} missing")
        times.append(time.perf_counter() - t0)
        fds.append(fd)
    for fd in fds:
        os.close(fd)
    return times


def reads_per_second(path: Path) -> float:
    n = 0
    deadline = time.perf_counter() + READ_SECONDS
    t0 = time.perf_counter()
    while time.perf_counter() < deadline:
        with open(path, "rb", buffering=0) as f:
            f.read(4096)
        n += 1
    return n / (time.perf_counter() - t0)


def main() -> int:
    if os.geteuid() != 0:
        print("bench: must be run as root", file=sys.stderr)
        return 1
    netns = f"bench-{uuid.uuid4().hex[:6]}"
    sh("ip", "netns", "add", netns)
    mp = Path(tempfile.mkdtemp(prefix="ipoibfs-bench-"))
    try:
        sh(IPOIBFS, "mount", "--netns", netns, str(mp))
        enter_netns(netns)  # this thread now sees the host's links, as `ip -n` would
        ipr = IPRoute()
        child = create_child_latency(mp, netns, ipr)
        base = tun_by_hand_latency(ipr)
        ipr.close()
        c_med, b_med = statistics.median(child), statistics.median(base)
        print(f"create_child -> live netdev, median of {N_CHILDREN}: {c_med * 1e3:.2f} ms")
        print(f"TUN + netlink set up by hand, median of {N_CHILDREN}: {b_med * 1e3:.2f} ms")
        print(f"  ratio create_child / by hand: {c_med / b_med:.2f}x")
        real = reads_per_second(Path("/sys/class/net/lo/mtu"))
        print(f"real sysfs /sys/class/net/lo/mtu: {real:,.0f} reads/s")
        for rel in ("class/net/ib0/pkey", "class/net/ib0/mtu", "class/net/ib0/operstate"):
            rate = reads_per_second(mp / rel)
            print(f"mirror {rel}: {rate:,.0f} reads/s ({rate / real:.3f}x real sysfs)")
    finally:
        subprocess.run([IPOIBFS, "umount", str(mp)], capture_output=True)
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)
        os.rmdir(mp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
