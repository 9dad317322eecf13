"""The parts of an ELF file the symbolizer needs, read once and then closed.

pyelftools parses the ELF, program and section headers; everything bulky (tables,
symbol lists) is read as raw bytes with explicit bounds, so that a corrupt file
costs at most its own size in memory and fails with SymbolizerError. The file is
open only while a BinarySymbols loads: a profiled process may exit, and its
/proc/PID/map_files link with it, long before we name its addresses.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from elftools.elf.elffile import ELFFile

from .errors import SymbolizerError

PT_LOAD = 1
PF_X = 1
PF_W = 2
SHT_NOBITS = 8
SHT_RELA = 4
SHT_SYMTAB = 2
SHT_DYNSYM = 11
SHF_ALLOC = 2
SHF_EXECINSTR = 4
R_X86_64_RELATIVE = 8
R_AARCH64_RELATIVE = 1027
EM_X86_64 = 62
EM_AARCH64 = 183
# A sane upper bound on header counts: real files have a few dozen; a corrupt count
# must not make us iterate billions of entries.
MAX_HEADERS = 1 << 16


@dataclass(frozen=True)
class Segment:
    """A PT_LOAD program header."""

    vaddr: int
    memsz: int
    offset: int
    filesz: int
    flags: int

    @property
    def executable(self) -> bool:
        return bool(self.flags & PF_X)

    @property
    def writable(self) -> bool:
        return bool(self.flags & PF_W)


@dataclass(frozen=True)
class Section:
    name: str
    type: int
    flags: int
    addr: int
    offset: int
    size: int
    link: int
    entsize: int


class ElfImage:
    """An open ELF file: headers parsed, contents read on demand within bounds."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError as e:
            raise SymbolizerError(f"{path}: {e.strerror}") from e
        except OSError as e:
            raise SymbolizerError(f"{path}: cannot open: {e.strerror}") from e
        try:
            st = os.fstat(self._fd)
            self.size = st.st_size
            self.stat = st
            self._parse_headers()
        except SymbolizerError:
            self.close()
            raise
        except Exception as e:  # pyelftools raises many types on corrupt input
            self.close()
            raise SymbolizerError(f"{path}: not a readable ELF file: {e!r}") from e
        self._relative: dict[int, int] | None = None

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> ElfImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- headers ---------------------------------------------------------------------

    def _parse_headers(self) -> None:
        if self.size < 64 or self.read(0, 4) != b"\x7fELF":
            raise SymbolizerError(f"{self.path}: not an ELF file")
        with open(self._fd, "rb", closefd=False) as stream:
            elf = ELFFile(stream)
            hdr = elf.header
            self.elfclass = elf.elfclass
            self.little_endian = elf.little_endian
            self.machine = _machine_number(hdr["e_machine"])
            self.type = hdr["e_type"]
            self.entry = hdr["e_entry"]
            if self.elfclass != 64 or not self.little_endian:
                raise SymbolizerError(f"{self.path}: only 64-bit little-endian ELF is supported")
            # Bound the counts by the file size before pyelftools walks them.
            for num, ent, off in (("e_phnum", "e_phentsize", "e_phoff"),
                                  ("e_shnum", "e_shentsize", "e_shoff")):
                n = elf.num_segments() if num == "e_phnum" else elf.num_sections()
                if n > MAX_HEADERS or n * hdr[ent] > self.size or hdr[off] > self.size:
                    raise SymbolizerError(f"{self.path}: corrupt ELF header ({num}={n})")
            self.segments = [
                Segment(p["p_vaddr"], p["p_memsz"], p["p_offset"], p["p_filesz"], p["p_flags"])
                for p in (elf.get_segment(i).header for i in range(elf.num_segments()))
                if p["p_type"] == "PT_LOAD"
            ]
            self.sections = []
            for i in range(elf.num_sections()):
                s = elf.get_section(i)
                h = s.header
                self.sections.append(Section(
                    s.name, _section_type_number(h["sh_type"]), h["sh_flags"], h["sh_addr"],
                    h["sh_offset"], h["sh_size"], h["sh_link"], h["sh_entsize"]))
        self._by_name = {}
        for s in self.sections:
            self._by_name.setdefault(s.name, s)

    @property
    def is_pie(self) -> bool:
        return self.type == "ET_DYN"

    def section(self, name: str) -> Section | None:
        return self._by_name.get(name)

    # -- contents --------------------------------------------------------------------

    def read(self, offset: int, size: int) -> bytes:
        """Up to size bytes at a file offset: short at the end of the file, never beyond it."""
        if offset < 0 or size < 0 or offset >= self.size:
            return b""
        size = min(size, self.size - offset)
        try:
            return os.pread(self._fd, size, offset)
        except OSError as e:
            raise SymbolizerError(f"{self.path}: read failed: {e.strerror}") from e

    def section_data(self, s: Section) -> bytes:
        if s.type == SHT_NOBITS:
            return b""
        return self.read(s.offset, s.size)

    def segment_of(self, vaddr: int) -> Segment | None:
        """The PT_LOAD segment whose file-backed part holds vaddr."""
        for seg in self.segments:
            if seg.vaddr <= vaddr < seg.vaddr + seg.filesz:
                return seg
        return None

    def read_vaddr(self, vaddr: int, size: int) -> bytes:
        seg = self.segment_of(vaddr)
        if seg is None:
            return b""
        size = min(size, seg.vaddr + seg.filesz - vaddr)
        return self.read(vaddr - seg.vaddr + seg.offset, size)

    def tail_from(self, vaddr: int) -> bytes:
        """The file data from vaddr to the end of its section (else of its segment)."""
        for s in self.sections:
            if s.type != SHT_NOBITS and s.addr and s.addr <= vaddr < s.addr + s.size:
                return self.read(s.offset + vaddr - s.addr, s.addr + s.size - vaddr)
        seg = self.segment_of(vaddr)
        if seg is None:
            return b""
        return self.read_vaddr(vaddr, seg.vaddr + seg.filesz - vaddr)

    def in_exec(self, vaddr: int) -> bool:
        return any(s.executable and s.vaddr <= vaddr < s.vaddr + s.memsz for s in self.segments)

    # -- pointers in PIE files ------------------------------------------------------------

    def relative_relocations(self) -> dict[int, int]:
        """RELATIVE dynamic relocations, target -> addend. PIE files keep zeros in the file
        where a pointer lives and let the loader write base + addend there."""
        if self._relative is not None:
            return self._relative
        rel: dict[int, int] = {}
        kind = {EM_X86_64: R_X86_64_RELATIVE, EM_AARCH64: R_AARCH64_RELATIVE}.get(self.machine)
        if self.is_pie and kind is not None:
            for s in self.sections:
                if s.type != SHT_RELA:
                    continue
                data = self.section_data(s)
                data = data[: len(data) - len(data) % 24]
                for off, info, addend in struct.iter_unpack("<QQq", data):
                    if info & 0xFFFFFFFF == kind:
                        rel[off] = addend & 0xFFFFFFFFFFFFFFFF
        self._relative = rel
        return rel

    def word(self, vaddr: int) -> int | None:
        """The 64-bit word at vaddr as the dynamic loader leaves it (for load base 0)."""
        rel = self.relative_relocations()
        if vaddr in rel:
            return rel[vaddr]
        b = self.read_vaddr(vaddr, 8)
        if len(b) != 8:
            return None
        return int.from_bytes(b, "little")


def _machine_number(m: object) -> int:
    return {"EM_X86_64": EM_X86_64, "EM_AARCH64": EM_AARCH64}.get(str(m), -1)


_SECTION_TYPES = {"SHT_NOBITS": SHT_NOBITS, "SHT_RELA": SHT_RELA, "SHT_SYMTAB": SHT_SYMTAB,
                  "SHT_DYNSYM": SHT_DYNSYM, "SHT_PROGBITS": 1, "SHT_NOTE": 7, "SHT_STRTAB": 3}


def _section_type_number(t: object) -> int:
    if isinstance(t, int):
        return t
    return _SECTION_TYPES.get(str(t), -1)
