"""The emulated wire's data plane (DataPlane). Segmentation and reassembly, which are
pure, are tested with the rest of the wire in test_wire.py."""

from __future__ import annotations
