"""goprof.golang.tls: the FS-relative offset of g, per binary.

Checked three ways: against `go tool objdump` of runtime.stackcheck and against the
runtime.tlsg symbol's place in the PT_TLS block (the linker's view); on patched copies
(a form it does not know, an offset outside the TLS block: None, never a guess); and
live (root): a BPF program reads each thread's FS base from its task_struct and g at
fsbase + offset, follows g.m to m.procid at every event, and /proc/PID/mem of the
stopped process shows that the word there is a g of that thread's m.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from goprof.bpf import btf
from goprof.golang.dwarf import read_structs
from goprof.golang.tls import g_loads, g_tls_offset, tls_access, tls_block_size
from goprof.symbolizer.elffile import ElfImage

from tests import gobuild
from tests.conftest import requires_root
from tests.gotruth import TOOLCHAINS, build, objdump, reference

HERE = Path(__file__).resolve().parent

# Externally linked builds (cgo's runtime, gcc and GNU ld); static glibc brings its own
# thread-locals into the executable's TLS block, which moves Go's g off -8.
EXTERNAL = {
    "external": ["-ldflags=-linkmode=external"],
    "external-pie": ["-buildmode=pie", "-ldflags=-linkmode=external"],
    "external-static": ["-ldflags=-linkmode=external -extldflags=-static"],
}
GO_VARIANTS = [(t, v) for t in TOOLCHAINS for v in gobuild.VARIANTS]
EXTERNAL_BUILDS = [(t, v) for t in gobuild.TOOLCHAINS for v in EXTERNAL]
ALL = GO_VARIANTS + EXTERNAL_BUILDS
# objdump: "MOVQ FS:0xfffffff8, AX" or "MOVQ $-0x8, CX" then "MOVQ FS:0(CX), AX".
FS_ABS_RE = re.compile(r"MOVQ FS:0x([0-9a-f]+), \w+")
MOV_IMM_RE = re.compile(r"MOVQ \$(-?0x[0-9a-f]+), (\w+)")
FS_REG_RE = re.compile(r"MOVQ FS:0\((\w+)\), \w+")


def ids(builds):
    return [f"{t}-{v}" for t, v in builds]


def external_build(toolchain: str, variant: str) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is missing: no external linking")
    if variant == "external-static" and not list(Path("/usr/lib").glob("*/libc.a")):
        pytest.skip("no static libc (libc6-dev's libc.a)")
    key = f"tls-cpusplit-{toolchain}-{variant}-{gobuild._source_hash('cpusplit')}"
    out = gobuild.CACHE / key / "cpusplit"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        env = {**gobuild.go_env(toolchain), "CGO_ENABLED": "1"}
        res = subprocess.run([gobuild.go_command(), "build", *EXTERNAL[variant], "-o", str(tmp),
                              "./cpusplit"], cwd=gobuild.FIXTURES, env=env,
                             capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stdout + res.stderr
        tmp.rename(out)
    return out


def binary_of(toolchain: str, variant: str) -> Path:
    return external_build(toolchain, variant) if variant in EXTERNAL else \
        build(toolchain, variant)


def with_symbols(toolchain: str, variant: str) -> Path:
    """The build with symbols and DWARF whose code matches (the external ones keep theirs)."""
    return binary_of(toolchain, variant) if variant in EXTERNAL else reference(toolchain, variant)


def objdump_offset(path: Path, toolchain: str) -> int:
    """The FS offset runtime.stackcheck loads g from, as `go tool objdump` prints it."""
    insns = objdump(path, toolchain, r"^runtime\.stackcheck(\.abi0)?$")
    [body] = insns.values()
    texts = [text for _pc, _raw, text in body[:2]]
    if m := FS_ABS_RE.fullmatch(texts[0]):
        return struct.unpack("<i", int(m.group(1), 16).to_bytes(4, "little"))[0]
    imm, reg = MOV_IMM_RE.fullmatch(texts[0]).groups()
    assert FS_REG_RE.fullmatch(texts[1]).group(1) == reg, texts
    return int(imm, 16)


def tlsg_offset(path: Path) -> int | None:
    """runtime.tlsg's FS offset from the symbol table and PT_TLS: its place in the block
    minus the block's size (variant II: the block ends at the FS base); None without
    PT_TLS or without the symbol (Go's own linker names none: an internally linked PIE
    has an 8-byte block, a static executable none and the runtime's settls makes -8)."""
    with open(path, "rb") as f:
        elf = ELFFile(f)
        tls = [s for s in elf.iter_segments() if s["p_type"] == "PT_TLS"]
        if not tls:
            return None
        symtab = elf.get_section_by_name(".symtab")
        syms = symtab.get_symbol_by_name("runtime.tlsg") if symtab else None
        if not syms:
            return None
        sym = syms[0]
        align = max(tls[0]["p_align"], 1)
        block = -(-tls[0]["p_memsz"] // align) * align
        return sym["st_value"] - block


# -- the offset, from the binary ---------------------------------------------------------

@pytest.mark.parametrize(("toolchain", "variant"), ALL, ids=ids(ALL))
def test_offset_is_what_objdump_and_the_tls_block_say(toolchain, variant):
    path = binary_of(toolchain, variant)
    t0 = time.perf_counter()
    offset = g_tls_offset(path)
    took = time.perf_counter() - t0
    truth = with_symbols(toolchain, variant)
    assert offset == objdump_offset(truth, toolchain)
    from_block = tlsg_offset(truth)
    assert (from_block is not None) == (variant in EXTERNAL)
    assert offset == (from_block or -8)
    assert offset == (-88 if variant == "external-static" else -8)  # what each gave here
    [load] = g_loads(path)
    assert load.function == "runtime.stackcheck"
    assert load.form == ("immediate" if "pie" in variant else "absolute")
    assert took < 2, f"{took:.2f} s"  # ~10 ms measured


def test_instruction_forms():
    # MOVQ FS:-8, AX (stackcheck); MOVQ FS:-8, R14 (an ABI0 prologue); MOVQ R14, FS:-16
    # (a save_g); MOVQ $-8, R14 then MOVQ FS:0(R14), R14; MOVQ FS:8(CX) with a disp8.
    assert tls_access(bytes.fromhex("64488b0425f8ffffff")) == (0, -8, "absolute")
    assert tls_access(bytes.fromhex("644c8b3425f8ffffff")) == (0, -8, "absolute")
    assert tls_access(bytes.fromhex("644c893425f0ffffff")) == (0, -16, "absolute")
    assert tls_access(bytes.fromhex("49c7c6f8ffffff644d8b36")) == (7, -8, "immediate")
    assert tls_access(bytes.fromhex("48c7c1a0ffffff64488b4108")) == (7, -88, "immediate")
    for code in [
        "48c7c1f8ffffff64488b02",  # the FS load uses another register than the MOV's
        "488b0d00100000" "64488b01",  # MOVQ tlsg@GOTTPOFF(RIP), CX: decided at load time
        "64488b05f8ffffff",  # FS:[RIP + disp]: not a TLS slot
        "64488b04cdf8ffffff",  # an index register
        "648b0425f8ffffff",  # a 32-bit load cannot be g
        "64488b0425f8ff",  # truncated
        "c3", "",
    ]:
        assert tls_access(bytes.fromhex(code)) is None, code


def patched_copy(src: Path, dst: Path, vaddr: int, old: bytes, new: bytes) -> Path:
    data = bytearray(src.read_bytes())
    with ElfImage(str(src)) as img:
        seg = img.segment_of(vaddr)
        at = vaddr - seg.vaddr + seg.offset
    assert data[at:at + len(old)] == old
    data[at:at + len(new)] = new
    dst.write_bytes(bytes(data))
    return dst


@pytest.mark.parametrize("variant", ["stripped", "external-static"])
def test_none_for_an_unknown_form_or_an_offset_outside_the_tls_block(tmp_path, variant):
    toolchain = "go1.26"
    path = binary_of(toolchain, variant)
    [load] = g_loads(path)
    code = bytes.fromhex("64488b0425") + struct.pack("<i", load.offset)
    nop = patched_copy(path, tmp_path / "nop", load.vaddr, code, b"\x90" * len(code))
    assert g_loads(nop) == [] and g_tls_offset(nop) is None
    # An offset the code gives but the binary's TLS block cannot hold.
    outside = -0x1000 if variant == "external-static" else -16
    far = patched_copy(path, tmp_path / "far", load.vaddr, code,
                       code[:5] + struct.pack("<i", outside))
    assert [g.offset for g in g_loads(far)] == [outside]
    assert g_tls_offset(far) is None
    with ElfImage(str(path)) as img:
        assert tls_block_size(img) == (None if variant == "stripped" else 0x78)


C_SHARED = """package main

import "C"

//export Add
func Add(a, b C.int) C.int { return a + b }

func main() {}
"""


def test_none_for_a_shared_object(tmp_path):
    """A c-shared library reads the offset from its GOT (MOVQ tlsg@GOTTPOFF(RIP), CX),
    where ld.so writes it at load time: not knowable from the file."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is missing: no c-shared build")
    (tmp_path / "main.go").write_text(C_SHARED)
    (tmp_path / "go.mod").write_text("module cshared\n\ngo 1.26\n")
    lib = tmp_path / "libadd.so"
    subprocess.run([gobuild.go_command(), "build", "-buildmode=c-shared", "-o", str(lib), "."],
                   cwd=tmp_path, env={**gobuild.go_env("go1.26"), "CGO_ENABLED": "1"},
                   check=True, capture_output=True, timeout=600)
    [first] = objdump(lib, "go1.26", r"^runtime\.stackcheck(\.abi0)?$").values()
    assert re.fullmatch(r"MOVQ 0x[0-9a-f]+\(IP\), CX", first[0][2]), first[0]
    assert g_loads(lib) == [] and g_tls_offset(lib) is None


def test_none_for_a_program_that_is_not_go():
    assert g_tls_offset(sys.executable) is None


# -- live: the g a BPF program finds is the thread's --------------------------------------

def read_word(mem, addr: int) -> int | None:
    try:
        raw = os.pread(mem, 8, addr)
    except OSError:
        return None
    return int.from_bytes(raw, "little") if len(raw) == 8 else None


def stopped(pid: int, timeout: float = 10) -> None:
    """Wait until every thread of a SIGSTOPped process has stopped."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = []
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                states.append(task.joinpath("stat").read_text().rsplit(")", 1)[1].split()[0])
            except OSError:
                continue
        if states and all(s in "tT" for s in states):
            return
        time.sleep(0.02)
    raise AssertionError(f"{pid} did not stop")


def thread_g(mem, fsbase: int, offset: int, tid: int, f: dict[str, int]) -> str | None:
    """Which g of the thread's m the word at fsbase + offset is (g0, curg, gsignal), or
    None when it is no g of this thread's m."""
    g = read_word(mem, fsbase + offset)
    m = read_word(mem, g + f["g.m"]) if g else None
    if not m or read_word(mem, m + f["m.procid"]) != tid:
        return None
    for name in ("g0", "curg", "gsignal"):
        if read_word(mem, m + f[f"m.{name}"]) == g:
            return name
    return None


LIVE = [(t, v) for t in gobuild.TOOLCHAINS for v in list(gobuild.VARIANTS) + list(EXTERNAL)]


@requires_root
@pytest.mark.skipif(not Path(btf.VMLINUX).exists(), reason="no kernel BTF")
@pytest.mark.parametrize(("toolchain", "variant"), LIVE, ids=ids(LIVE))
def test_live_g_of_every_thread(toolchain, variant):
    path = binary_of(toolchain, variant)
    offset = g_tls_offset(path)
    assert offset is not None
    structs = read_structs(str(with_symbols(toolchain, variant)), {"runtime.g", "runtime.m"})
    g_, m_ = structs["runtime.g"].members, structs["runtime.m"].members
    fields = {"g.m": g_["m"][0], **{f"m.{n}": m_[n][0]
                                     for n in ("g0", "curg", "gsignal", "procid")}}
    target = subprocess.Popen([str(path), "-duration", "60s"], stdout=subprocess.PIPE,
                              text=True)
    probe = None
    try:
        assert target.stdout.readline().strip() == "ready"
        probe = subprocess.Popen(
            [sys.executable, str(HERE / "fsbase_probe.py"), "--pid", str(target.pid),
             "--offset", str(btf.task_fsbase_offset()), "--g-offset", str(offset),
             "--g-m", str(fields["g.m"]), "--m-procid", str(fields["m.procid"]),
             "--events", "both"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert probe.stdout.readline().strip() == "ready"
        time.sleep(1.5)
        seen = {k: {int(t): v for t, v in d.items()}
                for k, d in json.loads(probe.communicate("done\n", timeout=60)[0]).items()}
        os.kill(target.pid, signal.SIGSTOP)
        stopped(target.pid)
        alive = {int(t.name) for t in Path(f"/proc/{target.pid}/task").iterdir()}
        mem = os.open(f"/proc/{target.pid}/mem", os.O_RDONLY)
        try:
            which = {tid: thread_g(mem, fsbase, offset, tid, fields)
                     for tid, fsbase in seen["fsbase"].items() if tid in alive}
            wrong = {tid: thread_g(mem, fsbase, offset - 8, tid, fields)
                     for tid, fsbase in seen["fsbase"].items() if tid in alive}
        finally:
            os.close(mem)
    finally:
        for p in (probe, target):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    events, matches = sum(seen["events"].values()), sum(seen["matches"].values())
    starting = sum(seen["starting"].values())
    # Shown with -s: what each build gave.
    print(f"\n{toolchain}-{variant}: g at fs{offset:+d}; threads {sorted(which.values())}; "
          f"BPF events {events}, g.m.procid == tid in {matches}, 0 in {starting}")
    fsbases = list(seen["fsbase"].values())
    assert len(fsbases) >= 2 and len(set(fsbases)) == len(fsbases) and 0 not in fsbases
    # Every thread's word at fsbase + offset is a g of the m running on that thread; the
    # busy main goroutine is some thread's curg; a neighbouring offset is no g at all.
    assert which and all(which.values()), which
    assert "curg" in which.values(), which
    assert not any(wrong.values()), wrong
    # At every BPF event (system calls and cpu-clock samples), g.m.procid was the thread,
    # or g or m.procid was still 0 in a new thread (seen once in ~2000 events).
    assert events >= 100 and matches + starting == events, (matches, starting, events)
    assert starting <= 10 * len(fsbases), starting
