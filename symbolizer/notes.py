"""Build ids from ELF notes: the GNU one (what pprof records) and Go's own."""

from __future__ import annotations

from .elffile import ElfImage
from .errors import guarded

SHT_NOTE = 7
NT_GNU_BUILD_ID = 3
NT_GO_BUILDID = 4
MAX_NOTE_SECTION = 1 << 20  # build-id notes are tiny; never read a huge "note"


def _notes(data: bytes):
    off = 0
    while off + 12 <= len(data):
        namesz = int.from_bytes(data[off:off + 4], "little")
        descsz = int.from_bytes(data[off + 4:off + 8], "little")
        ntype = int.from_bytes(data[off + 8:off + 12], "little")
        name_at = off + 12
        desc_at = name_at + ((namesz + 3) & ~3)
        end = desc_at + ((descsz + 3) & ~3)
        if desc_at + descsz > len(data):
            return
        yield data[name_at:name_at + namesz].rstrip(b"\0"), ntype, data[desc_at:desc_at + descsz]
        off = end


@guarded
def build_ids(img: ElfImage) -> tuple[str, str]:
    """(GNU build id as hex, Go build id string); "" for what is absent."""
    gnu = go = ""
    for s in img.sections:
        if s.type != SHT_NOTE or s.size > MAX_NOTE_SECTION:
            continue
        for name, ntype, desc in _notes(img.section_data(s)):
            if name == b"GNU" and ntype == NT_GNU_BUILD_ID and not gnu:
                gnu = desc.hex()
            elif name == b"Go" and ntype == NT_GO_BUILDID and not go:
                go = desc.decode("utf-8", "replace")
    return gnu, go
