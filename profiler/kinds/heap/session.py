"""`goprof heap`'s hooks into the skeleton: no recorder, one read of the target's own
memory-profile buckets (where Go's heap sampler is on), written as runtime/pprof's heap
profile would be."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from goprof import __version__
from goprof.errors import EnvironmentProblem
from goprof.exporters import Exporter
from goprof.golang.process import GoProcess, MethodUnavailable, inspect
from goprof.kinds.heap.read import HeapRecord, build_heap, read_buckets
from goprof.model import Profile
from goprof.recording.builder import ProfileBuilder
from goprof.recording.session import ProfileSession, Rows
from goprof.symbolizer import SymbolizerError
from goprof.targets import Target
from rich.console import Console


@dataclass
class HeapRead:
    records: list[HeapRecord]
    rate: int  # the target's MemProfileRate
    time_ns: int  # wall clock, when the buckets were read


class HeapSession(ProfileSession):
    kind = "heap"
    empty_profile = "the heap profile is empty: no sampled allocation is recorded yet"

    def __init__(self, pid: int, outputs: list[tuple[Path, Exporter]], weight: str,
                 console: Console | None = None) -> None:
        super().__init__([pid], outputs, console)
        self.weight = weight  # the default sample type of the written profile
        self.proc: GoProcess | None = None

    def inspect(self, targets: list[Target]) -> None:
        self.proc = inspect(targets[0], self.images.cache)

    def collect(self, targets: list[Target]) -> HeapRead:
        proc, target = self.proc, targets[0]
        assert proc is not None
        rate = proc.read_rate()
        if rate is None:
            raise EnvironmentProblem(f"{target.label}: runtime.MemProfileRate not found in "
                                     "its binary: cannot tell how its heap is sampled")
        if rate <= 0:
            raise EnvironmentProblem(f"{target.label} has Go's heap sampler off "
                                     "(runtime.MemProfileRate is 0): it keeps no heap profile. "
                                     "Use `goprof mem` for its allocations, or `goprof mem "
                                     "--go-sampler` to turn the sampler on while it runs")
        try:
            layout = proc.layout()
            started = time.time_ns()
            records = read_buckets(proc, layout.bucket_size, layout.mem_record_cycle_size)
        except (MethodUnavailable, SymbolizerError) as e:
            raise EnvironmentProblem(f"{target.label}: cannot read its heap profile: {e}"
                                     ) from None
        self.snapshot_targets(targets)
        return HeapRead(records, rate, started)

    def build(self, collected: HeapRead, builder: ProfileBuilder, targets: list[Target]
              ) -> Profile:
        assert self.proc is not None
        target = targets[0]
        comments = [f"goprof {__version__} heap: {target.label} ({self.proc.go_version}), "
                    f"read from runtime.mbuckets; MemProfileRate {collected.rate}; as of the "
                    "last garbage collection"]
        profile = build_heap(builder, target.pid, collected.records, collected.rate,
                             collected.time_ns, comments)
        profile.default_sample_type = self.weight
        return profile

    def summary_rows(self, collected: HeapRead, builder: ProfileBuilder) -> Rows:
        return [
            ("buckets", f"{len(collected.records)}"),
            ("sampling", f"Go's own heap sampler, one sample per {collected.rate} bytes on "
                         "average, scaled as runtime/pprof scales it"),
            ("unnamed frames", f"{builder.stats.unnamed_frames}{builder.stats.damage_text()}"),
        ]
