"""Where each table the symbolizer parses lies in a real Go binary (file offsets), and
damaged copies of such binaries, for the fuzz tests and the hostile-binary tests.

Tables are located from the ELF section headers and the pclntab header as Go's linker
writes them (src/cmd/link/internal/ld/pcln.go: header, funcnametab, cutab, filetab,
pctab, then the function table and _func records); per-function pieces (a function's
name, its pc-value tables, its inline tree) through goprof's own reader of the
healthy file, then the bytes are changed in a copy.
"""

from __future__ import annotations

import functools
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from elftools.elf.elffile import ELFFile
from goprof.symbolizer import load_binary
from goprof.symbolizer.gopclntab import HEADER

Range = tuple[int, int]  # [lo, hi) file offsets


@dataclass(frozen=True)
class FunctionTables:
    name: Range
    pcsp: int  # file offset of the table's first byte
    pcfile: int
    pcln: int
    inline_tree: list[int]  # file offsets of the inline tree's entries (may be empty)
    inline_entry_size: int


@functools.cache
def tables(path: Path) -> dict[str, Range]:
    """Every table's file range: the pclntab's parts, ELF headers and section table,
    moduledata, build info, Go build id note, DWARF sections (when present)."""
    with open(path, "rb") as f:
        elf = ELFFile(f)
        out = {"elf header": (0, 64),
               "program headers": (elf["e_phoff"],
                                   elf["e_phoff"] + elf.num_segments() * elf["e_phentsize"]),
               "section headers": (elf["e_shoff"],
                                   elf["e_shoff"] + elf.num_sections() * elf["e_shentsize"])}
        for s in elf.iter_sections():
            if s.name in (".gopclntab", ".data.rel.ro.gopclntab", ".go.module",
                          ".go.buildinfo", ".note.go.buildid", ".debug_info", ".debug_abbrev",
                          ".zdebug_info", ".zdebug_abbrev", ".symtab", ".strtab"):
                out[s.name.replace(".data.rel.ro", "")] = (s["sh_offset"],
                                                           s["sh_offset"] + s["sh_size"])
    pcln_lo, pcln_hi = out[".gopclntab"]
    data = path.read_bytes()
    hdr = HEADER.unpack_from(data, pcln_lo)
    funcname, cu, filetab, pctab, pcln = hdr[8:13]
    out.update({
        "pclntab header": (pcln_lo, pcln_lo + HEADER.size),
        "funcnametab": (pcln_lo + funcname, pcln_lo + cu),
        "cutab": (pcln_lo + cu, pcln_lo + filetab),
        "filetab": (pcln_lo + filetab, pcln_lo + pctab),
        "pctab": (pcln_lo + pctab, pcln_lo + pcln),
        "functab": (pcln_lo + pcln, pcln_lo + pcln + (hdr[5] + 1) * 8),
        "func records": (pcln_lo + pcln + (hdr[5] + 1) * 8, pcln_hi),
    })
    return out


def function_tables(path: Path, function: str) -> FunctionTables:
    """Where one function's name, pc-value tables and inline tree lie in the file."""
    b = load_binary(str(path))
    p = b.pclntab
    assert p is not None and b.pclntab_addr is not None
    pcln_lo = tables(path)[".gopclntab"][0]
    f = p.func(p.func_index(p.entries_by_name()[function]))
    name_at = pcln_lo + p.funcname_off + f.name_off
    name_end = path.read_bytes().index(b"\0", name_at)
    inline: list[int] = []
    size = p.inl_struct.size
    if f.inl_tree >= 0 and b.gofunc is not None and p.godata_off is not None:
        tree_at = _file_offset(b, b.gofunc) + f.inl_tree - p.godata_off
        # The tree's length is not recorded: its entries are those the index table
        # names; walk a function's pcs and collect them.
        seen = {p.pcvalue(f, f.inl_table, pc) for pc in range(0, f.end - f.entry)}
        inline = [tree_at + ix * size for ix in sorted(seen) if ix >= 0]
    at = pcln_lo + p.pctab_off
    return FunctionTables((name_at, name_end), at + f.pcsp, at + f.pcfile, at + f.pcln,
                          inline, size)


def _file_offset(b, vaddr: int) -> int:
    for seg in b.segments:
        if seg.vaddr <= vaddr < seg.vaddr + seg.filesz:
            return vaddr - seg.vaddr + seg.offset
    raise AssertionError(f"{vaddr:#x} is in no segment")


def write_copy(src: Path, dst: Path, edits: list[tuple[int, bytes]]) -> Path:
    """src with each (offset, bytes) written over it, as an executable at dst."""
    buf = bytearray(src.read_bytes())
    for at, raw in edits:
        buf[at:at + len(raw)] = raw
    dst.write_bytes(bytes(buf))
    os.chmod(dst, 0o755)
    return dst


# -- the damages the end-to-end tests give running programs --------------------------------
# Each leaves the program runnable: the Go runtime reads none of these bytes to run (names,
# file and line tables and inline trees only serve tracebacks and runtime.Callers; the
# pcHeader's counts and offsets are not read, moduledata's slices are; build info serves
# runtime/debug.ReadBuildInfo only).

def unterminated_names(path: Path) -> list[tuple[int, bytes]]:
    """The tester's binary: every NUL of the function-name table made 'A', so no name ends
    inside its table."""
    lo, hi = tables(path)["funcnametab"]
    raw = path.read_bytes()[lo:hi]
    return [(lo, raw.replace(b"\0", b"A"))]


def garbage_names(path: Path, functions: list[str]) -> list[tuple[int, bytes]]:
    """The functions' names overwritten with bytes that are not UTF-8 (NULs kept)."""
    edits = []
    for fn in functions:
        lo, hi = function_tables(path, fn).name
        edits.append((lo, b"\xff\x01" * ((hi - lo) // 2) + b"\xfe" * ((hi - lo) % 2)))
    return edits


def bad_line_tables(path: Path, functions: list[str]) -> list[tuple[int, bytes]]:
    """The functions' pcfile and pcln tables start with a varint longer than Go writes."""
    edits = []
    for fn in functions:
        t = function_tables(path, fn)
        edits += [(t.pcfile, b"\xff" * 6), (t.pcln, b"\xff" * 6)]
    return edits


def bad_inline_tree(path: Path, function: str, garbled: str) -> list[tuple[int, bytes]]:
    """Every entry of the function's inline tree names `garbled`, whose name is made
    garbage (not UTF-8). An offset beyond the name table would do too for goprof, but
    the runtime reads these names when it preempts (isAsyncSafePoint) and would crash;
    it only compares their prefix. nameOff is the int32 at byte 4 of Go 1.20+'s
    inlinedCall."""
    t = function_tables(path, function)
    assert t.inline_tree, f"{function} has no inline tree"
    name_at = function_tables(path, garbled).name[0]
    name_off = name_at - tables(path)["funcnametab"][0]
    return garbage_names(path, [garbled]) + [(at + 4, struct.pack("<i", name_off))
                                             for at in t.inline_tree]


def bad_pclntab_header(path: Path) -> list[tuple[int, bytes]]:
    """pcHeader.nfunc (not read by the runtime) made far larger than the table."""
    lo, _ = tables(path)["pclntab header"]
    return [(lo + 8, struct.pack("<q", 1 << 40))]


def bad_build_info(path: Path) -> list[tuple[int, bytes]]:
    """The Go version string in the build info made control characters."""
    lo, hi = tables(path)[".go.buildinfo"]
    raw = path.read_bytes()[lo:hi]
    at = raw.index(b"go1.")
    return [(lo + at + 2, b"\x01\x02\x1b[31m")]
