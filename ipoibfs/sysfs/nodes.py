"""The building blocks of the mirror, in the shape of the driver core's attributes and kernfs.

Attributes are declared once, in module-level tables, as the kernel declares DEVICE_ATTRs:
a name, a mode, `show(ctx, dev)`, `store(ctx, dev, caller, buf)` and a predicate saying which
devices have the file (an attribute_group's is_visible). A directory is a table bound to one
device (`TableDir`), made when a path is looked up; nothing is built per device in advance.

`ctx` is the mirror's one context (sysfs/context.py: the driver, the HCA, the netdevs);
`dev` is the interface, port or HCA the table belongs to. A show that needs the caller (the
kernel's `current`) takes it from `current()`, which fs.py sets for each request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import KernelError

if TYPE_CHECKING:
    from .context import MirrorContext

#: include/uapi/linux/capability.h: the capabilities the mirror's files ask for.
CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21


@dataclass(frozen=True)
class Caller:
    """Who is reading or writing, from the FUSE request."""

    uid: int
    pid: int

    def capable(self, cap: int) -> bool:
        """capable(cap): the capability in the calling thread's effective set."""
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("CapEff:"):
                        return bool(int(line.split()[1], 16) >> cap & 1)
        except OSError:
            pass
        return False

    @property
    def net_admin(self) -> bool:
        """capable(CAP_NET_ADMIN)."""
        return self.capable(CAP_NET_ADMIN)

    @property
    def comm(self) -> str:
        try:
            with open(f"/proc/{self.pid}/comm") as f:
                return f.read().strip()
        except OSError:
            return "?"


#: The caller of the request being served; fs.py sets it around every show and store.
CALLER: ContextVar[Caller] = ContextVar("ipoibfs_sysfs_caller")


def current() -> Caller:
    """The kernel's `current`: who made the request being served (LookupError outside one)."""
    return CALLER.get()


@contextmanager
def serving(caller: Caller):
    """Serve what runs inside as a request of `caller` (for callers other than fs.py)."""
    token = CALLER.set(caller)
    try:
        yield caller
    finally:
        CALLER.reset(token)


# ----------------------------------------------------------------- the table's rows

#: A show returns the file's text, or its bytes when they need not be UTF-8 (ifalias).
Show = Callable[["MirrorContext", Any], "str | bytes | Awaitable[str | bytes]"]
Store = Callable[["MirrorContext", Any, Caller, bytes], "None | Awaitable[None]"]
Present = Callable[[Any], bool]


def always(dev: object) -> bool:
    """Every device of the table has the file."""
    return True


@dataclass(frozen=True, slots=True)
class Attribute:
    """A DEVICE_ATTR: one file of every device `present` accepts.

    `size` is what stat reports (4096 on sysfs, 0 on debugfs). sysfs files check the mode at
    open even for root (KERNFS_ROOT_EXTRA_OPEN_PERM_CHECK); debugfs does not, and refuses a
    write without a write op with EINVAL.
    """

    name: str
    mode: int
    show: Show | None = None
    store: Store | None = None
    present: Present = always
    size: int = 4096
    sysfs: bool = True

    def node(self, ctx: MirrorContext, dev: Any) -> File:
        return File(self, ctx, dev)


@dataclass(frozen=True, slots=True)
class Group:
    """A named attribute_group: a subdirectory of files of the same device (`statistics`)."""

    name: str
    table: Table
    present: Present = always

    def node(self, ctx: MirrorContext, dev: Any) -> TableDir:
        return TableDir(self.table, ctx, dev)


@dataclass(frozen=True, slots=True)
class Link:
    """A symlink of the device (sysfs_create_link), its target made from ctx and dev."""

    name: str
    target: Callable[[MirrorContext, Any], str]
    present: Present = always

    def node(self, ctx: MirrorContext, dev: Any) -> Symlink:
        return Symlink(self.target(ctx, dev))


@dataclass(frozen=True, slots=True)
class Members:
    """A directory of member devices (a kset: class/net/<if>, ports/<N>, gids/<i>), each
    served by `entry` (a Table for a directory, an Attribute for a file) bound to the member.

    `names(ctx, dev)` lists the members, `member(ctx, dev, name)` finds one (None if there is
    no such member), so a lookup costs one member, not the whole directory. A `volatile`
    directory's entries come and go (interfaces); the kernel may cache the names of others.
    """

    name: str
    names: Callable[[MirrorContext, Any], Iterable[str]]
    member: Callable[[MirrorContext, Any, str], Any]
    entry: Table | Attribute | Link  #: a Link: a directory of symlinks, one per member
    volatile: bool = False
    present: Present = always

    def node(self, ctx: MirrorContext, dev: Any) -> MembersDir:
        return MembersDir(self, ctx, dev)


Entry = Attribute | Group | Link | Members


class Table:
    """A device type's files, in order (a kobj_type's groups, concatenated), by name."""

    __slots__ = ("entries", "index")

    def __init__(self, *parts: Iterable[Entry]) -> None:
        self.entries: tuple[Entry, ...] = tuple(e for part in parts for e in part)
        self.index: dict[str, Entry] = {e.name: e for e in self.entries}
        if len(self.index) != len(self.entries):
            raise ValueError("two entries of one table share a name")

    def names(self, dev: Any) -> list[str]:
        """The names `dev` has, in the table's order."""
        return [e.name for e in self.entries if e.present(dev)]

    def node(self, ctx: MirrorContext, dev: Any) -> TableDir:
        return TableDir(self, ctx, dev)


def numbered(name: str, count: Callable[[Any], int], attr: Attribute) -> Members:
    """A directory of files `0` … `count(dev) - 1` (a port_table_attribute array); the file
    `i` is `attr` bound to `(dev, i)`."""

    def names(ctx: MirrorContext, dev: Any) -> Iterable[str]:
        return map(str, range(count(dev)))

    def member(ctx: MirrorContext, dev: Any, entry: str) -> tuple[Any, int] | None:
        if entry.isascii() and entry.isdigit() and str(int(entry)) == entry:
            i = int(entry)
            if i < count(dev):
                return (dev, i)
        return None

    return Members(name, names, member, attr)


# ----------------------------------------------------------------- what fs.py serves


class File:
    """An attribute bound to its device: what a looked-up path names, and an open file holds."""

    __slots__ = ("attr", "ctx", "dev")

    def __init__(self, attr: Attribute, ctx: MirrorContext, dev: Any) -> None:
        self.attr = attr
        self.ctx = ctx
        self.dev = dev


class Dir:
    """A directory, asked afresh on every lookup and listing, so it is never stale."""

    __slots__ = ()
    volatile: bool = False
    mode: int = 0o755

    def names(self) -> Iterable[str]:
        raise NotImplementedError

    def child(self, name: str) -> Node | None:
        raise NotImplementedError


class TableDir(Dir):
    """A device's directory: its table and the device, nothing else."""

    __slots__ = ("table", "ctx", "dev")

    def __init__(self, table: Table, ctx: MirrorContext, dev: Any) -> None:
        self.table = table
        self.ctx = ctx
        self.dev = dev

    def names(self) -> list[str]:
        return self.table.names(self.dev)

    def child(self, name: str) -> Node | None:
        entry = self.table.index.get(name)
        if entry is None:
            return None
        dev = self.dev
        present = entry.present
        if present is not always and not present(dev):
            return None
        if type(entry) is Attribute:  # the common case, without a call of entry.node
            return File(entry, self.ctx, dev)
        return entry.node(self.ctx, dev)


class MembersDir(Dir):
    """A kset's directory: its members, each served by the kset's entry."""

    __slots__ = ("members", "ctx", "dev", "volatile", "_member", "_node")

    def __init__(self, members: Members, ctx: MirrorContext, dev: Any) -> None:
        self.members = members
        self.ctx = ctx
        self.dev = dev
        self.volatile = members.volatile
        self._member = members.member
        self._node = members.entry.node

    def names(self) -> Iterable[str]:
        return self.members.names(self.ctx, self.dev)

    def child(self, name: str) -> Node | None:
        ctx = self.ctx
        member = self._member(ctx, self.dev, name)
        if member is None:
            return None
        return self._node(ctx, member)


class StaticDir(Dir):
    """A directory whose entries never change."""

    __slots__ = ("entries", "mode", "child")

    def __init__(self, entries: Mapping[str, Node], mode: int = 0o755) -> None:
        self.entries = entries
        self.mode = mode
        self.child = entries.get  # type: ignore[method-assign,assignment]  # no frame per lookup

    def names(self) -> Iterable[str]:
        return self.entries.keys()


class FnDir(Dir):
    """A directory given by two functions: its names, and the node of one name."""

    __slots__ = ("_names", "_child", "volatile", "mode")

    def __init__(
        self,
        names: Callable[[], Iterable[str]],
        child: Callable[[str], Node | None],
        *,
        volatile: bool = False,
        mode: int = 0o755,
    ) -> None:
        self._names = names
        self._child = child
        self.volatile = volatile
        self.mode = mode

    def names(self) -> Iterable[str]:
        return self._names()

    def child(self, name: str) -> Node | None:
        return self._child(name)


@dataclass(frozen=True, slots=True)
class Symlink:
    target: str


Node = File | Dir | Symlink


def static(entries: Mapping[str, Node], mode: int = 0o755) -> StaticDir:
    return StaticDir(entries, mode)


# ----------------------------------------------------------------- declaring rows


def ro(name: str, show: Show, present: Present = always, **kw: Any) -> Attribute:
    """DEVICE_ATTR_RO."""
    return Attribute(name, 0o444, show=show, present=present, **kw)


def rw(name: str, show: Show, store: Store, present: Present = always, **kw: Any) -> Attribute:
    """DEVICE_ATTR_RW."""
    return Attribute(name, 0o644, show=show, store=store, present=present, **kw)


def wo(name: str, store: Store, present: Present = always, **kw: Any) -> Attribute:
    """DEVICE_ATTR_WO."""
    return Attribute(name, 0o200, store=store, present=present, **kw)


def const(value: object) -> Show:
    """A show function for a constant: the value and a newline."""
    line = f"{value}\n"
    return lambda ctx, dev: line


def fails(err: int) -> Show:
    """A show function that always refuses with `err`."""

    def show(ctx: MirrorContext, dev: Any) -> str:
        raise KernelError(err)

    return show
