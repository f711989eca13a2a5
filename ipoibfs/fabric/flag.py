"""A byte shared with C: what a loop outside Python reads before each step."""

from __future__ import annotations

import ctypes


class Flag:
    """A byte that a C loop placing packets (netdev/flows.c) reads before each one: while
    it is 0, the loop leaves the packets to Python. Its owner sets it on the trio thread."""

    __slots__ = ("_byte",)

    def __init__(self, on: bool = True) -> None:
        self._byte = ctypes.c_uint8(on)

    def set(self, on: bool) -> None:
        self._byte.value = on

    def __bool__(self) -> bool:
        return bool(self._byte.value)

    @property
    def address(self) -> int:
        return ctypes.addressof(self._byte)
