"""The error every layer raises for a failure the kernel would report with an errno."""

from __future__ import annotations

import errno as _errno
import os


class KernelError(Exception):
    """A failure carrying the errno the Linux driver returns for it."""

    def __init__(self, errno: int, message: str = "") -> None:
        super().__init__(message or os.strerror(errno))
        self.errno = errno

    @property
    def name(self) -> str:
        return _errno.errorcode.get(self.errno, str(self.errno))


class UsageError(Exception):
    """A user-facing failure of a command: printed as one line, exit status 1."""
