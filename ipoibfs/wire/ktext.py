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


# ---------------------------------------------------------------- C strings and lib/ctype.c


#: A store's buffer is a C string to every parser below (kernfs NUL-terminates what it hands
#: a store, and the parsers stop at the first NUL): what follows a NUL is never seen.
def cstring(buf: bytes) -> bytes:
    """The C string at the start of `buf`: up to its first NUL."""
    end = buf.find(b"\0")
    return buf if end < 0 else buf[:end]


#: lib/ctype.c's _S class: what isspace() and skip_spaces() take. Latin-1 NBSP (0xA0) is a
#: space to the kernel; 0x85 and 0x1c-0x1f are not.
KERNEL_SPACE = frozenset(b"\t\n\v\f\r \xa0")
#: lib/ctype.c's _U|_L|_D: isalnum(), Latin-1 letters included (not 0xd7 or 0xf7).
KERNEL_ALNUM = frozenset(
    [*b"0123456789", *range(0x41, 0x5B), *range(0x61, 0x7B), *range(0xC0, 0x100)]
) - {0xD7, 0xF7}
#: isxdigit().
KERNEL_XDIGIT = frozenset(b"0123456789abcdefABCDEF")


def skip_spaces(text: bytes) -> bytes:
    """lib/string_helpers.c skip_spaces()."""
    i = 0
    while i < len(text) and text[i] in KERNEL_SPACE:
        i += 1
    return text[i:]


# ---------------------------------------------------------------- kernel number parsing

_U64 = (1 << 64) - 1
KSTRTOX_OVERFLOW = 1 << 31


def _fixup_radix(text: bytes, base: int) -> tuple[bytes, int]:
    """_parse_integer_fixup_radix from lib/kstrtox.c."""
    if base == 0:
        if text[:1] == b"0":
            hex_digit = len(text) > 2 and text[2] in KERNEL_XDIGIT
            base = 16 if text[1:2] in (b"x", b"X") and hex_digit else 8
        else:
            base = 10
    if base == 16 and text[:1] == b"0" and text[1:2] in (b"x", b"X"):
        text = text[2:]
    return text, base


def _parse_integer(text: bytes, base: int, max_chars: int | None = None) -> tuple[int, int]:
    """_parse_integer_limit: (value mod 2**64, digits taken | KSTRTOX_OVERFLOW)."""
    value = 0
    taken = 0
    overflow = 0
    for i, c in enumerate(text):
        if max_chars is not None and i >= max_chars:
            break
        if 0x30 <= c <= 0x39:
            digit = c - 0x30
        elif 0x61 <= (c | 0x20) <= 0x66:  # _tolower(c) is c | 0x20
            digit = (c | 0x20) - 0x61 + 10
        else:
            break
        if digit >= base:
            break
        value = value * base + digit
        if value > _U64:
            overflow = KSTRTOX_OVERFLOW
            value &= _U64
        taken += 1
    return value, taken | overflow


def _kstrtoull(text: bytes, base: int) -> int:
    """_kstrtoull: the number, one optional newline, nothing else; ERANGE before EINVAL."""
    text, base = _fixup_radix(text, base)
    value, rv = _parse_integer(text, base)
    if rv & KSTRTOX_OVERFLOW:
        raise KernelError(errno.ERANGE)
    if rv == 0:
        raise KernelError(errno.EINVAL)
    rest = text[rv:]
    if rest[:1] == b"\n":
        rest = rest[1:]
    if rest:
        raise KernelError(errno.EINVAL)
    return value


def kstrtoull(buf: bytes, base: int = 0) -> int:
    """kstrtoull(buf, base, &val) (and kstrtoul on a 64-bit kernel): one optional '+', the
    number in `base` (0: from its prefix, 0x hex, 0 octal), one optional newline, nothing
    else; the C string ends at a NUL. Raises KernelError(EINVAL) or KernelError(ERANGE)."""
    text = cstring(buf)
    if text[:1] == b"+":
        text = text[1:]
    return _kstrtoull(text, base)


kstrtoul = kstrtoull


def kstrtoll(buf: bytes, base: int = 0) -> int:
    """kstrtoll: a '-' (then no '+'), or kstrtoull's '+'; ERANGE outside a long long."""
    text = cstring(buf)
    if text[:1] == b"-":
        value = _kstrtoull(text[1:], base)
        if value > 1 << 63:
            raise KernelError(errno.ERANGE)
        return -value
    value = kstrtoull(text, base)
    if value >= 1 << 63:
        raise KernelError(errno.ERANGE)
    return value


def kstrtoint(buf: bytes, base: int = 0) -> int:
    """kstrtoint(buf, 0, ...) as param_set_int uses it: kstrtoll, then ERANGE outside an int."""
    value = kstrtoll(buf, base)
    if not -(1 << 31) <= value < (1 << 31):
        raise KernelError(errno.ERANGE)
    return value


def _to_int32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def c_int(value: int) -> int:
    """Truncate to a C int, as an implicit conversion of unsigned long does."""
    return _to_int32(value)


def simple_strtoull(buf: bytes, base: int = 0) -> tuple[int, int]:
    """simple_strntoull(cp, &endp, base, INT_MAX): (value mod 2**64, characters taken, the
    radix prefix included). No white space, no sign; 0 taken when nothing converts."""
    text, base = _fixup_radix(buf, base)
    prefix = len(buf) - len(text)
    value, rv = _parse_integer(text, base)
    return value, prefix + (rv & ~KSTRTOX_OVERFLOW)


def simple_strtoul(buf: bytes) -> int:
    """simple_strtoul(buf, NULL, 0): no white space, no sign, 0 when nothing parses; the C
    string ends at a NUL."""
    return simple_strtoull(cstring(buf))[0]


def sscanf_int(buf: bytes) -> int | None:
    """The kernel's `sscanf(buf, "%i", &int)` (lib/vsprintf.c vsscanf): None when nothing
    converts (sscanf returns 0).

    Leading white space is skipped with the kernel's isspace (NBSP 0xa0 included), a '-'
    sign is allowed ('+' is not), the base comes from the prefix (0x hex, 0 octal), trailing
    garbage is ignored, overflow wraps and the result is truncated to a C int. The C string
    ends at a NUL.
    """
    text = skip_spaces(cstring(buf))
    if not text:
        return None
    negative = text[:1] == b"-"
    digit = text[1:2] if negative else text[:1]
    if not digit or not digit.isdigit():
        return None
    value, _ = simple_strtoull(text[1:] if negative else text)
    return _to_int32(-value if negative else value)


# ---------------------------------------------------------------- sysfs stores' grammars

#: include/linux/kobject.h's actions, in enum kobject_action order (lib/kobject_uevent.c).
KOBJECT_ACTIONS = (b"add", b"remove", b"change", b"move", b"online", b"offline", b"bind",
                   b"unbind")  # fmt: skip
UUID_STRING_LEN = 36


def _strip_one(buf: bytes) -> bytes:
    """`if (count && (buf[count-1] == '\\n' || buf[count-1] == '\\0')) count--;`"""
    return buf[:-1] if buf[-1:] in (b"\n", b"\0") else buf


def uuid_is_valid(text: bytes) -> bool:
    """lib/uuid.c uuid_is_valid: 8-4-4-4-12 hex digits."""
    if len(text) < UUID_STRING_LEN:
        return False
    for i, c in enumerate(text[:UUID_STRING_LEN]):
        if i in (8, 13, 18, 23):
            if c != 0x2D:
                return False
        elif c not in KERNEL_XDIGIT:
            return False
    return True


def _word_end(text: bytes, start: int, delim: int) -> int | None:
    """action_arg_word_end: the end of an alnum word (the delimiter or the buffer's end)."""
    i = start
    while i < len(text) and text[i] != delim:
        if text[i] not in KERNEL_ALNUM:
            return None
        i += 1
    return None if i == start else i


def _action_args(args: bytes) -> tuple[bytes, dict[bytes, bytes]]:
    """kobject_action_args: a UUID, then " KEY=VALUE" pairs of alnum words."""
    text = _strip_one(args)
    if not text or not uuid_is_valid(text):
        raise KernelError(errno.EINVAL)
    pairs: dict[bytes, bytes] = {}
    i = UUID_STRING_LEN
    while i < len(text):
        if text[i] != 0x20:
            raise KernelError(errno.EINVAL)
        i += 1  # the ' ': a key must follow
        if i >= len(text):
            raise KernelError(errno.EINVAL)
        key_end = _word_end(text, i, 0x3D)
        if key_end is None or key_end >= len(text):  # no '=' before the end
            raise KernelError(errno.EINVAL)
        value_start = key_end + 1  # the '=': a value must follow
        if value_start >= len(text):
            raise KernelError(errno.EINVAL)
        value_end = _word_end(text, value_start, 0x20)
        if value_end is None:
            raise KernelError(errno.EINVAL)
        pairs[text[i:key_end]] = text[value_start:value_end]
        i = value_end
    return text[:UUID_STRING_LEN], pairs


def kobject_synth_uevent(buf: bytes) -> tuple[bytes, bytes | None, dict[bytes, bytes]]:
    """lib/kobject_uevent.c kobject_synth_uevent's grammar, as the `uevent` store parses the
    whole buffer it is given (NULs included, count-based):

    ACTION, then optionally " UUID", then " KEY=VALUE" pairs; one trailing newline or NUL
    is ignored (by each of the two parsers). Returns (action, UUID or None, {KEY: VALUE});
    anything else raises KernelError(EINVAL).
    """
    text = _strip_one(buf)
    if not text:
        raise KernelError(errno.EINVAL)
    # strnchr(buf, count, ' ') stops at a NUL as well.
    nul = text.find(b"\0")
    space = text.find(b" ", 0, nul if nul >= 0 else len(text))
    first = text[:space] if space >= 0 else text
    # strncmp(action, buf, count_first) == 0 && action[count_first] == '\0': the first
    # word is exactly the action (a NUL inside it never matches: the kernel then reads past
    # the action's string, which this kernel's layout never makes a match).
    if first not in KOBJECT_ACTIONS:
        raise KernelError(errno.EINVAL)
    if space < 0:
        return first, None, {}
    uuid, pairs = _action_args(buf[space + 1 :])
    return first, uuid, pairs


def dev_valid_name(name: bytes) -> bool:
    """net/core/dev.c dev_valid_name: 1 to IFNAMSIZ - 1 bytes, not "." or "..", no '/',
    ':' or kernel white space; a NUL would end the C string, so it is refused here (the
    netdev would be made under a name the caller did not ask for)."""
    if not name or len(name) >= 16 or name in (b".", b".."):
        return False
    return not any(c in KERNEL_SPACE or c in b"/:\0" for c in name)
