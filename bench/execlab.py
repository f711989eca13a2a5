"""What bench/frontends.py and bench/mad.py share: a lab of their own, scripts timed inside one
`ipoibfs exec` on its first host, and the lab removed whatever happens."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
IPOIBFS = str(REPO / ".venv" / "bin" / "ipoibfs")

#: The head of every script run under exec: `timed(argv)`, seconds of one run of argv.
TIMED = r"""
import json, os, statistics, subprocess, sys, time
def timed(argv):
    t0 = time.perf_counter()
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if done.returncode:
        raise SystemExit(f"{argv} exited {done.returncode}")
    return time.perf_counter() - t0
"""


@contextlib.contextmanager
def lab(hosts: int, name: str) -> Iterator[str]:
    """A lab of `hosts` hosts with a prefix of its own (yielded), down at the end."""
    prefix = f"bench{name}{uuid.uuid4().hex[:4]}"
    up = subprocess.run([IPOIBFS, "lab", "up", "--hosts", str(hosts), "--prefix", prefix],
                        capture_output=True, text=True)  # fmt: skip
    try:
        if up.returncode:
            raise SystemExit(f"bench: lab up failed: {up.stderr.strip()}")
        yield prefix
    finally:
        subprocess.run([IPOIBFS, "lab", "down", "--prefix", prefix], capture_output=True)


def run_timed(prefix: str, script: str, what: str, *args: str) -> Any:
    """TIMED + script, run by this Python inside `ipoibfs exec` on the lab's h1 with
    `args`; what it prints, as JSON."""
    result = subprocess.run([IPOIBFS, "exec", f"{prefix}-h1", "--", sys.executable, "-c",
                             TIMED + script, *args], capture_output=True, text=True)  # fmt: skip
    if result.returncode:
        raise SystemExit(f"bench: {what} failed: {result.stderr.strip()}")
    return json.loads(result.stdout)
