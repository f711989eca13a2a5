"""The single-host fabric: the subnet manager runs in the host's own process."""

from __future__ import annotations

from .device import HcaDevice
from .port import FabricPort
from .sm import McMember, PathRecord, SubnetManager
from .transport import DataPlane


class LocalSm:
    """SmClient for a subnet manager in the same process."""

    def __init__(self, sm: SubnetManager, mroutes: dict[bytes, list[int]]) -> None:
        self.sm = sm
        self.mroutes = mroutes

    async def join(
        self, lid: int, qpn: int, mgid: bytes, pkey: int, *, send_only: bool, create: bool
    ) -> McMember:
        member = self.sm.join(lid, qpn, mgid, pkey, send_only=send_only, create=create)
        self.mroutes[mgid] = self.sm.mroute(mgid)
        return member

    async def leave(self, lid: int, qpn: int, mgid: bytes) -> None:
        self.sm.leave(lid, qpn, mgid)
        self.mroutes[mgid] = self.sm.mroute(mgid)

    async def path(self, dgid: bytes, pkey: int) -> PathRecord:
        return self.sm.path(dgid, pkey)


class EmbeddedFabric:
    """One HCA attached to a private subnet manager with OpenSM's default partition.

    Datagrams between the host's own ports and QPs still cross a real socket per port.
    """

    def __init__(self, device: HcaDevice, plane_dir: str | None = None) -> None:
        self.device = device
        self.sm = SubnetManager()
        mroutes: dict[bytes, list[int]] = {}
        client = LocalSm(self.sm, mroutes)
        self.ports = []
        for port in device.ports:
            plane = DataPlane(f"unix:{plane_dir}/p{port.num}.sock") if plane_dir else None
            self.sm.attach(port, plane.address if plane else "")
            self.ports.append(FabricPort(port, client, plane, self.sm.routes, mroutes))

    def close(self) -> None:
        for fport in self.ports:
            if fport.plane is not None:
                fport.plane.close()
