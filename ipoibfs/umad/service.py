"""The host's /dev/infiniband: a devfs mount in the daemon's state area (dev_dir), serving
umadN and issmN of every HCA port, made when the daemon starts and unmounted when it stops.
A mount left by a killed daemon is aborted and replaced at the next start."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from typing import Any

import trio

from ..devfs import DevFs, Directory, abort_mount
from ..fabric.device import HcaDevice
from ..fabric.port import FabricPort
from ..fabric.sma import PortAgents
from ..state import open_dir, state_file
from .layer import IssmFile, UmadFile, UmadPort


def dev_dir(mountpoint: str) -> str:
    """Where the host's /dev/infiniband is mounted: /run/ipoibfs/daemons/<mountpoint>.dev."""
    return state_file(mountpoint, "dev")


class UmadService:
    """The devfs server of one host: `await nursery.start(service.run)`."""

    def __init__(self, device: HcaDevice, agents: Mapping[int, PortAgents], mountpoint: str,
                 fports: Sequence[FabricPort] = ()) -> None:  # fmt: skip
        self.device = device
        #: Each port's SMA and PMA (the HCA's process_mad), shared with the mirror's
        #: counters/ (IPoIBDriver.port_agents).
        self.agents = agents
        #: The ports on the fabric: MADs to and from other LIDs go through them.
        self.fports = {fport.num: fport for fport in fports}
        self.path = dev_dir(mountpoint)
        self.ports: list[UmadPort] = []

    def _root(self, nursery: trio.Nursery) -> Directory:
        files: dict[str, UmadFile | IssmFile] = {}
        for index, port in enumerate(self.device.ports):
            fport = self.fports.get(port.num)
            umad_port = UmadPort(index, port, self.agents[port.num], nursery, fport)
            if fport is not None:
                fport.on_mad = umad_port.receive
            self.ports.append(umad_port)
            files[f"umad{index}"] = UmadFile(umad_port)
        for index, port in enumerate(self.device.ports):
            files[f"issm{index}"] = IssmFile(port)
        return Directory(dict(files))

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        abort_mount(self.path)  # what a killed daemon left (never stat it: it may hang)
        os.close(open_dir(self.path))
        try:
            async with trio.open_nursery() as nursery:
                server = DevFs(self._root(nursery), source="ipoibfs-umad")
                await nursery.start(server.serve, self.path)
                task_status.started(self.path)
        finally:
            with contextlib.suppress(OSError):
                os.rmdir(self.path)
