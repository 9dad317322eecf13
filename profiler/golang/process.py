"""A target's Go runtime, seen from outside: its binary, where it is loaded, its
heap sampler's rate (read through /proc/PID/mem; goprof.golang.writes writes it), and
the uprobe sites and struct offsets each allocation method needs."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from goprof.errors import EnvironmentProblem
from goprof.golang.functions import size_specialized_mallocs
from goprof.golang.globals import global_address
from goprof.golang.layouts import RuntimeLayout, runtime_layout
from goprof.golang.probes import probe_site
from goprof.symbolizer import BinaryCache, BinarySymbols, SymbolizerError
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
        with ProcessMemory(self.target.pid, self.target.label) as mem:
            return int.from_bytes(mem.read(self.rate_address, 8), "little", signed=True)

    # Written only through goprof.golang.writes, which shares and records goprof's writes
    # (`runtime.MemProfileRate = rate` as the program would: each P picks it up at its next
    # sampled allocation, or at once when it was off).

    # -- probes ---------------------------------------------------------------
    def sites(self, method: str) -> list[Site]:
        """Uprobe sites of a method; raises MethodUnavailable saying what is missing."""
        wanted = dict(METHOD_PROBES[method])
        if method == "exact":
            # Go 1.27 calls size-specialized malloc functions directly for small objects;
            # mallocgc's own calls to them are not counted twice (goprof.kinds.mem.build).
            try:
                specialized = size_specialized_mallocs(self.binary)
            except SymbolizerError as e:
                raise MethodUnavailable(f"cannot read {self.target.label}'s functions: {e}") \
                    from None
            for name in specialized:
                wanted[name] = "on_malloc"
        out = []
        for function, program in wanted.items():
            try:
                site = probe_site(self.binary, function, path=self.path)
            except SymbolizerError as e:
                raise MethodUnavailable(f"cannot read {function}'s code in "
                                        f"{self.target.label}'s binary: {e}") from None
            if site is None:
                raise MethodUnavailable(f"{function} is absent from {self.target.label}'s binary "
                                        "or has no stack check to probe after"
                                        + self._damage_note())
            out.append(Site(function, program, site.file_offset))
        return out

    def _damage_note(self) -> str:
        """Why a function may be missing: its binary's function table is damaged."""
        n = self.binary.damaged_functions
        return f" ({n} damaged function names or records in its pclntab)" if n else ""

    def layout(self) -> RuntimeLayout:
        try:
            return runtime_layout(self.binary, path=self.path)
        except SymbolizerError as e:
            raise MethodUnavailable(str(e)) from None

    def span_offsets(self) -> tuple[int, int]:
        """(mcache.alloc, mspan.allocCount): what bpf/mem.c's refill program is given.
        It reads allocCount, allocCountBeforeCache and elemsize in one go, so it needs
        them 6 and 8 bytes apart, as in every Go version goprof knows."""
        lay = self.layout()
        if (lay.mspan_alloc_count_before_cache - lay.mspan_alloc_count,
                lay.mspan_elemsize - lay.mspan_alloc_count) != (6, 8):
            raise MethodUnavailable(f"unexpected mspan layout in {self.go_version} (allocCount "
                                    f"{lay.mspan_alloc_count}, allocCountBeforeCache "
                                    f"{lay.mspan_alloc_count_before_cache}, elemsize "
                                    f"{lay.mspan_elemsize})")
        return lay.mcache_alloc, lay.mspan_alloc_count


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
    if binary.go_error is not None:
        raise EnvironmentProblem(f"cannot read the Go function table of {target.label}'s "
                                 f"executable ({binary.go_error}): goprof mem finds its probe "
                                 "sites there; `goprof cpu` still profiles it")
    if not binary.is_go:
        raise EnvironmentProblem(f"{target.label} ({target.exe}) is not a Go program (no "
                                 "Go pclntab): goprof mem profiles Go allocations only; "
                                 "`goprof cpu` profiles any program")
    proc = GoProcess(target, path, (st.st_dev, st.st_ino), binary, _load_bias(target, binary))
    try:
        vaddr = global_address(binary, MEM_PROFILE_RATE, path=path)
    except SymbolizerError as e:
        # A damaged binary: the methods that need the rate are unavailable, said then;
        # the others may still run.
        proc.notes.append(f"{MEM_PROFILE_RATE} cannot be looked for: {e}")
        vaddr = None
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


class ProcessMemory:
    """A process's memory through /proc/PID/mem: one file descriptor, positioned reads
    and writes, a clear error when it is unreadable (the process may have exited)."""

    def __init__(self, pid: int, label: str, writable: bool = False) -> None:
        self.label = label
        try:
            self.fd = os.open(f"/proc/{pid}/mem", os.O_RDWR if writable else os.O_RDONLY)
        except OSError as e:
            raise EnvironmentProblem(f"cannot open {label}'s memory: {e.strerror}") from None

    def __enter__(self) -> ProcessMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)

    def read(self, address: int, size: int) -> bytes:
        try:
            data = os.pread(self.fd, size, address)
        except OSError as e:
            raise EnvironmentProblem(f"cannot read {self.label}'s memory at {address:#x}: "
                                     f"{e.strerror} (did it exit?)") from None
        if len(data) != size:
            raise EnvironmentProblem(f"{self.label}'s memory at {address:#x} is not readable")
        return data

    def write(self, address: int, data: bytes) -> None:
        try:
            written = os.pwrite(self.fd, data, address)
        except OSError as e:
            raise EnvironmentProblem(f"cannot write {self.label}'s memory at {address:#x}: "
                                     f"{e.strerror}") from None
        if written != len(data):
            raise EnvironmentProblem(f"{self.label}'s memory at {address:#x} is not writable")
