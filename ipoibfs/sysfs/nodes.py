"""The building blocks of the mirror: attributes, directories and links, as kernfs has them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from ..errors import KernelError

CAP_NET_ADMIN = 12


@dataclass(frozen=True)
class Caller:
    """Who is reading or writing, from the FUSE request."""

    uid: int
    pid: int

    @property
    def net_admin(self) -> bool:
        """capable(CAP_NET_ADMIN): the effective set of the calling thread."""
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("CapEff:"):
                        return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
        except OSError:
            pass
        return False

    @property
    def comm(self) -> str:
        try:
            with open(f"/proc/{self.pid}/comm") as f:
                return f.read().strip()
        except OSError:
            return "?"


Show = Callable[[Caller], "str | Awaitable[str]"]
Store = Callable[[Caller, bytes], "None | Awaitable[None]"]


@dataclass(frozen=True)
class Attr:
    """A DEVICE_ATTR: a mode, a show function and a store function.

    `size` is what stat reports (4096 on sysfs, 0 on debugfs). sysfs files check the
    mode at open even for root (KERNFS_ROOT_EXTRA_OPEN_PERM_CHECK); debugfs does not,
    and refuses a write without a write op with EINVAL.
    """

    mode: int
    show: Show | None = None
    store: Store | None = None
    size: int = 4096
    sysfs: bool = True


@dataclass(frozen=True)
class Dir:
    """A directory asked afresh on every lookup and listing, so it is never stale.

    `names` lists the entries; `child` builds the one node asked for, so a lookup costs
    one entry, not the whole directory. A `volatile` directory's entries come and go
    (interfaces); the kernel may cache the names of any other directory.
    """

    names: Callable[[], Iterable[str]]
    child: Callable[[str], Node | None]
    volatile: bool = False
    mode: int = 0o755


@dataclass(frozen=True)
class Symlink:
    target: str


Node = Attr | Dir | Symlink


def static(entries: dict[str, Node], mode: int = 0o755) -> Dir:
    """A directory whose entries never change."""
    return Dir(entries.keys, entries.get, mode=mode)


def ro(show: Show, **kw) -> Attr:
    return Attr(0o444, show=show, **kw)


def rw(show: Show, store: Store, **kw) -> Attr:
    return Attr(0o644, show=show, store=store, **kw)


def wo(store: Store, **kw) -> Attr:
    return Attr(0o200, store=store, **kw)


def const(value: object) -> Show:
    """A show function for a constant: the value and a newline."""
    line = f"{value}\n"
    return lambda caller: line


def fails(err: int) -> Show:
    """A show function that always refuses with `err`."""

    def show(caller: Caller) -> str:
        raise KernelError(err)

    return show
