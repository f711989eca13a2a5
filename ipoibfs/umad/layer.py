"""The host kernel's MAD layer for /dev/infiniband/umadN and issmN: ib_umad's files
(drivers/infiniband/core/user_mad.c) over ib_mad's agents (mad.c), for one HCA port.

Each open umadN is a `UmadHandle` with up to 32 agents (REGISTER_AGENT/REGISTER_AGENT2,
UNREGISTER_AGENT), the header size chosen by ENABLE_PKEY, a receive queue that `read` and
`poll` serve, and the requests it sent that wait for an answer. A write is routed as ib_mad
routes a send:
- to the port's own agents (fabric/sma.py: the SMA and PMA answer at once), for an SMP to
  the port's LID or the permissive LID, a directed-route SMP with no hops, or a PMA MAD to
  the port's LID;
- to an agent of any open file of the port registered for the class, version and method
  (a request to the port's own LID), or, for a response, to the agent whose hi_tid is in
  the TID's high 32 bits;
- to another LID over the fabric, as a UD datagram from the agent's QP (0 or 1) to the QP
  the header names, with the P_Key at its index and its Q_Key. The port at that LID does
  what this one does with what reaches it (`receive`): its own SMA and PMA answer, an agent
  of one of its files gets the request, or, for a Get or Set nobody takes, ib_mad's
  generate_unmatched_resp answers with status UNSUPPORTED_METHOD_ATTRIB;
- to the subnet manager, for a request to the SM's LID (its SMInfo, its SA), over the SM's
  own channel (fabric/sm_agents.py answers);
- nowhere (DR SMPs with hops, a LID without a route): a request then comes back with status
  ETIMEDOUT after timeout_ms * (retries + 1), as one nobody answered.

An agent registered with an RMPP version gets the kernel's RMPP (mad_rmpp.c): a write of an
RMPP-class message with RMPP active, of any length, goes to another LID as 256-byte DATA
segments, a window at a time as the receiver ACKs (again from the last ACK on a timeout);
segments that reach an agent with an RMPP version are ACKed and put back together, and its
file reads the whole message. An agent without one sends and reads the segments as they are.

Everything runs on the daemon's trio thread (devfs's contract); the timers are tasks of
the nursery given to `UmadPort`.
"""

from __future__ import annotations

import errno
import os
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import trio

from ..devfs import POLLIN, POLLOUT, DeviceFile, DeviceHandle, Wakeup
from ..errors import KernelError
from ..fabric.device import Port
from ..fabric.port import FabricPort
from ..fabric.sm_agents import Forward
from ..fabric.sma import PortAgents
from ..fabric.switches import PeerCounters
from ..wire.headers import UdHeader
from ..wire.mad import common, pma, rmpp, smp, umad

#: mad.c: MAX_MGMT_CLASS, MAX_MGMT_VERSION, IB_MGMT_RMPP_VERSION
MAX_MGMT_CLASS = 80
MAX_MGMT_VERSION = 8
IB_MGMT_RMPP_VERSION = 1
IB_QP0, IB_QP1 = 0, 1


@dataclass(eq=False)
class Agent:
    """An ib_mad_agent registered through a umad file."""

    file: UmadHandle
    id: int
    hi_tid: int
    qpn: int
    mgmt_class: int
    version: int
    methods: frozenset[int]
    oui: int
    rmpp_version: int


_K = TypeVar("_K")
_T = TypeVar("_T")
#: RMPP transfers (or switch-counter reads) a port keeps under way at once (each way):
#: more drop the oldest.
MAX_RMPP_TRANSFERS = 64
#: A transaction (rmpp.transaction_key) with the far end's LID: an RMPP transfer's key.
Transfer = tuple[int, tuple[int, int, int, int]]


@dataclass(eq=False)
class _RmppSend:
    """An RMPP message going out (ib_send_rmpp_mad): its segments and where they go."""

    sender: rmpp.RmppSender
    dlid: int
    src_qp: int
    dst_qp: int
    qkey: int
    pkey_index: int


@dataclass(eq=False)
class _Pending:
    """A request waiting for its answer (on ib_mad's wait list)."""

    agent: Agent
    hdr: umad.UserMadHdr
    mad: bytes
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    #: Sends it again (retry_send, on each timeout while retries are left); None for one
    #: to an agent of this port, which cannot be lost.
    resend: Callable[[], None] | None = None


def _is_vendor_class(mgmt_class: int) -> bool:
    return common.is_vendor_range2(mgmt_class)


def kernel_rmpp(agent: Agent, mad: bytes) -> bool:
    """ib_mad_kernel_rmpp_agent and the ACTIVE flag: the MAD layer segments this message
    (an RMPP class, an agent with an RMPP version)."""
    return (bool(agent.rmpp_version) and len(mad) >= common.IB_MGMT_RMPP_HDR
            and common.is_rmpp_class(mad[1]) and rmpp.RmppHdr.unpack(mad).active)  # fmt: skip


def _keep(table: dict[_K, _T], key: _K, value: _T) -> _T:
    """Record a transfer (or a read), the oldest going when MAX_RMPP_TRANSFERS are under
    way."""
    table.pop(key, None)
    if len(table) >= MAX_RMPP_TRANSFERS:
        del table[next(iter(table))]
    table[key] = value
    return value


class UmadPort:
    """ib_mad's state of one port: every agent of every open umad file, the issm lock."""

    def __init__(self, index: int, port: Port, agents: PortAgents, nursery: trio.Nursery,
                 fport: FabricPort | None = None) -> None:  # fmt: skip
        self.index = index  # N of umadN
        self.port = port
        self.local = agents
        self.nursery = nursery
        #: The port on the fabric, through which MADs reach other LIDs (None: none do).
        self.fport = fport
        self.files: list[UmadHandle] = []
        self._next_hi_tid = 1
        #: RMPP transfers under way: sent, by receiver LID and transaction; received, by
        #: sender LID and transaction.
        self._rmpp_out: dict[Transfer, _RmppSend] = {}
        self._rmpp_in: dict[Transfer, rmpp.RmppReceiver] = {}
        #: Switch ports' counters being read from the hosts cabled there, by host LID and TID.
        self._peer_reads: dict[tuple[int, int], PeerCounters] = {}

    # ------------------------------------------------------------------ registration

    def register(self, file: UmadHandle, agent_id: int, qpn: int, mgmt_class: int,
                 version: int, methods: frozenset[int], oui: int,
                 rmpp_version: int) -> Agent:  # fmt: skip
        """ib_register_mad_agent's checks (EINVAL for each), then the agent."""
        if qpn not in (IB_QP0, IB_QP1):
            raise KernelError(errno.EINVAL)
        if rmpp_version and rmpp_version != IB_MGMT_RMPP_VERSION:
            raise KernelError(errno.EINVAL)
        if mgmt_class:
            if version >= MAX_MGMT_VERSION:
                raise KernelError(errno.EINVAL)
            if mgmt_class >= MAX_MGMT_CLASS:
                if mgmt_class != common.IB_MGMT_CLASS_SUBN_DIRECTED_ROUTE:
                    raise KernelError(errno.EINVAL)
            elif _is_vendor_class(mgmt_class) and not oui:
                raise KernelError(errno.EINVAL)
            if rmpp_version and not common.is_rmpp_class(mgmt_class):
                raise KernelError(errno.EINVAL)
            if common.is_smp_class(mgmt_class) != (qpn == IB_QP0):
                raise KernelError(errno.EINVAL)
            if self._methods_in_use(mgmt_class, version, oui, methods):
                raise KernelError(errno.EINVAL)
        agent = Agent(file, agent_id, self._next_hi_tid, qpn, mgmt_class, version, methods,
                      oui, rmpp_version)  # fmt: skip
        self._next_hi_tid += 1
        return agent

    def _agents(self) -> list[Agent]:
        return [a for f in self.files for a in f.agents if a is not None]

    def _methods_in_use(self, mgmt_class: int, version: int, oui: int,
                        methods: frozenset[int]) -> bool:  # fmt: skip
        """method_in_use / is_vendor_method_in_use: another agent of the port already
        takes one of these methods of the class and version (and OUI, for a vendor class)."""
        for a in self._agents():
            if a.mgmt_class != mgmt_class or a.version != version:
                continue
            if _is_vendor_class(mgmt_class) and a.oui != oui:
                continue
            if a.methods & methods:
                return True
        return False

    def _agent_for_request(self, mad: common.MadHdr, raw: bytes) -> Agent | None:
        """find_mad_agent for an unsolicited MAD (`raw`, whose header is `mad`): the agent
        registered for its method (and, in a vendor class, its OUI)."""
        oui = int.from_bytes(raw[37:40], "big") if _is_vendor_class(mad.mgmt_class) else 0
        for a in self._agents():
            if a.mgmt_class != mad.mgmt_class or a.version != mad.class_version:
                continue
            if _is_vendor_class(mad.mgmt_class) and a.oui != oui:
                continue
            if mad.method in a.methods:
                return a
        return None

    def _agent_by_hi_tid(self, hi_tid: int) -> Agent | None:
        for a in self._agents():
            if a.hi_tid == hi_tid:
                return a
        return None

    # ------------------------------------------------------------------ sending

    def send(self, agent: Agent, hdr: umad.UserMadHdr, mad: bytes) -> None:
        """ib_post_send_mad of a checked write: answered here, delivered, or left to time
        out."""
        head = common.MadHdr.unpack(mad)
        local, slid = self._is_local(hdr, head, mad)
        if head.is_response or head.method == common.IB_MGMT_METHOD_TRAP_REPRESS:
            if local:
                self._deliver_response(mad, slid, agent.qpn, hdr.pkey_index)
            else:
                self._send_out(agent, hdr, mad)
            return
        if local:
            answer = self.local.answer(mad)
            if answer is not None:
                src_qp = IB_QP0 if common.is_smp_class(head.mgmt_class) else IB_QP1
                agent.file.queue_recv(agent, answer, slid, src_qp, hdr.pkey_index)
                return
        pending = None
        if hdr.timeout_ms:  # without a timeout it is sent, and no answer is waited for
            pending = _Pending(agent, hdr, mad)
            agent.file.pending.append(pending)
        if local:
            target = self._agent_for_request(head, mad)
            if target is not None:
                target.file.queue_recv(target, mad, self.port.lid, agent.qpn, hdr.pkey_index)
        else:
            self._route(agent, hdr, head, mad)
            if pending is not None:
                pending.resend = lambda: self._route(agent, hdr, head, mad)
        if pending is not None:
            self.nursery.start_soon(self._expire, pending)

    def _route(self, agent: Agent, hdr: umad.UserMadHdr, head: common.MadHdr,
               mad: bytes) -> None:  # fmt: skip
        """A request out of the port: along a directed route, to the SM (its SA and SMInfo at
        the SM's LID, even when a host's port holds that LID) or a switch (a LID with no
        host behind it: the SM's channel reaches the switches), or to a host."""
        if head.mgmt_class == common.IB_MGMT_CLASS_SUBN_DIRECTED_ROUTE:
            self._send_directed(mad, hdr.pkey_index)
        elif self.fport is not None and (self._to_sm(hdr, head)
                                         or not self.fport.reaches(hdr.lid)):  # fmt: skip
            self.nursery.start_soon(self._ask_sm, mad, hdr.pkey_index, hdr.lid)
        else:
            self._send_out(agent, hdr, mad)

    def _send_out(self, agent: Agent, hdr: umad.UserMadHdr, mad: bytes) -> None:
        """A MAD (or an RMPP message, segmented) to another LID, from the agent's QP."""
        if not kernel_rmpp(agent, mad):
            self._transmit(hdr.lid, agent.qpn, hdr.qpn, hdr.qkey, hdr.pkey_index, mad)
            return
        key = (hdr.lid, rmpp.transaction_key(mad))
        out = self._rmpp_out.get(key)
        if out is not None and not out.sender.done and out.sender.aborted is None:
            self._send_segments(out, out.sender.retry())  # sent again: from the last ACK
            return
        out = _RmppSend(rmpp.RmppSender(mad), hdr.lid, agent.qpn, hdr.qpn, hdr.qkey,
                        hdr.pkey_index)  # fmt: skip
        _keep(self._rmpp_out, key, out)
        self._send_segments(out, out.sender.start())
        if not common.is_response(mad) or not hdr.timeout_ms:
            return  # a request's own timer sends it again (retry_send)
        self.nursery.start_soon(self._retry_rmpp, key, out, hdr)

    def _send_segments(self, out: _RmppSend, segments: list[bytes]) -> None:
        for segment in segments:
            self._transmit(out.dlid, out.src_qp, out.dst_qp, out.qkey, out.pkey_index, segment)

    async def _retry_rmpp(self, key: Transfer, out: _RmppSend, hdr: umad.UserMadHdr) -> None:
        """ib_retry_rmpp of a response: each timeout_ms without the ACK that ends it, the
        segments from the last ACK go again while retries are left."""
        for _ in range(hdr.retries + 1):
            await trio.sleep(hdr.timeout_ms / 1000)
            if self._rmpp_out.get(key) is not out or out.sender.done:
                return
            self._send_segments(out, out.sender.retry())
        if self._rmpp_out.get(key) is out:
            del self._rmpp_out[key]

    def _to_sm(self, hdr: umad.UserMadHdr, head: common.MadHdr) -> bool:
        """Whether the SM answers this (its SA and SMInfo, at its LID), even when the LID
        is this port's own: the SM's host."""
        return hdr.lid == self.port.sm_lid and (
            head.mgmt_class == common.IB_MGMT_CLASS_SUBN_ADM
            or (head.mgmt_class == common.IB_MGMT_CLASS_SUBN_LID_ROUTED
                and head.attr_id == smp.IB_SMP_ATTR_SM_INFO)
        )  # fmt: skip

    def _send_directed(self, mad: bytes, pkey_index: int) -> None:
        """A directed-route SMP with hops, out of the port (path[1]) into the fabric: the
        switches along its path are the SM's to answer, and where the path ends at a host's
        port the SMP goes there (this port's own SMA when the path comes back to it); a path
        that leaves the fabric, or with DR LIDs, is lost."""
        dr = smp.Smp.unpack(mad)
        if (self.fport is None or dr.direction or dr.dr_slid != smp.IB_LID_PERMISSIVE
                or dr.dr_dlid != smp.IB_LID_PERMISSIVE
                or dr.initial_path[1] != self.port.num):  # fmt: skip
            return
        self.nursery.start_soon(self._ask_sm, mad, pkey_index, self.port.sm_lid)

    async def _ask_sm(self, mad: bytes, pkey_index: int, dlid: int) -> None:
        """A request to the SM or a switch over the SM's channel: SMInfo, the SA, a switch's
        SMA. The answer (a GetTable's as one message, as the MAD layer hands it on after
        RMPP) goes to the request waiting for it; a directed route that ends at a host goes
        on to it; an SM that cannot be reached answers nothing, and the request times out."""
        assert self.fport is not None
        try:
            answer = await self.fport.sm_mad(mad, dlid)
        except (KernelError, OSError, ValueError, KeyError):
            return
        if isinstance(answer, Forward):
            if answer.lid == self.port.lid:
                local = self.local.answer(mad)
                if local is not None:
                    self._deliver_response(local, smp.IB_LID_PERMISSIVE, IB_QP0, pkey_index)
            else:
                self._transmit(answer.lid, IB_QP0, IB_QP0, 0, pkey_index, mad)
        elif isinstance(answer, PeerCounters):
            # the host's PMA, asked for its port; its answer is turned round on the way in
            ask = mad[:65] + bytes([answer.port]) + mad[66:]
            tid = common.MadHdr.unpack(mad).tid
            _keep(self._peer_reads, (answer.lid, tid), answer)
            if answer.lid == self.port.lid:
                local = self.local.answer(ask)
                if local is not None:
                    self._deliver_response(local, self.port.lid, IB_QP1, pkey_index)
            else:
                self._transmit(answer.lid, IB_QP1, IB_QP1, common.IB_QP1_QKEY, pkey_index, ask)
        elif answer is not None and len(answer) >= common.MAD_HEADER_SIZE:
            src_qp = IB_QP0 if common.is_smp_class(answer[1]) else IB_QP1
            self._deliver_response(answer, dlid, src_qp, pkey_index)

    def _transmit(self, dlid: int, src_qp: int, dst_qp: int, qkey: int, pkey_index: int,
                  mad: bytes) -> None:  # fmt: skip
        """A MAD onto the fabric, as the port's QP0 or QP1 sends it; lost without a route."""
        fport = self.fport
        if fport is None or dst_qp not in (IB_QP0, IB_QP1):
            return
        pkeys = fport.pkeys
        pkey = pkeys[pkey_index] if pkey_index < len(pkeys) else 0
        header = UdHeader(slid=fport.lid, dlid=dlid, src_qpn=src_qp, dst_qpn=dst_qp, pkey=pkey,
                          qkey=qkey, sgid=fport.gid, dgid=bytes(16))  # fmt: skip
        fport.send(dlid, [header.pack(), mad])

    def receive(self, data: memoryview) -> None:
        """A UD datagram to QP0 or QP1 that reached the port (ib_mad_recv_done): a response
        goes to the request waiting for it; a request to the port's SMA or PMA, to an agent
        that takes it, or is answered by generate_unmatched_resp (a Get or Set), else
        dropped. Malformed ones are dropped. On the trio thread."""
        if len(data) < UdHeader.SIZE + common.MAD_HEADER_SIZE or self.fport is None:
            return
        hdr = UdHeader.unpack_from(data)
        mad = bytes(data[UdHeader.SIZE : UdHeader.SIZE + common.MAD_SIZE]).ljust(
            common.MAD_SIZE, b"\0"
        )
        qp1 = hdr.dst_qpn == IB_QP1
        pkey_index = self.fport.pkey_index(hdr.pkey)
        if qp1 and (hdr.qkey != common.IB_QP1_QKEY or pkey_index is None):
            return  # the GSI checks the Q_Key and P_Key; QP0 takes any
        pkey_index = pkey_index or 0
        head = common.MadHdr.unpack(mad)
        if common.is_smp_class(head.mgmt_class) != (not qp1):
            return  # SMPs only on QP0, GMPs only on QP1
        if common.is_rmpp_class(head.mgmt_class) and rmpp.RmppHdr.unpack(mad).active:
            if self._receive_rmpp(hdr, head, mad, pkey_index):
                return
        if common.is_response(mad):
            self._deliver_response(mad, hdr.slid, hdr.src_qpn, pkey_index)
            return
        try:
            answer = self.local.answer(mad)  # a DR SMP that came through the switch, too
        except (ValueError, struct.error):
            return  # malformed (a DR SMP with 64 hops, say): dropped, as the SMI drops it
        if answer is None:
            target = self._agent_for_request(head, mad)
            if target is not None:
                target.file.queue_recv(target, mad, hdr.slid, hdr.src_qpn, pkey_index)
                return
            if head.method not in (common.IB_MGMT_METHOD_GET, common.IB_MGMT_METHOD_SET):
                return
            status = common.IB_MGMT_MAD_STATUS_UNSUPPORTED_METHOD_ATTRIB
            answer = common.response(mad, status=status)
        self._transmit(hdr.slid, hdr.dst_qpn, hdr.src_qpn, hdr.qkey, pkey_index, answer)

    def _receive_rmpp(self, hdr: UdHeader, head: common.MadHdr, mad: bytes,
                      pkey_index: int) -> bool:  # fmt: skip
        """An RMPP MAD from the fabric (ib_process_rmpp_recv_wc): an ACK, STOP or ABORT of a
        transfer this port sends, or a DATA segment for an agent with an RMPP version, which
        is ACKed and, once the message is whole, read from its file. False: the segment is
        an ordinary MAD here (for an agent that does its own RMPP, or none)."""
        back = (hdr.slid, hdr.dst_qpn, hdr.src_qpn, hdr.qkey, pkey_index)  # ACKs go there
        if rmpp.RmppHdr.unpack(mad).type != rmpp.IB_MGMT_RMPP_TYPE_DATA:
            tid, mclass, version, method = rmpp.transaction_key(mad)
            key = (hdr.slid, (tid, mclass, version, method ^ common.IB_MGMT_METHOD_RESP))
            out = self._rmpp_out.get(key)
            if out is not None:
                self._send_segments(out, out.sender.receive(mad))
                if out.sender.done or out.sender.aborted is not None:
                    del self._rmpp_out[key]
            return True
        if common.is_response(mad):
            agent = self._agent_by_hi_tid(head.tid >> 32)
        else:
            agent = self._agent_for_request(head, mad)
        if agent is None or not agent.rmpp_version:
            return False
        key = (hdr.slid, rmpp.transaction_key(mad))
        receiver = self._rmpp_in.get(key)
        if receiver is None:
            receiver = _keep(self._rmpp_in, key, rmpp.RmppReceiver())
        replies, message = receiver.receive(mad)
        for reply in replies:
            self._transmit(*back, reply)
        if message is not None or receiver.aborted is not None:
            del self._rmpp_in[key]
        if message is not None:
            if common.is_response(message):
                self._deliver_response(message, hdr.slid, hdr.src_qpn, pkey_index)
            else:
                agent.file.queue_recv(agent, message, hdr.slid, hdr.src_qpn, pkey_index)
        return True

    def _is_local(self, hdr: umad.UserMadHdr, head: common.MadHdr,
                  mad: bytes) -> tuple[bool, int]:  # fmt: skip
        """Whether the MAD stays on this port, and the source LID its answer shows."""
        if head.mgmt_class == common.IB_MGMT_CLASS_SUBN_DIRECTED_ROUTE:
            dr = smp.Smp.unpack(mad)
            # handle_outgoing_dr_smp: a request with no hops is the local SMA's
            if not dr.direction and dr.hop_cnt == 0 and dr.dr_slid == smp.IB_LID_PERMISSIVE:
                return True, smp.IB_LID_PERMISSIVE
            return False, 0
        if self.port.state < smp.PortState.ARMED or not self.port.lid:
            return False, 0
        if hdr.lid == self.port.lid and not self._to_sm(hdr, head):
            return True, self.port.lid
        if hdr.lid == smp.IB_LID_PERMISSIVE and common.is_smp_class(head.mgmt_class):
            return True, self.port.lid
        return False, 0

    def _deliver_response(self, mad: bytes, slid: int, src_qp: int, pkey_index: int) -> None:
        """A response to one of the port's agents: to the request waiting for it, found by
        the hi_tid in the TID."""
        head = common.MadHdr.unpack(mad)
        peer = self._peer_reads.pop((slid, head.tid), None)
        if peer is not None and head.mgmt_class == common.IB_MGMT_CLASS_PERF_MGMT:
            mad, slid = pma.turned_round(mad, peer.switch_port), peer.switch_lid
        agent = self._agent_by_hi_tid(head.tid >> 32)
        if agent is None:
            return
        for pending in agent.file.pending:
            req = common.MadHdr.unpack(pending.mad)
            if pending.agent is agent and req.tid == head.tid and req.mgmt_class == head.mgmt_class:
                agent.file.pending.remove(pending)
                pending.scope.cancel()
                agent.file.queue_recv(agent, mad, slid, src_qp, pkey_index)
                return

    async def _expire(self, pending: _Pending) -> None:
        """timeout_sends: each timeout_ms without the answer, the request is sent again
        while retries are left (retry_send), then it times out."""
        with pending.scope:
            for attempt in range(pending.hdr.retries + 1):
                await trio.sleep(pending.hdr.timeout_ms / 1000)
                if attempt < pending.hdr.retries and pending.resend is not None:
                    pending.resend()
            file = pending.agent.file
            if pending in file.pending:
                file.pending.remove(pending)
                file.queue_timeout(pending)


class UmadHandle(DeviceHandle):
    """One open /dev/infiniband/umadN (struct ib_umad_file)."""

    def __init__(self, port: UmadPort, wakeup: Wakeup) -> None:
        self.port = port
        self.wakeup = wakeup
        self.agents: list[Agent | None] = [None] * umad.IB_UMAD_MAX_AGENTS
        self.use_pkey_index = False
        self.already_used = False
        #: what `read` returns next: (header, message, False) of a received MAD, or
        #: (its header, its MAD, True) of a request that timed out
        self.recv: deque[tuple[umad.UserMadHdr, bytes, bool]] = deque()
        self.pending: list[_Pending] = []
        port.files.append(self)

    # ------------------------------------------------------------------ queueing

    def queue_recv(self, agent: Agent, message: bytes, slid: int, src_qp: int,
                   pkey_index: int) -> None:  # fmt: skip
        if self.agents[agent.id] is not agent:
            return  # unregistered meanwhile: dropped
        hdr = umad.recv_header(len(message), agent_id=agent.id, src_qp=src_qp, slid=slid,
                               pkey_index=pkey_index, pkey=self.use_pkey_index)  # fmt: skip
        self.recv.append((hdr, message, False))
        self.wakeup()

    def queue_timeout(self, pending: _Pending) -> None:
        if self.agents[pending.agent.id] is not pending.agent:
            return
        self.recv.append((pending.hdr, pending.mad, True))
        self.wakeup()

    # ------------------------------------------------------------------ file operations

    def read(self, size: int) -> bytes | None:
        if size < umad.header_size(self.use_pkey_index):
            raise KernelError(errno.EINVAL)
        if not self.recv:
            return None
        hdr, message, timed_out = self.recv[0]
        if timed_out:  # copy_send_mad of the request, status ETIMEDOUT
            out = umad.timeout_read(hdr, message, pkey=self.use_pkey_index)
            if size < len(out):
                raise KernelError(errno.EINVAL)
            self.recv.popleft()
            return out
        data, err = umad.copy_recv_mad(hdr, message, size, pkey=self.use_pkey_index)
        if err:
            raise KernelError(err)  # left queued, as ib_umad_read requeues it
        self.recv.popleft()
        return data

    def write(self, data: bytes) -> int:
        try:
            hdr, mad = umad.parse_write(data, pkey=self.use_pkey_index)
        except OSError as e:
            raise KernelError(e.errno or errno.EINVAL) from None
        agent = self.agents[hdr.id]
        if agent is None:
            raise KernelError(errno.EINVAL)
        if not kernel_rmpp(agent, mad):
            if len(mad) > common.MAD_SIZE:
                raise KernelError(errno.EINVAL)  # ib_create_send_mad: one MAD, no RMPP
            mad = mad.ljust(common.MAD_SIZE, b"\0")
        head = common.MadHdr.unpack(mad)
        if not common.is_response(mad):
            tid = umad.umad_hi_tid(head.tid, agent.hi_tid)
            mad = mad[:8] + tid.to_bytes(8, "big") + mad[16:]
            for p in self.pending:  # is_duplicate: a second request with the same TID
                sent = common.MadHdr.unpack(p.mad)
                if sent.tid == tid and sent.mgmt_class == head.mgmt_class:
                    raise KernelError(errno.EINVAL)
        self.port.send(agent, hdr, mad)
        return len(data)

    def _peek(self, count: int) -> bytes:
        """IPOIBFS_UMAD_PEEK: what a read of `count` bytes copies before its ENOSPC (the
        ioctl's first 4 bytes are `count`), the message staying queued; EAGAIN if such a
        read would not fail so (nothing waits, or the message fits)."""
        if not self.recv or self.recv[0][2]:
            raise KernelError(errno.EAGAIN)
        hdr, message, _ = self.recv[0]
        data, err = umad.copy_recv_mad(hdr, message, count, pkey=self.use_pkey_index)
        if err != errno.ENOSPC:
            raise KernelError(errno.EAGAIN)
        return data.ljust(umad.IPOIBFS_PEEK_SIZE, b"\0")

    def ioctl(self, cmd: int, data: bytes, out_size: int, arg: int) -> tuple[int, bytes]:
        if cmd == umad.IB_USER_MAD_REGISTER_AGENT:
            req = umad.RegReq.unpack(data)
            agent = self._register(req.qpn, req.mgmt_class, req.mgmt_class_version,
                                   req.methods, req.oui, req.rmpp_version)  # fmt: skip
            if not self.already_used:
                self.already_used = True
            return 0, umad.RegReq(
                id=agent.id, methods=req.methods, qpn=req.qpn, mgmt_class=req.mgmt_class,
                mgmt_class_version=req.mgmt_class_version, oui=req.oui,
                rmpp_version=req.rmpp_version,
            ).pack()  # fmt: skip
        if cmd == umad.IB_USER_MAD_REGISTER_AGENT2:
            req2 = umad.RegReq2.unpack(data)
            err = req2.check()
            if err:
                raise KernelError(err)
            agent = self._register(req2.qpn, req2.mgmt_class, req2.mgmt_class_version,
                                   req2.methods, req2.oui, req2.rmpp_version)  # fmt: skip
            if not self.already_used:
                self.already_used = True
                self.use_pkey_index = True
            out = bytearray(data[: umad.RegReq2.SIZE])
            out[0:4] = agent.id.to_bytes(4, "little")
            return 0, bytes(out)
        if cmd == umad.IPOIBFS_UMAD_PEEK:
            return 0, self._peek(int.from_bytes(data[:4], "little"))
        if cmd == umad.IB_USER_MAD_UNREGISTER_AGENT:
            agent_id = int.from_bytes(data[:4], "little")
            if agent_id >= umad.IB_UMAD_MAX_AGENTS or self.agents[agent_id] is None:
                raise KernelError(errno.EINVAL)
            self._unregister(agent_id)
            return 0, b""
        if cmd == umad.IB_USER_MAD_ENABLE_PKEY:
            if self.already_used:
                raise KernelError(errno.EINVAL)
            self.use_pkey_index = True
            return 0, b""
        raise KernelError(errno.ENOTTY)

    def _register(self, qpn: int, mgmt_class: int, version: int, methods: frozenset[int],
                  oui: int, rmpp_version: int) -> Agent:  # fmt: skip
        free = next((i for i, a in enumerate(self.agents) if a is None), None)
        if free is None:
            raise KernelError(errno.ENOMEM)  # "Max Agents (32) reached"
        agent = self.port.register(self, free, qpn, mgmt_class, version, methods, oui,
                                   rmpp_version)  # fmt: skip
        self.agents[free] = agent
        return agent

    def _unregister(self, agent_id: int) -> None:
        """ib_unregister_mad_agent: its waiting requests are cancelled (flushed, never
        returned) and what it received is dropped with it."""
        agent = self.agents[agent_id]
        self.agents[agent_id] = None
        for pending in [p for p in self.pending if p.agent is agent]:
            self.pending.remove(pending)
            pending.scope.cancel()
        self.recv = deque(item for item in self.recv if item[0].id != agent_id)

    def poll(self) -> int:
        return POLLOUT | (POLLIN if self.recv else 0)

    def release(self) -> None:
        for i, a in enumerate(self.agents):
            if a is not None:
                self._unregister(i)
        self.recv.clear()
        if self in self.port.files:
            self.port.files.remove(self)


class UmadFile(DeviceFile):
    """/dev/infiniband/umadN."""

    mode = 0o600

    def __init__(self, port: UmadPort) -> None:
        self.port = port

    def open(self, flags: int, wakeup: Wakeup) -> DeviceHandle:
        return UmadHandle(self.port, wakeup)


class IssmHandle(DeviceHandle):
    """An open issmN: the port has IsSM in its capability mask until it is closed."""

    def __init__(self, port: Port) -> None:
        self.port = port
        port.is_sm = True

    def release(self) -> None:
        self.port.is_sm = False


class IssmFile(DeviceFile):
    """/dev/infiniband/issmN (ib_umad_sm_open): one opener at a time. A second open gets
    EAGAIN with O_NONBLOCK, as on a kernel; a blocking one, which the kernel would keep
    waiting for the first to close, gets EBUSY (a FUSE open cannot be parked)."""

    mode = 0o600

    def __init__(self, port: Port) -> None:
        self.port = port

    def open(self, flags: int, wakeup: Wakeup) -> DeviceHandle:
        if self.port.is_sm:
            raise KernelError(errno.EAGAIN if flags & os.O_NONBLOCK else errno.EBUSY)
        return IssmHandle(self.port)
