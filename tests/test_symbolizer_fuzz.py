"""Corrupt input: mutated bytes of a real Go ELF file and of its pclntab must raise
SymbolizerError or load, and then resolve or raise SymbolizerError; nothing else."""

from __future__ import annotations

import functools
import os
import tempfile

from elftools.elf.elffile import ELFFile
from goprof.symbolizer import SymbolizerError, load_binary
from goprof.symbolizer.gopclntab import Pclntab
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import gobuild

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


def exercise(data: bytes) -> None:
    fd, path = tempfile.mkstemp(prefix="goprof-fuzz-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            b = load_binary(path)
        except SymbolizerError:
            return
        for pc in original()[2]:
            try:
                b.frames(pc)
                b.frameless(pc)
            except SymbolizerError:
                pass
    finally:
        os.unlink(path)


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
