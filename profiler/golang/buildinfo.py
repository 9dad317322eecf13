"""A Go binary's build info: the blob the linker writes (magic "\\xff Go buildinf:")
and the Go version it records, which picks the runtime's layouts when the binary has
no DWARF (goprof.golang.layouts) and where moduledata's fields are
(goprof.symbolizer.moduledata).

goprof.symbolizer imports this module, and this module imports goprof.symbolizer's ELF
reader: the symbolizer imports it as `from goprof.golang import buildinfo` (the module,
not its names) so that either package may be imported first.
"""

from __future__ import annotations

import re

from goprof.symbolizer.elffile import ElfImage
from goprof.symbolizer.errors import guarded
from goprof.symbolizer.names import valid_name

BUILDINFO_MAGIC = b"\xff Go buildinf:"
MAX_VERSION_LEN = 256


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
