"""pyfuse3 glue: serves a tree of nodes with sysfs semantics. No state beyond inode numbers.

Inode numbers follow the FUSE protocol's lookup counts: every entry a lookup returns, and
every entry of a listing that pyfuse3.readdir_reply accepted, counts one; forget subtracts
the kernel's nlookup, and an inode whose count reaches zero is dropped (the kernel no longer
knows it), so the maps hold only what the kernel holds. The root is never dropped.
"""

from __future__ import annotations

import errno
import functools
import inspect
import itertools
import os
import stat
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import pyfuse3
import trio

from ..errors import KernelError, report_bug
from .nodes import CALLER, Caller, Dir, File, Node, Symlink
from .request import writer
from .views import MergedDir

FUSE_OPTIONS = {"fsname=ipoibfs", "subtype=ipoibfs", "allow_other", "default_permissions"}
#: How long the kernel may keep a name, and a node's attributes, before it asks again. A
#: name that goes away (an interface, a queue, a file of a mode) is invalidated when it does
#: (SysfsOperations.tree_changed and the settling after every write), so this bounds nothing
#: that can be seen. Only the names of `ipoibfs exec`'s views, which list the real /sys too,
#: are asked for on every walk (timeout 0). A file's data is never cached (direct I/O).
STABLE_ENTRY_SECONDS = 300.0
STABLE_ATTR_SECONDS = 300.0
ROOT_INODE = pyfuse3.ROOT_INODE


#: kernfs_fop_write_iter hands a store at most PAGE_SIZE bytes (then a NUL): a longer write
#: is a short write of this many bytes, and the caller writes the rest in another call.
PAGE_SIZE = 4096


class _OpenFile:
    """One open() of an attribute, bound to the file it opened (kernfs's open file): its path
    and node, whose device is the object the path named then; and the seq_file's buffer."""

    __slots__ = ("node", "path", "caller", "buffer", "read_pos", "generation")

    def __init__(self, node: File, path: tuple[str, ...], caller: Caller, generation: int) -> None:
        self.node = node
        self.path = path
        self.caller = caller
        #: The tree's generation when the node was last found at its path.
        self.generation = generation
        #: What the last show produced (None before the first read), and where the last read
        #: ended: a read from there goes on in the buffer, any other offset shows afresh.
        self.buffer: bytes | None = None
        self.read_pos = 0


def _same_device(a: object, b: object) -> bool:
    """The same device object (a numbered file's device is a (device, index) pair)."""
    if a is b:
        return True
    if type(a) is tuple and type(b) is tuple and len(a) == len(b):
        return all(x is y or (type(x) is int and x == y) for x, y in zip(a, b, strict=True))
    return False


def _invalidate(entries: Sequence[tuple[int, bytes]]) -> None:
    """invalidate_entry for each (a worker thread's job: it blocks)."""
    for parent, name in entries:
        try:
            pyfuse3.invalidate_entry(parent, name)
        except OSError:
            pass  # ENOENT: the kernel had already dropped it; or the mount is going away


Handler = TypeVar("Handler", bound=Callable[..., Awaitable[Any]])


def _guarded(handler: Handler) -> Handler:
    """pyfuse3 answers a FUSEError and lets anything else end its loop (and the host): a
    KernelError becomes its errno, and a bug costs the caller an EIO, with its traceback in
    the daemon's log."""

    @functools.wraps(handler)
    async def run(*args: Any) -> Any:
        try:
            return await handler(*args)
        except pyfuse3.FUSEError:
            raise
        except KernelError as e:
            raise pyfuse3.FUSEError(e.errno) from None
        except Exception:
            report_bug(f"the mirror's {handler.__name__} failed")
            raise pyfuse3.FUSEError(errno.EIO) from None

    return run  # type: ignore[return-value]


class SysfsOperations(pyfuse3.Operations):
    """Lookups walk the tree from the root each time: the tree is the only truth."""

    def __init__(self, root: Dir) -> None:
        super().__init__()
        self.root = root
        self._paths: dict[int, tuple[str, ...]] = {ROOT_INODE: ()}
        self._inodes: dict[tuple[str, ...], int] = {(): ROOT_INODE}
        #: The kernel's lookup count of every inode but the root.
        self._lookups: dict[int, int] = {}
        self._next_inode = itertools.count(ROOT_INODE + 1)
        self._files: dict[int, _OpenFile] = {}
        self._next_fh = itertools.count(1)
        self._stamp = time.time_ns()
        #: tree_changed counts the changes; _settle records the count its sweep began at.
        self._changes = 0
        self._settled = 0
        #: Bumped whenever what a path resolves to may have changed: an interface came or
        #: went (tree_changed) or a store ran (a mode's queues). Until it moves, a path
        #: resolves as it did, so open takes the node it found last (_opened) and read
        #: needs no new walk to know its file is still there (_active).
        self._generation = 0
        #: Whether tree_changed is called on every change (follow): without it, every
        #: open and read walks its path afresh.
        self._followed = False
        self._opened: dict[int, File] = {}
        self._callers: dict[tuple[int, int], Caller] = {}

    # ------------------------------------------------------------- names that go away

    def follow(
        self, watch: Callable[[Callable[[], None]], Callable[[], None]]
    ) -> Callable[[], None]:
        """Have `watch` call tree_changed on every change of the interfaces (MirrorContext.watch);
        returns what stops it."""
        unwatch = watch(self.tree_changed)
        self._followed = True

        def stop() -> None:
            self._followed = False
            self._moved()
            unwatch()

        return stop

    def tree_changed(self) -> None:
        """The driver registered or unregistered an interface (the driver's watcher, called
        on the trio thread from inside whatever request or event made the change).

        Every name the kernel holds that no longer resolves is invalidated in the background
        at once (invalidate_entry_async: pyfuse3's notify thread, so the request being
        served, which may be a lookup in the very directory, is never waited for), and for
        certain before the next write or opendir replies (_settle)."""
        try:
            self._changes += 1
            self._moved()
            for parent, name in self._gone():
                pyfuse3.invalidate_entry_async(parent, name, ignore_enoent=True)
        except Exception:
            report_bug("the mirror's invalidation failed")

    def _moved(self) -> None:
        self._generation += 1
        self._opened.clear()

    def _gone(self) -> list[tuple[int, bytes]]:
        """(parent inode, name) of every name the kernel holds that no longer resolves;
        below a name that went, nothing more (the kernel drops the subtree with it)."""
        gone: list[tuple[int, bytes]] = []
        missing: set[tuple[str, ...]] = set()
        for path in sorted(self._inodes, key=len):
            if not path:
                continue
            parent = path[:-1]
            if parent in missing:
                missing.add(path)
                continue
            try:
                self._resolve(path)
            except pyfuse3.FUSEError:
                missing.add(path)
                parent_ino = self._inodes.get(parent)
                if parent_ino is not None:
                    gone.append((parent_ino, os.fsencode(path[-1])))
        return gone

    async def _settle(self) -> None:
        """Invalidate every name that went, and wait until the kernel has dropped them.

        Called by write (a store may take names away: delete_child, a mode's queues) and
        by opendir after a change, before they reply, so that whoever saw the change (the
        write returned, the listing lacks the name) finds the name gone. The blocking
        invalidate_entry runs on a worker thread while the trio thread goes on serving:
        the kernel takes the parent directory's lock for it, which a lookup or readdir in
        that directory holds until its reply. Neither caller holds such a lock itself: a
        write holds its file's, an opendir none."""
        changes = self._changes
        gone = self._gone()
        if gone:
            await trio.to_thread.run_sync(_invalidate, gone, abandon_on_cancel=True)
        self._settled = changes

    # ------------------------------------------------------------- inode numbers

    def _remember(self, path: tuple[str, ...], ino: int | None = None) -> int:
        """Count one lookup of `path` (numbered `ino` if it has no number yet)."""
        known = self._inodes.get(path)
        if known is None:
            known = next(self._next_inode) if ino is None else ino
            self._inodes[path] = known
            self._paths[known] = path
        if known != ROOT_INODE:
            self._lookups[known] = self._lookups.get(known, 0) + 1
        return known

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        """The kernel dropped `nlookup` references to each inode; at zero it is gone.
        FORGET has no reply, so nothing is raised."""
        try:
            self._forget(inode_list)
        except Exception:
            report_bug("the mirror's forget failed")

    def _forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for ino, nlookup in inode_list:
            count = self._lookups.get(ino)
            if count is None:
                continue  # the root, or an inode we never handed out
            if count > nlookup:
                self._lookups[ino] = count - nlookup
                continue
            del self._lookups[ino]
            self._opened.pop(ino, None)
            path = self._paths.pop(ino, None)
            if path is not None and self._inodes.get(path) == ino:
                del self._inodes[path]

    # ------------------------------------------------------------- tree walking

    def _resolve(self, path: tuple[str, ...]) -> Node:
        return self._resolve_with_parent(path)[1]

    def _resolve_with_parent(self, path: tuple[str, ...]) -> tuple[Dir | None, Node]:
        parent: Dir | None = None
        node: Node = self.root
        for name in path:
            if not isinstance(node, Dir):
                raise pyfuse3.FUSEError(errno.ENOENT)
            child = node.child(name)
            if child is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            parent, node = node, child
        return parent, node

    def _node(self, inode: int) -> tuple[tuple[str, ...], Node]:
        path = self._paths.get(inode)
        if path is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return path, self._resolve(path)

    def _attrs(self, ino: int, node: Node, parent: Dir | None = None) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = ino
        a.generation = 0
        a.entry_timeout = 0 if type(parent) is MergedDir else STABLE_ENTRY_SECONDS
        a.attr_timeout = STABLE_ATTR_SECONDS
        if isinstance(node, Dir):
            a.st_mode = stat.S_IFDIR | node.mode
            a.st_nlink = 2
            a.st_size = 0
        elif isinstance(node, Symlink):
            a.st_mode = stat.S_IFLNK | 0o777
            a.st_nlink = 1
            a.st_size = len(node.target)
        else:
            a.st_mode = stat.S_IFREG | node.attr.mode
            a.st_nlink = 1
            a.st_size = node.attr.size
        a.st_uid = a.st_gid = 0
        a.st_blksize = 4096
        a.st_blocks = 0
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = self._stamp
        return a

    # ------------------------------------------------------------- metadata

    @_guarded
    async def lookup(self, parent_inode, name, ctx=None):
        parent_path, _ = self._node(parent_inode)
        path = (*parent_path, os.fsdecode(name))
        parent, node = self._resolve_with_parent(path)
        known = self._inodes.get(path)
        ino = next(self._next_inode) if known is None else known
        attrs = self._attrs(ino, node, parent)
        self._remember(path, ino)  # counted once the reply is certain
        return attrs

    @_guarded
    async def getattr(self, inode, ctx=None):
        _, node = self._node(inode)
        return self._attrs(inode, node)

    @_guarded
    async def setattr(self, inode, attr, fields, fh, ctx):
        """Truncation is how `echo x > file` starts; like sysfs, it changes nothing."""
        if fields.update_mode or fields.update_uid or fields.update_gid:
            raise pyfuse3.FUSEError(errno.EPERM)
        return await self.getattr(inode, ctx)

    @_guarded
    async def readlink(self, inode, ctx):
        _, node = self._node(inode)
        if not isinstance(node, Symlink):
            raise pyfuse3.FUSEError(errno.EINVAL)
        return os.fsencode(node.target)

    @_guarded
    async def opendir(self, inode, ctx):
        if self._settled != self._changes:
            await self._settle()  # a listing made after a change shows no name gone
        _, node = self._node(inode)
        if not isinstance(node, Dir):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    @_guarded
    async def readdir(self, fh, start_id, token):
        path, node = self._node(fh)
        if not isinstance(node, Dir):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        names = list(node.names())
        for index, name in enumerate(names[start_id:], start_id + 1):
            child_path = (*path, name)
            child = node.child(name)
            if child is None:
                continue
            known = self._inodes.get(child_path)
            ino = next(self._next_inode) if known is None else known
            attrs = self._attrs(ino, child, node)
            if not pyfuse3.readdir_reply(token, os.fsencode(name), attrs, index):
                break
            self._remember(child_path, ino)  # the kernel holds the entry now

    async def releasedir(self, fh):
        pass

    @_guarded
    async def statfs(self, ctx):
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_namemax = 255
        return s

    # ------------------------------------------------------------- files

    @_guarded
    async def open(self, inode, flags, ctx):
        node = self._opened.get(inode)
        path = self._paths.get(inode)
        if node is None or path is None:
            path, found = self._node(inode)
            if not isinstance(found, File):
                raise pyfuse3.FUSEError(errno.EISDIR)
            node = found
            if self._followed:
                self._opened[inode] = node
        attr = node.attr
        accmode = flags & os.O_ACCMODE
        wants_write = accmode in (os.O_WRONLY, os.O_RDWR)
        wants_read = accmode in (os.O_RDONLY, os.O_RDWR)
        if attr.sysfs and (
            (wants_write and not attr.mode & 0o222) or (wants_read and not attr.mode & 0o444)
        ):
            raise pyfuse3.FUSEError(errno.EACCES)
        fh = next(self._next_fh)
        who = (ctx.uid, ctx.pid)
        caller = self._callers.get(who)
        if caller is None:
            if len(self._callers) >= 64:
                self._callers.clear()
            caller = self._callers[who] = Caller(ctx.uid, ctx.pid)
        self._files[fh] = _OpenFile(node, path, caller, self._generation)
        # Never the page cache: every read shows afresh (direct I/O, nothing kept).
        info = pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=False)
        return info

    def _active(self, f: _OpenFile) -> File:
        """kernfs_get_active: the open file's node while the file it opened still exists.

        A file whose device went away (an unregistered interface) is gone for good, even if
        a new device now has a file at the same path: kernfs then fails every read and write
        through the old handle with ENODEV (debugfs with EIO), and nothing reaches the new
        device."""
        node = f.node
        if f.generation == self._generation and self._followed:
            return node  # nothing has changed since the node was found at its path
        try:
            now = self._resolve(f.path)
        except pyfuse3.FUSEError:
            now = None
        if (
            not isinstance(now, File)
            or now.attr is not node.attr
            or not _same_device(now.dev, node.dev)
        ):
            raise pyfuse3.FUSEError(errno.ENODEV if node.attr.sysfs else errno.EIO)
        f.generation = self._generation
        return node

    @_guarded
    async def read(self, fh, off, size):
        """seq_file's read: a read where the last one ended goes on in the buffer; a read at
        any other offset (pread, or from 0 again) shows afresh and returns from `off`."""
        f = self._files[fh]
        node = self._active(f)
        if f.buffer is None or off != f.read_pos:
            show = node.attr.show
            if show is None:
                raise pyfuse3.FUSEError(errno.EIO)
            token = CALLER.set(f.caller)
            try:
                text = show(node.ctx, node.dev)
                if not isinstance(text, str | bytes):
                    text = await text
            finally:
                CALLER.reset(token)
            f.buffer = text.encode() if isinstance(text, str) else text
        data = f.buffer[off : off + size]
        f.read_pos = off + len(data)
        return data

    @_guarded
    async def write(self, fh, off, buf):
        """kernfs_fop_write_iter then sysfs_kf_write: the first PAGE_SIZE bytes go to the
        store (a C string to its parsers, which stop at a NUL), an empty write does nothing,
        and the write takes what the store took. The store sees the writer's credentials
        (capable() checks the writing task), read from the request itself."""
        f = self._files[fh]
        node = self._active(f)
        store = node.attr.store
        if store is None:
            raise pyfuse3.FUSEError(errno.EIO if node.attr.sysfs else errno.EINVAL)
        data = bytes(buf[:PAGE_SIZE]) if node.attr.sysfs else bytes(buf)
        if not data:
            return 0
        who = writer(buf, fh, off) if type(buf) is bytes else None
        caller = f.caller if who is None else Caller(who[1], who[0])
        token = CALLER.set(caller)
        self._moved()  # a store may change what a path resolves to, while it runs too
        try:
            result = store(node.ctx, node.dev, caller, data)
            if inspect.isawaitable(result):
                await result
        finally:
            CALLER.reset(token)
            self._moved()
            await self._settle()  # what the store removed is gone before the write returns
        return len(data)

    @_guarded
    async def release(self, fh):
        self._files.pop(fh, None)

    # flush is not implemented: its first ENOSYS tells the kernel that close() needs no
    # request (fc->no_flush), so a close costs only the RELEASE, which the kernel sends
    # without waiting for it.
