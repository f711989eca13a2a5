"""The kernel log as ib_ipoib writes it: `ib0: text`, to /dev/kmsg and the daemon's own log."""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

from .driver.params import ModuleParams
from .errors import report_bug

KERN_ALERT = 1
KERN_WARNING = 4
KERN_INFO = 6
KERN_DEBUG = 7


class KernelLog:
    """ipoib_warn, ipoib_dbg, ipoib_dbg_mcast and ipoib_dbg_data, gated by the module
    parameters. Texts are the kernel's (%pI6 is wire.format_gid_sysfs).

    `prefix` names the host where several hosts share one kernel log (a lab). Each line
    also goes to `stream`, the daemon's log, which is the complete record: /dev/kmsg
    drops writes beyond its rate limit without saying so.
    """

    def __init__(
        self,
        params: ModuleParams,
        *,
        stream: TextIO = sys.stderr,
        prefix: str = "",
        kmsg: bool = True,
    ) -> None:
        self.params = params
        self.stream = stream
        self.prefix = f"{prefix}: " if prefix else ""
        self._kmsg = None
        if kmsg:
            try:
                self._kmsg = os.open("/dev/kmsg", os.O_WRONLY | os.O_CLOEXEC)
            except OSError:
                self._kmsg = None

    def _emit(self, level: int, dev: str, text: str) -> None:
        line = f"{self.prefix}{dev}: {text}".rstrip("\n")
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        print(f"{stamp} <{level}> {line}", file=self.stream, flush=True)
        if self._kmsg is not None:
            try:
                os.write(self._kmsg, f"<{level}>{line}\n".encode())
            except OSError:
                pass

    def alert(self, dev: str, text: str) -> None:
        self._emit(KERN_ALERT, dev, text)

    def warn(self, dev: str, text: str) -> None:
        self._emit(KERN_WARNING, dev, text)

    def info(self, dev: str, text: str) -> None:
        self._emit(KERN_INFO, dev, text)

    def dbg(self, dev: str, text: str) -> None:
        if self.params["debug_level"] > 0:
            self._emit(KERN_DEBUG, dev, text)

    def dbg_mcast(self, dev: str, text: str) -> None:
        if self.params["mcast_debug_level"] > 0:
            self._emit(KERN_DEBUG, dev, text)

    @property
    def data(self) -> bool:
        """ipoib_dbg_data in ipoib_ib.c: data_debug_level, which exists only with --debug.
        The data path asks before formatting a message, once per packet."""
        return self.params["data_debug_level"] > 0

    @property
    def cm_data(self) -> bool:
        """ipoib_dbg_data in ipoib_cm.c: cm_data_debug_level."""
        return self.params["cm_data_debug_level"] > 0

    def dbg_data(self, dev: str, text: str) -> None:
        self._emit(KERN_DEBUG, dev, text)

    def daemon(self, text: str) -> None:
        """A line of the daemon's own, not the kernel's: to the daemon's log only."""
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        print(f"{stamp} {self.prefix}ipoibfs: {text}", file=self.stream, flush=True)

    def exception(self, what: str) -> None:
        """A bug in the daemon, not a driver message: `what` and the traceback of the
        exception being handled go to the daemon's log only."""
        report_bug(f"{self.prefix}{what}", self.stream)

    def close(self) -> None:
        """Close /dev/kmsg (the stream is the caller's). Idempotent."""
        if self._kmsg is not None:
            os.close(self._kmsg)
            self._kmsg = None
