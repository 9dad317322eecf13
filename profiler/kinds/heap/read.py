"""`goprof heap`: the in-use heap of a Go process, read from its runtime's own
memory-profile buckets (runtime.mbuckets) through /proc/PID/mem: no probe at all.

Each bucket is (header, stack of return PCs, memRecord). The header is six words
(next, allnext, typ, hash, size, nstk); memRecord's `active` cycle holds the
allocation and free counts as of the last completed GC, which is what
runtime/pprof's heap profile reports. Go 1.27 dropped the byte counters from the
record (bytes = count x the bucket's object size); the layout comes from DWARF
or goprof's per-version table, never assumed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from goprof.errors import EnvironmentProblem
from goprof.golang.globals import global_address
from goprof.golang.process import GoProcess, MethodUnavailable, ProcessMemory
from goprof.kinds.mem.build import MEM_PERIOD_TYPE, go_scale, trim_runtime
from goprof.model import Location, Profile, Sample, ValueType
from goprof.recording.builder import ProfileBuilder

HEAP_SAMPLE_TYPES = [ValueType("alloc_objects", "count"), ValueType("alloc_space", "bytes"),
                     ValueType("inuse_objects", "count"), ValueType("inuse_space", "bytes")]
MEM_BUCKET = 1  # bucketType memProfile
MAX_STACK = 1024  # Go's profstackdepth limit; a larger nstk means a bad read
MAX_BUCKETS = 10_000_000
HEADER = struct.Struct("<QQQQQQ")  # next, allnext, typ, hash, size, nstk


@dataclass(frozen=True)
class HeapRecord:
    size: int  # object size of the bucket
    allocs: int
    frees: int
    stack: tuple[int, ...]  # return PCs, leaf first


def read_buckets(proc: GoProcess, header_size: int, cycle_size: int) -> list[HeapRecord]:
    """Every memory-profile bucket of the process, as runtime.MemProfile would
    report them (the active cycle; every cycle summed when no GC has run yet)."""
    vaddr = global_address(proc.binary, "runtime.mbuckets", path=proc.path)
    if vaddr is None:
        raise MethodUnavailable("runtime.mbuckets not found in the binary")
    with ProcessMemory(proc.target.pid, proc.target.label) as mem:
        return _walk(mem, vaddr + proc.bias, header_size, cycle_size)


def _walk(mem: ProcessMemory, head_addr: int, header_size: int,
          cycle_size: int) -> list[HeapRecord]:
    label = mem.label
    words_per_cycle = cycle_size // 8
    (b,) = struct.unpack("<Q", mem.read(head_addr, 8))
    raw: list[tuple[int, tuple[int, ...], list[list[int]]]] = []
    seen: set[int] = set()
    while b and len(raw) < MAX_BUCKETS:
        if b in seen:
            raise EnvironmentProblem(f"{label}: the heap profile's bucket list loops: it "
                                     "changed while read, or the layout is wrong")
        seen.add(b)
        _next, allnext, typ, _hash, size, nstk = HEADER.unpack(
            mem.read(b, HEADER.size))
        if typ != MEM_BUCKET or nstk > MAX_STACK:
            raise EnvironmentProblem(f"{label}: unexpected heap-profile bucket at {b:#x} "
                                     f"(type {typ}, {nstk} frames): goprof's layout for this "
                                     "Go version is wrong")
        body = mem.read(b + header_size, nstk * 8 + 4 * cycle_size)
        stack = struct.unpack_from(f"<{nstk}Q", body)
        cycles = [list(struct.unpack_from(f"<{words_per_cycle}Q", body, nstk * 8 + i * cycle_size))
                  for i in range(4)]  # active, future[0..2]
        raw.append((size, stack, cycles))
        b = allnext
    # runtime.MemProfile: if no bucket has data in the active cycle (no GC has
    # completed), every cycle is summed instead.
    clear = all(c[0][0] == 0 and c[0][1] == 0 for _, _, c in raw)
    out = []
    for size, stack, cycles in raw:
        used = cycles if clear else cycles[:1]
        allocs = sum(c[0] for c in used)
        frees = sum(c[1] for c in used)
        out.append(HeapRecord(size, allocs, frees, stack))
    return out


def heap_locations(builder: ProfileBuilder, pid: int, stack: tuple[int, ...],
                   weight: int) -> list[Location]:
    """The runtime's stacks are return PCs, one per logical frame: a call inlined
    into its caller appears as one PC per inlining level. Each physical PC is
    looked up at pc - 1 with its inlined frames, and the PCs that stand for
    those same inlined levels are skipped (as runtime/pprof does)."""
    sym = builder.symbolizers.get(pid)
    if sym is None:
        return []
    out = []
    i = 0
    while i < len(stack):
        loc = sym.locate(stack[i] - 1)
        out.append(loc)
        i += max(len(loc.frames), 1)
    return out


def build_heap(builder: ProfileBuilder, pid: int, records: list[HeapRecord], rate: int,
               time_nanos: int, comments: list[str]) -> Profile:
    profile = Profile(sample_types=list(HEAP_SAMPLE_TYPES), period_type=MEM_PERIOD_TYPE,
                      period=rate, time_nanos=time_nanos, comments=comments,
                      default_sample_type="inuse_space")
    labels = {"pid": str(pid), "comm": builder.comms.get(pid, "?")}
    for r in records:
        if r.allocs == 0 and r.frees == 0:
            continue
        locations = trim_runtime(heap_locations(builder, pid, r.stack, r.allocs))
        inuse = max(r.allocs - r.frees, 0)
        builder.count_frames(locations, 1, kernel=False)
        values = (*go_scale(r.allocs, r.allocs * r.size, rate),
                  *go_scale(inuse, inuse * r.size, rate))
        profile.samples.append(Sample(tuple(locations), values, dict(labels),
                                      {"bytes": (r.size, "bytes")}))
    return profile
