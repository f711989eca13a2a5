"""make soak: memory and file descriptors of a lab's daemons under churn, for a bounded time.

A two-host lab is churned for SOAK_SECONDS (default 600): P_Key children made through
create_child and `ip link add`, brought up, switched to connected mode and back, pinged
through, read in the mirror (every file of ib0 and its statistics, the debugfs files), and
deleted; IP multicast groups joined and left. Every SOAK_SAMPLE seconds (default 30) the RSS
and the open fds of each host daemon and of the subnet manager are sampled. Then the lab
idles for WARMUP seconds and is sampled once more.

Warm-up is the first WARMUP (120) seconds: by then every part of a host's life has run at
least once, including the ones that wait for time (the neighbour reaper's 30 s ticks and its
removal of entries unused for 60-90 s, with their RC connections and send-only groups; the
daemon's 30 s return of freed heap). The idle period is as long, so that what the churn made
has aged out.

It reports, per process: the figures after the first sample and after the warm-up, the
largest, the last under churn and after the idle period, and the growth after warm-up
(goal: at most 1 MB, and back to the warm-up figure once the churn stops).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from ipoibfs.state import state_file

REPO = Path(__file__).resolve().parents[1]
IPOIBFS = str(REPO / ".venv" / "bin" / "ipoibfs")
SECONDS = float(os.environ.get("SOAK_SECONDS", "600"))
SAMPLE = float(os.environ.get("SOAK_SAMPLE", "30"))
WARMUP = 120.0


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def read_tree(root: Path) -> None:
    """Every readable file under root, as a monitoring agent would scrape it."""
    for path in root.rglob("*"):
        try:
            if path.is_file() and not path.is_symlink():
                path.read_bytes()
        except OSError:
            pass


def churn_once(prefix: str, i: int) -> None:
    h1, h2 = f"{prefix}-h1", f"{prefix}-h2"
    m1 = Path("/run/ipoibfs") / h1
    pkey = 0x8000 | (1 + i % 0x7FF0)
    (m1 / "class/net/ib0/create_child").write_text(f"{pkey:#x}\n")
    child = f"ib0.{pkey:04x}"
    sh("ip", "-n", h1, "link", "set", child, "up")
    (m1 / f"class/net/{child}/mode").write_text("connected\n")
    sh(IPOIBFS, "link", h1, "add", "link", "ib0", "name", "soak", "type", "ipoib",
       "pkey", f"{pkey ^ 0x1:#x}", check=False)  # fmt: skip
    (m1 / "class/net/ib0/mode").write_text("connected\n")
    sh("ip", "netns", "exec", h1, "ping", "-c", "3", "-i", "0.05", "-W", "1", "198.18.0.2",
       check=False)  # fmt: skip
    (m1 / "class/net/ib0/mode").write_text("datagram\n")
    sh("ip", "netns", "exec", h2, "ping", "-c", "3", "-i", "0.05", "-W", "1", "-I", "ib0",
       "224.0.0.1", check=False)  # fmt: skip
    group = f"239.1.{i % 250}.1"
    sh("ip", "-n", h1, "maddr", "add", "01:00:5e:01:01:01", "dev", "ib0", check=False)
    sh("ip", "netns", "exec", h1, "ping", "-c", "1", "-W", "1", group, check=False)
    read_tree(m1 / "class/net/ib0")
    read_tree(m1 / "kernel/debug/ipoib")
    sh(IPOIBFS, "link", h1, "del", "soak", check=False)
    (m1 / "class/net/ib0/delete_child").write_text(f"{pkey:#x}\n")


def main() -> int:
    if os.geteuid() != 0:
        print("soak: must be run as root", file=sys.stderr)
        return 1
    prefix = f"soak{uuid.uuid4().hex[:4]}"
    sh(IPOIBFS, "lab", "up", "--hosts", "2", "--prefix", prefix)
    try:
        registry = json.loads(Path(f"/run/ipoibfs/{prefix}-lab.json").read_text())
        pids = {"SM": registry["fabric_pid"]}
        for h in (1, 2):
            name = f"{prefix}-h{h}"
            pid_file = Path(state_file(f"/run/ipoibfs/{name}", "pid"))
            pids[name] = int(pid_file.read_text().split()[0])
        samples: dict[str, list[tuple[int, int]]] = {p: [] for p in pids}
        times: list[float] = []

        def sample() -> None:
            times.append(time.monotonic() - start)
            for name, pid in pids.items():
                samples[name].append((rss_kib(pid), fds(pid)))

        start = time.monotonic()
        next_sample = start + SAMPLE
        i = 0
        print(f"soak: {SECONDS:.0f} s of churn on lab {prefix}, a sample every {SAMPLE:.0f} s")
        while time.monotonic() - start < SECONDS:
            churn_once(prefix, i)
            i += 1
            if time.monotonic() >= next_sample:
                sample()
                next_sample += SAMPLE
                line = ", ".join(f"{n} {s[-1][0] / 1024:.1f} MB {s[-1][1]} fds"
                                 for n, s in samples.items())  # fmt: skip
                print(f"  {times[-1]:5.0f} s, {i} rounds: {line}", flush=True)
        end = len(times) - 1
        print(f"idle for {WARMUP:.0f} s", flush=True)
        time.sleep(WARMUP)
        sample()
        warm = next((k for k, t in enumerate(times) if t >= WARMUP), 0)
        print(f"after {i} rounds of churn and {WARMUP:.0f} s idle:")
        print(f"  {'process':14} {'first':>9} {'warm-up':>9} {'largest':>9} {'churn end':>9}"
              f" {'idle':>9} {'growth':>8} {'fds':>13}")  # fmt: skip
        for name, s in samples.items():
            mb = [r / 1024 for r, _ in s]
            print(f"  {name:14} {mb[0]:7.1f}MB {mb[warm]:7.1f}MB {max(mb):7.1f}MB "
                  f"{mb[end]:7.1f}MB {mb[-1]:7.1f}MB {mb[end] - mb[warm]:+6.2f}MB "
                  f"{s[0][1]:>5} -> {s[-1][1]:<5}")  # fmt: skip
    finally:
        sh(IPOIBFS, "lab", "down", "--prefix", prefix, check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
