"""make bench: control-surface figures of one emulated host, each against a baseline of the
same run (the machine is shared and noisy, so only ratios mean something).

- create_child latency until the live netdev exists (median of 100) against making a TUN
  typed InfiniBand and setting it up over netlink by hand, as the daemon does;
- open-read-close cycles per second of mirror attribute files (driver state, live ioctls,
  a counter) against a real sysfs file and against the FUSE floor (a minimal
  pyfuse3 file system serving one constant file, bench/fuse_floor.py), in interleaved rounds
  (BENCH_ROUNDS, default 5), medians reported.
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
READ_SECONDS = 1.0
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
MIRROR_FILES = (
    "class/net/ib0/pkey",  # driver state
    "class/net/ib0/mtu",  # a live ioctl
    "class/net/ib0/operstate",  # live: SIOCGIFFLAGS
    "class/net/ib0/carrier",  # live: ETHTOOL_GLINK
    "class/net/ib0/statistics/rx_packets",  # the driver's counters
)


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
    """Open, one read, close, as fast as one reader can (what `cat` does, less the exec)."""
    n = 0
    name = os.fsencode(path)
    deadline = time.perf_counter() + READ_SECONDS
    t0 = time.perf_counter()
    while time.perf_counter() < deadline:
        fd = os.open(name, os.O_RDONLY)
        try:
            os.read(fd, 4096)
        finally:
            os.close(fd)
        n += 1
    return n / (time.perf_counter() - t0)


def fuse_floor() -> tuple[subprocess.Popen, Path]:
    """bench/fuse_floor.py mounted on a fresh directory, in a process of its own."""
    mp = Path(tempfile.mkdtemp(prefix="ipoibfs-floor-"))
    proc = subprocess.Popen([sys.executable, str(REPO / "bench" / "fuse_floor.py"), str(mp)])
    deadline = time.monotonic() + 10
    while not os.path.ismount(mp):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("bench: the FUSE floor did not mount")
        time.sleep(0.05)
    return proc, mp


def mirror_reads(mp: Path, netns: str) -> dict[str, float]:
    """Interleaved rounds of real sysfs, the FUSE floor and each mirror file: the medians,
    keyed "real", "floor" and each file's path in the mirror."""
    sh("ip", "-n", netns, "link", "set", "ib0", "up")  # carrier is EINVAL while down
    deadline = time.monotonic() + 10
    while (mp / "class/net/ib0/carrier").read_text() != "1\n":
        if time.monotonic() > deadline:
            raise SystemExit("bench: ib0 has no carrier")
        time.sleep(0.05)
    proc, floor_mp = fuse_floor()
    try:
        targets = {"real": Path("/sys/class/net/lo/mtu"), "floor": floor_mp / "value"}
        targets.update((rel, mp / rel) for rel in MIRROR_FILES)
        rates: dict[str, list[float]] = {name: [] for name in targets}
        for _ in range(ROUNDS):
            for name, path in targets.items():
                rates[name].append(reads_per_second(path))
    finally:
        subprocess.run(["fusermount3", "-u", str(floor_mp)], capture_output=True)
        proc.wait(timeout=10)
        os.rmdir(floor_mp)
    return {name: statistics.median(r) for name, r in rates.items()}


def collect() -> dict:
    """The control surface's figures: create_child against a TUN set up by hand (medians,
    seconds), and the reads per second of mirror_reads."""
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
        reads = mirror_reads(mp, netns)
    finally:
        subprocess.run([IPOIBFS, "umount", str(mp)], capture_output=True)
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)
        os.rmdir(mp)
    return {"rounds": ROUNDS, "create_child_s": statistics.median(child),
            "tun_by_hand_s": statistics.median(base), "reads_per_s": reads}  # fmt: skip


def report(d: dict) -> None:
    """The control-surface section of the bench's output."""
    c_med, b_med = d["create_child_s"], d["tun_by_hand_s"]
    print(f"create_child -> live netdev, median of {N_CHILDREN}: {c_med * 1e3:.2f} ms")
    print(f"TUN + netlink set up by hand, median of {N_CHILDREN}: {b_med * 1e3:.2f} ms")
    print(f"  ratio create_child / by hand: {c_med / b_med:.2f}x")
    med = d["reads_per_s"]
    real, floor = med["real"], med["floor"]
    print(
        f"open-read-close cycles/s, median of {d['rounds']} interleaved rounds of {READ_SECONDS} s:"
    )
    print(f"real sysfs /sys/class/net/lo/mtu: {real:,.0f}")
    print(f"FUSE floor (bench/fuse_floor.py, one constant file): {floor:,.0f}"
          f" ({floor / real:.3f}x real sysfs)")  # fmt: skip
    for rel in MIRROR_FILES:
        rate = med[rel]
        print(f"mirror {rel}: {rate:,.0f} ({rate / floor:.2f}x the floor, "
              f"{rate / real:.3f}x real sysfs)")  # fmt: skip


def main() -> int:
    if os.geteuid() != 0:
        print("bench: must be run as root", file=sys.stderr)
        return 1
    report(collect())
    return 0


if __name__ == "__main__":
    sys.exit(main())
