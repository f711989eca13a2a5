"""The host's /dev/infiniband: a devfs mount in the daemon's state area (dev_dir), serving
umadN and issmN of every HCA port, made when the daemon starts and unmounted when it stops.
A mount left by a killed daemon is aborted and replaced at the next start."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import trio

from ..devfs import DevFs, Directory, abort_mount
from ..fabric.device import HcaDevice, Port
from ..fabric.port import FabricPort
from ..fabric.sma import PortAgents, Traffic
from ..state import open_dir, state_file
from .layer import IssmFile, UmadFile, UmadPort


def dev_dir(mountpoint: str) -> str:
    """Where the host's /dev/infiniband is mounted: /run/ipoibfs/daemons/<mountpoint>.dev."""
    return state_file(mountpoint, "dev")


def port_traffic(interfaces: Mapping[str, Any], port: Port) -> Traffic:
    """What the host's interfaces on `port` counted (their netdev statistics), summed, and
    the faults of the port: its link's downs, and what its impairments lost (`lab link`)."""
    totals = dict.fromkeys(("tx_bytes", "rx_bytes", "tx_packets", "rx_packets", "multicast",
                            "rx_errors", "tx_dropped"), 0)  # fmt: skip
    fport = None
    for iface in list(interfaces.values()):
        if iface.port.port is not port:
            continue
        fport = iface.port
        for name in totals:
            totals[name] += iface.statistic(name)
    return Traffic(
        xmit_bytes=totals["tx_bytes"],
        rcv_bytes=totals["rx_bytes"],
        xmit_pkts=totals["tx_packets"],
        rcv_pkts=totals["rx_packets"],
        rcv_multicast_pkts=totals["multicast"],
        rcv_errors=totals["rx_errors"],
        xmit_discards=totals["tx_dropped"] + (fport.link_discards if fport else 0),
        link_downed=fport.link_downs if fport else 0,
    )


class UmadService:
    """The devfs server of one host: `await nursery.start(service.run)`."""

    def __init__(self, device: HcaDevice, interfaces: Mapping[str, Any], mountpoint: str,
                 fports: Sequence[FabricPort] = ()) -> None:  # fmt: skip
        self.device = device
        self.interfaces = interfaces
        #: The ports on the fabric: MADs to and from other LIDs go through them.
        self.fports = {fport.num: fport for fport in fports}
        self.path = dev_dir(mountpoint)
        self.ports: list[UmadPort] = []

    def _traffic(self, port: Port) -> Callable[[], Traffic]:
        return lambda: port_traffic(self.interfaces, port)

    def _root(self, nursery: trio.Nursery) -> Directory:
        files: dict[str, UmadFile | IssmFile] = {}
        for index, port in enumerate(self.device.ports):
            agents = PortAgents(self.device, port, self._traffic(port))
            fport = self.fports.get(port.num)
            umad_port = UmadPort(index, port, agents, nursery, fport)
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
