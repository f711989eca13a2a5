"""`lab up` of a dozen hosts started in parallel from one warm parent: progress lines and a
summary, every host reaches the others, each daemon is a daemon of its own, `lab down`
removes everything; a host that cannot start stops `lab up`, which cleans up."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

from .conftest import IPOIBFS, daemon_pid, is_mounted, run, wait_for

N = 12
SECONDS = r"\d+\.\d s"


def pings(lab, pairs: list[tuple[int, int]]) -> dict[tuple[int, int], bool]:
    """One ping per pair, all at once."""
    procs = {
        (a, b): subprocess.Popen(
            ["ip", "netns", "exec", lab.name(a), "ping", "-c", "1", "-W", "2", f"198.18.0.{b}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for a, b in pairs
    }
    return {pair: proc.wait() == 0 for pair, proc in procs.items()}


def test_a_dozen_hosts_in_parallel_with_progress_and_a_summary(lab):
    up = lab.ipoibfs("up", "--hosts", str(N), check=False)
    assert up.returncode == 0, up.stderr
    # not a terminal: one line per phase, then the summary on stdout
    assert re.fullmatch(
        f"lab up: fabric started, {SECONDS}\nlab up: {N}/{N} hosts started, {SECONDS}\n",
        up.stderr,
    ), up.stderr
    summary = up.stdout.splitlines()[0]
    assert re.fullmatch(
        rf"lab up: {lab.name(1)} … {lab.name(N)}; fabric at \S+ \({N} host\(s\) in {SECONDS}\)",
        summary,
    ), summary
    for i in range(1, N + 1):
        lab.host(i).wait_carrier()
    pairs = sorted({(1, b) for b in range(2, N + 1)} | {(a, a % N + 1) for a in range(2, N + 1)})
    assert all(pings(lab, pairs).values())

    pids = [daemon_pid(Path("/run/ipoibfs") / lab.name(i)) for i in range(1, N + 1)]
    assert len(set(pids)) == N
    for pid in pids:
        assert os.getsid(pid) == pid  # a session of its own, as `mount` makes it

    # one host crashes: the others do not notice; `umount` stops another
    os.kill(pids[N - 1], signal.SIGKILL)
    wait_for(lambda: not os.path.exists(f"/proc/{pids[N - 1]}"), what="last host killed")
    mp = Path("/run/ipoibfs") / lab.name(N - 1)
    run(IPOIBFS, "umount", str(mp))
    assert not is_mounted(mp)
    assert all(pings(lab, [(1, 2), (2, 3), (3, 1)]).values())

    down = lab.ipoibfs("down")
    assert re.fullmatch(
        f"lab down: {N}/{N} hosts stopped, {SECONDS}\n"
        f"lab down: mounts and namespaces removed, {SECONDS}\n"
        f"lab down: fabric stopped, {SECONDS}\n",
        down.stderr,
    ), down.stderr
    assert re.fullmatch(rf"lab down: removed {N} host\(s\) and the fabric in {SECONDS}\n",
                        down.stdout)  # fmt: skip
    for pid in pids:
        wait_for(lambda p=pid: not os.path.exists(f"/proc/{p}"), what=f"pid {pid} exit")
    assert not [n for n in run("ip", "netns", "list").stdout.split() if n.startswith(lab.prefix)]
    assert not list(Path("/run/ipoibfs").glob(f"{lab.prefix}-*"))
    assert not list(Path("/run/ipoibfs/daemons").glob(f"*{lab.prefix}*"))


def test_a_host_that_cannot_start_stops_lab_up_and_nothing_stays(lab):
    blocker = Path("/run/ipoibfs") / lab.name(5)
    blocker.write_text("not a directory\n")  # host 5's mount point cannot be made
    try:
        up = lab.ipoibfs("up", "--hosts", "6", check=False)
    finally:
        blocker.unlink()
    assert up.returncode == 1
    error = up.stderr.splitlines()[-1]
    assert error.startswith(f"ipoibfs: {lab.name(5)}: mount point {blocker}: "), up.stderr
    assert "Traceback" not in up.stderr
    assert not Path(f"/run/ipoibfs/{lab.prefix}-lab.json").exists()
    assert not [n for n in run("ip", "netns", "list").stdout.split() if n.startswith(lab.prefix)]
    assert not list(Path("/run/ipoibfs").glob(f"{lab.prefix}-*"))
    assert not list(Path("/run/ipoibfs/daemons").glob(f"*{lab.prefix}*"))
