"""The kernel's bitmap text: `%*pb` and `%*pbl` (lib/vsprintf.c bitmap_string and
bitmap_list_string, as cpumap_print_to_pagebuf and bitmap_print_to_pagebuf print them) and
bitmap_parse (lib/bitmap-str.c), which the rps_cpus, xps_cpus and xps_rxqs stores use, and
bitmap_parselist, which reads the CPU and node lists of /sys/devices/system.

A bitmap is a Python int: bit n set means CPU (or queue) n.
"""

from __future__ import annotations

import errno

from ..errors import KernelError
from .ktext import KERNEL_SPACE

CHUNK = 32


def bitmap_string(mask: int, nbits: int) -> str:
    """`%*pb`: 32-bit chunks in hex, most significant first, comma-separated; the first
    chunk holds nbits % 32 bits (all 32 if none) and is zero-padded to its hex width."""
    if nbits <= 0:
        return ""
    first = nbits % CHUNK or CHUNK
    parts = []
    bit = (nbits + CHUNK - 1) // CHUNK * CHUNK - CHUNK
    width = first
    while bit >= 0:
        value = (mask >> bit) & ((1 << width) - 1)
        parts.append(f"{value:0{(width + 3) // 4}x}")
        bit -= CHUNK
        width = CHUNK
    return ",".join(parts)


def bitmap_list_string(mask: int, nbits: int) -> str:
    """`%*pbl`: ranges of set bits, `0-3,8`, below nbits."""
    mask &= (1 << max(nbits, 0)) - 1
    ranges = []
    bit = 0
    while mask >> bit:
        if not (mask >> bit) & 1:
            bit += 1
            continue
        start = bit
        while (mask >> bit) & 1:
            bit += 1
        ranges.append(str(start) if bit - 1 == start else f"{start}-{bit - 1}")
    return ",".join(ranges)


def _end_of_region(c: int) -> bool:
    """__end_of_region: isspace(c) || c == ','."""
    return c in KERNEL_SPACE or c == 0x2C


def _hex_to_bin(c: int) -> int:
    if 0x30 <= c <= 0x39:
        return c - 0x30
    if 0x61 <= (c | 0x20) <= 0x66:
        return (c | 0x20) - 0x61 + 10
    return -1


def bitmap_parse(buf: bytes, nbits: int) -> int:
    """bitmap_parse(buf, len, mask, nbits): hex chunks of at most 32 bits, read from the end,
    separated by commas and white space (`1,,5`, `,44`, `,` and `` are allowed); the input
    ends at the first newline or NUL. EINVAL for a character that is no hex digit, EOVERFLOW
    for a chunk of more than 8 digits, more chunks than nbits needs, or a bit at nbits or
    above."""
    end = len(buf)
    for stop in (buf.find(b"\n"), buf.find(b"\0")):
        if 0 <= stop < end:
            end = stop
    chunks = (nbits + CHUNK - 1) // CHUNK
    mask = 0
    chunk = 0
    i = end - 1
    while True:
        while i >= 0 and _end_of_region(buf[i]):  # bitmap_find_region_reverse
            i -= 1
        if i < 0:
            break
        if chunk >= chunks:
            raise KernelError(errno.EOVERFLOW)
        value = 0
        for shift in range(0, CHUNK, 4):  # bitmap_get_x32_reverse
            digit = _hex_to_bin(buf[i])
            i -= 1
            if digit < 0:
                raise KernelError(errno.EINVAL)
            value |= digit << shift
            if i < 0 or _end_of_region(buf[i]):
                break
        else:
            if _hex_to_bin(buf[i]) >= 0:
                raise KernelError(errno.EOVERFLOW)
            i -= 1
        mask |= value << (CHUNK * chunk)
        chunk += 1
    if mask >> nbits:
        raise KernelError(errno.EOVERFLOW)
    return mask


def _end_of_str(buf: bytes, i: int) -> bool:
    """end_of_str: the buffer's end, NUL or a newline."""
    return i >= len(buf) or buf[i] in (0, 0x0A)


def _getnum(buf: bytes, i: int, lastbit: int) -> tuple[int, int]:
    """bitmap_getnum: `N` (the last bit) or decimal digits (_parse_integer); EINVAL for
    none, EOVERFLOW beyond an unsigned int. The number and where it ends."""
    if i < len(buf) and buf[i] == 0x4E:  # 'N'
        return lastbit, i + 1
    start = i
    while i < len(buf) and 0x30 <= buf[i] <= 0x39:
        i += 1
    if i == start:
        raise KernelError(errno.EINVAL)
    value = int(buf[start:i])
    if value > 0xFFFFFFFF:
        raise KernelError(errno.EOVERFLOW)
    return value, i


def bitmap_parselist(buf: bytes | str, nbits: int) -> int:
    """bitmap_parselist (lib/bitmap-str.c): decimal bits and ranges, comma- or
    space-separated (`0-3,8`), `all`, `N` for the last bit, and `range:used/group`
    (`0-1023:2/256` sets 0,1,256,257,...); the input ends at NUL or a newline. EINVAL for a
    malformed region (or a start above its end, a group of 0, more used than the group),
    ERANGE for a bit at nbits or above, EOVERFLOW for a number beyond an unsigned int."""
    if isinstance(buf, str):
        buf = buf.encode()
    lastbit = (nbits - 1) & 0xFFFFFFFF  # an unsigned int: it wraps for 0
    mask = 0
    i = 0
    while True:
        while i < len(buf) and _end_of_region(buf[i]):  # bitmap_find_region
            i += 1
        if _end_of_str(buf, i):
            return mask
        # bitmap_parse_region
        if buf[i : i + 3].lower() == b"all":
            start, end, i = 0, lastbit, i + 3
        else:
            start, i = _getnum(buf, i, lastbit)
            end = start
            if not _region_ends(buf, i):
                if buf[i] != 0x2D:  # '-'
                    raise KernelError(errno.EINVAL)
                end, i = _getnum(buf, i + 1, lastbit)
        if _region_ends(buf, i):
            mask |= _region(start, end, end + 1, end + 1, nbits)
            if _end_of_str(buf, i):
                return mask  # parse_region's NULL: what follows a newline is not read
            continue
        else:
            if buf[i] != 0x3A:  # ':'
                raise KernelError(errno.EINVAL)
            used, i = _getnum(buf, i + 1, lastbit)
            if i >= len(buf) or buf[i] != 0x2F:  # '/'
                raise KernelError(errno.EINVAL)
            group, i = _getnum(buf, i + 1, lastbit)  # what follows is the next region's
        mask |= _region(start, end, used, group, nbits)


def _region_ends(buf: bytes, i: int) -> bool:
    """end_of_region: a separator or the end of the string."""
    return _end_of_str(buf, i) or _end_of_region(buf[i])


def _region(start: int, end: int, used: int, group: int, nbits: int) -> int:
    """bitmap_check_region, then bitmap_set_region: `used` bits of every `group`."""
    if start > end or group == 0 or used > group:
        raise KernelError(errno.EINVAL)
    if end >= nbits:
        raise KernelError(errno.ERANGE)
    mask = 0
    for first in range(start, end + 1, group):
        count = min(end - first + 1, used)
        mask |= ((1 << count) - 1) << first
    return mask
