"""What a fabric backend implements: the emulated ones (embedded, shared) and, later, real
hardware (pyverbs)."""

from __future__ import annotations

from typing import Protocol

import trio

from .port import FabricPort


class Fabric(Protocol):
    """One host's HCA attached to a fabric, for the lifetime of the host.

    `open` connects (to the subnet manager, to the wire), starts the backend's background
    tasks in `nursery` and returns one FabricPort per HCA port, in port order. `close`
    releases what `open` made; it is idempotent and safe when `open` never ran or failed
    part-way, so a host registers it before calling `open`. The host calls it after the
    nursery has ended.
    """

    async def open(self, nursery: trio.Nursery) -> list[FabricPort]: ...
    def close(self) -> None: ...
