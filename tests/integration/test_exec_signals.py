"""Signals under `ipoibfs exec`: what reaches the launcher reaches the front end the server
forked for it (arping's summary on SIGINT, a killed launcher hangs it up), and nothing is
left running; the real tools' messages name them as the caller did; the exec root and the
launcher refuse what they must."""

from __future__ import annotations

import json
import re
import shutil

from .conftest import REPO, run
from .test_exec import ex, sh

#: Run inside `exec`: the command, with the server's descendants watched (this exec's
#: server: the one in this mount namespace), until they are gone after it ends.
WATCH = r"""
import json, os, subprocess, sys, time

def server():
    mnt = os.stat("/proc/self/ns/mnt").st_ino
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                served = b"ipoibfs.frontends_server" in f.read()
            if served and os.stat(f"/proc/{pid}/ns/mnt").st_ino == mnt:
                return int(pid)
        except OSError:
            pass

def descendants(root):
    children = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(pid))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found

def until(predicate, timeout):
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)
    return predicate()

srv = server()
start = time.monotonic()
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                        text=True)
served = bool(until(lambda: descendants(srv), 3))  # the server forked its front end
out, err = proc.communicate(timeout=30)
elapsed = time.monotonic() - start
left = not until(lambda: not descendants(srv), 3)
print(json.dumps({"rc": proc.returncode, "out": out, "err": err, "elapsed": elapsed,
                  "server": srv, "served": served, "left": descendants(srv) if left else []}))
"""

#: Run inside `exec` after WATCH's functions: arping as a job of its own, Ctrl-Z, fg, Ctrl-C;
#: what each of the launcher and the front end were after each.
JOB_TAIL = r"""
import signal

def state(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]

srv = server()
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, text=True, process_group=0)
assert until(lambda: descendants(srv), 3), "not served"
front_end = descendants(srv)[0]
header = proc.stdout.readline() + proc.stdout.readline()  # a reply: arping is in its loop
states = {}
proc.send_signal(signal.SIGTSTP)
stopped = until(lambda: state(proc.pid) == state(front_end) == "T", 3)
states["stopped"] = [state(proc.pid), state(front_end)]
proc.send_signal(signal.SIGCONT)
until(lambda: "T" not in (state(proc.pid), state(front_end)), 3)
states["continued"] = [state(proc.pid), state(front_end)]
proc.send_signal(signal.SIGINT)
out = header + proc.communicate(timeout=10)[0]
left = not until(lambda: not descendants(srv), 3)
print(json.dumps({"states": states, "rc": proc.returncode, "out": out, "left": left}))
"""
JOB = WATCH.split("srv = server()")[0] + JOB_TAIL

PYTHON = "/usr/bin/python3"
ARPING = ["arping", "-I", "ib0", "198.18.0.2"]
SUMMARY = re.compile(r"Sent (\d+) probes \(1 broadcast\(s\)\)\nReceived (\d+) response\(s\)\n$")


def watched(host: str, *cmd: str) -> dict:
    """The command run inside `exec` on the host, and what the front-end server had left."""
    result = ex(host, PYTHON, "-c", WATCH, *cmd)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["server"], "no front-end server in this exec"
    assert report["served"], "the call did not go through the server"
    assert report["left"] == [], "the front end (or its child) is still running"
    return report


def test_sigint_ends_arping_with_its_summary_and_leaves_nothing(lab):
    lab.up(2)
    report = watched(lab.name(1), "timeout", "-s", "INT", "1", *ARPING)
    assert report["rc"] == 124, report  # timeout's: the command was timed out
    assert report["elapsed"] < 2.5, report
    assert report["out"].startswith("ARPING 198.18.0.2 from 198.18.0.1 ib0\n"), report
    assert "Unicast reply from 198.18.0.2 [" in report["out"]
    assert SUMMARY.search(report["out"]), report
    # iputils' exit status after SIGINT: 0 when every probe sent was answered, else 1
    report = watched(lab.name(1), "timeout", "--preserve-status", "-s", "INT", "1", *ARPING)
    sent, received = map(int, SUMMARY.search(report["out"]).groups())
    assert report["rc"] == int(sent != received), report
    assert report["err"] == ""


def test_sigterm_ends_arping_with_its_summary(lab):
    lab.up(2)
    report = watched(lab.name(1), "timeout", "--preserve-status", "-s", "TERM", "1", *ARPING)
    sent, received = map(int, SUMMARY.search(report["out"]).groups())
    assert report["rc"] == int(sent != received) and sent >= 1, report


def test_a_signal_that_kills_the_front_end_kills_the_launcher_alike(lab):
    """arping does not catch SIGHUP: the served front end dies of it, and so does the
    launcher (a shell's 128 + 1), as the real arping would."""
    lab.up(2)
    report = watched(lab.name(1), "timeout", "--preserve-status", "-s", "HUP", "1", *ARPING)
    assert report["rc"] == 128 + 1, report  # timeout's for a command killed by SIGHUP
    assert not SUMMARY.search(report["out"])
    report = watched(lab.name(1), "sh", "-c", "timeout -s HUP 1 " + " ".join(ARPING) +
                     "; echo status=$?")  # fmt: skip
    assert report["out"].endswith("status=124\n"), report


def test_ctrl_z_stops_the_front_end_with_the_launcher_and_fg_continues_both(lab):
    lab.up(2)
    result = ex(lab.name(1), PYTHON, "-c", JOB, *ARPING)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["states"]["stopped"] == ["T", "T"], report
    assert "T" not in report["states"]["continued"], report
    assert SUMMARY.search(report["out"]) and not report["left"], report


def test_a_killed_launcher_hangs_up_its_front_end(lab):
    """SIGKILL cannot be passed on: the front end sees the launcher's end of the socket
    close, and is hung up (SIGHUP), so nothing runs on."""
    lab.up(2)
    report = watched(lab.name(1), "timeout", "-s", "KILL", "1", *ARPING)
    assert report["rc"] in (-9, 128 + 9), report  # timeout kills its group, itself too
    assert report["elapsed"] < 2.5, report


def test_real_tools_name_themselves_as_the_caller_did(lab):
    lab.up(1)
    h = lab.name(1)
    served = ex(h, "arping", "-c", "1", "-I", "nosuchdev", "198.18.0.2")
    assert served.stderr == "arping: Device nosuchdev not available.\n", served.stderr
    assert served.returncode == 2
    # the Python front end (a caller the server does not take) does the same
    fallback = sh(h, "capsh --drop=cap_net_admin -- -c 'arping -c 1 -I nosuchdev 198.18.0.2'")
    assert fallback.stderr == "arping: Device nosuchdev not available.\n", fallback.stderr


def test_the_exec_root_is_roots_and_the_launcher_knows_its_tools(lab, tmp_path):
    lab.up(1)
    assert ex(lab.name(1), "stat", "-c", "%a %U", "/run/ipoibfs-exec").stdout == "755 root\n"
    launcher = REPO / ".venv" / "bin" / "ipoibfs-frontend"
    fake = tmp_path / "ls"
    shutil.copy(launcher, fake)
    result = run(str(fake), check=False)
    assert result.returncode == 127
    assert "is not a tool with an ipoibfs front end" in result.stderr


def test_long_command_lines_run_whole(lab):
    """A request too long for the server goes to the Python front end; a long command line
    handed back to the launcher reaches the real tool whole."""
    lab.up(1)
    h = lab.name(1)
    big = [f"BIG{i}={'x' * 100_000}" for i in range(3)]  # 300 kB: above MESSAGE_MAX
    result = ex(h, "env", *big, "ip", "-o", "link", "show", "ib0")
    assert result.returncode == 0 and "link/infiniband" in result.stdout, result.stderr
    netns = lab.host(1).netns.name
    many = [str(i) for i in range(6000)]  # more than the launcher's old 4096
    result = ex(h, "ip", "netns", "exec", netns, "sh", "-c", 'echo $# "${6000}"', "sh", *many)
    assert (result.returncode, result.stdout) == (0, "6000 5999\n"), result.stderr
