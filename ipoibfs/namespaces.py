"""Linux namespaces and mounts through libc: unshare, setns, mount, prctl.

Shared by the netdev worker (setns into a host's network namespace), the wire (a private
namespace for a deep Unix-socket queue) and `ipoibfs exec`; it imports nothing heavy, so
that `exec` starts quickly.
"""

from __future__ import annotations

import ctypes
import errno
import os
import subprocess

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
MS_BIND, MS_REC, MS_PRIVATE = 0x1000, 0x4000, 1 << 18
PR_SET_PDEATHSIG = 1
libc = ctypes.CDLL(None, use_errno=True)


class NetnsError(Exception):
    """The namespace cannot be entered."""


def unshare(flags: int, what: str) -> None:
    if libc.unshare(flags) != 0:
        raise OSError(ctypes.get_errno(), f"unshare({what})")


def enter_netns(name: str) -> None:
    """setns() the calling thread into /run/netns/NAME (as `ip netns` names them)."""
    enter_netns_file(f"/run/netns/{name}", f'network namespace "{name}"')


def enter_netns_file(path: str, what: str) -> None:
    """setns() the calling thread into the namespace a file names (/run/netns/X, /proc/P/ns/net)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NetnsError(f"{what} does not exist") from None
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise NetnsError(f"cannot enter {what}: {os.strerror(err)}")
    finally:
        os.close(fd)


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0,
          data: str | None = None) -> None:  # fmt: skip
    """mount(2); `data` is the file system's options (tmpfs: "mode=0755")."""

    def enc(s: str | None) -> bytes | None:
        return None if s is None else os.fsencode(s)

    if libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {target}: {os.strerror(err)}")


def is_stale_mount(path: str) -> bool:
    """A FUSE mount whose daemon is dead. statfs always reaches the daemon (a stat may be
    answered from the attributes the kernel caches), so it fails with ENOTCONN."""
    try:
        os.statvfs(path)
    except OSError as e:
        return e.errno == errno.ENOTCONN
    return False


def unmount_lazy(path: str) -> None:
    subprocess.run(["fusermount3", "-u", "-z", path], capture_output=True, check=False)
