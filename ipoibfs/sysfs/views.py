"""What `ipoibfs exec` mounts over /sys: the mirror's entries merged with the real ones.

sysfs refuses new directories and children appear while a script runs, so exec cannot bind
a few directories into a real /sys. Instead it mounts these views over /sys/class,
/sys/module and /sys/kernel/debug. Each lists the emulated entries plus every real one; a real
entry is a symlink into a private mount of the real sysfs (or debugfs) that exec makes in its
own mount namespace, at REAL_SYS (REAL_DEBUG), so programs reach it unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

from ..state import REAL_DEBUG, REAL_SYS
from .nodes import Dir, FnDir, Node, Symlink

__all__ = ["REAL_DEBUG", "REAL_SYS", "listing", "merged"]


def listing(path: str) -> Callable[[], list[str]]:
    """The entries of a real directory, or none if it cannot be read."""

    def names() -> list[str]:
        try:
            return os.listdir(path)
        except OSError:
            return []

    return names


def merged(emulated: Dir, real: Callable[[], Iterable[str]], real_dir: str) -> Dir:
    """The emulated entries, then every real one not shadowed, as a symlink into real_dir."""

    def names() -> list[str]:
        ours = list(emulated.names())
        taken = set(ours)
        return ours + sorted(n for n in real() if n not in taken)

    def child(name: str) -> Node | None:
        node = emulated.child(name)
        if node is None and name in real():
            node = Symlink(f"{real_dir}/{name}")
        return node

    return FnDir(names, child, volatile=True, mode=emulated.mode)
