"""Struct offsets (goprof.golang.layouts): every row of the per-version table, and what
runtime_layout reads from DWARF, against DWARF walked here unit by unit."""

from __future__ import annotations

import dataclasses
import functools
import re
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from goprof.golang import layouts
from goprof.golang.buildinfo import go_minor
from goprof.golang.layouts import runtime_layout, table_layout
from goprof.symbolizer import UnsupportedGo, load_binary

from tests.gotruth import STRIPPED_VARIANTS, TOOLCHAINS, build


@functools.cache
def dwarf_structs(path: Path) -> dict[str, dict]:
    """The test's own DWARF reading: every unit walked, each struct's size and members
    (offset, type size), for the structs the table has rows of."""
    wanted = {struct for struct, _member in layouts.table_fields()}
    assert {"runtime.mcache", "runtime.mspan", "runtime.bucket",
            "runtime.memRecordCycle"} <= wanted
    out: dict[str, dict] = {}
    with open(path, "rb") as f:
        for cu in ELFFile(f).get_dwarf_info().iter_CUs():
            for die in cu.get_top_DIE().iter_children():
                name = die.attributes.get("DW_AT_name")
                if die.tag != "DW_TAG_structure_type" or name is None:
                    continue
                name = name.value.decode()
                if name not in wanted or name in out:
                    continue
                members = {}
                for m in die.iter_children():
                    t = m.get_DIE_from_attribute("DW_AT_type")
                    while t.tag == "DW_TAG_typedef":  # g.stack, g.atomicstatus: named types
                        t = t.get_DIE_from_attribute("DW_AT_type")
                    size = t.attributes.get("DW_AT_byte_size")
                    if size is None and t.tag == "DW_TAG_pointer_type":  # Go gives none
                        size = t.cu.structs.address_size
                    else:
                        size = size.value if size else None
                    members[m.attributes["DW_AT_name"].value.decode()] = (
                        m.attributes["DW_AT_data_member_location"].value, size)
                out[name] = {"size": die.attributes["DW_AT_byte_size"].value,
                             "members": members}
    assert set(out) == wanted
    return out


@pytest.mark.parametrize("toolchain", TOOLCHAINS)
def test_layout_from_dwarf_equals_the_table(toolchain):
    path = build(toolchain, "normal")
    layout = runtime_layout(path)
    assert layout.source == "dwarf"
    truth = dwarf_structs(path)
    span = truth["runtime.mspan"]["members"]
    record = truth["runtime.memRecordCycle"]
    assert layout.mcache_alloc == truth["runtime.mcache"]["members"]["alloc"][0]
    assert (layout.mspan_nelems, layout.mspan_nelems_size) == span["nelems"]
    assert (layout.mspan_alloc_count, 2) == span["allocCount"]
    assert (layout.mspan_alloc_count_before_cache, 2) == span["allocCountBeforeCache"]
    assert (layout.mspan_elemsize, 8) == span["elemsize"]
    assert layout.bucket_size == truth["runtime.bucket"]["size"] == 48
    assert layout.mem_record_cycle_size == record["size"]
    assert layout.mem_record_cycle_fields == tuple(record["members"])
    # Go 1.27 dropped the byte counters (coroot-node-agent's hard-coded 32 broke there).
    assert record["size"] == (16 if toolchain == "go1.27" else 32)
    # The table for binaries without DWARF says the same.
    table = table_layout(layout.go_version)
    assert dataclasses.replace(layout, source="table") == table
    for variant in STRIPPED_VARIANTS:
        assert runtime_layout(build(toolchain, variant)) == table


@pytest.mark.parametrize("toolchain", TOOLCHAINS)
def test_every_row_of_the_table_is_what_dwarf_says(toolchain):
    """Each (struct, field) row of the table of the build's Go version against the DWARF
    of that build: a row added to the table is checked here without another line."""
    path = build(toolchain, "normal")
    rows = layouts.OFFSETS_BY_MINOR[go_minor(load_binary(str(path)).go_version)]
    truth = dwarf_structs(path)
    for (struct, member), slot in rows.items():
        if member == layouts.WHOLE:  # the struct itself: its size
            assert (slot.offset, slot.size) == (0, truth[struct]["size"]), struct
            continue
        assert member in truth[struct]["members"], (struct, member)
        offset, size = truth[struct]["members"][member]
        assert slot.offset == offset, (struct, member, slot, offset)
        assert slot.size in (None, size), (struct, member, slot, size)
    # The memory record is read whole: the table has every member, in order.
    record = [m for s, m in rows if s == layouts.RECORD and m != layouts.WHOLE]
    assert record == list(truth[layouts.RECORD]["members"])
    assert (layouts.RECORD, layouts.WHOLE) in rows and (layouts.BUCKET, layouts.WHOLE) in rows


def with_go_version(src: Path, dst: Path, minor: int) -> Path:
    """A copy of src whose build info claims Go 1.<minor> (same length: 1.18 or 1.28)."""
    data = bytearray(src.read_bytes())
    at = data.find(b"\xff Go buildinf:")
    m = re.compile(rb"go1\.(\d\d)").search(bytes(data), at, at + 64)
    assert at >= 0 and m is not None
    data[m.start(1):m.end(1)] = str(minor).encode()
    dst.write_bytes(bytes(data))
    assert load_binary(str(dst)).go_version.startswith(f"go1.{minor}.")
    return dst


@pytest.mark.parametrize("minor", [18, 28])
def test_unknown_version_without_dwarf_is_a_clear_error(tmp_path, minor):
    path = with_go_version(build("go1.26", "stripped"), tmp_path / "stripped", minor)
    with pytest.raises(UnsupportedGo) as err:
        runtime_layout(path)
    message = str(err.value)
    assert f"go1.{minor}" in message and "1.19" in message and "1.27" in message
    assert "DWARF" in message
    # With DWARF any version is read from it.
    normal = with_go_version(build("go1.26", "normal"), tmp_path / "normal", minor)
    layout = runtime_layout(normal)
    assert layout.source == "dwarf" and layout.go_version.startswith(f"go1.{minor}.")


@pytest.mark.parametrize("toolchain", TOOLCHAINS)
def test_goroutine_layout_from_dwarf_equals_the_table(toolchain):
    """`goprof goroutines` reads g.sched, g.syscall*, atomicstatus, waitreason...: the same
    offsets from DWARF and, for stripped builds, from the table."""
    from goprof.golang.layouts import goroutine_layout

    path = build(toolchain, "normal")
    got = goroutine_layout(load_binary(str(path)), path=str(path))
    assert got.source == "dwarf"
    g = dwarf_structs(path)["runtime.g"]
    assert got.g_size == g["size"]
    assert (got.goid, got.atomicstatus, got.waitreason) == (
        g["members"]["goid"][0], g["members"]["atomicstatus"][0], g["members"]["waitreason"][0])
    for variant in STRIPPED_VARIANTS:
        stripped = build(toolchain, variant)
        if toolchain == "go1.19":  # DWARF only: no checked table rows for it
            with pytest.raises(UnsupportedGo):
                goroutine_layout(load_binary(str(stripped)), path=str(stripped))
            continue
        assert goroutine_layout(load_binary(str(stripped)), path=str(stripped)) == \
            dataclasses.replace(got, source="table")


def test_goroutine_layout_of_an_unchecked_version_is_unsupported(tmp_path):
    """A stripped Go 1.25 binary: goprof has no checked g rows for it, so goroutines are
    refused with a clear error (never read with a guessed offset); mem/heap's layout of
    the same binary still works."""
    from goprof.golang.layouts import goroutine_layout

    path = with_go_version(build("go1.26", "stripped"), tmp_path / "stripped", 25)
    with pytest.raises(UnsupportedGo) as err:
        goroutine_layout(load_binary(str(path)), path=str(path))
    assert "go1.25" in str(err.value) and "1.26, 1.27" in str(err.value)
    assert runtime_layout(path).source == "table"
