"""Function entries (goprof.golang.functions) of stripped and PIE builds against the
symbols `go tool nm` reads from the same code (tests/gotruth.py)."""

from __future__ import annotations

import re

import pytest
from goprof.golang.functions import (
    function_entries,
    functions_with_prefix,
    size_specialized_mallocs,
)

from tests.gotruth import TOOLCHAINS, build, headers, nm, pie_or_stripped_ids, reference


@pytest.mark.parametrize(("toolchain", "variant"), pie_or_stripped_ids())
def test_function_entries_match_the_symbols_of_the_same_code(toolchain, variant):
    """Stripping leaves the code where it was (only the data moves: see the globals' test;
    so the code differs in its RIP-relative displacements)."""
    ref = reference(toolchain, variant)
    assert headers(ref)[1][".text"][:2] == headers(build(toolchain, variant))[1][".text"][:2]
    syms = nm(ref, toolchain)
    entries = {n.replace("·", "."): a for n, a in
               function_entries(build(toolchain, variant)).items()}
    text = {n: a for n, (a, kind) in syms.items() if kind in "Tt"}
    starts = set(entries.values())
    # An ABI wrapper carries its function's name in the pclntab: names both have are left
    # out, and so are the linker's markers (runtime.text, runtime.etext) and names with
    # brackets (Go 1.19's pclntab spells "type..eq.[1]runtime.Frame" "[...]").
    wrapped = {n.removesuffix(".abi0") for n in text if n.endswith(".abi0")}
    checked = 0
    for name, addr in text.items():
        if name in wrapped or name.endswith(".abi0") or "[" in name or \
                name in ("runtime.text", "runtime.etext"):
            continue
        if name in entries:
            assert entries[name] == addr, name
            checked += 1
        else:  # an alias: the linker folded identical functions into one
            assert addr in starts, f"{name} at {addr:#x} is no function entry"
    assert checked > 1000
    for name, addr in entries.items():  # and assembly functions are .symtab's "name.abi0"
        if name not in text and name not in wrapped and "[" not in name:
            assert text.get(name + ".abi0") == addr, name


@pytest.mark.parametrize("toolchain", TOOLCHAINS)
def test_size_specialized_mallocs(toolchain):
    syms = nm(build(toolchain, "normal"), toolchain)
    truth = {n: a for n, (a, kind) in syms.items()
             if kind in "Tt" and n.startswith("runtime.mallocgc") and re.search(r"SC\d+$", n)}
    got = size_specialized_mallocs(build(toolchain, "stripped"))
    assert got == truth
    if toolchain == "go1.27":  # the default in 1.27: the three families are all there
        for family in ("runtime.mallocgcSmallNoScanSC", "runtime.mallocgcSmallScanNoHeaderSC",
                       "runtime.mallocgcTinySC"):
            assert any(n.startswith(family) for n in got), family
    else:
        assert not got
    prefixed = functions_with_prefix(build(toolchain, "stripped"), "runtime.mallocgc")
    assert set(got) <= set(prefixed) and "runtime.mallocgc" in prefixed
