"""runtime.firstmoduledata, which the pclntab's offsets are relative to.

moduledata is where the runtime itself gets `text` (the base of every function's
entry offset; Go 1.26 stopped filling pcHeader.textStart) and `gofunc` (the base of
every FUNCDATA offset, e.g. the inline trees). Its layout is a linker/runtime
contract that changes between versions, so fields are read by word index per version
(runtime/symtab.go of each release).
"""

from __future__ import annotations

from dataclasses import dataclass

from .elffile import ElfImage
from .errors import guarded

# Word indexes in moduledata. Up to etext the layout is the same from Go 1.16 to 1.27:
# pcHeader, six slices (3 words each), findfunctab, minpc, maxpc, text, etext.
MD_PCHEADER, MD_MINPC, MD_MAXPC, MD_TEXT, MD_ETEXT = 0, 20, 21, 22, 23


@dataclass(frozen=True)
class GofuncLayout:
    """Where `gofunc` sits, for a range of Go minor versions (inclusive)."""

    first_minor: int
    last_minor: int
    word: int


# 1.18-1.19: ...noptrbss/enoptrbss(30,31), end, gcdata, gcbss, types, etypes, rodata, gofunc.
# 1.20 added covctrs/ecovctrs before `end`; 1.27 added typedesclen after types and
# itaboffset/itabsize after etypes.
GOFUNC_LAYOUTS = (
    GofuncLayout(18, 19, 38),
    GofuncLayout(20, 26, 40),
    GofuncLayout(27, 10_000, 43),
)


@dataclass(frozen=True)
class ModuleData:
    addr: int
    text: int
    etext: int
    minpc: int
    maxpc: int
    gofunc: int | None


@guarded
def find_moduledata(img: ElfImage, pcln_addr: int, minor: int | None,
                    md_symbol: int | None = None) -> ModuleData | None:
    """runtime.firstmoduledata: the one whose pcHeader is pcln_addr and whose text range is
    plausible. Go 1.26+ gives it its own section; older Go has it in .noptrdata/.data,
    found as a word pointing at the pclntab (in PIE files, a RELATIVE relocation's addend)."""
    seen: set[int] = set()
    for md in _candidates(img, pcln_addr, md_symbol):
        if md in seen:
            continue
        seen.add(md)
        got = _validate(img, md, pcln_addr, minor)
        if got is not None:
            return got
    return None


def _candidates(img: ElfImage, pcln_addr: int, md_symbol: int | None):
    """Cheap guesses first; the scan of the data segments only when they all fail."""
    if md_symbol:
        yield md_symbol
    s = img.section(".go.module")
    if s is not None:
        yield s.addr
    for where, addend in img.relative_relocations().items():
        if addend == pcln_addr:
            yield where
    needle = pcln_addr.to_bytes(8, "little")
    for seg in img.segments:
        if not seg.writable or img.is_pie:
            continue
        data = img.read(seg.offset, seg.filesz)
        i = data.find(needle)
        while i >= 0:
            if i % 8 == 0:
                yield seg.vaddr + i
            i = data.find(needle, i + 1)


def _validate(img: ElfImage, md: int, pcln_addr: int, minor: int | None) -> ModuleData | None:
    w = {i: img.word(md + 8 * i) for i in (MD_PCHEADER, MD_MINPC, MD_MAXPC, MD_TEXT, MD_ETEXT)}
    if any(v is None for v in w.values()) or w[MD_PCHEADER] != pcln_addr:
        return None
    text, etext, minpc, maxpc = w[MD_TEXT], w[MD_ETEXT], w[MD_MINPC], w[MD_MAXPC]
    assert text is not None and etext is not None and minpc is not None and maxpc is not None
    if not (text <= minpc < maxpc <= etext) or not img.in_exec(text) or not img.in_exec(etext - 1):
        return None
    return ModuleData(md, text, etext, minpc, maxpc, _gofunc(img, md, minor))


def _gofunc(img: ElfImage, md: int, minor: int | None) -> int | None:
    """gofunc by the version's layout; for an unknown version the newest layout whose
    value is plausible (inside a read-only, non-executable, file-backed segment)."""
    layouts = [lay for lay in GOFUNC_LAYOUTS if minor is not None
               and lay.first_minor <= minor <= lay.last_minor]
    if not layouts:
        layouts = list(reversed(GOFUNC_LAYOUTS))
    for lay in layouts:
        v = img.word(md + 8 * lay.word)
        seg = img.segment_of(v) if v else None
        if seg is not None and not seg.executable:
            return v
    return None
