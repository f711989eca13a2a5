"""Partitions in OpenSM's partitions.conf format (opensm(8), PARTITION CONFIGURATION)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .. import wire
from ..errors import UsageError

#: partitions.conf defaults for IPoIB broadcast groups: mtu=4 (2048), rate=3 (10 Gb/s), scope 2.
DEFAULT_MTU_ENUM = wire.IB_MTU_ENUM[2048]
DEFAULT_RATE_ENUM = 3
DEFAULT_SCOPE = 2
#: The default partition's number, 0x7fff: the default P_Key without its membership bit.
DEFAULT_PKEY = wire.DEFAULT_PKEY & wire.PKEY_MASK
ALL_KEYWORDS = ("ALL", "ALL_CAS")
IGNORED_KEYWORDS = ("ALL_SWITCHES", "ALL_ROUTERS", "SELF")  # no such ports are emulated


@dataclass
class Member:
    """A port specifier: a port GUID, or None for ALL/ALL_CAS, with its membership."""

    guid: int | None
    full: bool
    limited: bool


@dataclass
class Partition:
    name: str
    pkey: int  # 15-bit partition number, no membership bit
    ipoib: bool = False
    mtu: int = DEFAULT_MTU_ENUM
    rate: int = DEFAULT_RATE_ENUM
    sl: int = 0
    scopes: list[int] = field(default_factory=lambda: [DEFAULT_SCOPE])
    qkey: int = wire.IPOIB_QKEY
    members: list[Member] = field(default_factory=list)

    def membership(self, port_guid: int) -> tuple[bool, bool]:
        """(full, limited) membership of a port; both False when it is not a member."""
        full = limited = False
        for m in self.members:
            if m.guid is None or m.guid == port_guid:
                full |= m.full
                limited |= m.limited
        return full, limited


def default_partitions() -> list[Partition]:
    """What OpenSM runs with no file: `Default=0x7fff, ipoib : ALL=full ;`."""
    return [Partition("Default", DEFAULT_PKEY, ipoib=True, members=[Member(None, True, False)])]


class PartitionsError(UsageError):
    """A malformed partitions file, reported with its line number."""


def load_partitions(path: str) -> list[Partition]:
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise PartitionsError(f"{path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise PartitionsError(f"{path}: not a text file ({e.reason} at byte {e.start})") from None
    return parse_partitions(text, path)


def _int(text: str, what: str, where: str, limit: int) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise PartitionsError(f"{where}: invalid {what} '{text}'") from None
    if not 0 <= value <= limit:
        raise PartitionsError(f"{where}: {what} {text} out of range (0-{limit:#x})")
    return value


def _membership(flag: str | None, default: str, where: str) -> tuple[bool, bool]:
    """'full', 'limited' or 'both', accepted as prefixes as OpenSM does; limited otherwise."""
    word = (flag if flag is not None else default).strip().lower()
    if word and "both".startswith(word):
        return True, True
    if word and "full".startswith(word):
        return True, False
    return False, True


def parse_partitions(text: str, source: str = "partitions.conf") -> list[Partition]:
    """Parse a partitions.conf text; the Default partition is added as OpenSM adds it."""
    # Strip comments, keep line numbers: statements end with ';' and may span lines.
    statements: list[tuple[int, str]] = []
    buf, start = "", 1
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0]
        while ";" in line:
            head, line = line.split(";", 1)
            if not buf.strip():
                start = lineno
            buf += " " + head
            statements.append((start, buf))
            buf = ""
        if line.strip():
            if not buf.strip():
                start = lineno
            buf += " " + line
    if buf.strip():
        raise PartitionsError(f"{source}:{start}: partition definition not terminated by ';'")

    by_pkey: dict[int, Partition] = {}
    pending_auto: list[tuple[str, Partition]] = []
    for lineno, stmt in statements:
        where = f"{source}:{lineno}"
        if ":" not in stmt:
            raise PartitionsError(f"{where}: expected 'Name=PKey[,flags] : members ;'")
        definition, members_text = stmt.split(":", 1)
        part, default_member = _parse_definition(definition, where)
        part.members = _parse_members(members_text, default_member, where)
        if part.pkey < 0:
            pending_auto.append((where, part))
        elif part.pkey in by_pkey:
            merged = by_pkey[part.pkey]
            merged.members += part.members
            merged.ipoib |= part.ipoib
        else:
            by_pkey[part.pkey] = part
    for _, part in pending_auto:
        part.pkey = next(p for p in range(1, wire.PKEY_MASK) if p not in by_pkey)
        by_pkey[part.pkey] = part
    if DEFAULT_PKEY not in by_pkey:
        # "Default=0x7fff : ALL=limited, SELF=full ;" when the file has no rule for it.
        by_pkey[DEFAULT_PKEY] = Partition("Default", DEFAULT_PKEY,
                                          members=[Member(None, False, True)])  # fmt: skip
    default = by_pkey.pop(DEFAULT_PKEY)
    return [default, *by_pkey.values()]


_NAME = re.compile(r"^[A-Za-z0-9_.+-]*$")


def _parse_definition(text: str, where: str) -> tuple[Partition, str]:
    fields = [f.strip() for f in text.split(",")]
    name, sep, pkey_text = fields[0].partition("=")
    name = name.strip()
    if not _NAME.match(name):
        raise PartitionsError(f"{where}: invalid partition name '{name}'")
    pkey = _int(pkey_text.strip(), "P_Key", where, 0xFFFF) & wire.PKEY_MASK if sep else -1
    if sep and pkey == 0:
        raise PartitionsError(f"{where}: P_Key 0 is reserved")
    part = Partition(name, pkey)
    default_member = "limited"
    for flag in fields[1:]:
        key, sep, value = (s.strip() for s in flag.partition("="))
        low = key.lower()
        if low == "ipoib" and not sep:
            part.ipoib = True
        elif low == "indx0" and not sep:
            pass  # table placement only
        elif low == "defmember" and sep:
            if value.lower() not in ("full", "limited", "both"):
                raise PartitionsError(f"{where}: defmember must be full, limited or both")
            default_member = value
        elif low == "mtu" and sep:
            part.mtu = _int(value, "mtu", where, 5)
            if part.mtu == 0:
                raise PartitionsError(f"{where}: mtu must be 1-5 (5 = 4096)")
        elif low == "rate" and sep:
            part.rate = _int(value, "rate", where, 18)
        elif low == "sl" and sep:
            part.sl = _int(value, "sl", where, 15)
        elif low == "scope" and sep:
            scope = _int(value, "scope", where, 15)
            part.scopes = [scope] if part.scopes == [DEFAULT_SCOPE] else [*part.scopes, scope]
        elif low == "q_key" and sep:
            part.qkey = _int(value, "Q_Key", where, 0xFFFFFFFF)
        elif low in ("tclass", "flowlabel") and sep:
            _int(value, key, where, 0xFFFFF)
        else:
            raise PartitionsError(f"{where}: unknown partition flag '{flag}'")
    return part, default_member


def _parse_members(text: str, default_member: str, where: str) -> list[Member]:
    members = []
    for spec in (s.strip() for s in text.split(",")):
        if not spec:
            continue
        key, sep, flag = (s.strip() for s in spec.partition("="))
        if key.lower() == "mgid":
            raise PartitionsError(f"{where}: multicast group definitions (mgid=) are not supported")
        full, limited = _membership(flag if sep else None, default_member, where)
        if key in ALL_KEYWORDS:
            members.append(Member(None, full, limited))
        elif key in IGNORED_KEYWORDS:
            continue
        else:
            guid = _int(key, "port GUID", where, 0xFFFFFFFFFFFFFFFF)
            members.append(Member(guid, full, limited))
    return members
