"""make bench: what the `ip` and `ethtool` front ends of `ipoibfs exec` cost over the real tools.

A one-host lab; inside one `ipoibfs exec` the same command runs through the front end (bound
over /usr/bin/ip and ethtool) and through the real binary the front end keeps under the exec
root, interleaved, FRONTEND_ROUNDS times each (default 50). Medians, and the difference.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IPOIBFS = str(REPO / ".venv" / "bin" / "ipoibfs")
ROUNDS = int(os.environ.get("FRONTEND_ROUNDS", "50"))
COMMANDS = (
    ("ip", "link", "show", "ib0"),
    ("ip", "addr"),
    ("ip", "-d", "addr", "show", "ib0"),
    ("ip", "route"),
    ("ethtool", "ib0"),
    ("ethtool", "-i", "ib0"),
    ("ethtool", "-k", "ib0"),
)

#: Runs inside `ipoibfs exec`: times each command both ways and prints JSON.
INNER = r"""
import json, os, statistics, subprocess, sys, time
root = "/run/ipoibfs-exec"
real = {}
for name in sorted(os.listdir(root)):
    if name.startswith("real") and "-" in name:
        real.setdefault(name.split("-", 1)[1], os.path.join(root, name))
commands, rounds = json.loads(sys.argv[1]), int(sys.argv[2])
def timed(argv):
    t0 = time.perf_counter()
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if done.returncode:
        raise SystemExit(f"{argv} exited {done.returncode}")
    return time.perf_counter() - t0
out = []
for argv in commands:
    ours, theirs = [], []
    for _ in range(3):  # warm both (page cache, bytecode)
        timed(argv); timed([real[argv[0]], *argv[1:]])
    for _ in range(rounds):
        ours.append(timed(argv))
        theirs.append(timed([real[argv[0]], *argv[1:]]))
    out.append([argv, statistics.median(ours), statistics.median(theirs)])
print(json.dumps(out))
"""


def collect() -> list[dict]:
    """Per command: its front end's and the real tool's median times in seconds."""
    prefix = f"benchfe{uuid.uuid4().hex[:4]}"
    up = subprocess.run([IPOIBFS, "lab", "up", "--hosts", "1", "--prefix", prefix],
                        capture_output=True, text=True)  # fmt: skip
    try:
        if up.returncode:
            raise SystemExit(f"bench: lab up failed: {up.stderr.strip()}")
        result = subprocess.run(
            [IPOIBFS, "exec", f"{prefix}-h1", "--", sys.executable, "-c", INNER,
             json.dumps(COMMANDS), str(ROUNDS)],
            capture_output=True, text=True)  # fmt: skip
        if result.returncode:
            raise SystemExit(f"bench: the front ends' timing failed: {result.stderr.strip()}")
        return [{"command": " ".join(argv), "front_end_s": ours, "real_s": theirs}
                for argv, ours, theirs in json.loads(result.stdout)]  # fmt: skip
    finally:
        subprocess.run([IPOIBFS, "lab", "down", "--prefix", prefix], capture_output=True)


def report(rows: list[dict]) -> None:
    print(f"front ends under ipoibfs exec, median of {ROUNDS} (interleaved with the real tool)")
    print(f"  {'command':<28} {'front end':>10} {'real tool':>10} {'difference':>11}")
    for row in rows:
        ours, theirs = row["front_end_s"], row["real_s"]
        print(f"  {row['command']:<28} {ours * 1e3:>7.2f} ms {theirs * 1e3:>7.2f} ms "
              f"{(ours - theirs) * 1e3:>+8.2f} ms")  # fmt: skip


def main() -> int:
    report(collect())
    return 0


if __name__ == "__main__":
    sys.exit(main())
