"""The symbolizer against the Go toolchain's own view of the cpusplit fixture.

Ground truth: `go tool objdump` (names and file:line of every instruction of the normal
build), `go version`, `go tool buildid`, the GNU build-id note and the go:func.* symbol.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from goprof.model import Frame
from goprof.symbolizer import BinaryCache, SymbolizerError, load_binary
from goprof.symbolizer.gopclntab import print_name

from tests import gobuild

SOURCE = gobuild.FIXTURES / "cpusplit" / "main.go"
TEXT_RE = re.compile(r"^TEXT (.+)\(SB\)")
INSN_RE = re.compile(r"^\s+(\S+):(\d+)\s+0x([0-9a-f]+)\s")


def runtime_name(symbol: str) -> str:
    """The name runtime/pprof prints for an ELF symbol: assembly (ABI0) functions carry
    a ".abi0" suffix in .symtab only, and .symtab spells the pclntab's "·" as ".", so
    both sides compare with "."."""
    return print_name(symbol.removesuffix(".abi0")).replace("·", ".")


@functools.cache
def objdump(toolchain: str) -> dict[int, tuple[str, str, int]]:
    """pc -> (function, file base name, line) for every instruction of the normal build."""
    binary = gobuild.build("cpusplit", toolchain, "normal")
    out = subprocess.run([gobuild.go_command(), "tool", "objdump", str(binary.path)],
                         env=gobuild.go_env(toolchain), capture_output=True, text=True,
                         check=True, timeout=300).stdout
    pcs: dict[int, tuple[str, str, int]] = {}
    func = ""
    for line in out.splitlines():
        if m := TEXT_RE.match(line):
            func = m.group(1)
        elif m := INSN_RE.match(line):
            pcs[int(m.group(3), 16)] = (func, m.group(1), int(m.group(2)))
    assert pcs, "objdump printed no instructions"
    return pcs


def source_lines() -> dict[str, int]:
    """Line numbers read from the fixture's source (it may move; never hard-code them)."""
    lines = SOURCE.read_text().splitlines()
    found = {}
    for i, text in enumerate(lines, 1):
        if m := re.match(r"^func (\w+)\(", text):
            found[m.group(1)] = i
        if "x = mix(x)" in text:
            found["mix call"] = i
    return found


def functions(b) -> dict[str, tuple[int, int]]:
    """Name -> [entry, end) of every function in the pclntab (test-side walk)."""
    p = b.pclntab
    out = {}
    for i in range(p.nfunc):
        entry, end = p.text + p.entries[i], p.text + p.entries[i + 1]
        out.setdefault(p.name(p.func(i).name_off), (entry, end))
    return out


def test_every_objdump_pc_resolves(cpusplit):
    truth = objdump(cpusplit.toolchain)
    b = load_binary(str(cpusplit.path))
    assert b.is_go
    if cpusplit.variant == "pie" or not _same_text(cpusplit):
        # Another layout: every pc of Go's text is named, and the function set is the same.
        names = set(functions(b))
        expected = {runtime_name(f) for f, _, _ in truth.values()}
        names = {n.replace("·", ".") for n in names}
        assert expected <= names
        lo, hi = b.pclntab.text_range
        unnamed = [pc for pc in range(lo, hi, 7) if not b.frames(pc)]
        assert not unnamed
        return
    wrong = []
    for pc, (func, file, line) in truth.items():
        frames = b.frames(pc)
        got = (frames[-1].function.replace("·", "."), os.path.basename(frames[0].file),
               frames[0].line) if frames else None
        if got != (runtime_name(func), file, line):
            wrong.append((hex(pc), got, (func, file, line)))
    assert not wrong, f"{len(wrong)} of {len(truth)} pcs differ, e.g. {wrong[:5]}"


def _same_text(binary: gobuild.GoBinary) -> bool:
    """A stripped build whose code is byte for byte the normal build's (addresses agree)."""
    normal = gobuild.build("cpusplit", binary.toolchain, "normal")
    texts = []
    for path in (normal.path, binary.path):
        with open(path, "rb") as f:
            texts.append(ELFFile(f).get_section_by_name(".text").data())
    return texts[0] == texts[1]


def test_inlined_mix_in_gamma(cpusplit):
    b = load_binary(str(cpusplit.path))
    src = source_lines()
    lo, hi = functions(b)["main.gamma"]
    stacks = [b.frames(pc) for pc in range(lo, hi)]
    inlined = [s for s in stacks if len(s) == 2]
    assert inlined, "main.mix is not inlined anywhere in main.gamma"
    file = str(SOURCE)
    for mix, gamma in inlined:
        assert mix.function == "main.mix" and mix.inlined
        assert src["mix"] + 1 <= mix.line <= src["mix"] + 3
        assert mix.start_line == src["mix"]
        assert gamma == Frame("main.gamma", file, src["mix call"], src["gamma"], inlined=False)
        assert mix.file == file
    assert {s[0].line for s in inlined} == {src["mix"] + 1, src["mix"] + 2, src["mix"] + 3}
    # Outside the inlined body gamma stands alone, with its own lines.
    alone = [s for s in stacks if len(s) == 1]
    assert alone and all(s[0].function == "main.gamma" and not s[0].inlined for s in alone)


def test_start_lines(cpusplit):
    b = load_binary(str(cpusplit.path))
    src = source_lines()
    funcs = functions(b)
    for name in ("alpha", "beta", "gamma", "main"):
        frames = b.frames(funcs[f"main.{name}"][0])
        assert frames[-1].function == f"main.{name}"
        assert frames[-1].start_line == src[name]


def test_frameless(cpusplit):
    b = load_binary(str(cpusplit.path))
    funcs = functions(b)
    lo, hi = funcs["main.alpha"]
    # Its code (not the alignment padding after RET, which no table covers) never pushes.
    code = [pc for pc in range(lo, hi) if b.frames(pc)[0].line > 0]
    assert len(code) > 20 and all(b.frameless(pc) for pc in code)
    if hi - 1 not in code:
        assert not b.frameless(hi - 1)  # padding: no SP delta known
    lo, hi = funcs["main.main"]
    framed = [pc for pc in range(lo, hi) if not b.frameless(pc)]
    # main.main sets up its frame a few instructions in and keeps it to the end.
    assert framed and framed[0] - lo < 32
    assert b.frameless(lo)  # at the entry nothing is pushed yet
    assert not b.frameless(lo + (hi - lo) // 2)


def test_versions_and_build_ids(cpusplit):
    b = load_binary(str(cpusplit.path))
    assert b.go_version == gobuild.go_version_of(cpusplit.path)
    notes = subprocess.run(["readelf", "-n", str(cpusplit.path)], capture_output=True,
                           text=True, check=True).stdout
    gnu = re.search(r"Build ID: ([0-9a-f]+)", notes)
    assert gnu and b.build_id == gnu.group(1)
    go_id = subprocess.run([gobuild.go_command(), "tool", "buildid", str(cpusplit.path)],
                           env=gobuild.go_env(cpusplit.toolchain), capture_output=True,
                           text=True, check=True).stdout.strip()
    assert b.go_build_id == go_id


def test_gofunc_matches_symbol(cpusplit):
    if cpusplit.variant != "normal":
        pytest.skip("go:func.* is in .symtab of normal builds only")
    with open(cpusplit.path, "rb") as f:
        symtab = ELFFile(f).get_section_by_name(".symtab")
        gofunc = symtab.get_symbol_by_name("go:func.*")[0]["st_value"]
        text = symtab.get_symbol_by_name("runtime.text")[0]["st_value"]
    b = load_binary(str(cpusplit.path))
    assert b.gofunc == gofunc
    assert b.text == text


def test_non_go_binary_dynsym():
    # libc defines its functions in .dynsym (sleep's .dynsym only imports).
    path = "/lib/x86_64-linux-gnu/libc.so.6"
    b = load_binary(path)
    assert not b.is_go and b.go_version is None and b.build_id
    with open(path, "rb") as f:
        syms = [s for s in ELFFile(f).get_section_by_name(".dynsym").iter_symbols()
                if s["st_info"]["type"] == "STT_FUNC" and s["st_value"]]
    assert syms
    for s in syms[:20]:
        frames = b.frames(s["st_value"])
        assert frames and frames[0].file == "" and frames[0].line == 0
    assert b.frameless(syms[0]["st_value"]) is False


def test_cache_by_build_id(tmp_path, cpusplit_plain):
    cache = BinaryCache()
    link = tmp_path / "link"
    link.symlink_to(cpusplit_plain.path)
    copy = tmp_path / "copy"
    shutil.copy(cpusplit_plain.path, copy)
    first = cache.get(str(cpusplit_plain.path))
    assert cache.get(str(link)) is first  # same inode
    assert cache.get(str(copy)) is first  # another file, same build id
    assert (cache.misses, cache.hits, len(cache)) == (1, 2, 1)
    other = cache.get(shutil.which("sleep") or "/bin/sleep")
    assert other is not first and len(cache) == 2 and cache.misses == 2


@pytest.mark.parametrize("content", [b"", b"not an elf", b"\x7fELF" + b"\0" * 60,
                                     b"\x7fELF\x02\x01\x01" + b"\xff" * 200])
def test_bad_files_raise_symbolizer_error(tmp_path, content):
    p = tmp_path / "bad"
    p.write_bytes(content)
    with pytest.raises(SymbolizerError):
        load_binary(str(p))


def test_missing_file():
    with pytest.raises(SymbolizerError):
        load_binary("/nonexistent/goprof-test")


def test_truncated_go_binary(tmp_path, cpusplit_plain):
    data = Path(cpusplit_plain.path).read_bytes()
    for size in (100, 5000, len(data) // 2, len(data) - 100):
        p = tmp_path / f"cut{size}"
        p.write_bytes(data[:size])
        try:
            b = load_binary(str(p))
        except SymbolizerError:
            continue
        for pc in range(0x401000, 0x401000 + 4096, 61):
            try:
                b.frames(pc)
                b.frameless(pc)
            except SymbolizerError:
                pass
