"""`goprof doctor`: what works on this kernel, and why not.

Every check really does the thing (loads and attaches the CPU program, opens a
perf event), so a pass means `goprof cpu` will work. It also warms the compiled
BPF cache, which is why `make setup` runs it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from goprof.errors import GoprofError
from rich.console import Console
from rich.table import Table


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    core: bool = True  # goprof cpu cannot work without it


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="check what goprof can do on this machine",
                       description="Check privileges, bcc, kernel headers, perf events and "
                                   "BPF on this kernel; exit 0 when goprof cpu works, 2 if not.")
    p.set_defaults(run=run)


def _try(name: str, fn: Callable[[], str], core: bool = True) -> Check:
    try:
        return Check(name, True, fn(), core)
    except GoprofError as e:
        return Check(name, False, str(e), core)
    except OSError as e:
        return Check(name, False, f"{e.strerror or e}", core)


def _privileges() -> str:
    from goprof.targets import check_privileges

    check_privileges()
    return "root" if os.geteuid() == 0 else "CAP_BPF + CAP_PERFMON"


def _bcc() -> str:
    from goprof.bpf.objects import check_bcc_ready

    check_bcc_ready()
    build = Path("/lib/modules") / os.uname().release / "build"
    return f"bcc found; kernel headers at {build.resolve()}"


def _btf() -> str:
    """BTF gives where a task's FS base lies (pprof labels on CPU samples); read once
    per kernel and cached, which this warms."""
    from goprof.recording.labels import fsbase_offset

    if not Path("/sys/kernel/btf/vmlinux").exists():
        raise GoprofError("no /sys/kernel/btf/vmlinux: CPU samples will carry no pprof labels "
                          "(everything else works)")
    offset, why = fsbase_offset()
    if why:
        raise GoprofError(why)
    return f"/sys/kernel/btf/vmlinux: task_struct.thread.fsbase at {offset} (pprof labels)"


def _compile_and_attach() -> str:
    from goprof.kinds.cpu.recorder import CpuRecorder

    started = time.monotonic()
    rec = CpuRecorder(frequency=99, want_kernel=True, window_s=1.0)
    rec.open()
    try:
        rec.add_target(os.getpid())
        rec.start()
        # Burn a little CPU in this process so the program has something to count.
        end = time.monotonic() + 0.3
        x = 0
        while time.monotonic() < end:
            x += 1
        rec.stop()
        window = rec.drain()
    finally:
        rec.close()
    took = time.monotonic() - started
    how = "from the cache" if rec.compiled_from_cache else "compiled now, cached"
    if window.stats.counted == 0:
        raise GoprofError(f"program loaded ({how}) but counted no samples in 0.3 s of CPU")
    return (f"cpu program loaded ({how}) and attached on {len(rec.cpus)} CPUs: "
            f"{window.stats.counted} samples of itself in {took:.2f} s")


def _kallsyms() -> str:
    with open("/proc/kallsyms") as f:
        first = f.readline().split()
    if not first or int(first[0], 16) == 0:
        raise GoprofError("kernel addresses are hidden (kptr_restrict): kernel frames "
                          "will stay unnamed")
    return "readable"


def _stats() -> str:
    v = Path("/proc/sys/kernel/bpf_stats_enabled").read_text().strip()
    return f"kernel.bpf_stats_enabled={v} (1 lets `bench/` measure BPF time per sample)"


def _uprobe() -> str:
    """Loads the goprof mem programs (warming their cache) and attaches one to a uprobe
    on this Python's ELF entry point, which runs only at start-up: it never fires."""
    from goprof.bpf import syscalls
    from goprof.kinds.mem.recorder import MemRecorder, Probe
    from goprof.symbolizer.elffile import ElfImage

    t = Path("/sys/bus/event_source/devices/uprobe/type")
    if not t.exists():
        raise GoprofError("no uprobe PMU: goprof mem will not work")
    exe = os.path.realpath(sys.executable)
    with ElfImage(exe) as img:
        seg = img.segment_of(img.entry)
        if seg is None:
            raise GoprofError(f"{exe}: its entry point is in no segment")
        offset = img.entry - seg.vaddr + seg.offset
    rec = MemRecorder(span_rate=512 * 1024)
    try:
        rec.open()
        rec.attach(Probe(exe, offset, "on_malloc", "_start"))
        rec.start()
    except syscalls.BPFError as e:
        raise GoprofError(str(e)) from None
    finally:
        rec.close()
    how = "from the cache" if rec.compiled_from_cache else "compiled now, cached"
    return f"uprobe PMU type {int(t.read_text())}; mem programs loaded ({how}) and attached"


def run(args: argparse.Namespace, console: Console) -> int:
    checks = [_try("privileges", _privileges)]
    checks.append(_try("bcc + kernel headers", _bcc))
    if all(c.ok for c in checks):
        checks.append(_try("perf_event cpu-clock + BPF", _compile_and_attach))
    checks += [
        _try("kernel symbols", _kallsyms, core=False),
        _try("BTF", _btf, core=False),
        _try("uprobes (for goprof mem)", _uprobe, core=False),
        _try("BPF run-time stats", _stats, core=False),
    ]
    table = Table(box=None, pad_edge=False, show_header=False)
    for c in checks:
        mark = "[green]ok[/]" if c.ok else ("[red]FAIL[/]" if c.core else "[yellow]no[/]")
        table.add_row(mark, c.name, c.detail)
    Console().print(table)
    works = all(c.ok for c in checks if c.core)
    Console().print("goprof cpu works here." if works else
                    "goprof cpu cannot run here: fix the FAIL lines above.")
    return 0 if works else 2
