"""A thread that lives in a network namespace and owns the netlink socket used there."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import outcome
import trio

from ..namespaces import enter_netns

T = TypeVar("T")


class NetnsWorker:
    """Runs jobs one at a time on a dedicated thread inside the namespace.

    Sockets and TUN fds opened by a job belong to the namespace and stay there, whichever
    thread uses them later; the netdev layer's netlink socket (RtnlQueries) is used on this
    thread only.
    """

    def __init__(self, netns: str | None) -> None:
        self.netns = netns
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        ready: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._main, args=(ready,), daemon=True, name=f"netns-{netns or 'self'}"
        )
        self._thread.start()
        error = ready.get()
        if error is not None:
            raise error

    def _main(self, ready: queue.SimpleQueue) -> None:
        try:
            if self.netns:
                enter_netns(self.netns)
        except Exception as e:  # reported to the constructor
            ready.put(e)
            return
        self.tid = threading.get_native_id()
        ready.put(None)
        while True:
            job = self._jobs.get()
            if job is None:
                break
            job()

    def run_blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn(*args) on the worker and wait, from any non-trio thread."""
        done = threading.Event()
        box: list[outcome.Outcome] = []

        def job() -> None:
            box.append(outcome.capture(fn, *args))
            done.set()

        self._jobs.put(job)
        done.wait()
        return box[0].unwrap()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn(*args) on the worker; the trio loop keeps running meanwhile."""
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        box: list[outcome.Outcome] = []

        def job() -> None:
            box.append(outcome.capture(fn, *args))
            token.run_sync_soon(done.set)

        self._jobs.put(job)
        with trio.CancelScope(shield=True):
            await done.wait()
        return box[0].unwrap()

    def proc_net(self, name: str) -> str:
        """/proc/<worker>/net/NAME: procfs shows the namespace of the thread it is read through,
        so any thread can read the worker's namespace without waiting for it."""
        return f"/proc/self/task/{self.tid}/net/{name}"

    def close(self) -> None:
        """End the thread (and its netlink socket) once the queued jobs have run."""
        self._jobs.put(None)
        self._thread.join(timeout=5)
