"""The error every layer raises for a failure the kernel would report with an errno."""

from __future__ import annotations

import errno as _errno
import os
import sys
import time
import traceback
from typing import TextIO


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


def report_bug(what: str, stream: TextIO | None = None) -> None:
    """A bug caught at a guard (a handler, a work item, a reader thread): `what` and the
    traceback of the exception being handled, stamped, to the daemon's log (stderr). The
    guard then goes on; nothing raised in a handler may end a host."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    print(f"{stamp} ipoibfs: {what}\n{traceback.format_exc().rstrip()}",
          file=stream or sys.stderr, flush=True)  # fmt: skip
