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
from .nodes import Dir, FnDir, Node, StaticDir, Symlink

__all__ = ["REAL_DEBUG", "REAL_SYS", "MergedDir", "listing", "merged", "merged_tree"]


class MergedDir(FnDir):
    """A view's directory. Its real entries come and go without the mirror hearing of it,
    so the kernel is told to ask for each of its names on every walk (fs.py)."""

    __slots__ = ()


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

    return MergedDir(names, child, volatile=True, mode=emulated.mode)


def merged_tree(emulated: Dir, path: str) -> Dir:
    """merged() at every level where the emulated tree has static directories (bus/,
    bus/pci/, bus/pci/devices/, bus/pci/drivers/), so that the emulated entries sit among
    the real ones all the way down; what lies below those is the mirror's alone."""
    if isinstance(emulated, StaticDir):
        entries = {
            name: merged_tree(node, f"{path}/{name}") if isinstance(node, StaticDir) else node
            for name, node in emulated.entries.items()
        }
        emulated = StaticDir(entries, emulated.mode)
    return merged(emulated, listing(f"/sys/{path}"), f"{REAL_SYS}/{path}")
