"""Go's pclntab: function table, pc-value tables and inline trees (Go 1.18+).

Everything is parsed lazily: load reads the header and copies the function table
into an array (bisect finds the function of a pc); a function's record, name and
pc-value tables are decoded the first time one of its pcs is asked for, and cached.
Layout follows src/runtime/symtab.go, symtabinl.go and src/internal/abi/symtab.go.
Every offset read from the data is checked against the data's length: a corrupt
table raises SymbolizerError, never IndexError, and never allocates more than the
data it came from. Past the header, damage is confined to the function it is in:
that function (or its inlined frames, or its file:line) goes unnamed and is recorded
in `damaged`, and every other function keeps its names.
"""

from __future__ import annotations

import struct
import sys
from array import array
from bisect import bisect_right
from dataclasses import dataclass

from goprof.model import Frame

from .errors import DATA_ERRORS, SymbolizerError
from .names import valid_name
from .pcvalue import PcValueTable, advance

MAGIC_GO118 = 0xFFFFFFF0
MAGIC_GO120 = 0xFFFFFFF1
HEADER = struct.Struct("<IBBBBQQQQQQQQ")  # pcHeader, 72 bytes on 64-bit
# _func: 1.20+ has startLine after cuOffset (44 bytes); 1.18/1.19 do not (40 bytes).
FUNC_120 = struct.Struct("<IiiIIIIIIiBBBB")
FUNC_118 = struct.Struct("<IiiIIIIIIBBBB")
# inlinedCall: 1.20+ {funcID u8, _ [3]byte, nameOff, parentPc, startLine int32};
# 1.18/1.19 {parent int16, funcID u8, _ u8, file, line, nameOff, parentPc int32}.
INL_120 = struct.Struct("<B3xiii")
INL_118 = struct.Struct("<hBxiiii")
PCDATA_INL_TREE_INDEX = 2
FUNCDATA_INL_TREE = 3
NO_FUNCDATA = 0xFFFFFFFF
MAX_INLINE_DEPTH = 256  # a parentPc cycle in corrupt data must not loop forever
MAX_NAME = 1 << 16
MAX_LINE = (1 << 31) - 1  # lines are int32 in the runtime
CACHE_LIMIT = 1 << 16
# Tables shorter than this (bytes) are decoded faster by the Python loop, partially,
# than by the C decoder with its fixed cost (measured: about 7 us a call).
FAST_DECODE_MIN = 48  # decoded tables / functions kept before the caches are dropped

if sys.byteorder != "little":  # array('I') reads the table in host order
    raise ImportError("goprof.symbolizer needs a little-endian host")


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ is several times slower
class FuncInfo:
    """One _func record, with the positions of its pcdata/funcdata arrays in the data."""

    index: int
    entry: int  # offset from text
    end: int  # offset from text (the next function's entry)
    name_off: int
    pcsp: int
    pcfile: int
    pcln: int
    npcdata: int
    cu_offset: int
    start_line: int
    pcdata_at: int
    nfuncdata: int
    funcdata_at: int
    # Read once with the record: the inline tree's position in godata (-1: none) and
    # the PCDATA_InlTreeIndex table's offset in pctab (0: none).
    inl_tree: int = -1
    inl_table: int = 0


def print_name(name: str) -> str:
    """The name as the runtime prints it (funcNameForPrint): a generic function's shape
    arguments become "[...]"."""
    i = name.find("[")
    if i < 0:
        return name
    j = name.rfind("]")
    if j <= i:
        return name
    return name[:i] + "[...]" + name[j + 1:]


class Pclntab:
    def __init__(self, data: bytes, text: int, godata: bytes = b"", godata_off: int | None = None):
        """data: the pclntab from its header to (at least) its end. text: moduledata.text.
        godata/godata_off: a buffer holding go:func.* and gofunc's position in it (None when
        gofunc is unknown: then no inline frames)."""
        self.data = data
        self.text = text
        self.godata = godata
        self.godata_off = godata_off
        if len(data) < HEADER.size:
            raise SymbolizerError("pclntab: truncated header")
        (magic, pad1, pad2, quantum, ptrsize, nfunc, _nfiles, self.header_text,
         self.funcname_off, self.cu_off, self.filetab_off, self.pctab_off,
         self.pcln_off) = HEADER.unpack_from(data, 0)
        if magic == MAGIC_GO120:
            self.func_struct, self.inl_struct, self.version = FUNC_120, INL_120, 120
        elif magic == MAGIC_GO118:
            self.func_struct, self.inl_struct, self.version = FUNC_118, INL_118, 118
        else:
            raise SymbolizerError(f"pclntab: unsupported magic {magic:#x} (Go 1.18+ only)")
        if pad1 or pad2 or quantum not in (1, 2, 4) or ptrsize != 8:
            raise SymbolizerError("pclntab: bad header")
        self.quantum = quantum
        n = len(data)
        for off in (self.funcname_off, self.cu_off, self.filetab_off, self.pctab_off,
                    self.pcln_off):
            if off >= n:
                raise SymbolizerError("pclntab: table offset beyond the data")
        if nfunc <= 0 or self.pcln_off + (nfunc + 1) * 8 > n:
            raise SymbolizerError(f"pclntab: function count {nfunc} does not fit the data")
        self.nfunc = nfunc
        self._table_starts = (self.funcname_off, self.cu_off, self.filetab_off, self.pctab_off,
                              self.pcln_off)
        ftab = array("I")
        ftab.frombytes(data[self.pcln_off:self.pcln_off + (nfunc + 1) * 8])
        self.entries = ftab[0::2]  # entry offsets from text; the last one is the end
        self.funcoffs = ftab[1::2]
        self._funcs: dict[int, FuncInfo] = {}
        self._frame_cache: dict[tuple[str, str, int, int, bool], Frame] = {}
        self._names: dict[int, str] = {}
        self._files: dict[tuple[int, int], str] = {}
        # By offset in pctab (the linker shares one table between functions that have
        # the same one).
        self._tables: dict[int, PcValueTable] = {}
        self._by_name: dict[str, int] | None = None
        # Function index -> what was wrong with it (the first thing found): a damaged
        # function is unnamed, or named without its inlined frames or file:line.
        self.damaged: dict[int, str] = {}

    def _damage(self, i: int, why: object) -> None:
        if len(self.damaged) < CACHE_LIMIT:
            self.damaged.setdefault(i, str(why))

    # -- functions ---------------------------------------------------------------------

    def entries_by_name(self) -> dict[str, int]:
        """Function name (as the linker wrote it, generic shapes included) -> entry vaddr.

        Built on first use: most users only name pcs and never need it. Only the nameOff
        field of each record is read, not the whole _func. Where two records carry the
        same name the first (lowest address) wins. A record or name that cannot be read
        is left out (and recorded in `damaged`): one bad name must not hide the others."""
        if self._by_name is None:
            by_name: dict[str, int] = {}
            names: dict[int, str | None] = {}  # nameOff -> name: the linker shares names
            for i in range(self.nfunc):
                try:
                    # _func.nameOff follows entryOff.
                    name_off = self._u32(self.pcln_off + self.funcoffs[i] + 4)
                    if name_off in names:
                        name = names[name_off]
                    else:
                        name = names[name_off] = self._name_or_none(name_off)
                except SymbolizerError as e:
                    self._damage(i, e)
                    continue
                if name is None:
                    self._damage(i, "pclntab: invalid function name")
                    continue
                by_name.setdefault(name, self.text + self.entries[i])
            self._by_name = by_name
        return self._by_name

    def func_bounds(self, vaddr: int) -> tuple[int, int] | None:
        """[entry, end) in vaddrs of the function holding vaddr (end: the next entry)."""
        i = self.func_index(vaddr)
        if i is None:
            return None
        return self.text + self.entries[i], self.text + self.entries[i + 1]

    @property
    def text_range(self) -> tuple[int, int]:
        return self.text + self.entries[0], self.text + self.entries[self.nfunc]

    def func_index(self, vaddr: int) -> int | None:
        off = vaddr - self.text
        entries = self.entries
        if off < 0 or off >= entries[self.nfunc]:
            return None
        i = bisect_right(entries, off, 0, self.nfunc) - 1
        # Out of order entries (a damaged table) make bisect land anywhere: only a
        # function that really holds the pc is one.
        if i < 0 or not entries[i] <= off < entries[i + 1]:
            return None
        return i

    def func(self, i: int) -> FuncInfo:
        f = self._funcs.get(i)
        if f is not None:
            return f
        st = self.func_struct
        at = self.pcln_off + self.funcoffs[i]
        if at + st.size > len(self.data):
            raise SymbolizerError(f"pclntab: function record {i} beyond the data")
        v = st.unpack_from(self.data, at)
        if self.version == 120:
            (_entry, name_off, _args, _defer, pcsp, pcfile, pcln, npcdata, cu_offset,
             start_line, _fid, _flag, _pad, nfuncdata) = v
        else:
            (_entry, name_off, _args, _defer, pcsp, pcfile, pcln, npcdata, cu_offset,
             _fid, _flag, _pad, nfuncdata) = v
            start_line = 0
        pcdata_at = at + st.size
        funcdata_at = pcdata_at + 4 * npcdata
        if funcdata_at + 4 * nfuncdata > len(self.data):
            raise SymbolizerError(f"pclntab: function record {i} beyond the data")
        f = FuncInfo(i, self.entries[i], self.entries[i + 1], name_off, pcsp, pcfile, pcln,
                     npcdata, cu_offset, start_line, pcdata_at, nfuncdata, funcdata_at)
        if self.godata_off is not None and nfuncdata > FUNCDATA_INL_TREE:
            off = self._u32(funcdata_at + 4 * FUNCDATA_INL_TREE)
            if off != NO_FUNCDATA and npcdata > PCDATA_INL_TREE_INDEX:
                f.inl_tree = self.godata_off + off
                f.inl_table = self._u32(pcdata_at + 4 * PCDATA_INL_TREE_INDEX)
        if len(self._funcs) >= CACHE_LIMIT:
            self._funcs.clear()
        self._funcs[i] = f
        return f

    def name(self, name_off: int) -> str:
        s = self._names.get(name_off)
        if s is None:
            s = print_name(self._cstring(self.funcname_off + name_off, "function name"))
            if len(self._names) >= CACHE_LIMIT:
                self._names.clear()
            self._names[name_off] = s
        return s

    def _name_or_none(self, name_off: int) -> str | None:
        """The raw (linker's) name at nameOff; None when it is not text a name can be."""
        return valid_name(self._raw_cstring(self.funcname_off + name_off, "function name"))

    def _raw_cstring(self, at: int, what: str) -> bytes:
        """The bytes at `at` up to a NUL, which must come before the end of the table
        holding them: a name that runs into the next table is not one."""
        limit = self._table_end(at)
        if at < 0 or at >= limit:
            raise SymbolizerError(f"pclntab: {what} offset beyond its table")
        end = self.data.find(b"\0", at, min(at + MAX_NAME, limit))
        if end < 0:
            raise SymbolizerError(f"pclntab: unterminated {what}")
        return self.data[at:end]

    def _table_end(self, at: int) -> int:
        """Where the table holding `at` ends: the start of the next one in the data."""
        nexts = [off for off in self._table_starts if off > at]
        return min(nexts) if nexts else len(self.data)

    def _cstring(self, at: int, what: str) -> str:
        s = valid_name(self._raw_cstring(at, what))
        if s is None:
            raise SymbolizerError(f"pclntab: invalid {what} (not UTF-8, or control characters)")
        return s

    def _u32(self, at: int) -> int:
        if at < 0 or at + 4 > len(self.data):
            raise SymbolizerError("pclntab: offset beyond the data")
        return int.from_bytes(self.data[at:at + 4], "little")

    def file(self, f: FuncInfo, fileno: int) -> str:
        key = (f.cu_offset, fileno)
        s = self._files.get(key)
        if s is None:
            if fileno < 0:
                return "?"
            off = self._u32(self.cu_off + 4 * (f.cu_offset + fileno))
            s = "?" if off == 0xFFFFFFFF else self._cstring(self.filetab_off + off, "file name")
            if len(self._files) >= CACHE_LIMIT:
                self._files.clear()
            self._files[key] = s
        return s

    # -- pc-value tables ---------------------------------------------------------------

    def pcvalue(self, f: FuncInfo, table: int, pc: int) -> int:
        """The value of a pc-value table at pc (an offset from the function's entry);
        -1 where the table has none, as in the runtime."""
        if table == 0:
            return -1
        t = self._tables.get(table)
        if t is None:
            at = self.pctab_off + table
            if at >= len(self.data):
                raise SymbolizerError("pclntab: pc-value table beyond the data")
            t = PcValueTable(at, (f.end - f.entry) // self.quantum + 2)
            if len(self._tables) >= CACHE_LIMIT:
                self._tables.clear()
            self._tables[table] = t
        ends = t.ends
        if not t.done and not (ends and ends[-1] > pc):
            advance(t, self.data, self.quantum, pc)
        i = bisect_right(ends, pc)
        return t.vals[i] if i < len(ends) else -1

    def pcdata(self, f: FuncInfo, index: int, pc: int) -> int:
        if index >= f.npcdata:
            return -1
        return self.pcvalue(f, self._u32(f.pcdata_at + 4 * index), pc)

    def spdelta(self, vaddr: int) -> int | None:
        """The SP delta at vaddr; None where unknown (no function, or a damaged one)."""
        i = self.func_index(vaddr)
        if i is None:
            return None
        try:
            f = self.func(i)
            return self.pcvalue(f, f.pcsp, vaddr - self.text - f.entry)
        except (SymbolizerError, *DATA_ERRORS) as e:
            self._damage(i, e)
            return None

    # -- frames ------------------------------------------------------------------------

    def _inline_call(self, f: FuncInfo, ix: int) -> tuple[int, int, int]:
        """(nameOff, parentPc, startLine) of entry ix of f's inline tree."""
        st = self.inl_struct
        at = f.inl_tree + ix * st.size
        if at + st.size > len(self.godata):
            raise SymbolizerError("pclntab: inline tree entry beyond the data")
        v = st.unpack_from(self.godata, at)
        if self.version == 120:
            _fid, name_off, parent_pc, start_line = v
        else:
            _parent, _fid, _file, _line, name_off, parent_pc = v
            start_line = 0
        return name_off, parent_pc, start_line

    def frames(self, vaddr: int) -> tuple[Frame, ...]:
        """Frames at vaddr, innermost first. A function whose record or name is damaged
        gives () (unnamed); a damaged inline tree drops the inlined frames; a damaged
        file or line table leaves the frame without file:line. Each is recorded in
        `damaged`; nothing is raised for what is inside one function."""
        i = self.func_index(vaddr)
        if i is None:
            return ()
        try:
            f = self.func(i)
            name = self.name(f.name_off)
        except (SymbolizerError, *DATA_ERRORS) as e:
            self._damage(i, e)
            return ()
        pc0 = vaddr - self.text - f.entry
        try:
            out, pc = self._inlined(f, i, pc0)
        except (SymbolizerError, *DATA_ERRORS) as e:
            self._damage(i, e)
            out, pc = [], pc0
        file, line = self._fileline(f, i, pc)
        out.append(self._frame(name, file, line, f.start_line, False))
        return tuple(out)

    def _inlined(self, f: FuncInfo, i: int, pc: int) -> tuple[list[Frame], int]:
        """The inlined frames at pc (innermost first) and the pc in f's own body."""
        out: list[Frame] = []
        # Functions without an inline tree (most) need not decode the index table.
        ix = self.pcvalue(f, f.inl_table, pc) if f.inl_tree >= 0 else -1
        while ix >= 0:
            if len(out) >= MAX_INLINE_DEPTH:
                raise SymbolizerError("pclntab: inline tree deeper than "
                                      f"{MAX_INLINE_DEPTH} (a parentPc cycle)")
            name_off, parent_pc, start_line = self._inline_call(f, ix)
            file, line = self._fileline(f, i, pc)
            out.append(self._frame(self.name(name_off), file, line, start_line, True))
            pc = parent_pc
            ix = self.pcvalue(f, f.inl_table, pc)
        return out, pc

    def _frame(self, name: str, file: str, line: int, start_line: int, inlined: bool) -> Frame:
        """Frames are shared: a line's pcs all give the same one (and building a frozen
        dataclass costs more than the lookup)."""
        key = (name, file, line, start_line, inlined)
        fr = self._frame_cache.get(key)
        if fr is None:
            fr = Frame(name, file, line, start_line, inlined)
            if len(self._frame_cache) >= CACHE_LIMIT:
                self._frame_cache.clear()
            self._frame_cache[key] = fr
        return fr

    def _fileline(self, f: FuncInfo, i: int, pc: int) -> tuple[str, int]:
        """("?", 0) where unknown, also for a damaged file or line table (recorded)."""
        try:
            fileno = self.pcvalue(f, f.pcfile, pc)
            line = self.pcvalue(f, f.pcln, pc)
            if fileno == -1 or line == -1:
                return "?", 0
            if not 0 <= line <= MAX_LINE:
                raise SymbolizerError(f"pclntab: line {line} out of range")
            return self.file(f, fileno), line
        except (SymbolizerError, *DATA_ERRORS) as e:
            self._damage(i, e)
            return "?", 0
