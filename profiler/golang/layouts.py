"""Where the runtime keeps the fields goprof reads: struct offsets from the binary's
DWARF, else from a table per Go minor version (binaries built with -ldflags=-w).

The table is data: one row per (struct, field), giving its Slot(offset, size) from the Go
minor version where it takes effect. Reading one more runtime field means one more row
(and a property of RuntimeLayout for the readers); tests/test_golang_layouts.py checks
every row against the DWARF of the toolchains the tests build.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

from goprof.golang.buildinfo import go_minor
from goprof.golang.dwarf import read_structs
from goprof.golang.functions import BinaryLike, as_binary
from goprof.symbolizer.errors import SymbolizerError, UnsupportedGo, guarded

Field = tuple[str, str]  # (struct type, member); member WHOLE: the struct itself


class Slot(NamedTuple):
    offset: int  # bytes from the start of the struct
    size: int | None  # bytes; None where goprof's readers assume no size


# The field of a row that is about the struct itself: Slot(0, the struct's size).
WHOLE = ""
MCACHE, MSPAN = "runtime.mcache", "runtime.mspan"
BUCKET, RECORD = "runtime.bucket", "runtime.memRecordCycle"
G, M = "runtime.g", "runtime.m"
GOBUF = "runtime.gobuf"

# From the DWARF of real builds (tests/test_golang_layouts.py checks the rows of the
# versions the tests build). A size given for a member is one goprof's readers assume:
# DWARF that says another is an error (never a silently wrong read), except for the
# memRecordCycle's members, which are read as a whole (all of them, whatever they are:
# Go 1.27 dropped the byte counters). Pointers are 8 bytes.
# mcache.alloc: [numSpanClasses]*mspan, indexed by spanClass. mspan.nelems: uintptr up to
# Go 1.21, uint16 from 1.22. bucket: the header (next, allnext, typ, hash, size, nstk);
# the stack (nstk words) and the memRecord follow it.
#
# One row per (struct, field): the Go minor version from which each slot holds (until the
# row's next entry; None: the field is gone from then on). A field read for a new feature
# is one more row.
FIRST_MINOR, LAST_MINOR = 19, 27
ROWS: dict[Field, dict[int, Slot | None]] = {
    (MCACHE, "alloc"): {19: Slot(40, None), 24: Slot(48, None)},
    (MSPAN, "nelems"): {19: Slot(56, 8), 22: Slot(50, 2)},
    (MSPAN, "allocCount"): {19: Slot(96, 2), 21: Slot(104, 2), 22: Slot(96, 2)},
    (MSPAN, "allocCountBeforeCache"): {19: Slot(102, 2), 21: Slot(110, 2), 22: Slot(102, 2)},
    (MSPAN, "elemsize"): {19: Slot(104, 8), 21: Slot(112, 8), 22: Slot(104, 8)},
    (BUCKET, WHOLE): {19: Slot(0, 48)},
    (RECORD, WHOLE): {19: Slot(0, 32), 27: Slot(0, 16)},
    (RECORD, "allocs"): {19: Slot(0, 8)},
    (RECORD, "frees"): {19: Slot(8, 8)},
    (RECORD, "alloc_bytes"): {19: Slot(16, 8), 27: None},
    (RECORD, "free_bytes"): {19: Slot(24, 8), 27: None},
    # What the BPF programs read to label a sample: the thread's g -> g.m -> m.curg (the
    # user goroutine) -> its goid and labels (a map[string]string up to Go 1.23, a
    # *labelMap, a sorted slice of key/value pairs, from 1.24). The older rows are
    # otel-ebpf-profiler's and the notes' (../shared/GO-PROFILING-NOTES.md).
    (G, "m"): {19: Slot(48, 8)},
    (G, "goid"): {19: Slot(152, 8), 23: Slot(160, 8), 25: Slot(152, 8)},
    (G, "labels"): {19: Slot(360, 8), 21: Slot(344, 8), 23: Slot(352, 8), 25: Slot(344, 8),
                    26: Slot(352, 8)},
    (M, "curg"): {19: Slot(192, 8), 25: Slot(184, 8)},
    # What `goprof goroutines` reads of every g (goroutines.py). Only the versions whose
    # DWARF was checked here (1.26.8, 1.27.3) have rows: a stripped binary of another
    # version is "unsupported" for goroutines (its DWARF, when it has some, still works),
    # never read with a guessed offset.
    (G, WHOLE): {26: Slot(0, 456)},
    (G, "stack"): {26: Slot(0, 16)},  # stack{lo, hi}
    # gobuf: the saved context of a g not running; its size is not assumed (Go 1.19-1.24
    # keep a ret field: 56 bytes), only the offsets of sp, pc and bp in it.
    (G, "sched"): {26: Slot(56, None)},
    (G, "syscallsp"): {26: Slot(104, 8)},
    (G, "syscallpc"): {26: Slot(112, 8)},
    (G, "syscallbp"): {26: Slot(120, 8)},
    (G, "atomicstatus"): {26: Slot(144, 4)},
    (G, "waitsince"): {26: Slot(168, 8)},
    (G, "waitreason"): {26: Slot(176, 1)},
    (G, "lockedm"): {26: Slot(208, 8)},
    (G, "parentGoid"): {26: Slot(280, 8)},
    (G, "gopc"): {26: Slot(288, 8)},
    (G, "startpc"): {26: Slot(304, 8)},
    (GOBUF, "sp"): {26: Slot(0, 8)},
    (GOBUF, "pc"): {26: Slot(8, 8)},
    (GOBUF, "bp"): {26: Slot(40, 8)},
}


def _rows_of(minor: int) -> dict[Field, Slot]:
    """The table's rows as they hold in Go 1.<minor>."""
    out = {}
    for key, since in ROWS.items():
        held = [slot for first, slot in sorted(since.items()) if first <= minor]
        if held and held[-1] is not None:
            out[key] = held[-1]
    return out


# The rows per Go minor version, as layouts and the DWARF check read them.
OFFSETS_BY_MINOR: dict[int, Mapping[Field, Slot]] = {
    minor: _rows_of(minor) for minor in range(FIRST_MINOR, LAST_MINOR + 1)}


@dataclass(frozen=True)
class RuntimeLayout:
    """Offsets (bytes) of the runtime fields goprof reads, for one binary."""

    go_version: str | None
    mcache_alloc: int  # [numSpanClasses]*mspan, indexed by spanClass
    mspan_nelems: int
    mspan_nelems_size: int  # 8 (uintptr) up to Go 1.21, 2 (uint16) from 1.22
    mspan_alloc_count: int  # uint16
    mspan_alloc_count_before_cache: int  # uint16
    mspan_elemsize: int  # uintptr
    bucket_size: int  # the bucket header; the stack (nstk words) and the record follow
    mem_record_cycle_size: int
    mem_record_cycle_fields: tuple[str, ...]  # uintptr fields, in order
    g_m: int  # *m: the thread running the goroutine
    g_goid: int
    g_labels: int  # unsafe.Pointer: map[string]string (<= 1.23) or *labelMap (1.24+)
    m_curg: int  # *g: the user goroutine the thread runs (0: none)
    source: str  # "dwarf" or "table"


@dataclass(frozen=True)
class GoroutineLayout:
    """Offsets (bytes) in runtime.g of what `goprof goroutines` reads."""

    g_size: int
    stack_lo: int  # g.stack.lo; hi follows it
    sched_sp: int  # g.sched.sp, .pc, .bp (g.sched + gobuf's own offsets)
    sched_pc: int
    sched_bp: int
    syscallsp: int
    syscallpc: int
    syscallbp: int | None  # absent before Go 1.23: only the frame-pointer fallback needs it
    atomicstatus: int  # uint32
    goid: int
    waitsince: int  # int64, nanotime()
    waitreason: int  # uint8
    lockedm: int
    parent_goid: int | None  # Go 1.21+ ("created by F in goroutine N")
    gopc: int
    startpc: int
    labels: int
    source: str


GOROUTINE_FIELDS = ("stack", "sched", "syscallsp", "syscallpc", "atomicstatus", "goid",
                    "waitsince", "waitreason", "lockedm", "gopc", "startpc", "labels")


@guarded
def goroutine_layout(binary: BinaryLike, *, path: str | None = None) -> GoroutineLayout:
    """runtime.g's fields for `goprof goroutines`: from DWARF when the binary has it,
    else from the table (Go 1.26 and 1.27 only). UnsupportedGo otherwise."""
    b = as_binary(binary)
    path = path or b.path
    if b.pclntab is None and b.go_version is None:
        raise SymbolizerError(f"{path}: not a Go program (no pclntab, no Go build info)")
    rows = _dwarf_rows(path)
    source = "dwarf"
    if rows is None:
        minor = go_minor(b.go_version)
        rows = dict(OFFSETS_BY_MINOR.get(minor, {})) if minor is not None else {}
        source = "table"
    missing = [f for f in GOROUTINE_FIELDS if (G, f) not in rows]
    missing += [f"gobuf.{f}" for f in ("sp", "pc", "bp") if (GOBUF, f) not in rows]
    if (G, WHOLE) not in rows or missing:
        version = b.go_version or "an unknown Go version"
        if source == "dwarf":
            raise UnsupportedGo(f"{path}: its DWARF lacks runtime.g fields goprof reads "
                                f"({', '.join(missing) or 'the struct'}; {version})")
        raise UnsupportedGo(f"{path}: no runtime.g layout for {version} without DWARF "
                            "(goprof's table: Go 1.26, 1.27); build without -ldflags=-w")

    def at(field: str, sub: str | None = None) -> int:
        base = rows[(G, field)].offset
        return base + rows[(GOBUF, sub)].offset if sub else base

    syscallbp = rows.get((G, "syscallbp"))
    parent = rows.get((G, "parentGoid"))
    return GoroutineLayout(
        g_size=rows[(G, WHOLE)].size or 0, stack_lo=at("stack"),
        sched_sp=at("sched", "sp"), sched_pc=at("sched", "pc"), sched_bp=at("sched", "bp"),
        syscallsp=at("syscallsp"), syscallpc=at("syscallpc"),
        syscallbp=syscallbp.offset if syscallbp else None,
        atomicstatus=at("atomicstatus"), goid=at("goid"), waitsince=at("waitsince"),
        waitreason=at("waitreason"), lockedm=at("lockedm"),
        parent_goid=parent.offset if parent else None,
        gopc=at("gopc"), startpc=at("startpc"), labels=at("labels"), source=source)


def supported_minors() -> tuple[int, int]:
    """The Go minor versions the built-in table covers (binaries without DWARF)."""
    return min(OFFSETS_BY_MINOR), max(OFFSETS_BY_MINOR)


@guarded
def runtime_layout(binary: BinaryLike, *, path: str | None = None) -> RuntimeLayout:
    """The runtime's struct offsets: from DWARF when the binary has it, else from the
    table of the binary's Go version. Raises UnsupportedGo for a binary without DWARF
    whose version the table does not cover, SymbolizerError for a non-Go file."""
    b = as_binary(binary)
    path = path or b.path
    if b.pclntab is None and b.go_version is None:
        raise SymbolizerError(f"{path}: not a Go program (no pclntab, no Go build info)")
    rows = _dwarf_rows(path)
    if rows is not None:
        return _layout(b.go_version, rows, "dwarf")
    return table_layout(b.go_version, path)


def table_layout(go_version: str | None, path: str = "") -> RuntimeLayout:
    """The built-in layout of a Go version ("go1.26.3"); UnsupportedGo outside 1.19-1.27."""
    minor = go_minor(go_version)
    rows = OFFSETS_BY_MINOR.get(minor) if minor is not None else None
    if rows is None:
        lo, hi = supported_minors()
        where = f"{path}: " if path else ""
        raise UnsupportedGo(
            f"{where}Go version {go_version or 'unknown'} has no built-in runtime layout "
            f"(known: Go 1.{lo} to 1.{hi}) and the binary has no DWARF to read it from; "
            f"build it without -ldflags=-w, or use a supported Go version")
    return _layout(go_version, rows, "table")


def _layout(go_version: str | None, rows: Mapping[Field, Slot], source: str) -> RuntimeLayout:
    def size(key: Field) -> int:
        got = rows[key].size
        if got is None:
            raise SymbolizerError(f"no size for {key[0]}.{key[1] or '(struct)'}")
        return got

    return RuntimeLayout(
        go_version,
        mcache_alloc=rows[(MCACHE, "alloc")].offset,
        mspan_nelems=rows[(MSPAN, "nelems")].offset,
        mspan_nelems_size=size((MSPAN, "nelems")),
        mspan_alloc_count=rows[(MSPAN, "allocCount")].offset,
        mspan_alloc_count_before_cache=rows[(MSPAN, "allocCountBeforeCache")].offset,
        mspan_elemsize=rows[(MSPAN, "elemsize")].offset,
        bucket_size=size((BUCKET, WHOLE)),
        mem_record_cycle_size=size((RECORD, WHOLE)),
        mem_record_cycle_fields=tuple(m for s, m in rows if s == RECORD and m != WHOLE),
        g_m=rows[(G, "m")].offset,
        g_goid=rows[(G, "goid")].offset,
        g_labels=rows[(G, "labels")].offset,
        m_curg=rows[(M, "curg")].offset,
        source=source)


# -- DWARF: the rows of the table, read from the binary --------------------------------------

def table_fields() -> dict[Field, frozenset[int]]:
    """Every (struct, field) of the table, in the table's order, with the sizes its rows
    give (empty: none assumed)."""
    out: dict[Field, frozenset[int]] = {}
    for rows in OFFSETS_BY_MINOR.values():
        for key, slot in rows.items():
            sizes = out.get(key, frozenset())
            out[key] = sizes | {slot.size} if slot.size is not None else sizes
    return out


# DWARF rows per file (st_dev, st_ino, st_size, st_mtime_ns): a target's layout is asked
# for by each thing that reads its runtime (labels, the span method, goroutines), and the
# agent asks again for every process of one binary; each read of the DWARF is ~30 ms.
_ROWS_CACHE: dict[tuple[int, int, int, int], dict[Field, Slot] | None] = {}
_ROWS_CACHE_MAX = 64


def _dwarf_rows(path: str) -> dict[Field, Slot] | None:
    """_read_dwarf_rows, once per binary file (a copy: callers may keep it)."""
    try:
        st = os.stat(path)
    except OSError:
        return _read_dwarf_rows(path)  # says why it cannot be read
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _ROWS_CACHE:
        if len(_ROWS_CACHE) >= _ROWS_CACHE_MAX:
            _ROWS_CACHE.pop(next(iter(_ROWS_CACHE)))  # the oldest
        _ROWS_CACHE[key] = _read_dwarf_rows(path)
    rows = _ROWS_CACHE[key]
    return dict(rows) if rows is not None else None


def _read_dwarf_rows(path: str) -> dict[Field, Slot] | None:
    """The table's rows as this binary's DWARF gives them; None when the file has no
    DWARF or it lacks one of the structs. A field that every version has must be there,
    with one of the sizes the table gives it; the memRecordCycle's members are all of
    its members, whatever they are."""
    fields = table_fields()
    everywhere = set.intersection(*(set(rows) for rows in OFFSETS_BY_MINOR.values()))
    names = {s for s, _ in fields}
    structs = read_structs(path, names)
    if structs is None or set(structs) != names:
        return None
    rows: dict[Field, Slot] = {}
    for (sname, member), sizes in fields.items():
        s = structs[sname]
        if member == WHOLE:
            rows[(sname, member)] = Slot(0, s.size)
        elif sname != RECORD:
            got = s.members.get(member)
            if got is None:
                if (sname, member) in everywhere:
                    raise SymbolizerError(f"{path}: DWARF {sname} has no member {member}")
                continue
            if sizes and got[1] not in sizes:
                raise SymbolizerError(f"{path}: DWARF {sname}.{member} is {got[1]} bytes, "
                                      f"goprof reads {' or '.join(map(str, sorted(sizes)))}")
            rows[(sname, member)] = Slot(*got)
    record = structs[RECORD]
    rows.update({(RECORD, m): Slot(*record.members[m]) for m in record.order})
    return rows
