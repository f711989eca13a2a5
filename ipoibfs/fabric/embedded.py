"""The single-host fabric: the subnet manager runs in the host's own process."""

from __future__ import annotations

import struct

import trio

from . import sm_agents
from .device import HcaDevice
from .port import FabricPort
from .sm import Change, McMember, NodeData, PathRecord, SubnetManager
from .sm_agents import Reply
from .sma import node_description, node_info
from .topology import SM_LID


class LocalSm:
    """SmClient for a subnet manager in the same process."""

    def __init__(self, sm: SubnetManager, mroutes: dict[bytes, list[int]]) -> None:
        self.sm = sm
        self.mroutes = mroutes
        #: The HCA's ports by LID, whose links a switch port's Set changes.
        self.ports: dict[int, FabricPort] = {}

    async def join(
        self, lid: int, qpn: int, mgid: bytes, pkey: int, *, send_only: bool, create: bool
    ) -> McMember:
        member = self.sm.join(lid, qpn, mgid, pkey, send_only=send_only, create=create)
        self.mroutes[mgid] = self.sm.mroute(mgid)
        return member

    async def leave(self, lid: int, qpn: int, mgid: bytes) -> None:
        self.sm.leave(lid, qpn, mgid)
        self.mroutes[mgid] = self.sm.mroute(mgid)

    async def path(self, lid: int, dgid: bytes, pkey: int) -> PathRecord:
        return self.sm.path(dgid, pkey, lid)

    async def port_state(self, lid: int, state: int, phys_state: int) -> None:
        pass  # the SM's port is the HCA's own: it changed with it

    async def mad(self, lid: int, mad: bytes, dlid: int = SM_LID) -> Reply:
        try:
            answer = sm_agents.answer(self.sm, lid, mad, dlid)
        except (ValueError, struct.error):
            return None  # a MAD the agents cannot take: dropped
        if isinstance(answer, Change):
            fport = self.ports.get(answer.lid)
            if fport is not None and answer.states:
                await fport.set_links(list(answer.states))
            if answer.mgid is not None:
                self.mroutes[answer.mgid] = self.sm.mroute(answer.mgid)
            return answer.answer
        return answer


class EmbeddedFabric:
    """One HCA attached to a private subnet manager with OpenSM's default partition.

    A host alone has no peers, so its ports get no data plane: what they send is lost.
    Nothing needs connecting, so the ports exist from construction; `open` (the Fabric
    lifecycle) returns them and starts nothing.
    """

    def __init__(self, device: HcaDevice) -> None:
        self.device = device
        self.sm = SubnetManager()
        mroutes: dict[bytes, list[int]] = {}
        client = LocalSm(self.sm, mroutes)
        self.ports: list[FabricPort] = []
        for port in device.ports:
            self.sm.attach(port, node=NodeData(node_info(device, port), node_description(device)))
            self.ports.append(FabricPort(port, client, None, self.sm.routes, mroutes))
            client.ports[port.lid] = self.ports[-1]

    async def open(self, nursery: trio.Nursery) -> list[FabricPort]:
        return list(self.ports)

    def close(self) -> None:
        pass
