"""Ground truth about real Go builds for the tests of goprof.golang, from the Go
toolchain's own view, never from the code under test: `go tool nm` (addresses of the
normal and of an unstripped PIE build), `go tool objdump` (instructions), and program
and section headers read here with pyelftools.

Go 1.19 (another pclntab format, MemProfileRate set at run time, older struct layouts)
joins the matrix when its GOROOT is at $GOPROF_GO119_GOROOT, e.g. Debian's packages
unpacked without installing them: `apt-get download golang-1.19-go golang-1.19-src`,
`dpkg -x` both into DIR, GOPROF_GO119_GOROOT=DIR/usr/lib/go-1.19.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

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
    src = gobuild.CACHE / f"golang-go119-{hashlib.sha256(main).hexdigest()[:16]}"
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
    out = gobuild.CACHE / f"golang-pie-{toolchain}" / "cpusplit"
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
