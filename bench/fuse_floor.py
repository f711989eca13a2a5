"""The FUSE floor on this machine: a minimal pyfuse3 file system serving one constant file.

It is what a Python FUSE daemon costs per open-read-close when it does no work at all: the
file's name and attributes are cached by the kernel (long entry and attribute timeouts),
open answers at once with direct I/O (as the mirror must: its values are live), read
returns a constant, flush is left unimplemented (the kernel stops sending it after the
first ENOSYS) and release does nothing. An open-read-close of `MOUNTPOINT/value` then costs
the daemon three requests: OPEN, READ and RELEASE.

    python bench/fuse_floor.py MOUNTPOINT   # serves until unmounted (fusermount3 -u)

bench/run.py starts it in a process of its own and reads it as it reads the mirror.
"""

from __future__ import annotations

import errno
import stat
import sys

import pyfuse3
import trio

NAME = b"value"
DATA = b"4092\n"
INODE = pyfuse3.ROOT_INODE + 1
TIMEOUT = 300.0


class Floor(pyfuse3.Operations):
    def _attrs(self, inode: int) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = inode
        a.entry_timeout = a.attr_timeout = TIMEOUT
        if inode == pyfuse3.ROOT_INODE:
            a.st_mode, a.st_nlink = stat.S_IFDIR | 0o755, 2
        else:
            a.st_mode, a.st_nlink, a.st_size = stat.S_IFREG | 0o444, 1, 4096
        a.st_blksize = 4096
        return a

    async def lookup(self, parent_inode, name, ctx=None):
        if parent_inode != pyfuse3.ROOT_INODE or name != NAME:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attrs(INODE)

    async def getattr(self, inode, ctx=None):
        return self._attrs(inode)

    async def open(self, inode, flags, ctx):
        info = pyfuse3.FileInfo(fh=inode)
        info.direct_io = True
        info.keep_cache = False
        return info

    async def read(self, fh, off, size):
        return DATA[off : off + size]

    async def release(self, fh):
        pass


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: fuse_floor.py MOUNTPOINT", file=sys.stderr)
        return 2
    pyfuse3.init(Floor(), sys.argv[1], {"fsname=fusefloor", "allow_other"})
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
