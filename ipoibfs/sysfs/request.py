"""Who is writing: the pid and uid of the FUSE_WRITE request being served.

The kernel checks a store's capability against the writing task (`capable()` reads
`current`'s credentials), and FUSE puts that task's pid and uid in every request's header.
pyfuse3 3.5 hands `write(fh, off, buf)` no request context, though: its handler
(handlers.pxi, `fuse_write_buf_async(c, buf)`) keeps the libfuse request in a `_Container`
that Python cannot see. This module finds that container the only way pyfuse3 leaves open,
without patching it: the coroutine's closure holds both `buf` (the very bytes object our
`write` was given) and `c`, so the closure is the young object that refers to `buf`, and the
container is among its referents. The request pointer is then read from the container at the
offset pyfuse3 3.5.0's declaration gives it, and libfuse's own `fuse_req_ctx()` reads the
header's pid and uid.

Every step is checked before memory is read: the pyfuse3 version, the machine, the types'
names and the container's size, and two of the container's fields against the values
pyfuse3 passed to `write` (the file handle and the offset). If any check fails, `writer()`
returns None and the caller falls back to the credentials of the process that opened the
file (README, Known differences).
"""

from __future__ import annotations

import ctypes
import gc
import platform
from typing import Any

import pyfuse3

#: pyfuse3 3.5.0's `cdef class _Container` (handlers.pxi), after PyObject_HEAD:
#:   dev_t rdev; fuse_file_info fi; fuse_ino_t ino, parent; fuse_req_t req; int flags;
#:   mode_t mode; off_t off; size_t size; struct stat stat; uint64_t fh
#: fuse_file_info's size depends on the libfuse headers pyfuse3 was built with, so the
#: offsets are taken from the end of the object: fh is its last 8 bytes, and struct stat is
#: 144 bytes on x86_64.
PYFUSE3_VERSION = "3.5.0"
STAT_SIZE = 144
_SCOPE_SUFFIXES = ("_fuse_write_buf_async", "_fuse_write_async")


class _FuseCtx(ctypes.Structure):
    """struct fuse_ctx (fuse_lowlevel.h)."""

    _fields_ = [
        ("uid", ctypes.c_uint32),
        ("gid", ctypes.c_uint32),
        ("pid", ctypes.c_int32),
        ("umask", ctypes.c_uint32),
    ]


class _Layout:
    __slots__ = ("container", "fh", "off", "req", "req_ctx")

    def __init__(self, container: type, req_ctx: Any) -> None:
        size = container.__basicsize__
        self.container = container
        self.fh = size - 8
        self.off = self.fh - STAT_SIZE - 8 - 8  # before size_t size and off_t off
        self.req = self.off - 8 - 8  # before int flags + mode_t mode, then fuse_req_t req
        self.req_ctx = req_ctx


def _load() -> _Layout | None:
    if pyfuse3.__version__ != PYFUSE3_VERSION or platform.machine() != "x86_64":
        return None
    container = getattr(pyfuse3, "_Container", None)
    if not isinstance(container, type) or container.__basicsize__ < 16 + 8 + 3 * 8 + 200:
        return None
    try:
        libfuse = ctypes.CDLL("libfuse3.so.3")  # the one pyfuse3 is linked with, loaded
        req_ctx = libfuse.fuse_req_ctx
    except (OSError, AttributeError):
        return None
    req_ctx.argtypes = [ctypes.c_void_p]
    req_ctx.restype = ctypes.POINTER(_FuseCtx)
    return _Layout(container, req_ctx)


_LAYOUT = _load()


def _word(obj: object, offset: int, kind: type = ctypes.c_uint64) -> int:
    return kind.from_address(id(obj) + offset).value  # type: ignore[attr-defined]


def _container_of(buf: bytes, layout: _Layout) -> object | None:
    """The _Container of the write handler whose closure holds `buf`."""
    candidates: list[object] = []
    # The closure was made for this request, just before write() was called: it is young
    # (a collection in between moves it to generation 1 at most).
    for generation in (0, 1):
        candidates = [
            o
            for o in gc.get_objects(generation)
            if type(o).__name__.endswith(_SCOPE_SUFFIXES) and _holds(o, buf)
        ]
        if candidates:
            break
    if len(candidates) != 1:
        return None
    found = [o for o in gc.get_referents(candidates[0]) if type(o) is layout.container]
    return found[0] if len(found) == 1 else None


def _holds(scope: object, buf: bytes) -> bool:
    return any(o is buf for o in gc.get_referents(scope))


def writer(buf: bytes, fh: int, off: int) -> tuple[int, int] | None:
    """(pid, uid) from the header of the FUSE_WRITE whose `write(fh, off, buf)` is being
    served, or None if pyfuse3 does not look as expected. `buf` must be the object pyfuse3
    passed (not a copy)."""
    layout = _LAYOUT
    if layout is None or type(buf) is not bytes:
        return None
    try:
        c = _container_of(buf, layout)
        if c is None:
            return None
        if _word(c, layout.fh) != fh or _word(c, layout.off, ctypes.c_int64) != off:
            return None
        req = _word(c, layout.req)
        if not req or req % 8:
            return None
        ctx = layout.req_ctx(req).contents
        if ctx.pid <= 0:
            return None  # a task outside the daemon's pid namespace
        return ctx.pid, ctx.uid
    except (ValueError, TypeError, OSError):
        return None
