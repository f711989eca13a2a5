"""pyfuse3 glue: serves a tree of nodes with sysfs semantics. No state beyond inode numbers."""

from __future__ import annotations

import errno
import inspect
import itertools
import os
import stat
import time
import traceback

import pyfuse3

from ..errors import KernelError
from .nodes import Attr, Caller, Dir, Node, Symlink

FUSE_OPTIONS = {"fsname=ipoibfs", "subtype=ipoibfs", "allow_other", "default_permissions"}
#: How long the kernel may keep a name in a directory that is not volatile.
STABLE_ENTRY_SECONDS = 60.0


class _OpenFile:
    """One open() of an attribute: sysfs fills a buffer on each read from offset 0."""

    __slots__ = ("node", "caller", "buffer")

    def __init__(self, node: Attr, caller: Caller) -> None:
        self.node = node
        self.caller = caller
        self.buffer = b""


async def _call(fn, *args):
    result = fn(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


def _fuse_error(e: KernelError) -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(e.errno)


class SysfsOperations(pyfuse3.Operations):
    """Lookups walk the tree from the root each time: the tree is the only truth."""

    def __init__(self, root: Dir) -> None:
        super().__init__()
        self.root = root
        self._paths: dict[int, tuple[str, ...]] = {pyfuse3.ROOT_INODE: ()}
        self._inodes: dict[tuple[str, ...], int] = {(): pyfuse3.ROOT_INODE}
        self._next_inode = itertools.count(pyfuse3.ROOT_INODE + 1)
        self._files: dict[int, _OpenFile] = {}
        self._next_fh = itertools.count(1)
        self._stamp = time.time_ns()

    # ------------------------------------------------------------- tree walking

    def _inode(self, path: tuple[str, ...]) -> int:
        ino = self._inodes.get(path)
        if ino is None:
            ino = next(self._next_inode)
            self._inodes[path] = ino
            self._paths[ino] = path
        return ino

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

    def _attrs(
        self, path: tuple[str, ...], node: Node, parent: Dir | None = None
    ) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = self._inode(path)
        a.generation = 0
        a.entry_timeout = 0 if parent is None or parent.volatile else STABLE_ENTRY_SECONDS
        a.attr_timeout = 0
        if isinstance(node, Dir):
            a.st_mode = stat.S_IFDIR | node.mode
            a.st_nlink = 2
            a.st_size = 0
        elif isinstance(node, Symlink):
            a.st_mode = stat.S_IFLNK | 0o777
            a.st_nlink = 1
            a.st_size = len(node.target)
        else:
            a.st_mode = stat.S_IFREG | node.mode
            a.st_nlink = 1
            a.st_size = node.size
        a.st_uid = a.st_gid = 0
        a.st_blksize = 4096
        a.st_blocks = 0
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = self._stamp
        return a

    # ------------------------------------------------------------- metadata

    async def lookup(self, parent_inode, name, ctx=None):
        parent, _ = self._node(parent_inode)
        path = (*parent, os.fsdecode(name))
        return self._attrs(path, *reversed(self._resolve_with_parent(path)))

    async def getattr(self, inode, ctx=None):
        path, node = self._node(inode)
        return self._attrs(path, node)

    async def setattr(self, inode, attr, fields, fh, ctx):
        """Truncation is how `echo x > file` starts; like sysfs, it changes nothing."""
        if fields.update_mode or fields.update_uid or fields.update_gid:
            raise pyfuse3.FUSEError(errno.EPERM)
        return await self.getattr(inode, ctx)

    async def readlink(self, inode, ctx):
        _, node = self._node(inode)
        if not isinstance(node, Symlink):
            raise pyfuse3.FUSEError(errno.EINVAL)
        return os.fsencode(node.target)

    async def opendir(self, inode, ctx):
        _, node = self._node(inode)
        if not isinstance(node, Dir):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    async def readdir(self, fh, start_id, token):
        path, node = self._node(fh)
        names = list(node.names())
        for index, name in enumerate(names[start_id:], start_id + 1):
            child_path = (*path, name)
            try:
                attrs = self._attrs(child_path, *reversed(self._resolve_with_parent(child_path)))
            except pyfuse3.FUSEError:
                continue
            if not pyfuse3.readdir_reply(token, os.fsencode(name), attrs, index):
                break

    async def releasedir(self, fh):
        pass

    async def statfs(self, ctx):
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_namemax = 255
        return s

    # ------------------------------------------------------------- files

    async def open(self, inode, flags, ctx):
        _, node = self._node(inode)
        if not isinstance(node, Attr):
            raise pyfuse3.FUSEError(errno.EISDIR)
        accmode = flags & os.O_ACCMODE
        wants_write = accmode in (os.O_WRONLY, os.O_RDWR)
        wants_read = accmode in (os.O_RDONLY, os.O_RDWR)
        if node.sysfs and (
            (wants_write and not node.mode & 0o222) or (wants_read and not node.mode & 0o444)
        ):
            raise pyfuse3.FUSEError(errno.EACCES)
        fh = next(self._next_fh)
        self._files[fh] = _OpenFile(node, Caller(ctx.uid, ctx.pid))
        info = pyfuse3.FileInfo(fh=fh)
        info.direct_io = True
        info.keep_cache = False
        return info

    async def read(self, fh, off, size):
        f = self._files[fh]
        if off == 0:
            if f.node.show is None:
                raise pyfuse3.FUSEError(errno.EIO)
            try:
                f.buffer = (await _call(f.node.show, f.caller)).encode()
            except KernelError as e:
                raise _fuse_error(e) from None
            except Exception:
                traceback.print_exc()
                raise pyfuse3.FUSEError(errno.EIO) from None
        return f.buffer[off : off + size]

    async def write(self, fh, off, buf):
        f = self._files[fh]
        if f.node.store is None:
            raise pyfuse3.FUSEError(errno.EIO if f.node.sysfs else errno.EINVAL)
        if not buf:
            return 0
        try:
            await _call(f.node.store, f.caller, bytes(buf))
        except KernelError as e:
            raise _fuse_error(e) from None
        except Exception:  # a bug must cost the writer an EIO, not the daemon its life
            traceback.print_exc()
            raise pyfuse3.FUSEError(errno.EIO) from None
        return len(buf)

    async def release(self, fh):
        self._files.pop(fh, None)

    async def flush(self, fh):
        pass
