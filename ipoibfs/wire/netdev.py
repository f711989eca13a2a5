"""What an IPoIB netdev looks like to the rest of the kernel: the link type, name length,
flags (uapi/linux/if.h), MTUs (ipoib.h) and modes (IFLA_IPOIB_MODE)."""

from __future__ import annotations

from .headers import IPOIB_ENCAP_LEN

ARPHRD_INFINIBAND = 32
IFNAMSIZ = 16
IPOIB_MODE_DATAGRAM, IPOIB_MODE_CONNECTED = 0, 1

# ---------------------------------------------------------------- MTUs

ETH_MIN_MTU = 68
IPOIB_MIN_MTU = ETH_MIN_MTU + IPOIB_ENCAP_LEN  # 72
IPOIB_CM_MTU = 0x10000 - 0x10  # 65520
IPOIB_CM_BUF_SIZE = IPOIB_CM_MTU + IPOIB_ENCAP_LEN
#: The IB MTU enum of port attributes, path and MCMemberRecords (enum ib_mtu), by bytes,
#: and back (ib_mtu_enum_to_int).
IB_MTU_ENUM = {256: 1, 512: 2, 1024: 3, 2048: 4, 4096: 5}
IB_MTU_BYTES = {v: k for k, v in IB_MTU_ENUM.items()}


def ud_mtu(ib_mtu: int) -> int:
    """IPOIB_UD_MTU: the IP MTU that fits an IB MTU after the 4-byte header."""
    return ib_mtu - IPOIB_ENCAP_LEN


# ---------------------------------------------------------------- netdev flags

IFF_UP = 0x1
IFF_BROADCAST = 0x2
IFF_POINTOPOINT = 0x10
IFF_RUNNING = 0x40
IFF_NOARP = 0x80
#: The bits dev_change_flags lets a caller change.
IFF_CHANGEABLE = 0x1 | 0x4 | 0x20 | 0x100 | 0x200 | 0x1000 | 0x2000 | 0x4000 | 0x8000


def ipoib_flags(live: int) -> int:
    """dev->flags of an IPoIB netdev from the TUN's: no POINTOPOINT or NOARP, BROADCAST set.

    The live value comes from netlink (dev_get_flags), which adds RUNNING and LOWER_UP;
    sysfs `flags` shows dev->flags, which has neither.
    """
    flags = live & 0xFFFF & ~(IFF_POINTOPOINT | IFF_NOARP | IFF_RUNNING)
    return flags | IFF_BROADCAST
