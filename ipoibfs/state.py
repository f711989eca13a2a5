"""Where each host's daemon keeps its pid, log and namespace name, and whether it still runs."""

from __future__ import annotations

import os

STATE_DIR = "/run/ipoibfs/daemons"
#: Where `ipoibfs exec` mounts its private tmpfs, with the real sysfs and debugfs inside
#: (hostexec.py mounts them; the mirror's exec views, sysfs/views.py, link their real
#: entries there).
EXEC_ROOT = "/run/ipoibfs-exec"
REAL_SYS = f"{EXEC_ROOT}/sys"
REAL_DEBUG = f"{EXEC_ROOT}/debug"


def state_file(mountpoint: str, suffix: str) -> str:
    """/run/ipoibfs/daemons/<escaped mountpoint>.<suffix>, escaped as systemd-escape --path."""
    escaped = os.path.abspath(mountpoint).strip("/").replace("-", "\\x2d").replace("/", "-")
    return os.path.join(STATE_DIR, f"{escaped or '-'}.{suffix}")


def pid_alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except OSError:
        return False
