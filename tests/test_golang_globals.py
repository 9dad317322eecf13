"""Runtime variables (goprof.golang.globals) and the RIP-relative operands they are found
through (goprof.golang.x86), against `go tool nm` and `go tool objdump` (tests/gotruth.py)."""

from __future__ import annotations

import re
import shutil

import pytest
from goprof.golang.globals import global_address
from goprof.golang.x86 import rip_refs

from tests.gotruth import (
    GLOBALS,
    MEM_PROFILE_RATE_DEFAULT,
    SB_RE,
    TOOLCHAINS,
    build,
    file_offset,
    headers,
    nm,
    objdump,
    pie_or_stripped_ids,
    reference,
    section_position,
)


@pytest.mark.parametrize("toolchain", TOOLCHAINS)
def test_globals_of_the_normal_build(toolchain):
    path = build(toolchain, "normal")
    syms = nm(path, toolchain)
    for name in GLOBALS:
        assert global_address(path, name) == syms[name][0], name
        # The code heuristics alone (what stripped builds get) find the very same address.
        assert global_address(path, name, symbols=False) == syms[name][0], name
    # The premise of the MemProfileRate check: the default rate is in the file's data
    # (Go 1.19 computes it at run time: a zero-filled variable).
    rate = syms["runtime.MemProfileRate"][0]
    section = section_position(path, rate)[0]
    if toolchain == "go1.19":
        assert section in (".bss", ".noptrbss")
    else:
        off = file_offset(path, rate)
        value = int.from_bytes(path.read_bytes()[off:off + 8], "little")
        assert value == MEM_PROFILE_RATE_DEFAULT


@pytest.mark.parametrize(("toolchain", "variant"), pie_or_stripped_ids())
def test_globals_of_stripped_builds(toolchain, variant):
    """A stripped build's .go.buildinfo records its -ldflags, which moves its data by a
    few bytes: compare positions inside the same (same-sized) section."""
    ref = reference(toolchain, variant)
    path = build(toolchain, variant)
    syms = nm(ref, toolchain)
    for sec in (".noptrdata", ".data", ".bss", ".noptrbss"):
        assert headers(ref)[1][sec][1] == headers(path)[1][sec][1], sec
    for name in GLOBALS:
        got = global_address(path, name)
        assert got is not None, name
        assert section_position(path, got) == section_position(ref, syms[name][0]), name


def test_global_none_when_the_value_is_not_the_default(tmp_path):
    """A candidate that fails validation gives None, never an address."""
    src = build("go1.26", "stripped")
    copy = tmp_path / "patched"
    shutil.copy(src, copy)
    rate = global_address(src, "runtime.MemProfileRate")
    assert rate is not None
    data = bytearray(copy.read_bytes())
    off = file_offset(src, rate)
    assert int.from_bytes(data[off:off + 8], "little") == MEM_PROFILE_RATE_DEFAULT
    data[off:off + 8] = (1234).to_bytes(8, "little")
    copy.write_bytes(bytes(data))
    assert global_address(copy, "runtime.MemProfileRate") is None
    assert global_address(copy, "runtime.mbuckets") == \
        global_address(src, "runtime.mbuckets")
    assert global_address(copy, "runtime.noSuchVariable") is None


@pytest.mark.parametrize("toolchain", TOOLCHAINS)
def test_rip_refs_cover_objdump(toolchain):
    """Every [RIP+disp32] operand objdump shows in the heuristics' functions is found,
    with its target (the candidates' false positives are the heuristics' to reject)."""
    path = build(toolchain, "normal")
    syms = nm(path, toolchain)
    names = ("runtime.profilealloc", "runtime.allocmcache", "runtime.stkbucket",
             "runtime.mProf_FlushLocked", "runtime.mProf_Malloc", "runtime.mProf_Free",
             "runtime.mProf_Flush")
    funcs = objdump(path, toolchain, "^(" + "|".join(re.escape(n) for n in names) + ")$")
    for name in names:
        insns = funcs[name]
        code = b"".join(raw for _pc, raw, _text in insns)
        refs = rip_refs(code, insns[0][0])
        for pc, _raw, text in insns:
            m = SB_RE.search(text)
            if m is None or text.split()[0].startswith(("CALL", "J")) or m.group(1) not in syms:
                continue
            target = syms[m.group(1)][0] + int(m.group(2) or 0)
            # The byte before an instruction without REX may look like one: at is then
            # one less (the target, what matters, is the same).
            assert any(r.target == target and pc - 1 <= r.at <= pc for r in refs), (name, text)
