"""A target's Go runtime, seen from outside: its binary, where it is loaded, its
heap sampler's rate (read and, when asked, written through /proc/PID/mem), and
the uprobe sites and struct offsets each allocation method needs."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from goprof.errors import EnvironmentProblem
from goprof.symbolizer import BinaryCache, BinarySymbols, SymbolizerError
from goprof.symbolizer.golayout import (
    RuntimeLayout,
    global_address,
    probe_site,
    runtime_layout,
    size_specialized_mallocs,
)
from goprof.symbolizer.process import parse_maps
from goprof.targets import Target

MEM_PROFILE_RATE = "runtime.MemProfileRate"
DEFAULT_GO_RATE = 512 * 1024  # Go's own default MemProfileRate

# Methods, cheapest first: what each probes (program name per function).
METHODS = ("go-sampler", "span", "exact")
METHOD_PROBES: dict[str, dict[str, str]] = {
    "go-sampler": {"runtime.profilealloc": "on_sampled_alloc"},
    "span": {"runtime.(*mcache).refill": "on_refill",
             "runtime.(*mcache).allocLarge": "on_alloc_large"},
    "exact": {"runtime.mallocgc": "on_malloc"},
}


@dataclass(frozen=True)
class Site:
    function: str
    program: str
    file_offset: int


@dataclass
class GoProcess:
    target: Target
    path: str  # a path that reaches the executable's inode (/proc/PID/exe)
    inode: tuple[int, int]  # (st_dev, st_ino): one set of uprobes per binary file
    binary: BinarySymbols
    bias: int  # runtime address - ELF virtual address (non-zero for PIE)
    rate_address: int | None = None  # runtime.MemProfileRate in the process, if found
    notes: list[str] = field(default_factory=list)

    @property
    def go_version(self) -> str:
        return self.binary.go_version or "unknown Go version"

    # -- MemProfileRate -------------------------------------------------------
    def read_rate(self) -> int | None:
        if self.rate_address is None:
            return None
        return int.from_bytes(_read_mem(self.target.pid, self.rate_address, 8), "little",
                              signed=True)

    def write_rate(self, rate: int) -> None:
        """What `runtime.MemProfileRate = rate` in the program would do: each P picks the
        new rate up at its next sampled allocation (or at once when it was off)."""
        assert self.rate_address is not None
        _write_mem(self.target.pid, self.rate_address, rate.to_bytes(8, "little", signed=True))

    # -- probes ---------------------------------------------------------------
    def sites(self, method: str) -> list[Site]:
        """Uprobe sites of a method; raises MethodUnavailable saying what is missing."""
        wanted = dict(METHOD_PROBES[method])
        if method == "exact":
            # Go 1.27 calls size-specialized malloc functions directly for small objects;
            # mallocgc's own calls to them are not counted twice (goprof.mem_build).
            for name in size_specialized_mallocs(self.binary):
                wanted[name] = "on_malloc"
        out = []
        for function, program in wanted.items():
            site = probe_site(self.binary, function, path=self.path)
            if site is None:
                raise MethodUnavailable(f"{function} is absent from {self.target.label}'s binary "
                                        "or has no stack check to probe after")
            out.append(Site(function, program, site.file_offset))
        return out

    def layout(self) -> RuntimeLayout:
        try:
            return runtime_layout(self.binary, path=self.path)
        except SymbolizerError as e:
            raise MethodUnavailable(str(e)) from None


class MethodUnavailable(Exception):
    """A method cannot run on a process (missing symbol, unknown Go version)."""


def inspect(target: Target, cache: BinaryCache) -> GoProcess:
    """The Go side of a target; a clear error when it is not a Go program."""
    path = f"/proc/{target.pid}/exe"
    try:
        st = os.stat(path)
        binary = cache.get(path)
    except (OSError, SymbolizerError) as e:
        raise EnvironmentProblem(f"cannot read {target.label}'s executable: {e}") from None
    if not binary.is_go:
        raise EnvironmentProblem(f"{target.label} ({target.exe}) is not a Go program (no "
                                 "Go pclntab): goprof mem profiles Go allocations only; "
                                 "`goprof cpu` profiles any program")
    proc = GoProcess(target, path, (st.st_dev, st.st_ino), binary, _load_bias(target, binary))
    vaddr = global_address(binary, MEM_PROFILE_RATE, path=path)
    if vaddr is not None:
        proc.rate_address = vaddr + proc.bias
    return proc


def _load_bias(target: Target, binary: BinarySymbols) -> int:
    """Where the executable's first PT_LOAD segment is mapped, minus its vaddr."""
    try:
        with open(f"/proc/{target.pid}/maps") as f:
            entries = parse_maps(f.read())
    except OSError as e:
        raise EnvironmentProblem(f"cannot read {target.label}'s memory map: {e.strerror}") \
            from None
    for seg in binary.segments:
        for e in entries:
            if e.path == target.exe and e.offset <= seg.offset < e.offset + (e.end - e.start):
                return e.start + (seg.offset - e.offset) - seg.vaddr
    raise EnvironmentProblem(f"{target.label}: its executable {target.exe} is not in its "
                             "memory map")


def _read_mem(pid: int, address: int, size: int) -> bytes:
    try:
        with open(f"/proc/{pid}/mem", "rb", buffering=0) as f:
            f.seek(address)
            data = f.read(size)
    except OSError as e:
        raise EnvironmentProblem(f"cannot read pid {pid}'s memory at {address:#x}: "
                                 f"{e.strerror}") from None
    if len(data) != size:
        raise EnvironmentProblem(f"pid {pid}'s memory at {address:#x} is not readable")
    return data


def _write_mem(pid: int, address: int, data: bytes) -> None:
    try:
        with open(f"/proc/{pid}/mem", "r+b", buffering=0) as f:
            f.seek(address)
            f.write(data)
    except OSError as e:
        raise EnvironmentProblem(f"cannot write pid {pid}'s memory at {address:#x}: "
                                 f"{e.strerror}") from None
