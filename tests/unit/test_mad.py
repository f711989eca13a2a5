"""wire.mad: the umad ABI, MAD headers, SMPs and their attributes, SA records, RMPP and the
PMA, checked against the kernel's and libibmad's documented layouts (and tshark's dissector)."""

from __future__ import annotations

import dataclasses
import errno
import shutil
import struct
import subprocess

import pytest

from ipoibfs.wire.mad import common, layout, pma, rmpp, sa, smp, umad

# ---------------------------------------------------------------------------- umad ABI


def test_ioctl_numbers_match_the_measured_ones():
    # strace of the stock sminfo: 0x1b03 then 0xc01c1b01 (mad-plane.md)
    assert umad.IB_USER_MAD_ENABLE_PKEY == 0x1B03
    assert umad.IB_USER_MAD_REGISTER_AGENT == 0xC01C1B01
    assert umad.IB_USER_MAD_UNREGISTER_AGENT == 0x40041B02
    assert umad.IB_USER_MAD_REGISTER_AGENT2 == 0xC0281B04


def test_struct_sizes():
    assert umad.RegReq.SIZE == 28
    assert umad.RegReq2.SIZE == 40
    assert len(umad.UserMadHdr().pack()) == 64
    assert len(umad.UserMadHdr().pack(pkey=False)) == 56


def test_user_mad_hdr_byte_orders():
    hdr = umad.UserMadHdr(id=3, status=errno.ETIMEDOUT, timeout_ms=1000, retries=2,
                          length=320, qpn=1, qkey=0x80010000, lid=0x1234, sl=5,
                          path_bits=1, grh_present=1, gid_index=2, hop_limit=64,
                          traffic_class=7, gid=bytes(range(16)), flow_label=0xABCDE,
                          pkey_index=0x0102)  # fmt: skip
    raw = hdr.pack()
    # host order (little-endian) for id..length and pkey_index, network order for the rest
    assert raw[0:4] == b"\x03\0\0\0"
    assert raw[4:8] == struct.pack("<I", errno.ETIMEDOUT)
    assert raw[16:20] == struct.pack("<I", 320)
    assert raw[20:24] == b"\0\0\0\x01"
    assert raw[24:28] == b"\x80\x01\0\0"
    assert raw[28:30] == b"\x12\x34"
    assert raw[30:36] == bytes([5, 1, 1, 2, 64, 7])
    assert raw[36:52] == bytes(range(16))
    assert raw[52:56] == b"\0\x0a\xbc\xde"
    assert raw[56:58] == b"\x02\x01"
    assert raw[58:64] == bytes(6)
    assert umad.UserMadHdr.unpack(raw) == hdr
    old = umad.UserMadHdr.unpack(hdr.pack(pkey=False), pkey=False)
    assert old == dataclasses.replace(hdr, pkey_index=0)


def test_short_header_is_refused():
    with pytest.raises(ValueError, match="64 bytes"):
        umad.UserMadHdr.unpack(bytes(56))


def test_reg_req_layout():
    req = umad.RegReq(methods=frozenset({1, 2, 0x12, 127}), qpn=1, mgmt_class=0x03,
                      mgmt_class_version=2, oui=0x001405, rmpp_version=1)  # fmt: skip
    raw = req.pack()
    assert len(raw) == 28
    mask = int.from_bytes(raw[4:20], "little")
    assert mask == (1 << 1) | (1 << 2) | (1 << 0x12) | (1 << 127)
    assert raw[20:27] == bytes([1, 3, 2, 0x00, 0x14, 0x05, 1])
    assert umad.RegReq.unpack(raw) == req
    # the kernel writes the agent id back into the first 4 bytes, host order
    assert umad.RegReq.unpack(struct.pack("<I", 7) + raw[4:]).id == 7


def test_reg_req2_layout_and_checks():
    req = umad.RegReq2(qpn=1, mgmt_class=0x32, mgmt_class_version=1,
                       methods=frozenset({1}), oui=0x001405)  # fmt: skip
    raw = req.pack()
    assert raw[8:10] == bytes([0x32, 1])
    assert raw[16:32] == (2).to_bytes(16, "little")
    assert raw[32:36] == struct.pack("<I", 0x001405)
    assert umad.RegReq2.unpack(raw) == req
    assert req.check() == 0
    assert umad.RegReq2(qpn=2).check() == errno.EINVAL
    assert umad.RegReq2(flags=1).check() == errno.EINVAL
    assert umad.RegReq2(mgmt_class=0x32, oui=0x01000000).check() == errno.EINVAL


def test_hi_tid():
    assert umad.umad_hi_tid(0x1111_2222_3333_4444, 0xAB) == 0x0000_00AB_3333_4444


def test_parse_write():
    hdr = umad.UserMadHdr(id=2, timeout_ms=100, retries=3, qpn=1, qkey=0x80010000, lid=1)
    mad = bytes(range(256))
    got, body = umad.parse_write(hdr.pack() + mad)
    assert got == hdr and body == mad
    with pytest.raises(OSError, match="at least 100 bytes") as short:
        umad.parse_write(hdr.pack() + bytes(35))
    assert short.value.errno == errno.EINVAL
    with pytest.raises(OSError, match="agents 0..31"):
        umad.parse_write(dataclasses.replace(hdr, id=32).pack() + mad)
    old, _ = umad.parse_write(hdr.pack(pkey=False) + mad, pkey=False)
    assert old == hdr


def test_reads_of_received_messages():
    message = bytes(56) + bytes(range(200)) * 3  # a reassembled SA table, 656 bytes
    hdr = umad.recv_header(len(message), agent_id=1, src_qp=1, slid=9, sl=2, pkey_index=3)
    assert hdr.length == 64 + 656 and hdr.qpn == 1 and hdr.lid == 9
    data, err = umad.copy_recv_mad(hdr, message, 64 + 656)
    assert err == 0 and data == hdr.pack() + message
    # too small for the whole RMPP message: the header and first MAD, ENOSPC
    data, err = umad.copy_recv_mad(hdr, message, 64 + 256)
    assert err == errno.ENOSPC and len(data) == 64 + 256
    assert umad.UserMadHdr.unpack(data).length == 720  # where libibumad finds the length
    assert umad.copy_recv_mad(hdr, message, 100) == (b"", errno.EINVAL)
    grh = umad.recv_header(256, agent_id=0, src_qp=1, slid=9,
                           grh=(0, 64, 0, bytes(range(16)), 0x12345))  # fmt: skip
    assert grh.grh_present == 1 and grh.gid == bytes(range(16))


def test_timeout_read():
    hdr = umad.UserMadHdr(id=1, timeout_ms=100, qpn=1, lid=1)
    mad = common.MadHdr(mgmt_class=3, tid=umad.umad_hi_tid(5, 7)).pack() + bytes(232)
    data = umad.timeout_read(hdr, mad)
    assert len(data) == 64 + 24
    assert umad.UserMadHdr.unpack(data).status == errno.ETIMEDOUT
    assert common.MadHdr.unpack(data[64:]).tid == 7 << 32 | 5


# ------------------------------------------------------------------- common MAD header


def test_mad_header_layout():
    # ib_mad_hdr, libibmad's MadMethod (BE_OFFS(0,7)) ... MadModifier (160,32)
    hdr = common.MadHdr(mgmt_class=0x81, class_version=1, method=0x81, status=0x801C,
                        class_specific=0x0203, tid=0x0102030405060708, attr_id=0x0015,
                        attr_mod=0xAABBCCDD)  # fmt: skip
    raw = hdr.pack()
    assert raw.hex() == "01810181801c0203010203040506070800150000aabbccdd"
    assert common.MadHdr.unpack(raw) == hdr
    assert hdr.is_response and hdr.directed


def test_classes_and_offsets():
    assert common.IB_VENDOR_OPENIB_PING_CLASS == 0x32
    assert common.data_offset(common.IB_MGMT_CLASS_SUBN_ADM) == 56
    assert common.data_offset(0x32) == 40
    assert common.data_offset(common.IB_MGMT_CLASS_CM) == 24
    assert common.attribute_offset(common.IB_MGMT_CLASS_PERF_MGMT) == 64
    assert common.attribute_offset(common.IB_MGMT_CLASS_SUBN_DIRECTED_ROUTE) == 64
    assert common.is_rmpp_class(0x03) and common.is_rmpp_class(0x32)
    assert not common.is_rmpp_class(0x01) and not common.is_rmpp_class(0x04)


def _request(mclass: int, method: int, attr: int = 0x11, tid: int = 0x55) -> bytes:
    hdr = common.MadHdr(mgmt_class=mclass, method=method, tid=tid, attr_id=attr,
                        attr_mod=3)  # fmt: skip
    return hdr.pack() + bytes(range(24, 256))


@pytest.mark.parametrize(
    ("method", "answer"),
    [(0x01, 0x81), (0x02, 0x81), (0x12, 0x92), (0x14, 0x94), (0x15, 0x95), (0x06, 0x86)],
)
def test_response_method(method, answer):
    assert common.response_method(method) == answer
    got = common.MadHdr.unpack(common.response(_request(0x03, method)))
    assert got.method == answer and got.tid == 0x55 and got.attr_id == 0x11
    assert got.attr_mod == 3


def test_response_of_a_dr_smp_sets_the_d_bit_and_keeps_the_paths():
    req = _request(0x81, 0x01)
    ans = common.response(
        req, b"\xaa" * 10, status=common.IB_MGMT_MAD_STATUS_UNSUPPORTED_METHOD_ATTRIB
    )
    assert ans[4:6] == b"\x80\x0c"
    assert ans[6:8] == req[6:8]  # hop pointer and count untouched
    assert ans[64:74] == b"\xaa" * 10 and ans[74:128] == bytes(54)
    assert ans[128:] == req[128:]  # initial and return paths
    with pytest.raises(ValueError, match="already a response"):
        common.response(ans)


def test_is_response():
    assert common.is_response(_request(0x03, 0x92))
    assert common.is_response(_request(0x03, common.IB_MGMT_METHOD_TRAP_REPRESS))
    assert not common.is_response(_request(0x03, 0x12))
    bm = common.MadHdr(mgmt_class=common.IB_MGMT_CLASS_BM, method=0x03, attr_mod=1).pack()
    assert common.is_response(bm)  # a BM Send with the response bit in its modifier


def test_response_refuses_oversized_data():
    with pytest.raises(ValueError, match="do not fit"):
        common.response(_request(0x01, 0x01), bytes(65))


# --------------------------------------------------------------------------------- SMPs

NODE_INFO = smp.NodeInfo(node_type=smp.IB_NODE_CA, num_ports=1, sys_guid=0x0002C90300000100,
                         node_guid=0x0002C90300000101, port_guid=0x0002C90300000102,
                         partition_cap=128, device_id=0x1003, revision=0xA0,
                         local_port_num=1, vendor_id=0x0002C9)  # fmt: skip
PORT_INFO = smp.PortInfo(gid_prefix=0xFE80000000000000, lid=5, master_sm_lid=1,
                         capability_mask=0x02510868, local_port_num=1, link_width_enabled=3,
                         link_width_supported=3, link_width_active=2, link_speed_supported=7,
                         port_state=smp.PortState.ACTIVE, phys_state=smp.PhysState.LINK_UP,
                         link_down_default_state=2, lmc=2, link_speed_active=4,
                         link_speed_enabled=7, neighbor_mtu=4, master_sm_sl=3, vl_cap=4,
                         vl_high_limit=1, vl_arb_high_cap=8, vl_arb_low_cap=8, mtu_cap=5,
                         vl_stall_count=7, hoq_life=19, operational_vls=4,
                         partition_enforcement_inbound=1, mkey_violations=0x1111,
                         pkey_violations=0x2222, qkey_violations=0x3333, guid_cap=32,
                         client_reregister=1, subnet_timeout=18, resp_time_value=16,
                         local_phy_errors=8, overrun_errors=8, max_credit_hint=0x4444,
                         link_round_trip_latency=0x123456, capability_mask2=0x0ABC,
                         link_speed_ext_active=1, link_speed_ext_supported=3,
                         link_speed_ext_enabled=0x1E)  # fmt: skip


def _field(raw: bytes, offset: int, width: int) -> int:
    """A field at an IBA bit offset, read independently of the layout code."""
    value = int.from_bytes(raw, "big")
    return value >> (len(raw) * 8 - offset - width) & ((1 << width) - 1)


def test_node_info_bytes():
    raw = NODE_INFO.pack()
    assert len(raw) == 40
    assert raw[:4] == bytes([1, 1, 1, 1])
    assert raw[4:12] == (0x0002C90300000100).to_bytes(8, "big")
    assert raw[28:30] == b"\x00\x80" and raw[30:32] == b"\x10\x03"
    assert raw[36:40] == b"\x01\x00\x02\xc9"  # LocalPortNum, then the 24-bit VendorID
    assert smp.NodeInfo.unpack(raw) == NODE_INFO


@pytest.mark.parametrize(
    ("name", "offset", "width"),
    [  # libibmad fields.c, PortInfo
        ("lid", 128, 16),
        ("master_sm_lid", 144, 16),
        ("capability_mask", 160, 32),
        ("local_port_num", 224, 8),
        ("link_width_active", 248, 8),
        ("link_speed_supported", 256, 4),
        ("port_state", 260, 4),
        ("phys_state", 264, 4),
        ("link_down_default_state", 268, 4),
        ("lmc", 277, 3),
        ("link_speed_active", 280, 4),
        ("link_speed_enabled", 284, 4),
        ("neighbor_mtu", 288, 4),
        ("master_sm_sl", 292, 4),
        ("vl_cap", 296, 4),
        ("mtu_cap", 332, 4),
        ("vl_stall_count", 336, 3),
        ("hoq_life", 339, 5),
        ("operational_vls", 344, 4),
        ("partition_enforcement_inbound", 348, 1),
        ("mkey_violations", 352, 16),
        ("guid_cap", 400, 8),
        ("client_reregister", 408, 1),
        ("subnet_timeout", 411, 5),
        ("resp_time_value", 419, 5),
        ("local_phy_errors", 424, 4),
        ("overrun_errors", 428, 4),
        ("max_credit_hint", 432, 16),
        ("link_round_trip_latency", 456, 24),
        ("capability_mask2", 480, 16),
        ("link_speed_ext_active", 496, 4),
        ("link_speed_ext_supported", 500, 4),
        ("link_speed_ext_enabled", 507, 5),
    ],  # fmt: skip
)
def test_port_info_field_offsets(name, offset, width):
    raw = PORT_INFO.pack()
    assert len(raw) == 64
    assert _field(raw, offset, width) == getattr(PORT_INFO, name)


def test_port_info_round_trip_and_known_bytes():
    raw = PORT_INFO.pack()
    assert raw[16:18] == b"\x00\x05" and raw[18:20] == b"\x00\x01"
    assert raw[32] == 0x74  # LinkSpeedSupported 7, PortState Active
    assert raw[33] == 0x52  # PhysState LinkUp, LinkDownDefault Polling
    assert raw[34] == 0x02  # ProtectBits 0, LMC 2
    assert raw[35] == 0x47  # LinkSpeedActive 4, LinkSpeedEnabled 7
    assert smp.PortInfo.unpack(raw) == PORT_INFO


def test_attribute_values_out_of_range_are_refused():
    with pytest.raises(ValueError, match="PortInfo.lmc: 8 does not fit 3 bits"):
        PORT_INFO.replace(lmc=8).pack()
    with pytest.raises(ValueError, match="at most 64 bytes"):
        smp.NodeDescription.of("x" * 65)


def test_node_description():
    nd = smp.NodeDescription.of("host-a HCA-1")
    assert nd.pack() == b"host-a HCA-1".ljust(64, b"\0")
    assert smp.NodeDescription.unpack(nd.pack()).text == "host-a HCA-1"


def test_tables():
    pk = smp.PKeyTable((0xFFFF, 0x8001, 0x7FFF))
    raw = pk.pack()
    assert raw[:6] == b"\xff\xff\x80\x01\x7f\xff" and len(raw) == 64
    assert smp.PKeyTable.unpack(raw).pkeys[:3] == (0xFFFF, 0x8001, 0x7FFF)
    assert len(smp.PKeyTable.unpack(raw).pkeys) == 32
    lft = smp.LinearForwardingTable(tuple(range(64)))
    assert lft.pack() == bytes(range(64))
    with pytest.raises(ValueError, match="64 entries per block"):
        smp.LinearForwardingTable(tuple(range(65))).pack()
    gi = smp.GuidInfo((0x0002C90300000102,))
    assert gi.pack()[:8] == (0x0002C90300000102).to_bytes(8, "big")
    mft = smp.MulticastForwardingTable((0x0006,))
    assert mft.pack()[:2] == b"\x00\x06"
    assert smp.mft_attr_mod(3, 1) == 0x10000003
    assert smp.mft_block_position(0x10000003) == (3, 1)


def test_switch_info_and_sm_info():
    si = smp.SwitchInfo(linear_fdb_cap=0xC000, mcast_fdb_cap=0x400, linear_fdb_top=9,
                        life_time_value=18, port_state_change=1, lids_per_port=1,
                        partition_enforcement_cap=32, enhanced_port0=1,
                        mcast_fdb_top=0xC003)  # fmt: skip
    raw = si.pack()
    assert raw[0:2] == b"\xc0\x00" and raw[6:8] == b"\x00\x09"
    assert raw[11] == 18 << 3 | 1 << 2  # LifeTimeValue 5 bits, PortStateChange
    assert raw[16] == 0x08  # EnhancedPort0 is bit 132
    assert raw[18:20] == b"\xc0\x03"
    assert smp.SwitchInfo.unpack(raw) == si
    sm = smp.SMInfo(guid=0x0002C90300000101, sm_key=0, act_count=0x10, priority=15,
                    state=smp.SmState.MASTER)  # fmt: skip
    assert sm.pack()[16:21] == b"\x00\x00\x00\x10\xf3"
    assert smp.SMInfo.unpack(sm.pack()) == sm


def test_smp_layouts():
    lr = smp.Smp(method=1, tid=9, attr_id=smp.IB_SMP_ATTR_PORT_INFO, attr_mod=1,
                 mkey=0x1122334455667788, data=PORT_INFO.pack())  # fmt: skip
    raw = lr.pack()
    assert len(raw) == 256 and raw[1] == 0x01
    assert raw[24:32] == bytes.fromhex("1122334455667788")
    assert raw[64:128] == PORT_INFO.pack() and raw[128:] == bytes(128)
    assert smp.Smp.unpack(raw) == lr
    dr = smp.dr_smp([1, 3, 7], attr_id=smp.IB_SMP_ATTR_NODE_INFO, tid=10)
    raw = dr.pack()
    assert raw[1] == 0x81 and raw[4:8] == b"\x00\x00\x00\x03"  # D 0, status, ptr 0, cnt 3
    assert raw[32:36] == b"\xff\xff\xff\xff"  # DrSLID, DrDLID permissive
    assert raw[128:132] == bytes([0, 1, 3, 7])
    assert smp.Smp.unpack(raw) == dr
    with pytest.raises(ValueError, match="at most 63 hops"):
        smp.dr_smp([1] * 64, attr_id=0x11)


def test_smp_answer_sets_d_bit():
    dr = smp.dr_smp([1], attr_id=smp.IB_SMP_ATTR_NODE_INFO, tid=10)
    ans = smp.smp_answer(dr, NODE_INFO.pack())
    raw = ans.pack()
    assert raw[3] == 0x81 and raw[4:6] == b"\x80\x00"
    assert smp.NodeInfo.unpack(smp.Smp.unpack(raw).data) == NODE_INFO


# A fabric for the DR walk: host A port 1 - switch S port 1; S port 5 - host B port 1;
# S port 7 - switch T port 2; T port 4 - host C port 1.
LINKS = {("A", 1): ("S", 1), ("S", 5): ("B", 1), ("S", 7): ("T", 2), ("T", 4): ("C", 1)}
LINKS |= {v: k for k, v in LINKS.items()}
SWITCHES = {"S": 8, "T": 4}


def _walk(start: str, packet: smp.Smp, out_port: int) -> tuple[str, smp.Smp, list[str]]:
    """Sends a DR SMP out of `out_port` and follows it node by node to whoever handles
    it; returns that node, the SMP as it sees it and the nodes passed."""
    sent = smp.smi_handle_dr_smp_send(packet, start in SWITCHES, out_port)
    assert sent is not None
    node, port = LINKS[(start, out_port)]
    seen = [start]
    while True:
        seen.append(node)
        action, got, out = smp.smi_receive(sent, is_switch=node in SWITCHES, port=port,
                                           phys_port_cnt=SWITCHES.get(node, 1))  # fmt: skip
        if action is smp.SmiAction.LOCAL:
            return node, got, seen
        assert action is smp.SmiAction.FORWARD, (node, action)
        sent = got
        node, port = LINKS[(node, out)]


@pytest.mark.parametrize(
    ("path", "target", "back_port"),
    [([1], "S", 1), ([1, 5], "B", 1), ([1, 7, 4], "C", 1), ([1, 7], "T", 2)],
)
def test_dr_smp_goes_out_and_comes_back(path, target, back_port):
    req = smp.dr_smp(path, attr_id=smp.IB_SMP_ATTR_NODE_INFO, tid=1)
    node, got, seen = _walk("A", req, path[0])
    assert node == target
    assert got.hop_ptr == got.hop_cnt + 1 == len(path) + 1  # as the SMA sees it (C14-9:4)
    assert got.return_path[len(path)] == back_port
    answer = smp.smp_answer(got, NODE_INFO.pack())
    home, back, seen_back = _walk(node, answer, got.return_path[len(path)])
    assert home == "A" and back.hop_ptr == 0 and back.direction
    assert seen_back == list(reversed(seen))
    assert smp.NodeInfo.unpack(back.data) == NODE_INFO


def test_dr_smp_with_no_hops_is_the_local_sma():
    req = smp.dr_smp([], attr_id=smp.IB_SMP_ATTR_NODE_INFO)
    sent = smp.smi_handle_dr_smp_send(req, False, 1)
    assert sent is not None and sent.hop_ptr == 1 == sent.hop_cnt + 1


def test_dr_smp_bad_paths_are_dropped():
    # the source's first hop must be the port it leaves by
    req = smp.dr_smp([1, 5], attr_id=0x11)
    assert smp.smi_handle_dr_smp_send(req, False, 2) is None
    # a CA cannot be an intermediate hop
    mid = dataclasses.replace(req, hop_ptr=1)
    assert (
        smp.smi_receive(mid, is_switch=False, port=1, phys_port_cnt=1)[0] is smp.SmiAction.DISCARD
    )
    # a port beyond the switch's ports
    far = smp.dr_smp([1, 9], attr_id=0x11)
    action, _, _ = smp.smi_receive(dataclasses.replace(far, hop_ptr=1), is_switch=True,
                                   port=1, phys_port_cnt=8)  # fmt: skip
    assert action is smp.SmiAction.DISCARD
    # an unreasonable hop pointer
    assert smp.smi_handle_dr_smp_send(dataclasses.replace(req, hop_ptr=9), True, 1) is None


# ------------------------------------------------------- Wireshark's dissector agrees

QP1_QKEY = 0x80010000


def _ib_packet(mad: bytes, *, dqp: int, sqp: int, dlid: int = 1, slid: int = 2) -> bytes:
    """LRH + BTH (UD SEND only) + DETH + the MAD + ICRC + VCRC (the CRCs zero: Wireshark
    shows them without checking)."""
    qkey = 0 if dqp == 0 else QP1_QKEY
    vl = 15 if dqp == 0 else 0  # SMPs travel on VL15
    words = (8 + 12 + 8 + len(mad) + 4) // 4  # LRH to ICRC, in 4-byte words
    lrh = struct.pack("!BBHHH", vl << 4, 0x02, dlid, words, slid)  # LNH 2: BTH follows
    bth = struct.pack("!BBHII", 0x64, 0, 0xFFFF, dqp, 0)
    deth = struct.pack("!II", qkey, sqp)
    return lrh + bth + deth + mad + bytes(6)


def _erf_pcap(packets: list[bytes]) -> bytes:
    """A pcap of LINKTYPE_ERF (197) with one ERF type-21 (InfiniBand) record per packet."""
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 197)
    for i, packet in enumerate(packets, 1):
        erf = struct.pack("<Q", i << 32) + struct.pack("!BBHHH", 21, 0, 16 + len(packet), 0,
                                                       len(packet))  # fmt: skip
        record = erf + packet
        out += struct.pack("<IIII", i, 0, len(record), len(record)) + record
    return out


def _tshark(tmp_path, packets: list[bytes]) -> list[str]:
    """tshark -V's lines for each packet, stripped."""
    tshark = shutil.which("tshark")
    assert tshark, "tshark is installed by make setup"
    path = tmp_path / "mad.pcap"
    path.write_bytes(_erf_pcap(packets))
    run = subprocess.run([tshark, "-n", "-r", str(path), "-V"], capture_output=True,
                         text=True, timeout=60, check=True)  # fmt: skip
    frames = run.stdout.split("\nFrame ")
    assert len(frames) == len(packets), run.stdout
    for text in frames:
        assert "Malformed" not in text and "Expert Info" not in text, text
    return [[line.strip() for line in text.splitlines()] for text in frames]


def test_tshark_decodes_the_smps(tmp_path):
    node_info = smp.smp_answer(smp.Smp(tid=0x1234, attr_id=smp.IB_SMP_ATTR_NODE_INFO),
                               NODE_INFO.pack())  # fmt: skip
    port_info = smp.smp_answer(smp.dr_smp([1, 3], attr_id=smp.IB_SMP_ATTR_PORT_INFO,
                                          attr_mod=1, tid=7), PORT_INFO.pack())  # fmt: skip
    first, second = _tshark(tmp_path, [_ib_packet(node_info.pack(), dqp=0, sqp=0),
                                       _ib_packet(port_info.pack(), dqp=0, sqp=0)])  # fmt: skip
    assert "SMP (LID Routed) SubnGetResp(NodeInfo)" in first
    for line in ["Transaction ID: 0x0000000000001234", "NodeType: 0x01", "NumPorts: 0x01",
                 "SystemImageGUID: 0x0002c90300000100", "NodeGUID: 0x0002c90300000101",
                 "PortGUID: 0x0002c90300000102", "PartitionCap: 0x0080",
                 "DeviceID: 0x1003", "Revision: 0x000000a0", "LocalPortNum: 0x01",
                 "VendorID: 0x0002c9"]:  # fmt: skip
        assert line in first, line
    assert "SMP (Directed Route) SubnGetResp(PortInfo)" in second
    for line in ["Status: 0x8000", "Hop Count: 0x02", "DrSLID: 0xffff", "DrDLID: 0xffff",
                 "GidPrefix: 0xfe80000000000000", "LID: 0x0005", "MasterSMLID: 0x0001",
                 "CapabilityMask: 0x02510868", "LinkWidthActive: 0x02, 4x",
                 ".... 0100 = PortState: 0x4, Active",
                 "0101 .... = PortPhysicalState: 0x5, LinkUp", ".... .010 = LMC: 0x2",
                 "0100 .... = NeighborMTU: 0x4, 2048", ".... 0101 = MTUCap: 0x5, 4096",
                 "M_KeyViolations: 0x1111", "P_KeyViolations: 0x2222",
                 "Q_KeyViolations: 0x3333", "GUIDCap: 0x20",
                 "1... .... = ClientReregister: 0x1", "...1 0010 = SubnetTimeOut: 0x12",
                 "MaxCreditHint: 0x4444", "LinkRoundTripLatency: 0x123456"]:  # fmt: skip
        assert line in second, line


# ------------------------------------------------------------------------------------ SA

SGID = bytes.fromhex("fe800000000000000002c90300000102")
DGID = bytes.fromhex("fe800000000000000002c90300000202")
MGID = bytes.fromhex("ff12401bffff0000000000000000ffff")
PATH = sa.PathRecord(service_id=0x1000000000000123, dgid=DGID, sgid=SGID, dlid=7, slid=5,
                     flow_label=0x12345, hop_limit=64, tclass=3, reversible=1, num_path=1,
                     pkey=0xFFFF, qos_class=5, sl=2, mtu_selector=2, mtu=4, rate_selector=2,
                     rate=3, packet_life_time_selector=2, packet_life_time=18,
                     preference=1)  # fmt: skip
MEMBER = sa.MCMemberRecord(mgid=MGID, port_gid=SGID, qkey=0x0B1B, mlid=0xC000,
                           mtu_selector=2, mtu=4, pkey=0xFFFF, rate_selector=2, rate=3,
                           packet_life_time_selector=2, packet_life_time=18, sl=1,
                           flow_label=0xABCDE, hop_limit=7, scope=2, join_state=1,
                           proxy_join=1)  # fmt: skip


@pytest.mark.parametrize(
    ("record", "name", "offset", "width"),
    [  # libibmad fields.c: SA path record, MC member record, NodeRecord
        (PATH, "dlid", 320, 16),
        (PATH, "slid", 336, 16),
        (PATH, "num_path", 393, 7),
        (PATH, "sl", 428, 4),
        (PATH, "flow_label", 356, 20),
        (PATH, "hop_limit", 376, 8),
        (PATH, "pkey", 400, 16),
        (PATH, "mtu", 434, 6),
        (PATH, "rate", 442, 6),
        (PATH, "packet_life_time", 450, 6),
        (MEMBER, "qkey", 256, 32),
        (MEMBER, "mlid", 288, 16),
        (MEMBER, "mtu", 306, 6),
        (MEMBER, "tclass", 312, 8),
        (MEMBER, "pkey", 320, 16),
        (MEMBER, "rate", 338, 6),
        (MEMBER, "sl", 352, 4),
        (MEMBER, "flow_label", 356, 20),
        (MEMBER, "join_state", 388, 4),
        (MEMBER, "proxy_join", 392, 1),
    ],  # fmt: skip
)
def test_sa_record_field_offsets(record, name, offset, width):
    assert _field(record.pack(), offset, width) == getattr(record, name)


def test_sa_records_round_trip_and_sizes():
    node = sa.NodeRecord(lid=5, node_info=NODE_INFO,
                         node_desc=smp.NodeDescription.of("host-a"))  # fmt: skip
    raw = node.pack()
    assert len(raw) == 112 and raw[0:2] == b"\x00\x05"
    assert raw[4:44] == NODE_INFO.pack() and raw[44:50] == b"host-a"
    assert _field(raw, 64, 64) == NODE_INFO.sys_guid  # fields.c: NodeRecord SystemGuid
    assert _field(raw, 328, 24) == NODE_INFO.vendor_id  # and VendorId
    pir = sa.PortInfoRecord(lid=5, port_num=1, port_info=PORT_INFO)
    assert len(pir.pack()) == 72 and pir.pack()[4:68] == PORT_INFO.pack()
    pkr = sa.PKeyTableRecord(lid=5, block_num=0, port_num=1,
                             pkey_table=smp.PKeyTable((0xFFFF, 0x8001)))  # fmt: skip
    assert pkr.pack()[:8] == b"\x00\x05\x00\x00\x01\x00\x00\x00"
    assert pkr.pack()[8:12] == b"\xff\xff\x80\x01"
    link = sa.LinkRecord(from_lid=1, from_port_num=3, to_port_num=1, to_lid=5)
    assert link.pack() == b"\x00\x01\x03\x01\x00\x05\x00\x00"
    swr = sa.SwitchInfoRecord(lid=1, switch_info=smp.SwitchInfo(linear_fdb_cap=0xC000))
    assert len(swr.pack()) == 24 and swr.pack()[4:6] == b"\xc0\x00"
    lftr = sa.LFTRecord(lid=1, block_num=2, lft=smp.LinearForwardingTable((0, 1, 2)))
    assert lftr.pack()[:8] == b"\x00\x01\x00\x02\x00\x00\x00\x00"
    assert lftr.pack()[8:11] == b"\x00\x01\x02"
    name = b"ipoibfs".ljust(64, b"\0")
    svc = sa.ServiceRecord(service_id=0x10, service_gid=SGID, service_pkey=0xFFFF,
                           service_lease=0xFFFFFFFF, service_name=name)  # fmt: skip
    raw = svc.pack()
    assert len(raw) == 176 and raw[24:26] == b"\xff\xff" and raw[48:55] == b"ipoibfs"
    info = sa.InformInfo(gid=SGID, lid_range_begin=0xFFFF, is_generic=1, subscribe=1,
                         type=0xFFFF, trap_num_or_dev_id=64, qpn=1, resp_time_value=18,
                         producer_or_vendor=0xFFFFFF)  # fmt: skip
    raw = info.pack()
    assert len(raw) == 36 and raw[22:28] == b"\x01\x01\xff\xff\x00\x40"
    assert raw[28:32] == b"\x00\x00\x01\x12" and raw[33:36] == b"\xff\xff\xff"
    for record in (node, pir, pkr, link, swr, lftr, svc, info, PATH, MEMBER):
        assert type(record).unpack(record.pack()) == record


def test_sa_mad_layout():
    req = sa.sa_request(common.IB_MGMT_METHOD_GET, sa.IB_SA_ATTR_PATH_REC,
                        sa.PathRecord(dgid=DGID, sgid=SGID, num_path=1),
                        comp_mask=0x100C, tid=0x99, sm_key=0x0102030405060708)  # fmt: skip
    raw = req.pack()
    assert len(raw) == 256
    assert raw[1:3] == b"\x03\x02"  # SA class, version 2
    assert raw[24:36] == b"\x01" + bytes(11)  # RMPP version 1, not active
    assert raw[36:44] == bytes.fromhex("0102030405060708")
    assert raw[48:56] == (0x100C).to_bytes(8, "big")
    assert raw[64:80] == DGID
    assert sa.SaMad.unpack(raw) == dataclasses.replace(req, data=raw[56:])


def test_sa_get_answers():
    req = sa.sa_request(common.IB_MGMT_METHOD_GET, sa.IB_SA_ATTR_PATH_REC, PATH, tid=1)
    ans = sa.sa_response(req, [PATH])
    assert ans.method == common.IB_MGMT_METHOD_GET_RESP and ans.status == 0
    assert sa.PathRecord.unpack(sa.SaMad.unpack(ans.pack()).data) == PATH
    assert sa.sa_response(req, []).status == sa.IB_SA_MAD_STATUS_NO_RECORDS
    assert sa.sa_response(req, [PATH, PATH]).status == sa.IB_SA_MAD_STATUS_TOO_MANY_RECORDS
    join = sa.sa_request(common.IB_MGMT_METHOD_SET, sa.IB_SA_ATTR_MC_MEMBER_REC, MEMBER)
    denied = sa.sa_response(join, status=sa.IB_SA_MAD_STATUS_REQ_INVALID)
    assert denied.method == common.IB_MGMT_METHOD_GET_RESP and denied.status == 0x0200
    assert denied.data[: MEMBER.SIZE] == MEMBER.pack()


def test_sa_get_table_answer_offsets():
    req = sa.sa_request(common.IB_MGMT_METHOD_GET_TABLE, sa.IB_SA_ATTR_NODE_REC)
    nodes = [sa.NodeRecord(lid=i, node_info=NODE_INFO) for i in range(1, 4)]
    ans = sa.sa_response(req, nodes)
    assert ans.method == common.IB_MGMT_METHOD_GET_TABLE_RESP
    assert ans.attr_offset == 14  # 112 bytes in 8-byte words
    assert len(ans.data) == 3 * 112
    assert ans.rmpp.active and ans.rmpp.type == rmpp.IB_MGMT_RMPP_TYPE_DATA
    assert [sa.NodeRecord.unpack(r).lid for r in ans.records()] == [1, 2, 3]
    links = sa.sa_response(req, [sa.LinkRecord(from_lid=1)])
    assert links.attr_offset == 1
    empty = sa.sa_response(req, [])
    assert empty.status == 0 and empty.attr_offset == 0 and empty.records() == []
    # a MCMemberRecord is 52 bytes: 7 words, the 4 bytes of padding included
    assert sa.attr_offset_words(52) == 7


def test_component_mask_matching():
    other = PATH.replace(dlid=8, dgid=SGID)
    template = sa.PathRecord(dlid=7)
    assert layout.comp_match(template, PATH, 1 << 4)
    assert not layout.comp_match(template, other, 1 << 4)
    assert layout.comp_match(template, other, 0)  # no component selected: a wildcard
    assert sa.matching(template, [PATH, other], 1 << 4) == [PATH]
    # MTU through its selector: greater than 2048 (4) accepts 4096 (5) only
    gt = sa.PathRecord(mtu_selector=layout.SELECT_GT, mtu=4)
    assert layout.comp_match(gt, PATH.replace(mtu=5), 1 << 16 | 1 << 17)
    assert not layout.comp_match(gt, PATH, 1 << 16 | 1 << 17)
    assert not layout.comp_match(gt, PATH.replace(mtu=5), 1 << 17)  # without it, exactly
    # rates are codes: 20 Gb/s (6) is more than 10 Gb/s (3), 5 Gb/s (5) is not
    fast = sa.MCMemberRecord(rate_selector=layout.SELECT_GT, rate=3)
    assert layout.comp_match(fast, MEMBER.replace(rate=6), 1 << 8 | 1 << 9)
    assert not layout.comp_match(fast, MEMBER.replace(rate=5), 1 << 8 | 1 << 9)
    # nested: PortInfoRecord's bit 5 is PortInfo's LID
    pir = sa.PortInfoRecord(lid=5, port_num=1, port_info=PORT_INFO)
    assert layout.comp_match(sa.PortInfoRecord(port_info=smp.PortInfo(lid=5)), pir, 1 << 5)
    assert not layout.comp_match(sa.PortInfoRecord(port_info=smp.PortInfo(lid=6)), pir, 1 << 5)
    node = sa.NodeRecord(node_info=NODE_INFO)
    assert layout.comp_match(sa.NodeRecord(node_info=smp.NodeInfo(node_guid=NODE_INFO.node_guid)),
                             node, 1 << 7)  # fmt: skip


def test_tshark_decodes_the_sa_records(tmp_path):
    req = sa.sa_request(common.IB_MGMT_METHOD_GET, sa.IB_SA_ATTR_PATH_REC,
                        sa.PathRecord(dgid=DGID, sgid=SGID, num_path=1), comp_mask=0x100C,
                        tid=0x99)  # fmt: skip
    join = sa.sa_request(common.IB_MGMT_METHOD_SET, sa.IB_SA_ATTR_MC_MEMBER_REC, MEMBER,
                         comp_mask=0x130C7, tid=0x9A)  # fmt: skip
    mads = [sa.sa_response(req, [PATH]), join, sa.sa_response(join, [MEMBER])]
    path, setter, joined = _tshark(tmp_path, [_ib_packet(m.pack(), dqp=1, sqp=1) for m in mads])
    assert "SA SubnAdmGetResp(PathRecord)" in path
    for line in ["Transaction ID: 0x0000000000000099", "Component Mask: 0x000000000000100c",
                 "DGID: fe80::2:c903:0:202", "SGID: fe80::2:c903:0:102", "DLID: 0x0007",
                 "SLID: 0x0005", ".... 0001 0010 0011 0100 0101 = FlowLabel: 0x12345",
                 "HopLimit: 0x40", "TClass: 0x03", "1... .... = Reversible: 0x1",
                 ".000 0001 = NumbPath: 0x01", "P_Key: 0xffff", ".... .... .... 0010 = SL: 0x2",
                 "10.. .... = MTUSelector: 0x2", "..00 0100 = MTU: 0x04",
                 "..00 0011 = Rate: 0x03", "..01 0010 = PacketLifeTime: 0x12",
                 "Preference: 0x01"]:  # fmt: skip
        assert line in path, line
    assert "SA SubnAdmSet(MCMemberRecord)" in setter
    assert "SA SubnAdmGetResp(MCMemberRecord)" in joined
    for line in ["MGID: ff12:401b:ffff::ffff", "PortGID: fe80::2:c903:0:102",
                 "Q_Key: 0x00000b1b", "MLID: 0xc000", "..00 0100 = MTU: 0x04",
                 "P_Key: 0xffff", "..00 0011 = Rate: 0x03", "0001 .... = SL: 0x1",
                 ".... 1010 1011 1100 1101 1110 = FlowLabel: 0xabcde", "HopLimit: 0x07",
                 "0010 .... = Scope: 0x2", ".... 0001 = JoinState: 0x1",
                 "1... .... = ProxyJoin: 0x1"]:  # fmt: skip
        assert line in setter and line in joined, line


# ---------------------------------------------------------------------------------- RMPP


def _node_table(count: int) -> sa.SaMad:
    req = sa.sa_request(common.IB_MGMT_METHOD_GET_TABLE, sa.IB_SA_ATTR_NODE_REC, tid=0x77)
    nodes = [sa.NodeRecord(lid=i, node_info=NODE_INFO.replace(node_guid=0x100 + i),
                           node_desc=smp.NodeDescription.of(f"host-{i}"))
             for i in range(1, count + 1)]  # fmt: skip
    return sa.sa_response(req, nodes)


def test_rmpp_header_layout():
    hdr = rmpp.RmppHdr(version=1, type=rmpp.IB_MGMT_RMPP_TYPE_DATA, resp_time=0x1F,
                       flags=rmpp.IB_MGMT_RMPP_FLAG_ACTIVE | rmpp.IB_MGMT_RMPP_FLAG_FIRST,
                       status=0, seg_num=1, paylen_newwin=440)  # fmt: skip
    raw = hdr.pack()
    # fields.c: RmppVers, RmppType, RmppResp (5 bits) + RmppFlags (3), RmppStatus, D1, D2
    assert raw == bytes([1, 1, 0x1F << 3 | 3, 0]) + (1).to_bytes(4, "big") + (440).to_bytes(
        4, "big"
    )
    assert rmpp.RmppHdr.unpack(bytes(24) + raw) == hdr


@pytest.mark.parametrize(("records", "count"), [(0, 1), (1, 1), (2, 2), (40, 23)])
def test_rmpp_segments(records, count):
    message = _node_table(records).pack()[: 56 + 112 * records]
    segs = rmpp.segments(message)
    assert len(segs) == count and all(len(s) == 256 for s in segs)
    hdrs = [rmpp.RmppHdr.unpack(s) for s in segs]
    assert [h.seg_num for h in hdrs] == list(range(1, count + 1))
    assert all(h.active and h.type == rmpp.IB_MGMT_RMPP_TYPE_DATA for h in hdrs)
    assert hdrs[0].flags & rmpp.IB_MGMT_RMPP_FLAG_FIRST
    assert hdrs[-1].flags & rmpp.IB_MGMT_RMPP_FLAG_LAST
    assert not any(h.flags & rmpp.IB_MGMT_RMPP_FLAG_LAST for h in hdrs[:-1])
    data = 112 * records
    pad = (200 - data % 200) % 200 if data else 200
    # send_next_seg: the first segment's payload length covers the whole transfer (220
    # bytes after the RMPP header per segment, less the padding), the last its own
    assert hdrs[0].paylen_newwin == (count * 220 - pad if count > 1 else 220 - pad)
    assert hdrs[-1].paylen_newwin == 220 - pad
    assert all(h.paylen_newwin == 0 for h in hdrs[1:-1])
    for s in segs:  # each segment repeats the SA header: TID, attribute offset
        assert s[:24] == message[:24] and s[36:56] == message[36:56]


def _transfer(message: bytes, window: int, drop: set[int] = frozenset()):
    """Runs a sender and a receiver against each other; the segments numbered in `drop`
    are lost the first time. Returns the message as the receiver hands it on, the ACKs
    seen and the segments sent."""
    sender = rmpp.RmppSender(message)
    receiver = rmpp.RmppReceiver(window=window)
    in_flight = sender.start()
    acks: list[rmpp.RmppHdr] = []
    sent = 0
    lost = set(drop)
    result = None
    for _ in range(1000):
        if not in_flight:
            if sender.done:
                break
            in_flight = sender.retry()  # the ACK timer fired
            continue
        mad = in_flight.pop(0)
        sent += 1
        seg = rmpp.RmppHdr.unpack(mad).seg_num
        if seg in lost:
            lost.discard(seg)
            continue
        replies, message_out = receiver.receive(mad)
        if message_out is not None:
            result = message_out
        for reply in replies:
            ack = rmpp.RmppHdr.unpack(reply)
            assert ack.type == rmpp.IB_MGMT_RMPP_TYPE_ACK
            assert reply[3] == common.IB_MGMT_METHOD_GET_TABLE  # the response bit flipped
            acks.append(ack)
            in_flight += sender.receive(reply)
    assert sender.done and receiver.complete
    return result, acks, sent


def _same_message(got: bytes, sent: bytes) -> None:
    """What user_mad.c gives the reader: the first segment's headers (its RMPP header as
    it came: FIRST, segment 1, the whole payload length), then all the data."""
    assert len(got) == len(sent)
    assert got[:24] == sent[:24] and got[36:] == sent[36:]
    assert got[24:36] == rmpp.segments(sent)[0][24:36]


@pytest.mark.parametrize("records", [1, 2, 40])
def test_rmpp_transfer_reassembles_the_table(records):
    answer = _node_table(records)
    message = answer.pack()[: 56 + 112 * records]
    got, acks, sent = _transfer(message, window=rmpp.DEFAULT_WINDOW)
    _same_message(got, message)
    table = sa.SaMad.unpack(got)
    lids = [sa.NodeRecord.unpack(r).lid for r in table.records()]
    assert lids == list(range(1, records + 1))
    assert acks[-1].seg_num == len(rmpp.segments(message))
    assert sent == len(rmpp.segments(message))
    if records == 40:  # segment 1, its ACK opening a window of 64, then the other 22
        assert [a.seg_num for a in acks] == [1, 23]
        assert acks[0].paylen_newwin == 1 + 64


def test_rmpp_small_window_acks_every_window():
    message = _node_table(40).pack()[: 56 + 112 * 40]
    got, acks, _ = _transfer(message, window=4)
    _same_message(got, message)
    assert [a.seg_num for a in acks] == [1, 5, 9, 13, 17, 21, 23]
    assert [a.paylen_newwin for a in acks[:-1]] == [5, 9, 13, 17, 21, 25]


def test_rmpp_lost_segments_are_sent_again():
    message = _node_table(40).pack()[: 56 + 112 * 40]
    got, _, sent = _transfer(message, window=8, drop={3, 12})
    _same_message(got, message)
    assert sent > 23


def test_rmpp_receiver_rejects_bad_segments():
    segs = rmpp.segments(_node_table(2).pack()[: 56 + 224])
    receiver = rmpp.RmppReceiver()
    bad = bytearray(segs[0])
    bad[24] = 2  # RMPP version 2
    replies, message = receiver.receive(bytes(bad))
    assert message is None
    nack = rmpp.RmppHdr.unpack(replies[0])
    assert nack.type == rmpp.IB_MGMT_RMPP_TYPE_ABORT
    assert nack.status == rmpp.IB_MGMT_RMPP_STATUS_UNV
    # segment 2 flagged FIRST
    receiver = rmpp.RmppReceiver()
    bad = bytearray(segs[1])
    bad[26] |= rmpp.IB_MGMT_RMPP_FLAG_FIRST
    replies, _ = receiver.receive(bytes(bad))
    assert rmpp.RmppHdr.unpack(replies[0]).status == rmpp.IB_MGMT_RMPP_STATUS_BAD_SEG
    # a MAD without RMPP active is its own message
    plain = sa.sa_request(common.IB_MGMT_METHOD_GET, sa.IB_SA_ATTR_PATH_REC).pack()
    assert rmpp.RmppReceiver().receive(plain) == ([], plain)


def test_rmpp_sender_aborts_on_a_window_too_small():
    sender = rmpp.RmppSender(_node_table(40).pack()[: 56 + 112 * 40])
    first = sender.start()
    assert len(first) == 1
    ack = bytearray(first[0])
    ack[3] ^= 0x80
    ack[24:36] = rmpp.RmppHdr(version=1, type=rmpp.IB_MGMT_RMPP_TYPE_ACK, flags=1, seg_num=1,
                              paylen_newwin=0).pack()  # fmt: skip
    replies = sender.receive(bytes(ack))
    assert rmpp.RmppHdr.unpack(replies[0]).status == rmpp.IB_MGMT_RMPP_STATUS_W2S
    assert sender.aborted == rmpp.IB_MGMT_RMPP_STATUS_W2S


# ----------------------------------------------------------------------------------- PMA

COUNTERS = pma.PortCounters(port_select=1, symbol_error_counter=3, link_error_recovery_counter=1,
                            link_downed_counter=2, port_rcv_errors=5, port_xmit_discards=6,
                            local_link_integrity_errors=7, excessive_buffer_overrun_errors=8,
                            qp1_dropped=9, vl15_dropped=4, port_xmit_data=123456,
                            port_rcv_data=654321, port_xmit_pkts=99, port_rcv_pkts=98,
                            port_xmit_wait=5)  # fmt: skip


@pytest.mark.parametrize(
    ("name", "offset", "width"),
    [  # libibmad fields.c: Port counters
        ("port_select", 8, 8),
        ("symbol_error_counter", 32, 16),
        ("link_error_recovery_counter", 48, 8),
        ("link_downed_counter", 56, 8),
        ("port_rcv_errors", 64, 16),
        ("port_xmit_discards", 112, 16),
        ("local_link_integrity_errors", 152, 4),
        ("excessive_buffer_overrun_errors", 156, 4),
        ("qp1_dropped", 160, 16),
        ("vl15_dropped", 176, 16),
        ("port_xmit_data", 192, 32),
        ("port_rcv_data", 224, 32),
        ("port_xmit_pkts", 256, 32),
        ("port_rcv_pkts", 288, 32),
        ("port_xmit_wait", 320, 32),
    ],  # fmt: skip
)
def test_port_counters_offsets(name, offset, width):
    assert _field(COUNTERS.pack(), offset, width) == getattr(COUNTERS, name)


def test_port_counters_reset_and_saturation():
    assert pma.PortCounters.unpack(COUNTERS.pack()) == COUNTERS
    # perfquery -R: CounterSelect 0xffff (and CounterSelect2 with mask ~0)
    cleared = COUNTERS.reset(0xFFFF)
    assert cleared.port_xmit_data == 0 and cleared.symbol_error_counter == 0
    assert cleared.port_xmit_wait == 5 and cleared.qp1_dropped == 9
    assert COUNTERS.reset(0xFFFF, 0xFF).port_xmit_wait == 0
    only_data = COUNTERS.reset(0x1000 | 0x2000)  # IB_PMA_SEL_PORT_XMIT_DATA, RCV_DATA
    assert (only_data.port_xmit_data, only_data.port_rcv_data) == (0, 0)
    assert only_data.port_xmit_pkts == 99 and only_data.link_downed_counter == 2
    assert COUNTERS.add(link_downed_counter=300).link_downed_counter == 0xFF
    assert COUNTERS.add(port_xmit_pkts=1).port_xmit_pkts == 100
    with pytest.raises(ValueError, match="no counter"):
        COUNTERS.add(counter_select=1)


def test_port_counters_extended():
    ext = pma.PortCountersExtended(port_select=1, counter_select=0xFF, port_xmit_data=1 << 40,
                                   port_rcv_data=2, port_unicast_rcv_pkts=77,
                                   symbol_error_counter=1 << 33, qp1_dropped=3)  # fmt: skip
    raw = ext.pack()
    assert len(raw) == 184
    assert _field(raw, 64, 64) == 1 << 40 and _field(raw, 384, 64) == 77  # fields.c
    assert _field(raw, 576, 64) == 1 << 33 and _field(raw, 1408, 64) == 3
    assert pma.PortCountersExtended.unpack(raw) == ext
    reset = ext.reset(0x01)  # IB_PMA_SELX_PORT_XMIT_DATA
    assert reset.port_xmit_data == 0 and reset.port_rcv_data == 2


def test_class_port_info():
    caps = pma.IB_PM_ALL_PORT_SELECT | pma.IB_PM_EXT_WIDTH_SUPPORTED | pma.IB_PM_PC_XMIT_WAIT_SUP
    cpi = common.ClassPortInfo(capability_mask=caps,
                               capability_mask2=pma.IB_PM_IS_ADDL_PORT_CTRS_EXT_SUP,
                               resp_time_value=18, redirect_lid=7, trap_qp=1,
                               trap_qkey=0x80010000)  # fmt: skip
    raw = cpi.pack()
    assert len(raw) == 72
    assert raw[:4] == b"\x01\x01\x13\x00"
    assert _field(raw, 32, 27) == 2 and _field(raw, 59, 5) == 18
    assert raw[28:30] == b"\x00\x07" and raw[65:68] == b"\x00\x00\x01"
    assert common.ClassPortInfo.unpack(raw) == cpi


def test_tshark_decodes_the_pma(tmp_path):
    req = common.MadHdr(mgmt_class=common.IB_MGMT_CLASS_PERF_MGMT, method=1, tid=5,
                        attr_id=pma.IB_PMA_PORT_COUNTERS).pack() + bytes(232)  # fmt: skip
    (text,) = _tshark(tmp_path, [_ib_packet(common.response(req, COUNTERS.pack()), dqp=1, sqp=1)])
    assert "Port Counters (Performance Management MAD)" in text
    for line in ["PortSelect: 0x01", "SymbolErrorCounter: 3", "LinkDownedCounter: 2",
                 "PortRcvErrors: 5", "PortXmitDiscards: 6", "VL15Dropped: 4",
                 "0111 .... = LocalLinkIntegrityErrors: 7",
                 ".... 1000 = ExcessiveBufferOverrunErrors: 8", "PortXmitData: 123456",
                 "PortRcvData: 654321", "PortXmitPkts: 99", "PortRcvPkts: 98"]:  # fmt: skip
        assert line in text, line
