"""The umad files' kernel behaviour (umad/layer.py) and the port's SMA and PMA
(fabric/sma.py), without a mount: handles driven directly, on a trio loop for the timers."""

from __future__ import annotations

import errno
import os

import pytest
import trio

from ipoibfs import wire
from ipoibfs.errors import KernelError
from ipoibfs.fabric.device import CAP_MASK, IB_PORT_SM, HcaDevice, hca_profile
from ipoibfs.fabric.sma import PortAgents, Traffic
from ipoibfs.umad.layer import IssmFile, UmadHandle, UmadPort
from ipoibfs.wire.mad import common, pma, rmpp, smp, umad


def make_device() -> HcaDevice:
    dev = HcaDevice("lab-h3", hca_profile("ipoibfs"))
    port = dev.ports[0]
    port.lid, port.sm_lid, port.state = 7, 1, 4
    port.set_pkeys([0xFFFF, 0x0003])
    return dev


class Counts:
    def __init__(self) -> None:
        self.now = Traffic()

    def __call__(self) -> Traffic:
        return self.now


def open_file(port: UmadPort) -> tuple[UmadHandle, list[int]]:
    wakes: list[int] = []
    return UmadHandle(port, lambda: wakes.append(1)), wakes


def reg(h: UmadHandle, mgmt_class: int, qpn: int, version: int = 1, **kw) -> int:
    req = umad.RegReq(qpn=qpn, mgmt_class=mgmt_class, mgmt_class_version=version, **kw)
    _, out = h.ioctl(umad.IB_USER_MAD_REGISTER_AGENT, req.pack(), umad.RegReq.SIZE, 0)
    return umad.RegReq.unpack(out).id


def errno_of(fn, *args, **kw) -> int:
    with pytest.raises(KernelError) as e:
        fn(*args, **kw)
    return e.value.errno


def sma_answer(agents: PortAgents, attr_id: int, attr_mod: int = 0, method: int = 1) -> smp.Smp:
    req = smp.dr_smp([], attr_id=attr_id, attr_mod=attr_mod, method=method, tid=5)
    answer = agents.answer(req.pack())
    assert answer is not None
    return smp.Smp.unpack(answer)


def test_sma_answers_from_the_device():
    dev = make_device()
    agents = PortAgents(dev, dev.ports[0], Counts())
    node = smp.NodeInfo.unpack(sma_answer(agents, smp.IB_SMP_ATTR_NODE_INFO).data)
    assert (node.node_guid, node.port_guid) == (dev.node_guid, dev.node_guid + 1)
    assert node.partition_cap == 128 and node.local_port_num == 1
    info = smp.PortInfo.unpack(sma_answer(agents, smp.IB_SMP_ATTR_PORT_INFO).data)
    assert (info.lid, info.master_sm_lid, info.port_state, info.mtu_cap) == (7, 1, 4, 5)
    assert info.capability_mask == CAP_MASK and info.link_speed_ext_active == 2  # EDR
    pkeys = smp.PKeyTable.unpack(sma_answer(agents, smp.IB_SMP_ATTR_PKEY_TABLE).data)
    assert pkeys.pkeys[:3] == (0xFFFF, 0x0003, 0)
    desc = smp.NodeDescription(sma_answer(agents, smp.IB_SMP_ATTR_NODE_DESC).data).text
    assert desc == "lab-h3 ipoibfs0"
    out_of_range = sma_answer(agents, smp.IB_SMP_ATTR_PKEY_TABLE, attr_mod=4)
    assert out_of_range.status == common.IB_MGMT_MAD_STATUS_INVALID_ATTRIB_VALUE
    sl2vl = sma_answer(agents, smp.IB_SMP_ATTR_SL_TO_VL_TABLE)
    assert sl2vl.status == 0 and sl2vl.data == bytes(64)  # every SL on VL0
    unknown = sma_answer(agents, smp.IB_SMP_ATTR_VL_ARB_TABLE)  # VLArbCaps are 0
    assert unknown.status == common.IB_MGMT_MAD_STATUS_UNSUPPORTED_METHOD_ATTRIB
    set_desc = sma_answer(agents, smp.IB_SMP_ATTR_NODE_DESC, method=common.IB_MGMT_METHOD_SET)
    assert set_desc.status == common.IB_MGMT_MAD_STATUS_UNSUPPORTED_METHOD_ATTRIB
    # a Set of the P_Key table changes nothing and shows the table as it is
    dev.ports[0].is_sm = True
    kept = sma_answer(agents, smp.IB_SMP_ATTR_PKEY_TABLE, method=common.IB_MGMT_METHOD_SET)
    assert kept.status == 0 and smp.PKeyTable.unpack(kept.data).pkeys[:2] == (0xFFFF, 3)
    info = smp.PortInfo.unpack(sma_answer(agents, smp.IB_SMP_ATTR_PORT_INFO).data)
    assert info.capability_mask == CAP_MASK | IB_PORT_SM


def pma_mad(attr_id: int, method: int = 1, data: bytes = b"") -> bytes:
    hdr = common.MadHdr(mgmt_class=common.IB_MGMT_CLASS_PERF_MGMT, method=method, tid=9,
                        attr_id=attr_id)  # fmt: skip
    return (hdr.pack() + bytes(40) + data).ljust(256, b"\0")


def test_pma_counts_and_resets_with_a_baseline():
    dev = make_device()
    counts = Counts()
    agents = PortAgents(dev, dev.ports[0], counts)
    counts.now = Traffic(xmit_bytes=4000, xmit_pkts=10, rcv_bytes=800, rcv_pkts=4)
    get = pma_mad(pma.IB_PMA_PORT_COUNTERS, data=pma.PortCounters(port_select=1).pack())
    answer = agents.answer(get)
    assert answer is not None
    pc = pma.PortCounters.unpack(answer[64:])
    assert (pc.port_xmit_data, pc.port_xmit_pkts, pc.port_rcv_data) == (1000, 10, 200)
    reset = pma.PortCounters(port_select=1, counter_select=0xFFFF).pack()
    answer = agents.answer(pma_mad(pma.IB_PMA_PORT_COUNTERS, common.IB_MGMT_METHOD_SET, reset))
    assert answer is not None and pma.PortCounters.unpack(answer[64:]).port_xmit_pkts == 0
    counts.now = Traffic(xmit_bytes=4400, xmit_pkts=11, rcv_bytes=800, rcv_pkts=4)
    ext = pma_mad(pma.IB_PMA_PORT_COUNTERS_EXT, data=pma.PortCountersExtended(port_select=1).pack())
    answer = agents.answer(ext)
    assert answer is not None
    x = pma.PortCountersExtended.unpack(answer[64:])
    assert (x.port_xmit_data, x.port_xmit_pkts, x.port_unicast_xmit_pkts) == (100, 1, 1)
    assert counts.now.xmit_pkts == 11  # the source is never zeroed
    cpi = agents.answer(pma_mad(pma.IB_PMA_CLASS_PORT_INFO))
    assert cpi is not None
    assert common.ClassPortInfo.unpack(cpi[64:]).capability_mask == 0x300
    wrong_port = pma_mad(pma.IB_PMA_PORT_COUNTERS, data=pma.PortCounters(port_select=2).pack())
    answer = agents.answer(wrong_port)
    assert answer is not None and common.MadHdr.unpack(answer).status == 0x001C


def test_registration_and_pkey_rules():
    async def main() -> None:
        dev = make_device()
        async with trio.open_nursery() as nursery:
            port = UmadPort(0, dev.ports[0], PortAgents(dev, dev.ports[0], Counts()), nursery)
            h, _ = open_file(port)
            h.ioctl(umad.IB_USER_MAD_ENABLE_PKEY, b"", 0, 0)
            assert reg(h, common.IB_MGMT_CLASS_SUBN_LID_ROUTED, 0) == 0
            assert reg(h, common.IB_MGMT_CLASS_SUBN_ADM, 1, version=2, rmpp_version=1) == 1
            bad = umad.IB_USER_MAD_ENABLE_PKEY
            assert errno_of(h.ioctl, bad, b"", 0, 0) == errno.EINVAL
            assert errno_of(reg, h, common.IB_MGMT_CLASS_PERF_MGMT, 0) == errno.EINVAL
            assert errno_of(reg, h, common.IB_MGMT_CLASS_SUBN_LID_ROUTED, 2) == errno.EINVAL
            assert errno_of(reg, h, common.IB_MGMT_CLASS_PERF_MGMT, 1, 8) == errno.EINVAL
            assert errno_of(reg, h, 0x32, 1) == errno.EINVAL  # vendor class, no OUI
            # a method another file's agent already takes
            other, _ = open_file(port)
            reg(other, common.IB_MGMT_CLASS_PERF_MGMT, 1, methods=frozenset({1}))
            taken = frozenset({1, 2})
            assert errno_of(reg, h, common.IB_MGMT_CLASS_PERF_MGMT, 1, 1, methods=taken) == (
                errno.EINVAL
            )
            for _ in range(30):
                reg(h, 0, 1)
            assert errno_of(reg, h, 0, 1) == errno.ENOMEM
            unreg = umad.IB_USER_MAD_UNREGISTER_AGENT
            assert errno_of(h.ioctl, unreg, (32).to_bytes(4, "little"), 0, 0) == errno.EINVAL
            h.ioctl(unreg, (5).to_bytes(4, "little"), 0, 0)
            assert errno_of(h.ioctl, unreg, (5).to_bytes(4, "little"), 0, 0) == errno.EINVAL
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_answers_timeouts_and_reads():
    async def main() -> None:
        dev = make_device()
        async with trio.open_nursery() as nursery:
            port = UmadPort(0, dev.ports[0], PortAgents(dev, dev.ports[0], Counts()), nursery)
            h, wakes = open_file(port)
            h.ioctl(umad.IB_USER_MAD_ENABLE_PKEY, b"", 0, 0)
            agent = reg(h, common.IB_MGMT_CLASS_SUBN_LID_ROUTED, 0)
            assert h.read(320) is None and h.poll() & 1 == 0  # POLLIN
            assert errno_of(h.read, 40) == errno.EINVAL
            get = smp.Smp(attr_id=smp.IB_SMP_ATTR_NODE_INFO, tid=0x42).pack()
            assert errno_of(h.write, umad.UserMadHdr(id=3, lid=7).pack() + get) == errno.EINVAL
            assert errno_of(h.write, umad.UserMadHdr(id=agent).pack() + get[:10]) == errno.EINVAL
            h.write(umad.UserMadHdr(id=agent, lid=7, timeout_ms=100).pack() + get)
            assert wakes and h.poll() & 1
            assert errno_of(h.read, 100) == errno.EINVAL  # too small: left queued
            answer = h.read(320)
            assert answer is not None and len(answer) == 320
            hdr = umad.UserMadHdr.unpack(answer)
            assert (hdr.status, hdr.lid, hdr.qpn, hdr.length) == (0, 7, 0, 320)
            tid = common.MadHdr.unpack(answer[64:]).tid
            assert tid & 0xFFFFFFFF == 0x42 and tid >> 32 == port.files[0].agents[0].hi_tid
            # to another LID: nobody answers; ETIMEDOUT after timeout * (retries + 1)
            start = trio.current_time()
            h.write(umad.UserMadHdr(id=agent, lid=9, timeout_ms=20, retries=2).pack() + get)
            assert errno_of(h.write, umad.UserMadHdr(id=agent, lid=9).pack() + get) == (
                errno.EINVAL  # the same TID again: a duplicate
            )
            while h.read(320) is None:
                await trio.sleep(0.005)
            assert trio.current_time() - start >= 0.06
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_timed_out_read_carries_the_request():
    async def main() -> None:
        dev = make_device()
        async with trio.open_nursery() as nursery:
            port = UmadPort(0, dev.ports[0], PortAgents(dev, dev.ports[0], Counts()), nursery)
            h, _ = open_file(port)
            agent = reg(h, common.IB_MGMT_CLASS_PERF_MGMT, 1)  # old 56-byte header
            mad = pma_mad(pma.IB_PMA_PORT_COUNTERS)
            h.write(umad.UserMadHdr(id=agent, lid=3, timeout_ms=5).pack(False) + mad)
            with trio.fail_after(2):
                while (out := h.read(320)) is None:
                    await trio.sleep(0.005)
            assert len(out) == 56 + 24
            assert umad.UserMadHdr.unpack(out, pkey=False).status == errno.ETIMEDOUT
            h.release()
            assert port.files == []
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_issm_is_one_opener_and_sets_is_sm():
    dev = make_device()
    issm = IssmFile(dev.ports[0])
    first = issm.open(os.O_RDWR, lambda: None)
    assert dev.ports[0].cap_mask & IB_PORT_SM
    assert errno_of(issm.open, os.O_RDWR | os.O_NONBLOCK, lambda: None) == errno.EAGAIN
    assert errno_of(issm.open, os.O_RDWR, lambda: None) == errno.EBUSY
    first.release()
    assert not dev.ports[0].cap_mask & IB_PORT_SM
    issm.open(os.O_RDWR, lambda: None).release()


class WirePort:
    """The FabricPort of UmadPort's port, recording what goes onto the fabric."""

    def __init__(self, port) -> None:
        self.port, self.sent = port, []
        self.num, self.lid, self.gid, self.pkeys = port.num, port.lid, port.gid, port.pkeys

    def pkey_index(self, pkey: int) -> int | None:
        return self.port.pkey_index(pkey)

    def send(self, dlid: int, parts: list[bytes]) -> int:
        self.sent.append((dlid, b"".join(parts)))
        return 0

    def reaches(self, dlid: int) -> bool:
        return True


def datagram(mad: bytes, *, dst_qpn: int = 1, qkey: int = 0x80010000, pkey: int = 0xFFFF,
             slid: int = 9, src_qpn: int = 1) -> memoryview:  # fmt: skip
    hdr = wire.UdHeader(slid=slid, dlid=7, src_qpn=src_qpn, dst_qpn=dst_qpn, pkey=pkey,
                        qkey=qkey, sgid=bytes(16), dgid=bytes(16))  # fmt: skip
    return memoryview(hdr.pack() + mad)


def test_mads_from_other_lids_are_answered_delivered_or_refused():
    async def main() -> None:
        dev = make_device()
        async with trio.open_nursery() as nursery:
            wire_port = WirePort(dev.ports[0])
            agents = PortAgents(dev, dev.ports[0], Counts())
            port = UmadPort(0, dev.ports[0], agents, nursery, wire_port)
            # the PMA answers a GMP on QP1, back to the sender's LID and QP
            port.receive(datagram(pma_mad(pma.IB_PMA_CLASS_PORT_INFO)))
            ((dlid, sent),) = wire_port.sent
            head = wire.UdHeader.unpack_from(sent)
            assert (dlid, head.src_qpn, head.dst_qpn, head.slid) == (9, 1, 1, 7)
            assert common.MadHdr.unpack(sent[wire.UdHeader.SIZE :]).method == 0x81  # GetResp
            # an SMP on QP0: the SMA
            lid_smp = smp.Smp(mgmt_class=common.IB_MGMT_CLASS_SUBN_LID_ROUTED, method=1, tid=3,
                              attr_id=smp.IB_SMP_ATTR_NODE_INFO)  # fmt: skip
            port.receive(datagram(lid_smp.pack(), dst_qpn=0, qkey=0, src_qpn=0))
            answer = smp.Smp.unpack(wire_port.sent[-1][1][wire.UdHeader.SIZE :])
            assert smp.NodeInfo.unpack(answer.data).node_guid == dev.node_guid
            # a vendor-class Get nobody registered for: generate_unmatched_resp
            vendor = common.MadHdr(mgmt_class=0x32, method=1, tid=4, attr_id=0).pack()
            port.receive(datagram(vendor.ljust(256, b"\0")))
            refused = common.MadHdr.unpack(wire_port.sent[-1][1][wire.UdHeader.SIZE :])
            assert (refused.method, refused.status) == (0x81, 0x000C)
            # ... and once an agent takes the class, the request is read from its file
            h, wakes = open_file(port)
            reg(h, 0x32, 1, oui=0x001405, methods=frozenset({common.IB_MGMT_METHOD_GET}))
            with_oui = bytearray(vendor.ljust(256, b"\0"))
            with_oui[37:40] = (0x001405).to_bytes(3, "big")
            port.receive(datagram(bytes(with_oui)))
            assert wakes and h.read(1024) is not None
            # dropped: a wrong Q_Key, a P_Key the port lacks, a GMP on QP0, a runt
            before = len(wire_port.sent)
            port.receive(datagram(pma_mad(pma.IB_PMA_CLASS_PORT_INFO), qkey=0x1234))
            port.receive(datagram(pma_mad(pma.IB_PMA_CLASS_PORT_INFO), pkey=0x8005))
            port.receive(datagram(pma_mad(pma.IB_PMA_CLASS_PORT_INFO), dst_qpn=0))
            port.receive(datagram(b"\x01\x04"))
            assert len(wire_port.sent) == before
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_peek_gives_what_an_enospc_read_copies_and_leaves_the_message():
    async def main() -> None:
        dev = make_device()
        async with trio.open_nursery() as nursery:
            port = UmadPort(0, dev.ports[0], PortAgents(dev, dev.ports[0], Counts()), nursery)
            h, _ = open_file(port)
            h.ioctl(umad.IB_USER_MAD_ENABLE_PKEY, b"", 0, 0)
            agent = reg(h, common.IB_MGMT_CLASS_SUBN_ADM, 1, version=2, rmpp_version=1)
            message = bytes(range(256)) * 2  # a reassembled 512-byte RMPP message
            h.queue_recv(h.agents[agent], message, slid=1, src_qp=1, pkey_index=0)

            def peek(count: int) -> bytes:
                arg = count.to_bytes(4, "little").ljust(umad.IPOIBFS_PEEK_SIZE, b"\0")
                return h.ioctl(umad.IPOIBFS_UMAD_PEEK, arg, umad.IPOIBFS_PEEK_SIZE, 0)[1]

            copied = peek(320)
            assert umad.UserMadHdr.unpack(copied).length == 64 + 512
            assert copied[64:] == message[:256]
            assert errno_of(h.read, 320) == errno.ENOSPC  # still queued, as the kernel keeps it
            assert errno_of(peek, 64 + 512) == errno.EAGAIN  # a read that fits needs no help
            assert h.read(64 + 512)[64:] == message
            assert errno_of(peek, 320) == errno.EAGAIN  # nothing waits
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_an_unanswered_request_is_sent_again_while_retries_are_left():
    async def main() -> None:
        dev = make_device()
        async with trio.open_nursery() as nursery:
            wire_port = WirePort(dev.ports[0])
            agents = PortAgents(dev, dev.ports[0], Counts())
            port = UmadPort(0, dev.ports[0], agents, nursery, wire_port)
            h, wakes = open_file(port)
            h.ioctl(umad.IB_USER_MAD_ENABLE_PKEY, b"", 0, 0)
            agent = reg(h, common.IB_MGMT_CLASS_PERF_MGMT, 1)
            hdr = umad.UserMadHdr(id=agent, timeout_ms=20, retries=2, lid=9, qpn=1,
                                  qkey=0x80010000)  # fmt: skip
            h.write(hdr.pack() + pma_mad(pma.IB_PMA_CLASS_PORT_INFO))
            with trio.fail_after(2):
                while not wakes:
                    await trio.sleep(0.01)
            assert len(wire_port.sent) == 3  # the send and two retries, to LID 9
            assert {dlid for dlid, _ in wire_port.sent} == {9}
            assert umad.UserMadHdr.unpack(h.read(320)).status == errno.ETIMEDOUT
            nursery.cancel_scope.cancel()

    trio.run(main)


class Wire:
    """Two UmadPorts on one wire: what one sends reaches the other's `receive`, after the
    sender returns (as the fabric delivers on a later turn of the loop); `drop` loses the
    datagrams it names by their position, counted from 1."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery, self.ports, self.sent = nursery, {}, []
        self.drop: set[int] = set()

    def attach(self, port: UmadPort) -> None:
        self.ports[port.port.lid] = port
        wire_self = self

        class Out(WirePort):
            def send(self, dlid: int, parts: list[bytes]) -> int:
                data = b"".join(parts)
                wire_self.sent.append(data)
                if len(wire_self.sent) not in wire_self.drop:
                    wire_self.nursery.start_soon(wire_self._deliver, dlid, data)
                return 0

        port.fport = Out(port.port)

    async def _deliver(self, dlid: int, data: bytes) -> None:
        self.ports[dlid].receive(memoryview(data))

    def rmpp_types(self) -> list[tuple[int, int, int]]:
        """(source LID, RMPP type, segment number) of every datagram, in order."""
        out = []
        for data in self.sent:
            head = wire.UdHeader.unpack_from(data)
            r = rmpp.RmppHdr.unpack(data[wire.UdHeader.SIZE :])
            out.append((head.slid, r.type, r.seg_num))
        return out


def test_rmpp_messages_go_as_segments_and_are_read_whole():
    async def main() -> None:
        client_dev, server_dev = make_device(), make_device()
        server_dev.ports[0].lid = 9
        async with trio.open_nursery() as nursery:
            line = Wire(nursery)
            ends = []
            for dev in (client_dev, server_dev):
                port = UmadPort(0, dev.ports[0], PortAgents(dev, dev.ports[0], Counts()), nursery)
                line.attach(port)
                h, _ = open_file(port)
                h.ioctl(umad.IB_USER_MAD_ENABLE_PKEY, b"", 0, 0)
                ends.append((port, h))
            (_, client), (_, server) = ends
            sa = common.IB_MGMT_CLASS_SUBN_ADM
            c_agent = reg(client, sa, 1, version=2, rmpp_version=1)
            s_agent = reg(server, sa, 1, version=2, rmpp_version=1,
                          methods=frozenset({common.IB_MGMT_METHOD_SET}))  # fmt: skip
            # a 3-segment Set (56 header bytes, 500 of data): written whole, read whole
            body = bytes(range(250)) * 2
            request = sa_rmpp_mad(common.IB_MGMT_METHOD_SET, tid=0x77, data=body)
            hdr = umad.UserMadHdr(id=c_agent, timeout_ms=200, retries=1, lid=9, qpn=1,
                                  qkey=0x80010000)  # fmt: skip
            assert client.write(hdr.pack() + request) == 64 + len(request)
            with trio.fail_after(2):
                while not server.recv:
                    await trio.sleep(0.01)
            got = server.read(4096)
            assert umad.UserMadHdr.unpack(got).length == 64 + len(request)
            assert got[64 + 56 :] == body and got[64 + 16 : 64 + 24] == request[16:24]
            data, ack = rmpp.IB_MGMT_RMPP_TYPE_DATA, rmpp.IB_MGMT_RMPP_TYPE_ACK
            assert line.rmpp_types() == [(7, data, 1), (9, ack, 1), (7, data, 2), (7, data, 3),
                                         (9, ack, 3)]  # fmt: skip
            # the answer, 1,000 bytes, back the same way; its second segment is lost once
            # and sent again on the timeout, from the last ACK
            line.drop = {len(line.sent) + 3}
            tid = int.from_bytes(got[64 + 8 : 64 + 16], "big")
            answer = sa_rmpp_mad(common.IB_MGMT_METHOD_GET_RESP, tid=tid, data=bytes(944))
            back = umad.UserMadHdr(id=s_agent, timeout_ms=50, retries=2, lid=7, qpn=1,
                                   qkey=0x80010000)  # fmt: skip
            server.write(back.pack() + answer)
            with trio.fail_after(2):
                while not client.recv:
                    await trio.sleep(0.01)
            whole = client.read(4096)
            assert umad.UserMadHdr.unpack(whole).status == 0
            assert len(whole) == 64 + len(answer) and whole[64 + 56 :] == bytes(944)
            resent = [seg for src, kind, seg in line.rmpp_types() if src == 9 and kind == data]
            # 944 bytes are five segments of 200; after the timeout, all from the last ACK
            assert resent == [1, 2, 3, 4, 5, 2, 3, 4, 5]
            # a long write without RMPP active, or from an agent without RMPP, is refused
            plain = request[:24] + bytes(12) + request[36:]
            assert errno_of(client.write, hdr.pack() + plain) == errno.EINVAL
            nursery.cancel_scope.cancel()

    trio.run(main)


def sa_rmpp_mad(method: int, *, tid: int, data: bytes) -> bytes:
    """An SA MAD with RMPP active (version 1, DATA), its 20-byte SA header, then `data`."""
    head = common.MadHdr(mgmt_class=common.IB_MGMT_CLASS_SUBN_ADM, class_version=2,
                         method=method, tid=tid, attr_id=0x31).pack()  # fmt: skip
    rmpp_hdr = rmpp.RmppHdr(version=1, type=rmpp.IB_MGMT_RMPP_TYPE_DATA,
                            flags=rmpp.IB_MGMT_RMPP_FLAG_ACTIVE).pack()  # fmt: skip
    return head + rmpp_hdr + bytes(20) + data
