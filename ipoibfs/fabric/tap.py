"""The capture tap of a host's ports: what `ipoibfs capture` records.

A FabricPort's `tap` is None while no capture runs: each message then costs the port one
attribute check. While a capture client is attached, the port hands the tap each message it
sends or receives, and the tap keeps a copy with its time in a bounded queue: `record` never
blocks and takes no lock (deque.append is atomic), so that the trio thread and the netdevs'
reader threads can both call it; when the queue is full the message is dropped and counted.
The capture server (ipoibfs/capture.py) drains the queue on the trio thread and streams it;
the client builds the IB packets from it, so the daemon's cost stays a copy.

A record is (time in ns, kind, port number, DLID, message):

- SENT / RECEIVED: a message of the emulated wire (UD, RC or CM; the DLID is the one the
  port sent to, 0 when received). A multicast send is recorded once, as the HCA sends it.
- PLACED: an RC message written straight into a peer's stack on this machine (placement.py),
  with the RC header it would have had on the wire.
- MAD: a management datagram the port exchanged with the SA (MAD_HEADER, then the MAD):
  the SubnAdm requests and answers behind join_multicast, leave_multicast and query_path.
"""

from __future__ import annotations

import itertools
import struct
import time
from collections import deque
from collections.abc import Callable, Sequence

from ..wire.capture import QP1
from ..wire.mad import sa
from ..wire.mad.common import IB_MGMT_METHOD_DELETE, IB_MGMT_METHOD_GET, IB_MGMT_METHOD_SET
from ..wire.mad.layout import SELECT_EQ, Struct
from ..wire.netdev import IB_MTU_ENUM
from .sm import McMember, PathRecord

SENT, RECEIVED, PLACED, MAD = 0, 1, 2, 3
#: How many records wait for the capture server at most; more are dropped and counted.
QUEUE_LIMIT = 16384
#: Before a MAD record's MAD: SLID, DLID, source QPN, destination QPN, P_Key.
MAD_HEADER = struct.Struct("!HHIIH")

Record = tuple[int, int, int, int, bytes]

#: IBA 15.2.5.17 / enum ib_rate: the rate enum of a link speed in Mb/s (2.5 Gb/s lanes up).
_RATE_ENUM = {2500: 2, 5000: 5, 10000: 3, 14000: 11, 20000: 6, 25000: 15, 30000: 4,
              40000: 7, 50000: 20, 56000: 12, 60000: 8, 80000: 9, 100000: 16, 112000: 13,
              120000: 10, 168000: 14, 200000: 17, 300000: 18, 400000: 21, 600000: 22}  # fmt: skip
#: Component masks of the requests (IB_SA_MCMEMBER_REC_*, IB_SA_PATH_REC_*): a join names
#: MGID, port GID, Q_Key, P_Key and the join state (ipoib_mcast_join); a leave MGID, port
#: GID and join state; a path query DGID, SGID, reversible, one path, P_Key
#: (path_rec_start).
_JOIN_MASK = 1 << 0 | 1 << 1 | 1 << 2 | 1 << 7 | 1 << 16
_LEAVE_MASK = 1 << 0 | 1 << 1 | 1 << 16
_PATH_MASK = 1 << 2 | 1 << 3 | 1 << 11 | 1 << 12 | 1 << 13
#: The status of an SA answer for what the SM refused (errno -> IB_SA_MAD_STATUS_*).
_ERRNO_STATUS = {2: sa.IB_SA_MAD_STATUS_NO_RECORDS, 113: sa.IB_SA_MAD_STATUS_NO_RECORDS}


class Tap:
    """The records of one host's ports, for the capture server."""

    def __init__(self, notify: Callable[[], None], limit: int = QUEUE_LIMIT) -> None:
        #: Called (from any thread) when a record arrives in an empty queue.
        self._notify = notify
        self._queue: deque[Record] = deque()
        self._limit = limit
        self.dropped = 0
        self._tids = itertools.count(1)

    def record(self, kind: int, port: int, dlid: int, parts: Sequence[bytes | memoryview]) -> None:
        queue = self._queue
        if len(queue) >= self._limit:
            self.dropped += 1
            return
        queue.append((time.time_ns(), kind, port, dlid, b"".join(parts)))
        if len(queue) == 1:
            self._notify()

    def drain(self) -> list[Record]:
        """What the queue holds, oldest first."""
        queue = self._queue
        out = []
        while queue:
            out.append(queue.popleft())
        return out

    # ------------------------------------------------------------- SA exchanges

    def _mad(self, port: int, slid: int, dlid: int, pkey: int, mad: sa.SaMad) -> None:
        head = MAD_HEADER.pack(slid, dlid, QP1, QP1, pkey)
        self.record(MAD, port, dlid, [head, mad.pack()])

    def _exchange(self, port: int, lid: int, sm_lid: int, pkey: int, request: sa.SaMad,
                  answer: Struct | None, error: int | None) -> None:  # fmt: skip
        self._mad(port, lid, sm_lid, pkey, request)
        if error is None and answer is not None:
            response = sa.sa_response(request, [answer])
        else:
            status = _ERRNO_STATUS.get(error or 0, sa.IB_SA_MAD_STATUS_REQ_INVALID)
            response = sa.sa_response(request, status=status)
        self._mad(port, sm_lid, lid, pkey, response)

    def join(self, port: int, lid: int, sm_lid: int, gid: bytes, *, mgid: bytes, pkey: int,
             send_only: bool, member: McMember | None, error: int | None) -> None:  # fmt: skip
        """SubnAdmSet(MCMemberRecord) and its GetResp (or error status)."""
        state = sa.IB_JOIN_STATE_SEND_ONLY_FULL if send_only else sa.IB_JOIN_STATE_FULL
        record = sa.MCMemberRecord(mgid=mgid, port_gid=gid, pkey=pkey, join_state=state)
        request = sa.sa_request(IB_MGMT_METHOD_SET, sa.IB_SA_ATTR_MC_MEMBER_REC, record,
                                comp_mask=_JOIN_MASK, tid=next(self._tids))  # fmt: skip
        answer = None
        if member is not None:
            answer = record.replace(qkey=member.qkey, mlid=member.mlid, mtu_selector=SELECT_EQ,
                                    mtu=IB_MTU_ENUM.get(member.mtu, 4), rate_selector=SELECT_EQ,
                                    rate=member.rate, sl=member.sl, pkey=member.pkey)  # fmt: skip
        self._exchange(port, lid, sm_lid, pkey, request, answer, error)

    def leave(self, port: int, lid: int, sm_lid: int, gid: bytes, *, mgid: bytes, pkey: int,
              error: int | None) -> None:  # fmt: skip
        """SubnAdmDelete(MCMemberRecord) and its DeleteResp."""
        record = sa.MCMemberRecord(mgid=mgid, port_gid=gid, join_state=sa.IB_JOIN_STATE_FULL)
        request = sa.sa_request(IB_MGMT_METHOD_DELETE, sa.IB_SA_ATTR_MC_MEMBER_REC, record,
                                comp_mask=_LEAVE_MASK, tid=next(self._tids))  # fmt: skip
        self._exchange(port, lid, sm_lid, pkey, request, record, error)

    def path(self, port: int, lid: int, sm_lid: int, gid: bytes, *, dgid: bytes, pkey: int,
             path: PathRecord | None, error: int | None) -> None:  # fmt: skip
        """SubnAdmGet(PathRecord) and its GetResp."""
        record = sa.PathRecord(dgid=dgid, sgid=gid, pkey=pkey, reversible=1, num_path=1)
        request = sa.sa_request(IB_MGMT_METHOD_GET, sa.IB_SA_ATTR_PATH_REC, record,
                                comp_mask=_PATH_MASK, tid=next(self._tids))  # fmt: skip
        answer = None
        if path is not None:
            answer = record.replace(dlid=path.dlid, slid=lid, sl=path.sl, mtu_selector=SELECT_EQ,
                                    mtu=IB_MTU_ENUM.get(path.mtu, 4), rate_selector=SELECT_EQ,
                                    rate=_RATE_ENUM.get(path.rate_mbps, 3), num_path=0)  # fmt: skip
        self._exchange(port, lid, sm_lid, pkey, request, answer, error)
