"""partitions.conf parsing, as opensm(8) describes the format."""

from __future__ import annotations

import pytest

from ipoibfs.fabric.partitions import PartitionsError, parse_partitions

H1, H2 = 0x0002C90300000101, 0x0002C90300000201


def test_the_man_page_examples():
    parts = parse_partitions(
        "Default=0x7fff : ALL, SELF=full ;\n"
        "NewPartition , ipoib : 0x123456=full, 0x3456789034=limi,  0x2134af2306 ;\n"
        "YetAnotherOne = 0x300 : SELF=full ;\n"
        "YetAnotherOne = 0x300 : ALL=limited ;\n"
        "ShareIO = 0x80 , defmember=full : 0x123451, 0x123452;\n"
    )
    by_name = {p.name: p for p in parts}
    assert parts[0].name == "Default" and parts[0].pkey == 0x7FFF
    assert parts[0].membership(H1) == (False, True)  # ALL is limited by default
    new = by_name["NewPartition"]
    assert new.ipoib and new.pkey not in (0, 0x7FFF, 0x300, 0x80)  # generated
    assert new.membership(0x123456) == (True, False)
    assert new.membership(0x3456789034) == (False, True)  # "limi" is a prefix of limited
    assert by_name["YetAnotherOne"].membership(H2) == (False, True)  # merged definitions
    assert by_name["ShareIO"].membership(0x123451) == (True, False)
    assert by_name["ShareIO"].membership(H1) == (False, False)


def test_flags_comments_and_multi_line_definitions():
    (default, blue) = parse_partitions(
        "# the lab's partitions\n"
        "Default=0x7fff, ipoib : ALL=full ;  # everyone\n"
        "blue=0x8001, ipoib, mtu=5, rate=7, sl=3, scope=5 :\n"
        f"   {H1:#x}=full,\n"
        f"   {H2:#x}=both ;\n"
    )
    assert default.ipoib and default.membership(H2) == (True, False)
    assert blue.pkey == 0x0001  # only the low 15 bits are used
    assert (blue.mtu, blue.rate, blue.sl, blue.scopes) == (5, 7, 3, [5])
    assert blue.membership(H2) == (True, True)


def test_a_file_without_default_gets_opensms_limited_default():
    parts = parse_partitions("blue=0x1, ipoib : ALL=full ;\n")
    assert parts[0].pkey == 0x7FFF and not parts[0].ipoib
    assert parts[0].membership(H1) == (False, True)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Default=0x7fff : ALL=full\n", "f:1: partition definition not terminated by ';'"),
        ("\n\nx=0x2, colour=5 : ALL ;\n", "f:3: unknown partition flag 'colour=5'"),
        ("x=zz : ALL ;", "f:1: invalid P_Key 'zz'"),
        ("x=0x10000 : ALL ;", "f:1: P_Key 0x10000 out of range (0-0xffff)"),
        ("x=0x8000 : ALL ;", "f:1: P_Key 0 is reserved"),
        ("x=0x2, mtu=9 : ALL ;", "f:1: mtu 9 out of range (0-0x5)"),
        ("x=0x2 : 0xnothex=full ;", "f:1: invalid port GUID '0xnothex'"),
        ("x=0x2 : mgid=ff12::1 ;", "f:1: multicast group definitions (mgid=) are not supported"),
        ("x=0x2 ALL ;", "f:1: expected 'Name=PKey[,flags] : members ;'"),
    ],
)
def test_malformed_files_are_refused_with_a_line_number(text, message):
    with pytest.raises(PartitionsError) as e:
        parse_partitions(text, "f")
    assert str(e.value) == message
