"""The single-host fabric: the subnet manager runs in the host's own process."""

from __future__ import annotations

from .device import HcaDevice, Port
from .sm import McMember, PathRecord, SubnetManager


class FabricPort:
    """The subnet-manager client calls of one HCA port (ib_sa_* in the kernel)."""

    def __init__(self, sm: SubnetManager, port: Port) -> None:
        self._sm = sm
        self.port = port

    async def join_multicast(
        self, qpn: int, mgid: bytes, pkey: int, *, send_only: bool = False, create: bool = True
    ) -> McMember:
        return self._sm.join(self.port, qpn, mgid, pkey, send_only=send_only, create=create)

    async def leave_multicast(self, qpn: int, mgid: bytes) -> None:
        self._sm.leave(self.port, qpn, mgid)

    def has_member(self, mgid: bytes, *, exclude_qpn: int) -> bool:
        """Whether another QP of this port already holds a membership of the group."""
        group = self._sm.groups.get(mgid)
        return group is not None and any(
            lid == self.port.lid and qpn != exclude_qpn for lid, qpn in group.members
        )

    async def query_path(self, dgid: bytes) -> PathRecord:
        return self._sm.path(dgid)


class EmbeddedFabric:
    """One HCA attached to a private subnet manager with OpenSM's default partition."""

    def __init__(self, device: HcaDevice, sm: SubnetManager | None = None) -> None:
        self.device = device
        self.sm = sm or SubnetManager()
        self.ports = []
        for port in device.ports:
            self.sm.attach(port)
            self.ports.append(FabricPort(self.sm, port))
