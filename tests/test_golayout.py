"""Probe sites, runtime globals and struct offsets (profiler/golang/layout.py) against the Go
toolchain's own view of real builds.

Ground truth never comes from the code under test: `go tool nm` (addresses of the normal
and of an unstripped PIE build), `go tool objdump` (instructions), program and section
headers read here with pyelftools, and DWARF walked here unit by unit.

Go 1.19 (another pclntab format, MemProfileRate set at run time, older struct layouts)
joins the matrix when its GOROOT is at $GOPROF_GO119_GOROOT, e.g. Debian's packages
unpacked without installing them: `apt-get download golang-1.19-go golang-1.19-src`,
`dpkg -x` both into DIR, GOPROF_GO119_GOROOT=DIR/usr/lib/go-1.19.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import random
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from goprof.golang import layout as golayout
from goprof.symbolizer import SymbolizerError, UnsupportedGo, load_binary

from tests import gobuild

GO119_GOROOT = os.environ.get("GOPROF_GO119_GOROOT", "")
HAVE_GO119 = bool(GO119_GOROOT) and Path(GO119_GOROOT, "bin", "go").exists()
TOOLCHAINS = list(gobuild.TOOLCHAINS) + (["go1.19"] if HAVE_GO119 else [])
STRIPPED_VARIANTS = ["stripped", "pie"]
# The functions goprof mem probes; present in every build that allocates.
PROBED = ("runtime.profilealloc", "runtime.mallocgc", "runtime.(*mcache).refill",
          "runtime.(*mcache).allocLarge")
GLOBALS = ("runtime.MemProfileRate", "runtime.mbuckets", "runtime.mProfCycle")
# Go's default MemProfileRate (runtime/mprof.go): the value the linker leaves in the file.
MEM_PROFILE_RATE_DEFAULT = 512 * 1024
SYMBOL_RE = re.compile(r"^\s*([0-9a-f]+) (\w) (.+)$")
INSN_RE = re.compile(r"^\s+\S+\s+0x([0-9a-f]+)\s+([0-9a-f]+)\s+(.*?)\s*$")
SB_RE = re.compile(r"([^\s,()]+?)(?:\+(\d+))?\(SB\)")
# objdump's CMPQ with the stack guard; Go 1.19's objdump prints the operands swapped.
GUARD_CMP_RE = re.compile(r"CMPQ (SP|R12), 0x1[08]\(R14\)|CMPQ 0x1[08]\(R14\), (SP|R12)")


# -- ground truth from the Go toolchain and the ELF headers -------------------------------

def go_command(toolchain: str) -> str:
    return str(Path(GO119_GOROOT, "bin", "go")) if toolchain == "go1.19" else \
        gobuild.go_command()


def go_env(toolchain: str) -> dict[str, str]:
    if toolchain != "go1.19":
        return gobuild.go_env(toolchain)
    return {**gobuild.go_env("go1.26"), "GOROOT": GO119_GOROOT, "GOTOOLCHAIN": "local"}


def go_build(toolchain: str, src: Path, out: Path, *flags: str) -> Path:
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([go_command(toolchain), "build", *flags, "-o", str(out), "."], cwd=src,
                       env=go_env(toolchain), check=True, capture_output=True, timeout=600)
    return out


@functools.cache
def go119_source() -> Path:
    """cpusplit with a go.mod that Go 1.19 accepts (the fixtures' says 1.26), in a folder
    named after the source's hash (builds in it are reused while it does not change)."""
    main = (gobuild.FIXTURES / "cpusplit" / "main.go").read_bytes()
    src = gobuild.CACHE / f"golayout-go119-{hashlib.sha256(main).hexdigest()[:16]}"
    src.mkdir(parents=True, exist_ok=True)
    (src / "main.go").write_bytes(main)
    (src / "go.mod").write_text("module cpusplit\n\ngo 1.19\n")
    return src


def build(toolchain: str, variant: str) -> Path:
    if toolchain != "go1.19":
        return gobuild.build("cpusplit", toolchain, variant).path
    return go_build(toolchain, go119_source(), go119_source() / variant / "cpusplit",
                    *gobuild.VARIANTS[variant])


@functools.cache
def unstripped_pie(toolchain: str) -> Path:
    """A PIE build that keeps its symbols: the reference for the stripped PIE fixture."""
    out = gobuild.CACHE / f"golayout-pie-{toolchain}" / "cpusplit"
    out.unlink(missing_ok=True)  # the fixtures' sources may have changed since
    src = go119_source() if toolchain == "go1.19" else gobuild.FIXTURES / "cpusplit"
    return go_build(toolchain, src, out, "-buildmode=pie")


def reference(toolchain: str, variant: str) -> Path:
    """The build with symbols whose code and data match a stripped variant's."""
    return unstripped_pie(toolchain) if variant == "pie" else build(toolchain, "normal")


@functools.cache
def nm(path: Path, toolchain: str) -> dict[str, tuple[int, str]]:
    out = subprocess.run([go_command(toolchain), "tool", "nm", str(path)],
                         env=go_env(toolchain), capture_output=True, text=True,
                         check=True, timeout=300).stdout
    syms: dict[str, tuple[int, str]] = {}
    for line in out.splitlines():
        if m := SYMBOL_RE.match(line):
            syms.setdefault(m.group(3), (int(m.group(1), 16), m.group(2)))
    assert syms, f"go tool nm found no symbols in {path}"
    return syms


@functools.cache
def objdump(path: Path, toolchain: str, pattern: str = "") -> dict[str, list[tuple]]:
    """Function -> its instructions [(pc, bytes, text)], from `go tool objdump`."""
    cmd = [go_command(toolchain), "tool", "objdump"]
    if pattern:
        cmd += ["-s", pattern]
    out = subprocess.run([*cmd, str(path)], env=go_env(toolchain),
                         capture_output=True, text=True, check=True, timeout=300).stdout
    funcs: dict[str, list[tuple]] = {}
    insns: list[tuple] = []
    for line in out.splitlines():
        if line.startswith("TEXT "):
            insns = funcs.setdefault(line.split()[1].removesuffix("(SB)"), [])
        elif m := INSN_RE.match(line):
            insns.append((int(m.group(1), 16), bytes.fromhex(m.group(2)), m.group(3)))
    assert funcs, f"go tool objdump printed nothing for {path}"
    return funcs


@functools.cache
def headers(path: Path) -> tuple[list[tuple[int, int, int]], dict[str, tuple[int, int, str]]]:
    """PT_LOAD (vaddr, offset, filesz) and allocated sections name -> (addr, size, type)."""
    with open(path, "rb") as f:
        elf = ELFFile(f)
        loads = [(s["p_vaddr"], s["p_offset"], s["p_filesz"]) for s in elf.iter_segments()
                 if s["p_type"] == "PT_LOAD"]
        sections = {s.name: (s["sh_addr"], s["sh_size"], s["sh_type"])
                    for s in elf.iter_sections() if s["sh_flags"] & 2}
    return loads, sections


def file_offset(path: Path, vaddr: int) -> int:
    for seg_vaddr, offset, filesz in headers(path)[0]:
        if seg_vaddr <= vaddr < seg_vaddr + filesz:
            return vaddr - seg_vaddr + offset
    raise AssertionError(f"{vaddr:#x} is in no file-backed PT_LOAD of {path}")


def section_position(path: Path, vaddr: int) -> tuple[str, int]:
    """(section, offset in it): comparable between builds whose sections moved."""
    for name, (addr, size, _type) in headers(path)[1].items():
        if addr <= vaddr < addr + size:
            return name, vaddr - addr
    raise AssertionError(f"{vaddr:#x} is in no section of {path}")


def pie_or_stripped_ids():
    return [pytest.param(t, v, id=f"{t}-{v}") for t in TOOLCHAINS for v in STRIPPED_VARIANTS]


# -- function entries ----------------------------------------------------------------------

@pytest.mark.parametrize(("toolchain", "variant"), pie_or_stripped_ids())
def test_function_entries_match_the_symbols_of_the_same_code(toolchain, variant):
    """Stripping leaves the code where it was (only the data moves: see the globals' test;
    so the code differs in its RIP-relative displacements)."""
    ref = reference(toolchain, variant)
    assert headers(ref)[1][".text"][:2] == headers(build(toolchain, variant))[1][".text"][:2]
    syms = nm(ref, toolchain)
    entries = {n.replace("·", "."): a for n, a in
               golayout.function_entries(build(toolchain, variant)).items()}
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
    got = golayout.size_specialized_mallocs(build(toolchain, "stripped"))
    assert got == truth
    if toolchain == "go1.27":  # the default in 1.27: the three families are all there
        for family in ("runtime.mallocgcSmallNoScanSC", "runtime.mallocgcSmallScanNoHeaderSC",
                       "runtime.mallocgcTinySC"):
            assert any(n.startswith(family) for n in got), family
    else:
        assert not got
    prefixed = golayout.functions_with_prefix(build(toolchain, "stripped"), "runtime.mallocgc")
    assert set(got) <= set(prefixed) and "runtime.mallocgc" in prefixed


# -- probe sites ---------------------------------------------------------------------------

def probed_functions(path: Path) -> list[str]:
    return [*PROBED, *golayout.size_specialized_mallocs(path)]


@pytest.mark.parametrize("variant", list(gobuild.VARIANTS))
@pytest.mark.parametrize("toolchain", TOOLCHAINS)
def test_probe_sites_are_the_jbe_after_the_stack_check(toolchain, variant):
    path = build(toolchain, variant)
    data = path.read_bytes()
    b = load_binary(str(path))
    for name in probed_functions(path):
        site = golayout.probe_site(b, name)
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
        site = golayout.probe_site(build(toolchain, "stripped"), name)
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
        found = golayout.stack_check(code, len(code))
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
        site = golayout.probe_site(out, name)
        assert site is not None and site.form == form
        assert site.vaddr == objdump_jbe(funcs[name])
        texts = [text.split()[0] for _pc, _raw, text in funcs[name][:5]]
        if form == "huge":
            assert texts[:3] == ["MOVQ", "SUBQ", "JB"], texts


def test_no_probe_site_without_a_stack_check(cpusplit_plain):
    b = load_binary(str(cpusplit_plain.path))
    assert golayout.probe_site(b, "runtime.noSuchFunction") is None
    # A leaf without a stack check: its code starts with something else.
    funcs = objdump(cpusplit_plain.path, "go1.26", r"^internal/abi\.NoEscape$")
    assert objdump_jbe(funcs["internal/abi.NoEscape"]) is None
    assert golayout.probe_site(b, "internal/abi.NoEscape") is None


# -- runtime globals -----------------------------------------------------------------------

@pytest.mark.parametrize("toolchain", TOOLCHAINS)
def test_globals_of_the_normal_build(toolchain):
    path = build(toolchain, "normal")
    syms = nm(path, toolchain)
    for name in GLOBALS:
        assert golayout.global_address(path, name) == syms[name][0], name
        # The code heuristics alone (what stripped builds get) find the very same address.
        assert golayout.global_address(path, name, symbols=False) == syms[name][0], name
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
        got = golayout.global_address(path, name)
        assert got is not None, name
        assert section_position(path, got) == section_position(ref, syms[name][0]), name


def test_global_none_when_the_value_is_not_the_default(tmp_path):
    """A candidate that fails validation gives None, never an address."""
    src = build("go1.26", "stripped")
    copy = tmp_path / "patched"
    shutil.copy(src, copy)
    rate = golayout.global_address(src, "runtime.MemProfileRate")
    assert rate is not None
    data = bytearray(copy.read_bytes())
    off = file_offset(src, rate)
    assert int.from_bytes(data[off:off + 8], "little") == MEM_PROFILE_RATE_DEFAULT
    data[off:off + 8] = (1234).to_bytes(8, "little")
    copy.write_bytes(bytes(data))
    assert golayout.global_address(copy, "runtime.MemProfileRate") is None
    assert golayout.global_address(copy, "runtime.mbuckets") == \
        golayout.global_address(src, "runtime.mbuckets")
    assert golayout.global_address(copy, "runtime.noSuchVariable") is None


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
        refs = golayout.rip_refs(code, insns[0][0])
        for pc, _raw, text in insns:
            m = SB_RE.search(text)
            if m is None or text.split()[0].startswith(("CALL", "J")) or m.group(1) not in syms:
                continue
            target = syms[m.group(1)][0] + int(m.group(2) or 0)
            # The byte before an instruction without REX may look like one: at is then
            # one less (the target, what matters, is the same).
            assert any(r.target == target and pc - 1 <= r.at <= pc for r in refs), (name, text)


def test_non_go_binary():
    true = shutil.which("true") or "/bin/true"
    for name in PROBED:
        assert golayout.probe_site(true, name) is None
    for name in GLOBALS:
        assert golayout.global_address(true, name) is None
    with pytest.raises(SymbolizerError, match="not a Go program"):
        golayout.runtime_layout(true)


# -- struct layout -------------------------------------------------------------------------

def dwarf_structs(path: Path) -> dict[str, dict]:
    """The test's own DWARF reading: every unit walked, each struct's size and members
    (offset, type size)."""
    wanted = {"runtime.mcache", "runtime.mspan", "runtime.bucket", "runtime.memRecordCycle"}
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
                    size = t.attributes.get("DW_AT_byte_size")
                    members[m.attributes["DW_AT_name"].value.decode()] = (
                        m.attributes["DW_AT_data_member_location"].value,
                        size.value if size else None)
                out[name] = {"size": die.attributes["DW_AT_byte_size"].value,
                             "members": members}
    assert set(out) == wanted
    return out


@pytest.mark.parametrize("toolchain", TOOLCHAINS)
def test_layout_from_dwarf_equals_the_table(toolchain):
    path = build(toolchain, "normal")
    layout = golayout.runtime_layout(path)
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
    table = golayout.table_layout(layout.go_version)
    assert dataclasses.replace(layout, source="table") == table
    for variant in STRIPPED_VARIANTS:
        assert golayout.runtime_layout(build(toolchain, variant)) == table


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
        golayout.runtime_layout(path)
    message = str(err.value)
    assert f"go1.{minor}" in message and "1.19" in message and "1.27" in message
    assert "DWARF" in message
    # With DWARF any version is read from it.
    normal = with_go_version(build("go1.26", "normal"), tmp_path / "normal", minor)
    layout = golayout.runtime_layout(normal)
    assert layout.source == "dwarf" and layout.go_version.startswith(f"go1.{minor}.")


def test_decoders_take_any_bytes():
    """Truncated prologues and garbage give None or candidates inside the code, never an
    exception (a corrupt or unusual binary must not break the caller)."""
    rng = random.Random(7)
    huge = bytes.fromhex("4989e4" "4981eca84d0000" "0f8296000000" "4d3b6610" "0f868c000000")
    for cut in range(len(huge) + 1):
        found = golayout.stack_check(huge[:cut])
        assert found is None if cut < len(huge) else found == ("huge", 0x10, 20, 6)
    assert golayout.stack_check(huge, size=20 + 6 + 0x8C) is None  # jumps past the end
    for _ in range(3000):
        code = rng.randbytes(rng.randrange(64))
        golayout.stack_check(code, rng.choice([None, 8, 1000]))
        for ref in golayout.rip_refs(code, 0x1000):
            assert 0x1000 <= ref.at < 0x1000 + len(code)


def test_truncated_binaries_fail_cleanly(tmp_path):
    data = build("go1.26", "normal").read_bytes()
    for size in (len(data) // 3, len(data) // 2, len(data) - 4096):
        path = tmp_path / f"cut{size}"
        path.write_bytes(data[:size])
        for call in (lambda p: golayout.probe_site(p, "runtime.mallocgc"),
                     lambda p: golayout.global_address(p, "runtime.mbuckets"),
                     lambda p: golayout.global_address(p, "runtime.MemProfileRate"),
                     golayout.runtime_layout):
            try:
                call(path)
            except SymbolizerError:
                pass


def test_path_of_another_copy(tmp_path):
    """A BinarySymbols shared by files with the same build id reads the file it is told."""
    first, second = tmp_path / "first", tmp_path / "second"
    shutil.copy(build("go1.27", "stripped"), first)
    shutil.copy(first, second)
    b = load_binary(str(first))
    expected = (golayout.probe_site(b, "runtime.mallocgc"),
                golayout.global_address(b, "runtime.mbuckets"), golayout.runtime_layout(b))
    assert None not in expected
    first.unlink()
    with pytest.raises(SymbolizerError):
        golayout.probe_site(b, "runtime.mallocgc")
    path = str(second)
    assert (golayout.probe_site(b, "runtime.mallocgc", path=path),
            golayout.global_address(b, "runtime.mbuckets", path=path),
            golayout.runtime_layout(b, path=path)) == expected
