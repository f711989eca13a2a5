"""The daemon side of `ipoibfs capture` (capture.py): a host's capture server.

host.py starts it on the trio thread. While a client is attached, each of the host's
FabricPorts has the server's tap (fabric/tap.py); the server drains the tap and streams its
records to every client, in capture.py's frames.
"""

from __future__ import annotations

import json
import math
import os
import socket
from dataclasses import dataclass
from typing import Any

import trio

from .capture import DROPS, FRAME, HELLO, RECORD, RECORDS, socket_path
from .fabric.port import FabricPort
from .fabric.service import peer_credentials
from .fabric.tap import Tap

#: Bytes a slow client may have waiting before the newest batches are dropped (and
#: counted): measured in bytes, not batches, because a batch holds one record when the
#: trio thread keeps up and thousands when it does not.
CLIENT_BACKLOG = 32 << 20


@dataclass(eq=False)
class _Client:
    send: trio.MemorySendChannel[bytes]
    dropped_base: int  # the tap's drop count when it attached
    dropped: int = 0  # batches it was too slow for, in records
    waiting: int = 0  # bytes sent to the channel, not yet to the client


class CaptureServer:
    """Streams a host's tap records to every `ipoibfs capture` attached to it."""

    def __init__(self, driver: Any, mountpoint: str) -> None:
        self.driver = driver
        self.path = socket_path(mountpoint)
        self._clients: set[_Client] = set()
        self._wake = trio.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self.tap = Tap(self._notify)

    @property
    def ports(self) -> list[FabricPort]:
        return list(self.driver.ctx.ports)

    def _notify(self) -> None:
        """From any thread: the queue was empty and has a record."""
        token = self._token
        if token is not None:
            try:
                token.run_sync_soon(self._wake.set)
            except trio.RunFinishedError:
                pass

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Listen until cancelled. The socket is abstract: it has no file to leave behind
        when the daemon is killed, and it is gone with the process."""
        self._token = trio.lowlevel.current_trio_token()
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            try:
                await sock.bind(self.path)
            except OSError as e:  # taken: another process claims this mountpoint's name
                self.driver.ctx.log.daemon(f"no capture socket: {os.strerror(e.errno or 0)}\n")
                task_status.started()
                return
            sock.listen(16)
            listener = trio.SocketListener(sock)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._stream)
                task_status.started()
                await trio.serve_listeners(self._serve, [listener])
        finally:
            self._detach_all()
            sock.close()

    def _detach_all(self) -> None:
        for port in self.ports:
            port.tap = None

    def hello(self) -> bytes:
        ctx = self.driver.ctx
        ports = [{"num": p.num, "lid": p.lid, "sm_lid": p.port.sm_lid, "gid": p.gid.hex(),
                  "guid": ctx.device.node_guid, "mtu": p.profile.max_mtu}
                 for p in ctx.ports]  # fmt: skip
        ifaces = [{"name": i.name, "port": i.port.num, "qpn": i.qpn, "pkey": i.pkey}
                  for i in ctx.interfaces.values()]  # fmt: skip
        rc = [[qpn, iface.name] for qpn, iface in self.driver.main.cm.connections()]
        info = {"host": ctx.device.host, "ports": ports, "interfaces": ifaces, "rc": rc}
        return json.dumps(info).encode()

    async def _serve(self, stream: trio.SocketStream) -> None:
        send, receive = trio.open_memory_channel[bytes](math.inf)
        client = _Client(send, self.tap.dropped)
        async with stream, receive:
            if peer_credentials(stream.socket)[1] != os.geteuid():
                return  # an abstract socket has no file mode: only root's processes
            try:
                hello = self.hello()
                self._clients.add(client)
                for port in self.ports:
                    port.tap = self.tap
                await stream.send_all(FRAME.pack(HELLO, len(hello)) + hello)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._until_eof, stream, nursery.cancel_scope)
                    async for batch in receive:
                        await stream.send_all(batch)
                        client.waiting -= len(batch)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            except Exception:  # a bug here must not take the host down
                self.driver.ctx.log.exception("capture client")
            finally:
                self._clients.discard(client)
                if not self._clients:
                    self._detach_all()

    @staticmethod
    async def _until_eof(stream: trio.SocketStream, scope: trio.CancelScope) -> None:
        """The client sends nothing: its end of the stream means it is gone."""
        try:
            while await stream.receive_some(4096):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()

    async def _stream(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            try:
                self._fan_out(self.tap.drain())
            except Exception:  # a bug here must not take the host down
                self.driver.ctx.log.exception("capture stream")
            await trio.lowlevel.checkpoint()

    def _fan_out(self, records: list[tuple[int, int, int, int, bytes]]) -> None:
        """One batch of records to every client; a client too slow for it loses it."""
        if not records or not self._clients:
            return
        body = b"".join(RECORD.pack(ts, kind, port, dlid, len(data)) + data
                        for ts, kind, port, dlid, data in records)  # fmt: skip
        for client in self._clients:
            if client.waiting + len(body) > CLIENT_BACKLOG:
                client.dropped += len(records)
                continue
            dropped = self.tap.dropped - client.dropped_base + client.dropped
            batch = DROPS.pack(dropped) + body
            frame = FRAME.pack(RECORDS, len(batch)) + batch
            client.send.send_nowait(frame)
            client.waiting += len(frame)
