"""Scale of `ipoibfs lab`: lab up and lab down times and memory per host daemon at 16 and 64
hosts, and at 256 with BENCH_SCALE=256 (it takes minutes), each with a reachability check.

- up_s / down_s: wall time of `ipoibfs lab up --hosts N` / `lab down` (issue 14's goals at
  256 hosts: 60 s and 30 s);
- PSS per host daemon (/proc/PID/smaps_rollup, shared pages divided among their sharers),
  median and max, goal 25 MB;
- reachability: every pair up to 500 pairs, else a sample of 500 random pairs, plus host 1 to
  every host; `ping -c 1 -W 2` from inside the namespaces, all pings of one source host in
  one shell, every source at once, in waves of WAVE pairs. A pair that fails is tried once
  more (the first ping also resolves the neighbour and the path): `pairs_ok` counts pairs
  that pinged in either try, `pairs_retried` those that needed the second.

The machine is shared: each figure comes with the load average before the run.
"""

from __future__ import annotations

import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

from ipoibfs.lab import Lab, host_addresses
from ipoibfs.state import read_file, state_file

REPO = Path(__file__).resolve().parents[1]
IPOIBFS = [str(REPO / ".venv" / "bin" / "ipoibfs")]
PREFIX = "bsc"
SAMPLE_PAIRS = 500
#: Pairs pinged at once: each first ping's ARP request is a broadcast every host's daemon
#: receives, so a few hundred at once on 2 CPUs would outlast ping's 2 s.
WAVE = 100
SCALES = (16, 64, 256) if os.environ.get("BENCH_SCALE") == "256" else (16, 64)


def lab(*args: str) -> float:
    """Run `ipoibfs lab ARGS --prefix bsc`; its wall time."""
    t0 = time.perf_counter()
    result = subprocess.run([*IPOIBFS, "lab", *args, "--prefix", PREFIX],
                            capture_output=True, text=True)  # fmt: skip
    elapsed = time.perf_counter() - t0
    if result.returncode != 0:
        raise SystemExit(f"bench: lab {args[0]}: {result.stderr.strip()}")
    return elapsed


def pss_kb(pid: int) -> int:
    for line in (read_file(f"/proc/{pid}/smaps_rollup") or "").splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    raise SystemExit(f"bench: no PSS for pid {pid}")


def daemon_pss_mb(up: Lab) -> list[float]:
    sizes = []
    for host in up.hosts:
        text = read_file(state_file(host.mountpoint, "pid")) or ""
        sizes.append(pss_kb(int(text.split()[0])) / 1024)
    return sizes


def pairs_to_check(n: int, rng: random.Random) -> list[tuple[int, int]]:
    """Host indices (source, destination): all pairs up to SAMPLE_PAIRS, else a random
    sample of SAMPLE_PAIRS; and host 1 to every other host."""
    every = [(a, b) for a in range(1, n + 1) for b in range(1, n + 1) if a != b]
    chosen = set(every if len(every) <= SAMPLE_PAIRS else rng.sample(every, SAMPLE_PAIRS))
    chosen.update((1, b) for b in range(2, n + 1))
    return sorted(chosen)


def ping_pairs(up: Lab, pairs: list[tuple[int, int]]) -> set[tuple[int, int]]:
    """The pairs that answered one ping, WAVE pairs at a time."""
    ok: set[tuple[int, int]] = set()
    for start in range(0, len(pairs), WAVE):
        ok |= ping_wave(up, pairs[start : start + WAVE])
    return ok


def ping_wave(up: Lab, pairs: list[tuple[int, int]]) -> set[tuple[int, int]]:
    """The pairs that answered one ping, all sources at once."""
    n = len(up.hosts)
    by_source: dict[int, list[int]] = {}
    for a, b in pairs:
        by_source.setdefault(a, []).append(b)
    procs = []
    for a, dests in by_source.items():
        script = " ".join(
            f"(ping -c 1 -W 2 -q {host_addresses(b, n)[0].split('/')[0]} >/dev/null 2>&1 "
            f"&& echo {b}) &"
            for b in dests
        )
        cmd = ["ip", "netns", "exec", up.hosts[a - 1].netns, "sh", "-c", script + " wait"]
        procs.append((a, subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)))
    ok = set()
    for a, proc in procs:
        out, _ = proc.communicate()
        ok.update((a, int(b)) for b in out.split())
    return ok


def measure(hosts: int) -> dict:
    """One lab of `hosts` hosts: up, memory, reachability, down."""
    if Lab.load(PREFIX) is not None:
        lab("down")
    load = os.getloadavg()[0]
    up_s = lab("up", "--hosts", str(hosts))
    try:
        up = Lab.load(PREFIX)
        assert up is not None
        pss = daemon_pss_mb(up)
        pairs = pairs_to_check(hosts, random.Random(hosts))
        random.Random(0).shuffle(pairs)  # a wave mixes sources
        ok = ping_pairs(up, pairs)
        failed = [p for p in pairs if p not in ok]
        again = ping_pairs(up, failed) if failed else set()
    finally:
        down_s = lab("down")
    return {
        "hosts": hosts,
        "up_s": up_s,
        "down_s": down_s,
        "pss_mb_median": statistics.median(pss),
        "pss_mb_max": max(pss),
        "pairs_checked": len(pairs),
        "pairs_ok": len(ok) + len(again),
        "pairs_retried": len(again),
        "load_before": load,
    }


def report(results: list[dict]) -> None:
    print(f"{'hosts':>5} {'up s':>7} {'down s':>7} {'PSS MB med':>10} {'PSS max':>8} "
          f"{'pairs ok':>13} {'retried':>7} {'load':>5}")  # fmt: skip
    for r in results:
        print(f"{r['hosts']:>5} {r['up_s']:>7.1f} {r['down_s']:>7.1f} "
              f"{r['pss_mb_median']:>10.1f} {r['pss_mb_max']:>8.1f} "
              f"{r['pairs_ok']:>6}/{r['pairs_checked']:<6} {r['pairs_retried']:>7} "
              f"{r['load_before']:>5.2f}")  # fmt: skip
    print(
        f"({os.cpu_count()} CPUs; load: the 1-minute load average before each lab up; "
        "goals at 256 hosts: up <= 60 s, down <= 30 s, PSS <= 25 MB)"
    )


def main() -> int:
    if os.geteuid() != 0:
        print("bench: must be run as root", file=sys.stderr)
        return 1
    results = []
    for n in SCALES:
        results.append(measure(n))
        print(f"  {n} hosts: {results[-1]}", flush=True)
    report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
