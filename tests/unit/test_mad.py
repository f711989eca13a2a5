"""wire.mad: the umad ABI, MAD headers, SMPs and their attributes, SA records, RMPP and the
PMA, checked against the kernel's and libibmad's documented layouts (and tshark's dissector)."""

from __future__ import annotations

import dataclasses
import errno
import struct

import pytest

from ipoibfs.wire.mad import common, umad

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


def test_response_refuses_oversized_data():
    with pytest.raises(ValueError, match="do not fit"):
        common.response(_request(0x01, 0x01), bytes(65))
