"""The kernel's parsers, table-driven: every writable file of the mirror x every input class,
with the result and errno the kernel's source gives. No root, no FUSE: the writes go through
SysfsOperations (kernfs's rules included) over the real driver and the shared fakes.

Three layers, each from the kernel's source:

* ROWS: each input and what the kernel's parsers make of the C string a store is handed
  (fs/kernfs/file.c: at most PAGE_SIZE bytes, then a NUL): kstrtoul (lib/kstrtox.c,
  `kstrtoull(s, 0)`), kstrtoint (param_set_int), sscanf("%i") (lib/vsprintf.c vsscanf, with
  lib/ctype.c's isspace), simple_strtoul(s, NULL, 0), and whether kobject_synth_uevent
  (lib/kobject_uevent.c) accepts it. Written out by hand.
* The reference parsers (ref_*): the same grammars as regular expressions, written apart
  from ipoibfs/wire/ktext.py; checked against ROWS, and used by the fuzz test on inputs no
  row lists (tests/integration/test_fuzz.py).
* FILES: each writable file's store (net/core/net-sysfs.c, drivers/base/core.c uevent_store,
  ipoib_main.c/ipoib_cm.c/ipoib_vlan.c, drivers/infiniband/core/sysfs.c node_desc_store,
  kernel/params.c), as a function of the parsers' results and the device's state: the errno
  of the write, and what the file shows afterwards.
"""

from __future__ import annotations

import errno
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace

import pyfuse3
import pytest
import trio.testing

from ipoibfs import wire
from ipoibfs.driver.interface import ChildType
from ipoibfs.driver.params import ModuleParams
from ipoibfs.driver.probe import IPoIBDriver
from ipoibfs.errors import KernelError
from ipoibfs.fabric.device import HcaDevice, HcaProfile
from ipoibfs.fabric.embedded import EmbeddedFabric
from ipoibfs.sysfs import Mirror, SysfsOperations
from ipoibfs.sysfs import fs as sysfs_fs
from ipoibfs.sysfs.nodes import Caller

from .fakes import FakeNetdevs, ListLog

PAGE_SIZE = 4096
EINVAL, ERANGE, EPERM = errno.EINVAL, errno.ERANGE, errno.EPERM
U64 = 2**64
UUID = b"0a1b2c3d-4e5f-6789-abcd-ef0123456789"


def i32(x: int) -> int:
    """(int) of an unsigned long: two's complement, 32 bits."""
    return (x + 2**31) % 2**32 - 2**31


@dataclass(frozen=True)
class Err:
    """A parser's refusal."""

    errno: int


@dataclass(frozen=True)
class Row:
    cls: str
    data: bytes
    kstrtoul: int | Err
    kstrtoint: int | Err
    sscanf: int | None
    strtoul: int
    uevent: bool

    @property
    def id(self) -> str:
        return f"{self.cls}:{self.data[:24]!r}"


def R(cls, data, k, i, s, u, ev=False):  # noqa: N802  (a table row)
    return Row(cls, data, k, i, s, u, ev)


X = Err(EINVAL)
G = Err(ERANGE)
ONES = int("1" * PAGE_SIZE)

#: Every input class: (class, bytes, kstrtoul, kstrtoint, sscanf %i, simple_strtoul, uevent).
ROWS = [
    R("empty", b"", X, X, None, 0),
    R("decimal", b"1500", 1500, 1500, 1500, 1500),
    R("decimal", b"1500\n", 1500, 1500, 1500, 1500),
    R("decimal", b"0", 0, 0, 0, 0),
    R("decimal", b"1\n", 1, 1, 1, 1),
    R("decimal", b"2\n", 2, 2, 2, 2),
    R("decimal", b"1400\n", 1400, 1400, 1400, 1400),
    R("decimal", b"32769", 32769, 32769, 32769, 32769),
    R("sign", b"+1500", 1500, 1500, None, 0),
    R("sign", b"-1", X, -1, -1, 0),
    R("sign", b"-0", X, 0, 0, 0),
    R("sign", b"+-1", X, X, None, 0),
    R("sign", b"-+1", X, X, None, 0),
    R("sign", b"++1", X, X, None, 0),
    R("sign", b"+", X, X, None, 0),
    R("sign", b"-", X, X, None, 0),
    R("sign", b"- 1", X, X, None, 0),
    R("sign", b"-0x10", X, -16, -16, 0),
    R("base", b"0x5dc", 1500, 1500, 1500, 1500),
    R("base", b"0X5DC\n", 1500, 1500, 1500, 1500),
    R("base", b"0x8001", 0x8001, 0x8001, 0x8001, 0x8001),
    R("base", b"0x8000", 0x8000, 0x8000, 0x8000, 0x8000),
    R("base", b"0xffff\n", 0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF),
    R("base", b"0x10000", 0x10000, 0x10000, 0x10000, 0x10000),
    R("base", b"02734", 1500, 1500, 1500, 1500),
    R("base", b"0777", 511, 511, 511, 511),
    R("base", b"08", X, X, 0, 0),
    R("base", b"0x", X, X, 0, 0),
    R("base", b"0xg", X, X, 0, 0),
    R("base", b"0b101", X, X, 0, 0),
    R("base", b"1e3", X, X, 1, 1),
    R("space", b" 1500", X, X, 1500, 0),
    R("space", b"\t\v\f\r1500", X, X, 1500, 0),
    R("space", b"\xa01500", X, X, 1500, 0),  # NBSP is a space to lib/ctype.c
    R("space", b"\x851500", X, X, None, 0),  # NEL is not
    R("space", b"\n1", X, X, 1, 0),
    R("space", b"1500 ", X, X, 1500, 1500),
    R("space", b"1500\n\n", X, X, 1500, 1500),
    R("space", b"1500\r\n", X, X, 1500, 1500),
    R("space", b"\n", X, X, None, 0),
    R("space", b" ", X, X, None, 0),
    R("nul", b"1500\0junk", 1500, 1500, 1500, 1500),
    R("nul", b"1400\0", 1400, 1400, 1400, 1400),
    R("nul", b"\0" + b"1500", X, X, None, 0),
    R("nul", b"\0", X, X, None, 0),
    R("nul", b"0x8001\0" + b"9", 0x8001, 0x8001, 0x8001, 0x8001),
    R("garbage", b"12abc", X, X, 12, 12),
    R("garbage", b"abc", X, X, None, 0),
    R("garbage", b"1500\xff", X, X, 1500, 1500),
    R("range", b"0xffffffff", 0xFFFFFFFF, G, -1, 0xFFFFFFFF),
    R("range", b"4294967295", 4294967295, G, -1, 4294967295),
    R("range", b"4294967296", 4294967296, G, 0, 4294967296),
    R("range", b"2147483647", 2147483647, 2147483647, 2147483647, 2147483647),
    R("range", b"2147483648", 2147483648, G, -(2**31), 2147483648),
    R("range", b"-2147483648", X, -(2**31), -(2**31), 0),
    R("range", b"-2147483649", X, G, 2**31 - 1, 0),
    R("range", b"18446744073709551615", U64 - 1, G, -1, U64 - 1),
    R("range", b"18446744073709551616", G, G, 0, 0),
    R("range", b"-18446744073709551616", X, G, 0, 0),
    R(
        "range",
        b"99999999999999999999x",
        G,
        G,
        i32(99999999999999999999 % U64),
        99999999999999999999 % U64,
    ),  # fmt: skip
    R("range", b"0x" + b"0" * 30 + b"1", 1, 1, 1, 1),
    R("overlong", b"1" * 5000, G, G, i32(ONES % U64), ONES % U64),
    R("overlong", b"0" * 5000, 0, 0, 0, 0),
    R("non-utf8", b"\xff\xfe", X, X, None, 0),
    R("non-utf8", b"\xc3\x28\n", X, X, None, 0),
    R("mode", b"connected\n", X, X, None, 0),
    R("mode", b"connected", X, X, None, 0),
    R("mode", b"datagram\n", X, X, None, 0),
    R("mode", b"datagram", X, X, None, 0),
    R("mode", b"connected\n\0junk", X, X, None, 0),
    R("mode", b" connected\n", X, X, None, 0),
    R("mode", b"CONNECTED\n", X, X, None, 0),
    R("mode", b"connected\r\n", X, X, None, 0),
    R("uevent", b"add", X, X, None, 0, True),
    R("uevent", b"change\n", X, X, None, 0, True),
    R("uevent", b"unbind\0", X, X, None, 0, True),
    R("uevent", b"online\n\n", X, X, None, 0),
    R("uevent", b" add", X, X, None, 0),
    R("uevent", b"add ", X, X, None, 0),
    R("uevent", b"add \n", X, X, None, 0),
    R("uevent", b"add  ", X, X, None, 0),
    R("uevent", b"add junk", X, X, None, 0),
    R("uevent", b"ADD", X, X, None, 0),
    R("uevent", b"ad", X, X, None, 0),
    R("uevent", b"add\0 x", X, X, None, 0),
    R("uevent", b"add " + UUID, X, X, None, 0, True),
    R("uevent", b"add " + UUID + b"\n", X, X, None, 0, True),
    R("uevent", b"add " + UUID.upper(), X, X, None, 0, True),
    R("uevent", b"add " + UUID[:-1], X, X, None, 0),
    R("uevent", b"add " + UUID.replace(b"-", b"_"), X, X, None, 0),
    R("uevent", b"change " + UUID + b" A=b", X, X, None, 0, True),
    R("uevent", b"change " + UUID + b" KEY1=v1 K2=V2\n", X, X, None, 0, True),
    R("uevent", b"change " + UUID + b" A=b ", X, X, None, 0),
    R("uevent", b"change " + UUID + b" A=", X, X, None, 0),
    R("uevent", b"change " + UUID + b" =b", X, X, None, 0),
    R("uevent", b"change " + UUID + b" A", X, X, None, 0),
    R("uevent", b"change " + UUID + b" A-1=b", X, X, None, 0),
    R("uevent", b"change " + UUID + b" \xe9t\xe9=\xc0", X, X, None, 0, True),  # Latin-1 alnum
    R("uevent", b"change " + UUID + b" A=b\xd7", X, X, None, 0),  # 0xd7 is not
    R("uevent", b"change " + UUID + b"x", X, X, None, 0),
    R("alias", b"a" * 255, X, X, None, 0),
    R("alias", b"a" * 255 + b"\n", X, X, None, 0),
    R("alias", b"a" * 256, X, X, None, 0),
    R("alias", b"a" * 256 + b"\n", X, X, None, 0),
    R("alias", b"ab\0cd\n", X, X, None, 0),
    R("alias", bytes(range(0x80, 0x100)), X, X, None, 0),
    R("json", b"{}", X, X, None, 0),
    R("json", b"[]", X, X, None, 0),
    R("json", b'{"op": "dellink", "dev": "nope"}', X, X, None, 0),
    R("json", b'{"op": "bogus", "mode": 70000}', X, X, None, 0),
    R("json", b"[" * 3000, X, X, None, 0),
]


# ----------------------------------------------------------------- the reference parsers

SPACE = b"\t\n\v\f\r \xa0"  # lib/ctype.c _S
ALNUM = b"0-9A-Za-z\xc0-\xd6\xd8-\xf6\xf8-\xff"  # lib/ctype.c _U|_L|_D
#: An unsigned number as _parse_integer_fixup_radix sees it: 0x + hex digit(s), 0 octal, or
#: decimal.
NUMBER = rb"(?:0[xX]([0-9a-fA-F]+)|(0[0-7]*)|([1-9][0-9]*))"


def cstr(data: bytes) -> bytes:
    return data.split(b"\0", 1)[0]


def _number(hexa: bytes | None, octal: bytes | None, decimal: bytes) -> int:
    if hexa is not None:
        return int(hexa, 16)
    if octal is not None:
        return int(octal, 8)
    return int(decimal)


def _unsigned(s: bytes) -> int:
    """_kstrtoull: the number, then nothing but one newline; ERANGE first."""
    m = re.match(NUMBER, s)
    if not m:
        raise ValueError(EINVAL)
    value = _number(*m.groups())
    if value >= U64:
        raise ValueError(ERANGE)
    if s[m.end() :] not in (b"", b"\n"):
        raise ValueError(EINVAL)
    return value


def _try(fn: Callable[[bytes], int], data: bytes) -> int | Err:
    try:
        return fn(data)
    except ValueError as e:
        return Err(e.args[0])


def ref_kstrtoul(data: bytes) -> int | Err:
    s = cstr(data)
    return _try(_unsigned, s[1:] if s[:1] == b"+" else s)


def ref_kstrtoint(data: bytes) -> int | Err:
    def parse(s: bytes) -> int:
        if s[:1] == b"-":
            value = _unsigned(s[1:])
            if value > 2**63:
                raise ValueError(ERANGE)
            value = -value
        else:
            value = _unsigned(s[1:] if s[:1] == b"+" else s)
            if value >= 2**63:
                raise ValueError(ERANGE)
        if not -(2**31) <= value < 2**31:
            raise ValueError(ERANGE)
        return value

    return _try(parse, cstr(data))


def ref_sscanf(data: bytes) -> int | None:
    m = re.match(rb"[" + re.escape(SPACE) + rb"]*(-?)" + NUMBER, cstr(data))
    if not m:
        return None
    sign, *number = m.groups()
    value = _number(*number) % U64
    return i32(-value if sign else value)


def ref_strtoul(data: bytes) -> int:
    m = re.match(NUMBER, cstr(data))
    return _number(*m.groups()) % U64 if m else 0


UEVENT = re.compile(
    rb"(?:add|remove|change|move|online|offline|bind|unbind)"
    rb"(?: [0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    rb"(?: [" + ALNUM + rb"]+=[" + ALNUM + rb"]+)*)?"
)


def ref_uevent(data: bytes) -> bool:
    """ACTION [UUID [KEY=VALUE]...], one trailing newline or NUL ignored."""
    core = data[:-1] if data[-1:] in (b"\n", b"\0") else data
    return UEVENT.fullmatch(core) is not None


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_the_reference_parsers_agree_with_the_table(row: Row):
    data = row.data[:PAGE_SIZE]
    assert ref_kstrtoul(data) == row.kstrtoul
    assert ref_kstrtoint(data) == row.kstrtoint
    assert ref_sscanf(data) == row.sscanf
    assert ref_strtoul(data) == row.strtoul
    assert ref_uevent(data) == row.uevent


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_ktext_parses_as_the_table(row: Row):
    data = row.data[:PAGE_SIZE]
    for fn, expect in ((wire.kstrtoul, row.kstrtoul), (wire.kstrtoint, row.kstrtoint)):
        if isinstance(expect, Err):
            with pytest.raises(KernelError) as e:
                fn(data)
            assert e.value.errno == expect.errno
        else:
            assert fn(data) == expect
    assert wire.sscanf_int(data) == row.sscanf
    assert wire.simple_strtoul(data) == row.strtoul
    try:
        wire.kobject_synth_uevent(data)
        accepted = True
    except KernelError as e:
        assert e.errno == EINVAL
        accepted = False
    assert accepted == row.uevent


# ----------------------------------------------------------------- the stores


@dataclass
class State:
    """What a store's outcome depends on, as the mirror shows it."""

    mode: str = "datagram"
    mtu: int = 4092
    mcast_mtu: int = 4092
    cm: bool = True
    pkey: int = 0xFFFF
    #: Legacy children: effective P_Key -> name.
    children: dict[int, str] = field(default_factory=dict)
    interfaces: set[str] = field(default_factory=set)


#: (errno or 0, what the file shows afterwards or None when the model does not say).
Outcome = tuple[int, bytes | None]


def _line(value: object) -> bytes:
    return f"{value}\n".encode()


def _parsed(value: int | Err) -> int:
    if isinstance(value, Err):
        raise Refused(value.errno)
    return value


class Refused(Exception):
    def __init__(self, err: int) -> None:
        self.errno = err


def m_mtu(data: bytes, st: State) -> Outcome:
    """netdev_store(change_mtu): dev_set_mtu(dev, (int)v): equal is a no-op, then the core's
    0..max_mtu (65520), then ipoib_change_mtu (datagram 72..4092, clamped to the multicast
    MTU; connected: the TUN's minimum 68, a known difference)."""
    v = i32(_parsed(ref_kstrtoul(data)))
    if v == st.mtu:
        return 0, _line(st.mtu)
    if v < 0 or v > 65520:
        raise Refused(EINVAL)
    if st.mode == "connected":
        if v < 68:
            raise Refused(EINVAL)
        return 0, _line(v)
    if v < 72 or v > 4092:
        raise Refused(EINVAL)
    return 0, _line(min(st.mcast_mtu, v))


def m_flags(data: bytes, st: State) -> Outcome:
    """netdev_store(change_flags): dev_change_flags(dev, (unsigned int)v)."""
    _parsed(ref_kstrtoul(data))
    return 0, None


def m_tx_queue_len(data: bytes, st: State) -> Outcome:
    """dev_change_tx_queue_len: ERANGE unless an unsigned int; shown "%d"."""
    v = _parsed(ref_kstrtoul(data))
    if v > 0xFFFFFFFF:
        raise Refused(ERANGE)
    return 0, _line(i32(v))


def m_netdev_group(data: bytes, st: State) -> Outcome:
    """change_group: dev_set_group(dev, (int)v); shown "%d"."""
    return 0, _line(i32(_parsed(ref_kstrtoul(data))))


def m_proto_down(data: bytes, st: State) -> Outcome:
    """change_proto_down: no dev->change_proto_down on IPoIB (nor on a TUN)."""
    _parsed(ref_kstrtoul(data))
    raise Refused(errno.EOPNOTSUPP)


def m_carrier(data: bytes, st: State) -> Outcome:
    """carrier_store: no ndo_change_carrier, before anything else."""
    raise Refused(errno.EOPNOTSUPP)


def m_gro_flush_timeout(data: bytes, st: State) -> Outcome:
    """netdev_lock_store(change_gro_flush_timeout): any unsigned long, "%lu"."""
    return 0, _line(_parsed(ref_kstrtoul(data)))


def m_napi_defer_hard_irqs(data: bytes, st: State) -> Outcome:
    """change_napi_defer_hard_irqs: ERANGE above S32_MAX, "%u"."""
    v = _parsed(ref_kstrtoul(data))
    if v > 2**31 - 1:
        raise Refused(ERANGE)
    return 0, _line(v)


def m_threaded(data: bytes, st: State) -> Outcome:
    """modify_napi_threaded: IPoIB has NAPI instances; 0 or 1, else EOPNOTSUPP."""
    v = _parsed(ref_kstrtoul(data))
    if v not in (0, 1):
        raise Refused(errno.EOPNOTSUPP)
    return 0, _line(v)


def m_ifalias(data: bytes, st: State) -> Outcome:
    """ifalias_store: count = len - one trailing newline; dev_set_alias: EINVAL from 256;
    ifalias_show prints "%s\\n" of it (up to a NUL), nothing if empty."""
    alias = data[:-1] if data.endswith(b"\n") else data
    if len(alias) >= 256:
        raise Refused(EINVAL)
    shown = cstr(alias)
    return 0, shown + b"\n" if shown else b""


def m_uevent(data: bytes, st: State) -> Outcome:
    """uevent_store: kobject_synth_uevent."""
    if not ref_uevent(data):
        raise Refused(EINVAL)
    return 0, None


def m_mode(data: bytes, st: State) -> Outcome:
    """mode_store -> ipoib_set_mode: strcmp against "connected\\n" / "datagram\\n"."""
    s = cstr(data)
    if s == b"connected\n" and (st.cm or st.mode == "connected"):
        return 0, b"connected\n"
    if s == b"datagram\n":
        return 0, b"datagram\n"
    raise Refused(EINVAL)


def m_umcast(data: bytes, st: State) -> Outcome:
    """umcast_store: simple_strtoul, then ipoib_set_umcast((int)v): set if > 0."""
    return 0, b"1\n" if i32(ref_strtoul(data)) > 0 else b"0\n"


def m_create_child(data: bytes, st: State) -> Outcome:
    """create_child_store: sscanf %i, EINVAL for <= 0, > 0xffff, 0x8000; ipoib_vlan_add:
    ENOTUNIQ against the parent's and the legacy children's effective P_Keys (compared with
    the raw value), then EEXIST for a name in use."""
    p = ref_sscanf(data)
    if p is None or p <= 0 or p > 0xFFFF or p == 0x8000:
        raise Refused(EINVAL)
    if p == st.pkey or p in st.children:
        raise Refused(errno.ENOTUNIQ)
    if f"ib0.{p:04x}" in st.interfaces:
        raise Refused(errno.EEXIST)
    return 0, None


def m_delete_child(data: bytes, st: State) -> Outcome:
    """delete_child_store: sscanf %i, EINVAL outside 0..0xffff; ipoib_vlan_delete: the legacy
    child of that effective P_Key, or ENODEV."""
    p = ref_sscanf(data)
    if p is None or p < 0 or p > 0xFFFF:
        raise Refused(EINVAL)
    if p not in st.children:
        raise Refused(errno.ENODEV)
    return 0, None


def m_node_desc(data: bytes, st: State) -> Outcome:
    """node_desc_store: memcpy(min(count, 64)); node_desc_show "%.64s\\n"."""
    return 0, cstr(data[:64]) + b"\n"


def m_param(data: bytes, st: State) -> Outcome:
    """param_attr_store -> param_set_int: kstrtoint(val, 0)."""
    return 0, _line(_parsed(ref_kstrtoint(data)))


def m_links(data: bytes, st: State) -> Outcome:
    """The control file (ipoibfs's own): JSON object, then rtnl_link_ops' errno values."""
    try:
        request = json.loads(data)
    except (ValueError, RecursionError):
        raise Refused(EINVAL) from None
    if not isinstance(request, dict):
        raise Refused(EINVAL)
    for key in ("mode", "umcast"):
        value = request.get(key)
        if value is not None and (type(value) is not int or not 0 <= value <= 0xFFFF):
            raise Refused(EINVAL)
    op = request.get("op")
    if op in ("changelink", "dellink", "coalesce") and request.get("dev") not in st.interfaces:
        raise Refused(errno.ENODEV)
    if op not in ("newlink", "changelink", "dellink", "coalesce"):
        raise Refused(errno.EOPNOTSUPP)
    return 0, None


@dataclass(frozen=True)
class FileModel:
    path: str
    store: Callable[[bytes, State], Outcome]
    #: The kernfs rules (a page, a C string) apply: every file but the control file.
    sysfs: bool = True
    #: Checked against a real TUN's own file by the fuzz test: "all" (result and shown
    #: value), "parse" (only the parsers' refusals), or None (no TUN counterpart).
    tun: str | None = None


NET = "class/net/ib0"
FILES = {
    "uevent": FileModel(f"{NET}/uevent", m_uevent, tun="all"),
    "mtu": FileModel(f"{NET}/mtu", m_mtu, tun="parse"),
    "flags": FileModel(f"{NET}/flags", m_flags, tun="parse"),
    "tx_queue_len": FileModel(f"{NET}/tx_queue_len", m_tx_queue_len, tun="all"),
    "carrier": FileModel(f"{NET}/carrier", m_carrier),
    "ifalias": FileModel(f"{NET}/ifalias", m_ifalias, tun="all"),
    "netdev_group": FileModel(f"{NET}/netdev_group", m_netdev_group, tun="all"),
    "proto_down": FileModel(f"{NET}/proto_down", m_proto_down, tun="all"),
    "gro_flush_timeout": FileModel(f"{NET}/gro_flush_timeout", m_gro_flush_timeout, tun="all"),
    "napi_defer_hard_irqs": FileModel(
        f"{NET}/napi_defer_hard_irqs", m_napi_defer_hard_irqs, tun="all"
    ),
    "threaded": FileModel(f"{NET}/threaded", m_threaded, tun="parse"),
    "mode": FileModel(f"{NET}/mode", m_mode),
    "umcast": FileModel(f"{NET}/umcast", m_umcast),
    "create_child": FileModel(f"{NET}/create_child", m_create_child),
    "delete_child": FileModel(f"{NET}/delete_child", m_delete_child),
    "node_desc": FileModel("class/infiniband/ipoibfs0/node_desc", m_node_desc),
    "debug_level": FileModel("module/ib_ipoib/parameters/debug_level", m_param),
    "mcast_debug_level": FileModel("module/ib_ipoib/parameters/mcast_debug_level", m_param),
    "links": FileModel(".ipoibfs/links", m_links, sysfs=False),
}


def expect(name: str, data: bytes, st: State) -> Outcome:
    """The kernel's outcome of writing `data` to the file `name` (kernfs first)."""
    model = FILES[name]
    if model.sysfs:
        data = data[:PAGE_SIZE]
    if not data:
        return 0, None  # sysfs_kf_write: no store for an empty write
    try:
        return model.store(data, st)
    except Refused as e:
        return e.errno, None


def taken(name: str, data: bytes) -> int:
    """What a successful write returns: what the store took."""
    return min(len(data), PAGE_SIZE) if FILES[name].sysfs else len(data)


# ----------------------------------------------------------------- through the mirror

REQUEST = SimpleNamespace(uid=0, gid=0, pid=os.getpid(), umask=0o022)


class AdminCaller(Caller):
    """The writer, with CAP_NET_ADMIN (the table runs without root)."""

    @property
    def net_admin(self) -> bool:
        return True


@dataclass
class Host:
    driver: IPoIBDriver
    netdevs: FakeNetdevs
    ops: SysfsOperations

    def state(self) -> State:
        ib0 = self.driver.interfaces["ib0"]
        return State(
            mode="connected" if ib0.admin_cm else "datagram",
            mtu=self.netdevs.mtu(ib0.link),
            mcast_mtu=ib0.mcast_mtu,
            cm=ib0.cm_supported,
            pkey=ib0.pkey,
            children={c.pkey: c.name for c in ib0.children if c.child_type is ChildType.LEGACY},
            interfaces=set(self.driver.interfaces),
        )

    async def inode(self, path: str) -> int:
        ino = pyfuse3.ROOT_INODE
        for name in path.split("/"):
            ino = (await self.ops.lookup(ino, name.encode(), REQUEST)).st_ino
        return ino

    async def write(self, path: str, data: bytes) -> int:
        """The count taken, or -errno."""
        info = await self.ops.open(await self.inode(path), os.O_WRONLY, REQUEST)
        try:
            return await self.ops.write(info.fh, 0, data)
        except pyfuse3.FUSEError as e:
            return -e.errno
        finally:
            await self.ops.release(info.fh)

    async def read(self, path: str) -> bytes | int:
        try:
            info = await self.ops.open(await self.inode(path), os.O_RDONLY, REQUEST)
        except pyfuse3.FUSEError as e:
            return -e.errno
        try:
            return await self.ops.read(info.fh, 0, PAGE_SIZE)
        except pyfuse3.FUSEError as e:
            return -e.errno
        finally:
            await self.ops.release(info.fh)

    async def snapshot(self) -> dict:
        """Everything a rejected write must leave as it was."""
        shown = {}
        for name in ("mode", "mtu", "umcast", "ifalias", "tx_queue_len", "netdev_group",
                     "gro_flush_timeout", "napi_defer_hard_irqs", "threaded", "flags"):  # fmt: skip
            shown[name] = await self.read(f"{NET}/{name}")
        shown["node_desc"] = await self.read("class/infiniband/ipoibfs0/node_desc")
        shown["debug_level"] = await self.read("module/ib_ipoib/parameters/debug_level")
        shown["interfaces"] = sorted(self.driver.interfaces)
        shown["attrs"] = {k: dict(v.attrs) for k, v in self.netdevs.links.items()}
        return shown


@pytest.fixture
async def make_host(nursery, monkeypatch):
    monkeypatch.setattr(sysfs_fs, "Caller", AdminCaller)

    async def make() -> Host:
        device = HcaDevice("h1", HcaProfile(ports=1))
        netdevs = FakeNetdevs()
        driver = IPoIBDriver(device, EmbeddedFabric(device).ports, netdevs, ModuleParams(),
                             ListLog())  # fmt: skip
        driver.start(nursery)
        await driver.add_ports()
        return Host(
            driver,
            netdevs,
            SysfsOperations(Mirror(driver, device, netdevs, driver.port_agents()).root()),
        )

    return make


async def apply(host: Host, name: str, row_data: bytes) -> None:
    """One write, checked against the model: its result, the file's show after an accepted
    write, and nothing changed after a refused one."""
    model = FILES[name]
    st = host.state()
    err, shown = expect(name, row_data, st)
    before = await host.snapshot()
    got = await host.write(model.path, row_data)
    if err:
        assert got == -err, (name, row_data[:40], got, err)
        assert await host.snapshot() == before, (name, row_data[:40])
        return
    assert got == (taken(name, row_data) if row_data else 0), (name, row_data[:40], got)
    if shown is not None:
        assert await host.read(model.path) == shown, (name, row_data[:40])


async def settle(host: Host, name: str, row_data: bytes, st: State) -> None:
    """Put back what an accepted create_child or delete_child did."""
    if name == "create_child":
        p = ref_sscanf(row_data[:PAGE_SIZE])
        if p is not None and f"ib0.{p:04x}" in host.driver.interfaces:
            assert await host.write(f"{NET}/delete_child", f"{p | 0x8000}".encode()) > 0
    await trio.testing.wait_all_tasks_blocked()
    if name == "delete_child":
        for pkey in st.children:
            if pkey not in host.state().children:
                assert await host.write(f"{NET}/create_child", f"{pkey}".encode()) > 0


@pytest.mark.parametrize("name", list(FILES))
async def test_every_input_class_to_every_file(make_host, name):
    host = await make_host()
    if name == "delete_child":
        assert await host.write(f"{NET}/create_child", b"0x8001") > 0
    for row in ROWS:
        st = host.state()
        await apply(host, name, row.data)
        await settle(host, name, row.data, st)


def test_the_table_covers_every_writable_file_and_input_class():
    """Every file of the mirror that has a store has a model here (the debug-data parameters
    exist only with --debug and parse as debug_level)."""
    from ipoibfs.sysfs.net import IPOIB_ATTRS, NET_CLASS_ATTRS

    writable = {a.name for a in (*NET_CLASS_ATTRS, *IPOIB_ATTRS) if a.store is not None}
    assert writable <= set(FILES)
    classes = {r.cls for r in ROWS}
    assert classes >= {"empty", "sign", "base", "space", "nul", "overlong", "range",
                       "non-utf8"}  # fmt: skip


# ----------------------------------------------------------------- who is asked first


@pytest.mark.parametrize(
    "name, data, err",
    [
        ("mtu", b"junk", EPERM),  # ns_capable before kstrtoul
        ("flags", b"junk", EPERM),
        ("tx_queue_len", b"junk", EPERM),
        ("netdev_group", b"junk", EPERM),
        ("proto_down", b"junk", EPERM),
        ("gro_flush_timeout", b"junk", EPERM),
        ("napi_defer_hard_irqs", b"junk", EPERM),
        ("threaded", b"junk", EPERM),
        ("ifalias", b"a" * 300, EPERM),
        ("carrier", b"1", errno.EOPNOTSUPP),  # no ndo_change_carrier comes first
        ("create_child", b"junk", EINVAL),  # sscanf and the range before capable()
        ("create_child", b"0x8000", EINVAL),
        ("create_child", b"0x8005", EPERM),
        ("delete_child", b"0x10000", EINVAL),
        ("delete_child", b"0x8005", EPERM),
        ("links", b"junk", EINVAL),
        ("links", b"{}", EPERM),
        ("mode", b"connected\n", 0),  # no capability check
        ("umcast", b"1", 0),
        ("uevent", b"change", 0),
        ("node_desc", b"x", 0),
        ("debug_level", b"1", 0),
    ],
)
async def test_without_cap_net_admin(make_host, monkeypatch, name, data, err):
    host = await make_host()

    class Plain(Caller):
        @property
        def net_admin(self) -> bool:
            return False

    monkeypatch.setattr(sysfs_fs, "Caller", Plain)
    got = await host.write(FILES[name].path, data)
    assert got == (-err if err else len(data))
