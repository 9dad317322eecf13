"""Corrupt input: mutated bytes of a real Go ELF file and of its pclntab must raise
SymbolizerError or load, and then resolve or raise SymbolizerError; nothing else.
test_mutated_table aims at each table the symbolizer and goprof.golang parse, located in
real binaries (tests/gotables.py): flipped bits, overwritten words, truncation."""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
from collections.abc import Iterator

import pytest
from elftools.elf.elffile import ELFFile
from goprof.golang.functions import function_entries
from goprof.golang.globals import global_address
from goprof.golang.layouts import runtime_layout
from goprof.golang.probes import probe_site
from goprof.symbolizer import BinarySymbols, SymbolizerError, load_binary
from goprof.symbolizer.gopclntab import Pclntab
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import gobuild, gotables

FUZZ = settings(max_examples=100, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@functools.cache
def original() -> tuple[bytes, dict[str, tuple[int, int]], list[int]]:
    """The file, the file ranges worth mutating, and pcs to resolve afterwards."""
    path = gobuild.build("cpusplit", "go1.26", "stripped").path
    data = path.read_bytes()
    with open(path, "rb") as f:
        elf = ELFFile(f)
        ranges = {"headers": (0, 0x1000),
                  "section headers": (elf["e_shoff"], elf["e_shoff"] + elf.num_sections() * 64)}
        for name in (".gopclntab", ".go.module", ".go.buildinfo", ".note.go.buildid"):
            s = elf.get_section_by_name(name)
            ranges[name] = (s["sh_offset"], s["sh_offset"] + s["sh_size"])
        text = elf.get_section_by_name(".text")
        lo, hi = text["sh_addr"], text["sh_addr"] + text["sh_size"]
    pcln = ranges[".gopclntab"]
    ranges["pclntab header and function table"] = (pcln[0], pcln[0] + 0x8000)
    pcs = list(range(lo, hi, (hi - lo) // 300)) + [lo - 1, hi, 0, 2**64 - 1]
    return data, ranges, pcs


@contextlib.contextmanager
def loaded(data: bytes) -> Iterator[BinarySymbols | None]:
    """The bytes as a binary file, loaded: None when loading refused them (with a
    SymbolizerError, the only error allowed)."""
    fd, path = tempfile.mkstemp(prefix="goprof-fuzz-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            b = load_binary(path)
        except SymbolizerError:
            b = None
        yield b
    finally:
        os.unlink(path)


def exercise(data: bytes) -> None:
    with loaded(data) as b:
        if b is None:
            return
        for pc in original()[2]:
            try:
                b.frames(pc)
                b.frameless(pc)
            except SymbolizerError:
                pass


@st.composite
def mutations(draw, region: str | None = None):
    data, ranges, _ = original()
    buf = bytearray(data)
    names = sorted(ranges)
    for _ in range(draw(st.integers(1, 16))):
        lo, hi = ranges[region or draw(st.sampled_from(names))]
        at = draw(st.integers(lo, hi - 1))
        width = draw(st.sampled_from([1, 1, 1, 4, 8]))
        buf[at:at + width] = draw(st.binary(min_size=width, max_size=width))
    return bytes(buf)


@FUZZ
@given(mutations())
def test_mutated_elf(data):
    exercise(data)


@FUZZ
@given(mutations(".gopclntab"))
def test_mutated_pclntab_region(data):
    exercise(data)


@FUZZ
@given(st.integers(0, 3_000_000))
def test_truncated(size):
    exercise(original()[0][:size])


@functools.cache
def pclntab_parts() -> tuple[bytes, int, int]:
    data, ranges, _ = original()
    lo, hi = ranges[".gopclntab"]
    b = load_binary(str(gobuild.build("cpusplit", "go1.26", "stripped").path))
    return data[lo:hi], b.text, b.gofunc - b.pclntab_addr


@settings(max_examples=600, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1,
                max_size=32), st.booleans())
def test_mutated_pclntab_in_memory(muts, early):
    """Faster than files, so more examples: the Pclntab decoder alone."""
    tab, text, gofunc_off = pclntab_parts()
    buf = bytearray(tab)
    for at, value in muts:
        # Half the time hit the header and function table, which everything depends on.
        at = at % (0x4000 if early else len(buf))
        buf[at] = value
    data = bytes(buf)
    try:
        p = Pclntab(data, text, data, gofunc_off)
    except SymbolizerError:
        return
    for pc in original()[2]:
        try:
            p.frames(pc)
            p.spdelta(pc)
        except SymbolizerError:
            pass


# -- every table, by where it lies in real binaries (tests/gotables.py) -------------------

TABLE_FUZZ = settings(max_examples=25, deadline=None, derandomize=True,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# normal keeps .symtab and DWARF (struct offsets); stripped is what most services ship.
TABLE_BUILDS = {"stripped": ["pclntab header", "funcnametab", "cutab", "filetab", "pctab",
                             "functab", "func records", ".go.module", ".go.buildinfo",
                             ".note.go.buildid", "elf header", "program headers",
                             "section headers"],
                "normal": [".debug_info", ".debug_abbrev", ".zdebug_info", ".symtab",
                           ".strtab", "funcnametab"]}


def exercise_all(data: bytes) -> None:
    """Everything goprof reads from a binary: names, sp deltas, the function list,
    probe sites, runtime globals, struct layout. Only SymbolizerError may escape; a
    damaged function's names are text when they are given at all."""
    with loaded(data) as b:
        if b is None:
            return
        for pc in original()[2][::4]:
            for fr in b.frames(pc):  # damage is confined: nothing raised
                assert fr.function.isprintable() and fr.file.isprintable(), fr
            b.frameless(pc)
        for call in (lambda: function_entries(b),
                     lambda: probe_site(b, "runtime.(*mcache).refill"),
                     lambda: global_address(b, "runtime.MemProfileRate"),
                     lambda: runtime_layout(b)):
            try:
                call()
            except SymbolizerError:
                pass


@st.composite
def table_mutations(draw, variant: str, table: str):
    path = gobuild.build("cpusplit", "go1.26", variant).path
    lo, hi = gotables.tables(path)[table]
    buf = bytearray(_file_bytes(path))
    kind = draw(st.sampled_from(["flip", "overwrite", "truncate"]))
    if kind == "truncate":
        return bytes(buf[:draw(st.integers(lo, max(lo, hi - 1)))])
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(lo, max(lo, hi - 1)))
        if kind == "flip":
            buf[at] ^= 1 << draw(st.integers(0, 7))
        else:
            width = draw(st.sampled_from([1, 4, 8]))
            buf[at:at + width] = draw(st.binary(min_size=width, max_size=width))
    return bytes(buf)


@functools.cache
def _file_bytes(path) -> bytes:
    return path.read_bytes()


def _table_cases() -> list[tuple[str, str]]:
    cases = []
    for variant, names in TABLE_BUILDS.items():
        found = gotables.tables(gobuild.build("cpusplit", "go1.26", variant).path)
        cases += [(variant, n) for n in names if n in found]
    return cases


@pytest.mark.parametrize("variant,table", _table_cases())
def test_mutated_table(variant: str, table: str) -> None:
    @TABLE_FUZZ
    @given(table_mutations(variant, table))
    def run(data: bytes) -> None:
        exercise_all(data)
    run()
