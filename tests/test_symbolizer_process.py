"""ProcessSymbolizer on live processes (a Go PIE and a dynamically linked C program),
on a fake /proc, and KernelSymbolizer on /proc/kallsyms."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from elftools.elf.elffile import ELFFile
from goprof.model import Frame
from goprof.symbolizer import (
    KERNEL_MAPPING,
    BinaryCache,
    KernelSymbolizer,
    ProcessGone,
    ProcessSymbolizer,
)

from tests import gobuild
from tests.test_symbolizer import functions


def runtime_address(ps: ProcessSymbolizer, binary, path: str, vaddr: int) -> int:
    """Where the byte at ELF address vaddr of path is mapped in the process."""
    seg = next(s for s in binary.segments if s.vaddr <= vaddr < s.vaddr + s.filesz)
    off = vaddr - seg.vaddr + seg.offset
    for m in ps.mappings:
        if m.path == path and m.offset <= off < m.offset + (m.limit - m.start):
            return m.start + off - m.offset
    raise AssertionError(f"{path} offset {off:#x} is not mapped executable")


@pytest.fixture
def running_pie():
    binary = gobuild.build("cpusplit", "go1.26", "pie")
    proc = subprocess.Popen([str(binary.path), "-duration", "5s"], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield binary, proc
    finally:
        proc.kill()
        proc.wait()


def test_live_go_pie_and_after_exit(running_pie):
    binary, proc = running_pie
    cache = BinaryCache()
    ps = ProcessSymbolizer(proc.pid, cache)
    assert not ps.errors
    path = str(binary.path)
    mine = [m for m in ps.mappings if m.path == path]
    assert mine and all(m.build_id and m.symbolized for m in mine)
    b = cache.get(path)
    funcs = functions(b)
    alpha = runtime_address(ps, b, path, funcs["main.alpha"][0] + 4)
    loc = ps.locate(alpha)
    assert loc.address == alpha and loc.mapping in mine
    assert loc.frames[-1].function == "main.alpha"
    assert ps.frameless(alpha)
    assert ps.locate(alpha) is loc  # cached per address

    proc.kill()
    proc.wait()
    # Gone, yet the snapshot still names addresses never asked before.
    gamma = runtime_address(ps, b, path, funcs["main.gamma"][0] + 8)
    frames = ps.locate(gamma).frames
    assert [f.function for f in frames] == ["main.mix", "main.gamma"]
    assert ps.locate(8).frames == () and ps.locate(8).mapping is None
    with pytest.raises(ProcessGone):
        ps.refresh()
    with pytest.raises(ProcessGone):
        ProcessSymbolizer(proc.pid, cache)


def test_libc_of_a_c_program():
    sleep = shutil.which("sleep") or "/bin/sleep"
    proc = subprocess.Popen([sleep, "5"])
    try:
        # The dynamic loader maps libc right after exec: wait until it shows.
        for _ in range(200):
            with open(f"/proc/{proc.pid}/maps") as f:
                if "libc" in f.read():
                    break
            subprocess.run(["sleep", "0.01"])
        cache = BinaryCache()
        ps = ProcessSymbolizer(proc.pid, cache)
        libc = [m for m in ps.mappings if "/libc" in m.path]
        if not libc:
            pytest.skip("sleep does not map libc here (static build?)")
        path = libc[0].path
        b = cache.get(f"/proc/{proc.pid}/map_files/{libc[0].start:x}-{libc[0].limit:x}")
        assert not b.is_go and b.build_id == libc[0].build_id
        with open(path, "rb") as f:
            syms = [s for s in ELFFile(f).get_section_by_name(".dynsym").iter_symbols()
                    if s["st_info"]["type"] == "STT_FUNC" and s["st_size"] > 8]
        by_addr: dict[int, set[str]] = {}
        for s in syms:
            by_addr.setdefault(s["st_value"], set()).add(s.name)
        for name in ("nanosleep", "clock_nanosleep", "malloc", "memcpy"):
            sym = next((s for s in syms if s.name == name), None)
            if sym is None:
                continue
            addr = runtime_address(ps, b, path, sym["st_value"] + 2)
            loc = ps.locate(addr)
            assert loc.mapping is not None and "/libc" in loc.mapping.path
            assert loc.frames and loc.frames[0].function in by_addr[sym["st_value"]]
            assert not ps.frameless(addr)
            break
        else:
            pytest.skip("none of the probed libc functions is in .dynsym")
    finally:
        proc.kill()
        proc.wait()


def test_fake_proc_root_bad_mapping_and_refresh(tmp_path, cpusplit_plain):
    pid = 4242
    proc = tmp_path / str(pid)
    (proc / "root" / "opt").mkdir(parents=True)
    shutil.copy(cpusplit_plain.path, proc / "root" / "opt" / "app")
    maps = proc / "maps"
    maps.write_text(
        "00400000-004d0000 r-xp 00000000 00:20 11 /opt/app\n"
        "7f0000000000-7f0000001000 r-xp 00000000 00:20 12 /opt/missing.so\n"
        "7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0 [vdso]\n"
        "7ffe00000000-7ffe00021000 rw-p 00000000 00:00 0 [stack]\n")
    cache = BinaryCache()
    ps = ProcessSymbolizer(pid, cache, root=str(tmp_path))
    # The [vdso] is read from /proc/PID/mem, which this fake root lacks: recorded, skipped.
    assert [m.path for m in ps.mappings] == ["/opt/app", "/opt/missing.so", "[vdso]"]
    assert len(ps.errors) == 2 and "/opt/missing.so" in ps.errors[0]
    assert "[vdso]" in ps.errors[1]
    assert not ps.mappings[1].symbolized and not ps.mappings[2].symbolized
    b = cache.get(str(proc / "root" / "opt" / "app"))
    alpha = functions(b)["main.alpha"][0]  # non-PIE: mapped at its link address
    assert ps.locate(alpha).frames[-1].function == "main.alpha"
    assert ps.locate(0x7F0000000010).frames == ()

    with maps.open("a") as f:
        f.write("004d0000-00512000 r--p 000d0000 00:20 11 /opt/app\n"
                "00600000-00601000 r-xp 00000000 00:20 11 /opt/app\n")
    misses = cache.misses
    ps.refresh()
    assert len(ps.mappings) == 4 and cache.misses == misses


def test_kernel_symbols():
    if os.geteuid() != 0:
        pytest.skip("kallsyms shows addresses to root only")
    ks = KernelSymbolizer()
    if not ks.available:
        pytest.skip("kallsyms addresses are hidden (kptr_restrict)")
    with open("/proc/kallsyms") as f:
        row = next(line.split() for line in f if line.split()[1:3] in (["T", "schedule"],
                                                                        ["t", "schedule"]))
    addr = int(row[0], 16)
    loc = ks.locate(addr + 1)
    assert loc.frames == (Frame("schedule", kernel=True),)
    assert loc.mapping is KERNEL_MAPPING and loc.address == addr + 1
    assert ks.locate(1).frames == ()


def test_vdso_is_named_from_the_process_memory(running_pie):
    """Go reads its clocks in the vDSO, which has no file: its image is read from memory."""
    _, proc = running_pie
    sym = ProcessSymbolizer(proc.pid, BinaryCache())
    vdso = [m for m in sym.mappings if m.path == "[vdso]"]
    assert vdso and vdso[0].symbolized, sym.errors
    names = {f.function for addr in range(vdso[0].start, vdso[0].limit, 16)
             for f in sym.locate(addr).frames}
    assert "__vdso_clock_gettime" in names, names
