"""uprobe sites (goprof.golang.probes) against `go tool objdump` and the file's bytes
(tests/gotruth.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from goprof.golang.functions import size_specialized_mallocs
from goprof.golang.probes import probe_site, stack_check
from goprof.symbolizer import load_binary

from tests import gobuild
from tests.gotruth import (
    GUARD_CMP_RE,
    PROBED,
    TOOLCHAINS,
    build,
    file_offset,
    go_build,
    objdump,
)


def probed_functions(path: Path) -> list[str]:
    return [*PROBED, *size_specialized_mallocs(path)]


@pytest.mark.parametrize("variant", list(gobuild.VARIANTS))
@pytest.mark.parametrize("toolchain", TOOLCHAINS)
def test_probe_sites_are_the_jbe_after_the_stack_check(toolchain, variant):
    path = build(toolchain, variant)
    data = path.read_bytes()
    b = load_binary(str(path))
    for name in probed_functions(path):
        site = probe_site(b, name)
        assert site is not None, name
        assert site.function == name and site.vaddr > site.entry  # never the first insn
        assert site.file_offset == file_offset(path, site.vaddr)
        jump = data[site.file_offset:site.file_offset + site.jump_length]
        assert (site.jump_length, jump[:1]) == (2, b"\x76") or \
            (site.jump_length, jump[:2]) == (6, b"\x0f\x86"), (name, jump.hex())
        prologue = data[file_offset(path, site.entry):site.file_offset]
        # CMPQ SP or R12 against 16(R14) or 24(R14) right before it.
        assert prologue[-4:-1] in (b"\x49\x3b\x66", b"\x4d\x3b\x66"), (name, prologue.hex())
        assert prologue[-1] == site.guard_offset in (0x10, 0x18)
        assert site.offset == len(prologue)


@pytest.mark.parametrize("toolchain", TOOLCHAINS)
def test_probe_sites_agree_with_objdump(toolchain):
    """probe_site on the stripped builds gives the JBE objdump shows after a compare with
    the goroutine's stack guard in the normal build (same code, same addresses)."""
    path = build(toolchain, "normal")
    pattern = "^(" + "|".join(re.escape(n) for n in probed_functions(path)) + ")$"
    funcs = objdump(path, toolchain, pattern)
    for name in probed_functions(path):
        insns = funcs[name]
        jbe = next(i for i in range(1, 6) if insns[i][2].startswith("JBE "))
        assert GUARD_CMP_RE.fullmatch(insns[jbe - 1][2]), insns[:jbe]
        site = probe_site(build(toolchain, "stripped"), name)
        assert site is not None and site.vaddr == insns[jbe][0], name
        assert site.entry == insns[0][0]


def objdump_jbe(insns: list[tuple]) -> int | None:
    """The pc of a JBE among a function's first instructions that follows a CMPQ with
    the stack guard (objdump's reading), else None."""
    for i in range(1, min(6, len(insns))):
        if insns[i][2].startswith("JBE ") and GUARD_CMP_RE.fullmatch(insns[i - 1][2]):
            return insns[i][0]
    return None


@pytest.mark.parametrize("toolchain", TOOLCHAINS)
def test_stack_check_on_every_function(toolchain):
    """stack_check over every function of the binary, against objdump's instructions."""
    path = build(toolchain, "normal")
    funcs = objdump(path, toolchain)
    forms: dict[str, int] = {}
    wrong = []
    for name, insns in funcs.items():
        if not insns:
            continue
        entry = insns[0][0]
        code = b"".join(raw for _pc, raw, _text in insns)
        found = stack_check(code, len(code))
        got = entry + found[2] if found else None
        if got != objdump_jbe(insns):
            wrong.append((name, got, objdump_jbe(insns)))
        if found:
            forms[found[0]] = forms.get(found[0], 0) + 1
    assert not wrong, f"{len(wrong)} functions differ, e.g. {wrong[:5]}"
    assert forms.get("small", 0) > 1000 and forms.get("large", 0) > 50


FRAMES_PROGRAM = """package main

//go:noinline
func huge(n int) byte {
	var buf [20000]byte
	for i := range buf {
		buf[i] = byte(i * n)
	}
	return buf[n%len(buf)]
}

//go:noinline
func large(n int) byte {
	var buf [1000]byte
	for i := range buf {
		buf[i] = byte(i * n)
	}
	return buf[n%len(buf)]
}

func main() {
	println(huge(3), large(4))
}
"""


@pytest.mark.parametrize("toolchain", TOOLCHAINS)
def test_probe_sites_of_large_and_huge_frames(tmp_path, toolchain):
    """Frames over 4 KiB check `MOVQ SP, R12; SUBQ $N, R12; JCS; CMPQ R12, 16(R14)`."""
    (tmp_path / "main.go").write_text(FRAMES_PROGRAM)
    (tmp_path / "go.mod").write_text("module frames\n\ngo 1.19\n")
    out = go_build(toolchain, tmp_path, tmp_path / "frames", "-ldflags=-s -w")
    unstripped = go_build(toolchain, tmp_path, tmp_path / "frames-unstripped")
    funcs = objdump(unstripped, toolchain, r"^main\.(huge|large)$")
    for name, form in (("main.huge", "huge"), ("main.large", "large")):
        site = probe_site(out, name)
        assert site is not None and site.form == form
        assert site.vaddr == objdump_jbe(funcs[name])
        texts = [text.split()[0] for _pc, _raw, text in funcs[name][:5]]
        if form == "huge":
            assert texts[:3] == ["MOVQ", "SUBQ", "JB"], texts


def test_no_probe_site_without_a_stack_check(cpusplit_plain):
    b = load_binary(str(cpusplit_plain.path))
    assert probe_site(b, "runtime.noSuchFunction") is None
    # A leaf without a stack check: its code starts with something else.
    funcs = objdump(cpusplit_plain.path, "go1.26", r"^internal/abi\.NoEscape$")
    assert objdump_jbe(funcs["internal/abi.NoEscape"]) is None
    assert probe_site(b, "internal/abi.NoEscape") is None
