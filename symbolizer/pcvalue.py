"""Go's pc-value tables (pclntab's pctab): runs of (value delta, pc delta) varint pairs,
the value zigzag-encoded, the pc delta in units of the instruction quantum; a zero value
delta after the first pair ends the table (src/runtime/symtab.go, pcvalue and step).
goprof.symbolizer.gopclntab keeps one PcValueTable per table and asks for pcs.
"""

from __future__ import annotations

from .errors import SymbolizerError

_ZIGZAG7 = tuple((u >> 1) ^ -(u & 1) for u in range(128))


class PcValueTable:
    """A pc-value table decoded as far as asked: run i has value vals[i] for pcs below
    ends[i]; p/pc/val are where decoding resumes."""

    __slots__ = ("ends", "vals", "p", "pc", "val", "done", "limit")

    def __init__(self, p: int, limit: int) -> None:
        self.ends: list[int] = []
        self.vals: list[int] = []
        self.p = p
        self.pc = 0
        self.val = -1
        self.done = False
        self.limit = limit


def advance(t: PcValueTable, data: bytes, q: int, target: int) -> None:
    """Decodes t (in data, pcs in units of the quantum q) until its last run ends after
    target, or to its terminator.

    Tables are decoded lazily and only as far as asked (most functions are asked
    about one pc), and the state is kept to resume later: decoding is the bulk of
    the cost of naming a pc. Entries are capped by the function's size (each one
    advances the pc), so corrupt data cannot grow the lists without bound."""
    ends, vals = t.ends, t.vals
    p, pc, val = t.p, t.pc, t.val
    # Each kept run advances the pc: stopping past the function's end bounds them.
    target = min(target, t.limit * q)
    zigzag = _ZIGZAG7
    append_end, append_val = ends.append, vals.append
    try:
        while pc <= target:
            uv = data[p]
            d = data[p + 1]
            if (uv | d) < 0x80:  # the common case: two one-byte varints
                if uv == 0 and pc != 0:  # the terminator (a zero delta is only first)
                    t.done = True
                    break
                p += 2
                val += zigzag[uv]
            else:
                if uv & 0x80:
                    uv, p = _varint_rest(data, p + 1, uv)
                elif uv == 0 and pc != 0:
                    t.done = True
                    break
                else:
                    p += 1
                val += (uv >> 1) ^ -(uv & 1)
                d = data[p]
                if d & 0x80:
                    d, p = _varint_rest(data, p + 1, d)
                else:
                    p += 1
            if d:  # an empty run names no pc: nothing to keep
                pc += d * q
                append_end(pc)
                append_val(val)
    except IndexError:
        t.done = True  # ran off the data: keep what decoded
    except SymbolizerError:
        # A bad varint: what decoded before it stays, and decoding does not resume
        # (it would append the same runs again).
        t.done = True
        t.p, t.pc, t.val = p, pc, val
        raise
    t.p, t.pc, t.val = p, pc, val


def _varint_rest(data: bytes, p: int, first: int) -> tuple[int, int]:
    """Finishes a varint whose first byte (continuation bit set) is before p."""
    v = first & 0x7F
    shift = 7
    while True:
        b = data[p]  # IndexError past the data: the caller's to handle
        p += 1
        v |= (b & 0x7F) << shift
        if not b & 0x80:
            return v & 0xFFFFFFFF, p
        shift += 7
        if shift > 28:
            raise SymbolizerError("pclntab: varint longer than 5 bytes")
