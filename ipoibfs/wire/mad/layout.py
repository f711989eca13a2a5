"""Bit-exact layouts of IBA structures: a table of fields per structure, packed big-endian.

The IBA describes every MAD attribute as a table of (bit offset, width) pairs counted from
the most significant bit of the first byte, which is how libibmad's fields.c lists them
(its BITSOFFS(o, w) macro takes exactly that spec offset). A `Field` holds one row; a
`Struct` subclass is a frozen dataclass whose `LAYOUT` names its fields in that order, plus
the component-mask bit of each field when the structure is an SA record (or is nested in
one), so that pack, unpack and SA matching all come from the one table.

Field kinds: an unsigned integer of 1 to 64 bits (or 128 for the odd wide key), `bytes`
(byte-aligned, shorter values are zero-padded), or another Struct nested at a byte offset.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any, ClassVar, NamedTuple, Self, TypeAlias

Buffer: TypeAlias = bytes | bytearray | memoryview


class Field(NamedTuple):
    """One row of an IBA attribute table."""

    name: str
    #: bit offset from the most significant bit of byte 0, as the IBA numbers them
    offset: int
    #: width in bits
    width: int
    #: the SA component-mask bit that selects this field, None for none
    comp: int | None = None
    #: bytes, a Struct subclass, or None for an unsigned integer
    kind: Any = None
    #: for a value an SA query may compare with a selector: the selector field's name
    selector: str | None = None


class Struct:
    """Base of the attribute dataclasses: `SIZE` bytes laid out by `LAYOUT`."""

    LAYOUT: ClassVar[tuple[Field, ...]] = ()
    SIZE: ClassVar[int] = 0

    def pack(self) -> bytes:
        bits = self.SIZE * 8
        word = 0
        out = bytearray(self.SIZE)
        for f in self.LAYOUT:
            value = getattr(self, f.name)
            if f.kind is None:
                if not isinstance(value, int) or value < 0 or value >> f.width:
                    raise ValueError(
                        f"{type(self).__name__}.{f.name}: {value!r} does not fit {f.width} bits"
                    )
                word |= value << (bits - f.offset - f.width)
                continue
            start, length = f.offset // 8, f.width // 8
            raw = bytes(value) if f.kind is bytes else value.pack()
            if len(raw) > length:
                raise ValueError(
                    f"{type(self).__name__}.{f.name}: {len(raw)} bytes, the field has {length}"
                )
            out[start : start + len(raw)] = raw
        if word:
            merged = int.from_bytes(out, "big") | word
            return merged.to_bytes(self.SIZE, "big")
        return bytes(out)

    @classmethod
    def unpack(cls, data: Buffer) -> Self:
        """Reads the structure from the start of `data` (a short buffer is zero-extended,
        as a MAD's unused tail is zero)."""
        raw = bytes(data[: cls.SIZE]).ljust(cls.SIZE, b"\0")
        bits = cls.SIZE * 8
        word = int.from_bytes(raw, "big")
        values: dict[str, Any] = {}
        for f in cls.LAYOUT:
            if f.kind is None:
                values[f.name] = (word >> (bits - f.offset - f.width)) & ((1 << f.width) - 1)
            else:
                part = raw[f.offset // 8 : (f.offset + f.width) // 8]
                values[f.name] = part if f.kind is bytes else f.kind.unpack(part)
        return cls(**values)

    def replace(self, **changes: Any) -> Self:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


#: IBA 15.2.5.x selectors (enum ib_sa_selector): greater than, less than, exactly, best
SELECT_GT, SELECT_LT, SELECT_EQ, SELECT_BEST = 0, 1, 2, 3


def comp_fields(
    cls: type[Struct], prefix: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], Field]]:
    """Every field with a component-mask bit, nested ones included, with its path."""
    for f in cls.LAYOUT:
        if isinstance(f.kind, type) and issubclass(f.kind, Struct):
            yield from comp_fields(f.kind, (*prefix, f.name))
        elif f.comp is not None:
            yield (*prefix, f.name), f


def _get(obj: object, path: tuple[str, ...]) -> Any:
    for name in path:
        obj = getattr(obj, name)
    return obj


def selected(selector: int, have: int, want: int) -> bool:
    """Whether `have` satisfies `want` under an SA selector; BEST accepts any value (the
    answerer then keeps the best one)."""
    if selector == SELECT_GT:
        return have > want
    if selector == SELECT_LT:
        return have < want
    if selector == SELECT_EQ:
        return have == want
    return True


def comp_match(template: Struct, record: Struct, comp_mask: int) -> bool:
    """Whether `record` matches the query `template` on the fields `comp_mask` selects
    (IBA 15.4.1: an unselected field is a wildcard). A value with a selector (MTU, rate,
    packet lifetime) is compared through it when the selector's bit is set too; the
    selector fields themselves are never compared."""
    fields = dict(comp_fields(type(template)))
    selectors = {f.name for _, f in fields.items() if f.name.endswith("_selector")}
    for path, f in fields.items():
        if f.comp is None or not comp_mask >> f.comp & 1 or f.name in selectors:
            continue
        want, have = _get(template, path), _get(record, path)
        if f.selector is not None:
            sel_path = (*path[:-1], f.selector)
            sel_field = fields[sel_path]
            if sel_field.comp is not None and comp_mask >> sel_field.comp & 1:
                key = RATE_ORDER.get if f.name == "rate" else None
                if key is not None:
                    have, want = key(have, have), key(want, want)
                if not selected(_get(template, sel_path), have, want):
                    return False
                continue
        if want != have:
            return False
    return True


#: IB static rates (enum ib_rate in ib_verbs.h) are codes, not ordered values: their
#: order by Gb/s, for the GT/LT selectors
RATE_ORDER: dict[int, int] = {
    rate: rank
    for rank, rate in enumerate(
        # 2.5, 5, 10, 14, 20, 25, 28, 30, 40, 50, 56, 60, 80, 100, 112, 120, 168, 200, 300,
        # 400, 600, 800, 1600 Gb/s
        (2, 5, 3, 11, 6, 15, 19, 4, 7, 20, 12, 8, 9, 16, 13, 10, 14, 17, 18, 21, 22, 23, 25)
    )
}
