"""Go runtime metadata outside the pclntab: the build info blob and runtime.firstmoduledata.

moduledata is where the runtime itself gets `text` (the base of every function's
entry offset; Go 1.26 stopped filling pcHeader.textStart) and `gofunc` (the base of
every FUNCDATA offset, e.g. the inline trees). Its layout is a linker/runtime
contract that changes between versions, so fields are read by word index per version
(runtime/symtab.go of each release).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .elffile import ElfImage
from .errors import guarded
from .names import valid_name

BUILDINFO_MAGIC = b"\xff Go buildinf:"
MAX_VERSION_LEN = 256

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


def go_minor(version: str | None) -> int | None:
    """18 for "go1.18.3"; None for devel or unknown versions."""
    if not version:
        return None
    m = re.match(r"go1\.(\d+)", version)
    return int(m.group(1)) if m else None


def _uvarint(data: bytes, off: int) -> tuple[int, int]:
    v = shift = 0
    for i in range(off, min(off + 10, len(data))):
        b = data[i]
        v |= (b & 0x7F) << shift
        if not b & 0x80:
            return v, i + 1
        shift += 7
    return -1, off


@guarded
def go_version(img: ElfImage) -> str | None:
    """The Go version from the build info blob (.go.buildinfo, else found by its magic)."""
    return go_version_checked(img)[0]


@guarded
def go_version_checked(img: ElfImage) -> tuple[str | None, str | None]:
    """(version, what is wrong): the second is set when the binary has build info whose
    version cannot be read (damaged), None when it was read or there is none."""
    v, found = _go_version(img)
    return v, ("build info present but its Go version is unreadable"
               if found and v is None else None)


def _go_version(img: ElfImage) -> tuple[str | None, bool]:
    blob = b""
    s = img.section(".go.buildinfo")
    if s is not None:
        blob = img.read(s.offset, min(s.size, 1 << 16))
    if not blob.startswith(BUILDINFO_MAGIC):
        blob = b""
        # No section headers to go by: the linker puts it near the start of the data.
        for seg in img.segments:
            if not seg.writable:
                continue
            head = img.read(seg.offset, min(seg.filesz, 1 << 16))
            i = head.find(BUILDINFO_MAGIC)
            while i >= 0 and i % 16:
                i = head.find(BUILDINFO_MAGIC, i + 1)
            if i >= 0:
                blob = head[i:]
                break
    if len(blob) < 32:
        return None, bool(blob)
    ptr_size, flags = blob[14], blob[15]
    if flags & 2:  # Go 1.18+: the strings follow the header inline, varint-prefixed
        n, at = _uvarint(blob, 32)
        if n < 0 or n > MAX_VERSION_LEN or at + n > len(blob):
            return None, True
        raw = blob[at:at + n]
    else:  # before 1.18: pointers to string headers (little-endian 64-bit only)
        if ptr_size != 8 or flags & 1:
            return None, True
        hdr = img.word(int.from_bytes(blob[16:24], "little"))
        ptr = img.word(hdr) if hdr is not None else None
        ln = img.word(hdr + 8) if hdr is not None else None
        if ptr is None or ln is None or ln > MAX_VERSION_LEN:
            return None, True
        raw = img.read_vaddr(ptr, ln)
    # Damaged build info must not put garbage in labels and notes: a version is text.
    v = valid_name(raw)
    return (v if v is not None and v.startswith("go") and v.isprintable() else None), True


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
