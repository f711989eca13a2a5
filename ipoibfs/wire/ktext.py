"""The kernel's text formats and number parsers, byte-exact with lib/vsprintf.c,
lib/kstrtox.c, drivers/infiniband/core/sysfs.c and ipoib_fs.c; and the jiffies clock."""

from __future__ import annotations

import errno

from ..errors import KernelError

#: HZ and INITIAL_JIFFIES of a 64-bit distribution kernel.
HZ = 250
INITIAL_JIFFIES = (-300 * HZ) & 0xFFFFFFFF


def jiffies(monotonic_seconds: float) -> int:
    return INITIAL_JIFFIES + int(monotonic_seconds * HZ)


# ---------------------------------------------------------------- text formats


def format_lladdr(addr: bytes) -> str:
    """ "%*phC": colon-separated lowercase hex bytes, as in sysfs `address`."""
    return ":".join(f"{b:02x}" for b in addr)


def format_gid_sysfs(gid: bytes) -> str:
    """ "%pI6": 8 groups of 4 hex digits, never compressed (class/infiniband gids/N)."""
    return ":".join(gid[i : i + 2].hex() for i in range(0, 16, 2))


def format_gid_debugfs(gid: bytes) -> str:
    """ipoib_fs.c format_gid: 8 "%x" groups, no leading zeros, no "::"."""
    return ":".join(f"{int.from_bytes(gid[i : i + 2], 'big'):x}" for i in range(0, 16, 2))


def kernel_pointer(obj: object) -> str:
    """How "%p" prints a pointer: hashed, 16 hex digits (the object's identity stands in)."""
    return f"{id(obj) & 0xFFFFFFFF:016x}"


def format_guid(guid: int) -> str:
    """node_guid / sys_image_guid: "%04x:%04x:%04x:%04x"."""
    raw = guid.to_bytes(8, "big")
    return ":".join(raw[i : i + 2].hex() for i in range(0, 8, 2))


def format_path_rate(mbps: int) -> str:
    """The `_path` rate, "%8d.%d": the fraction without zero padding (2500 -> 2.500,
    10000 -> 10.0, 14062 -> 14.62), as ipoib_path_seq_show prints it."""
    return f"{mbps // 1000:8d}.{mbps % 1000}"


# ---------------------------------------------------------------- kernel number parsing


def _digits(text: bytes, base: int) -> tuple[int, int]:
    """Accumulate digits of `base` from the start of `text`: (value mod 2**64, count)."""
    value = 0
    count = 0
    for ch in text:
        c = chr(ch).lower()
        if c.isdigit():
            d = ord(c) - 48
        elif "a" <= c <= "f":
            d = ord(c) - 87
        else:
            break
        if d >= base:
            break
        value = (value * base + d) & 0xFFFFFFFFFFFFFFFF
        count += 1
    return value, count


def _fixup_radix(text: bytes, base: int) -> tuple[bytes, int]:
    """_parse_integer_fixup_radix from lib/kstrtox.c."""
    if base == 0:
        if text[:1] == b"0":
            if text[1:2].lower() == b"x" and _is_xdigit(text[2:3]):
                return text[2:], 16
            return text, 8
        return text, 10
    if base == 16 and text[:2].lower() == b"0x":
        return text[2:], 16
    return text, base


def _is_xdigit(c: bytes) -> bool:
    return len(c) == 1 and c in b"0123456789abcdefABCDEF"


def _to_int32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def sscanf_int(buf: bytes) -> int | None:
    """The kernel's `sscanf(buf, "%i", &int)`: None when nothing converts.

    Leading white space is skipped, a '-' sign is allowed ('+' is not), the base comes
    from the prefix (0x hex, 0 octal), trailing garbage is ignored and the result is
    truncated to a C int.
    """
    text = buf.lstrip(b" \t\n\v\f\r")
    negative = text[:1] == b"-"
    body = text[1:] if negative else text
    if not body[:1].isdigit():
        return None
    digits, base = _fixup_radix(body, 0)
    value, _ = _digits(digits, base)
    if negative:
        value = -value
    return _to_int32(value)


def simple_strtoul(buf: bytes) -> int:
    """simple_strtoul(buf, NULL, 0): no white space, no sign, 0 when nothing parses."""
    digits, base = _fixup_radix(buf, 0)
    value, _ = _digits(digits, base)
    return value


def c_int(value: int) -> int:
    """Truncate to a C int, as an implicit conversion of unsigned long does."""
    return _to_int32(value)


def kstrtoul(buf: bytes) -> int:
    """kstrtoul(buf, 0, &val): one optional '+', the number, one optional newline, nothing else.

    Raises KernelError(EINVAL) or KernelError(ERANGE) as the kernel returns them.
    """
    text = buf[1:] if buf[:1] == b"+" else buf
    digits, base = _fixup_radix(text, 0)
    value = 0
    count = 0
    for ch in digits:
        c = chr(ch).lower()
        d = ord(c) - 48 if c.isdigit() else ord(c) - 87 if "a" <= c <= "f" else 99
        if d >= base:
            break
        value = value * base + d
        count += 1
    if count == 0:
        raise KernelError(errno.EINVAL)
    if value > 0xFFFFFFFFFFFFFFFF:
        raise KernelError(errno.ERANGE)
    rest = digits[count:]
    if rest[:1] == b"\n":
        rest = rest[1:]
    if rest:
        raise KernelError(errno.EINVAL)
    return value


def kstrtoint(buf: bytes) -> int:
    """kstrtoint(buf, 0, ...) as param_set_int uses it: a sign allowed, ERANGE outside an int."""
    negative = buf[:1] == b"-"
    value = kstrtoul(buf[1:] if negative else buf)
    value = -value if negative else value
    if not -(1 << 31) <= value < (1 << 31):
        raise KernelError(errno.ERANGE)
    return value
