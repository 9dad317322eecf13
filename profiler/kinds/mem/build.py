"""Counted allocations -> the symbolized profile model, as runtime/pprof writes them.

- Stacks end at the allocating code: leading runtime frames (mallocgc, the probed
  function, makeslice, ...) are trimmed as runtime/pprof trims them, unless the
  whole stack is the runtime's.
- Values are estimates of every allocation, per method:
  go-sampler  Go's own scaling of a sample of size s at rate r: 1 / (1 - exp(-s/r)),
              per (stack, size), truncated to integers as Go does;
  span        the same inverse probability per span event, then normalized so the
              totals equal the exact byte and object counts the kernel kept;
  exact       as counted.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from goprof.kinds.mem.recorder import AllocSample, MemStats
from goprof.model import Location, Profile, Sample, ValueType
from goprof.recording.builder import ImageKey, ProfileBuilder, image_key
from goprof.recording.labels import Labels, goroutine_number, sample_labels

ALLOC_SAMPLE_TYPES = [ValueType("alloc_objects", "count"), ValueType("alloc_space", "bytes")]
MEM_PERIOD_TYPE = ValueType("space", "bytes")
RUNTIME_PREFIXES = ("runtime.", "internal/runtime/")


@dataclass(frozen=True)
class MethodChoice:
    """How one process was profiled."""

    method: str  # go-sampler, span, exact
    rate: int  # bytes per sample (go-sampler: MemProfileRate; span: goprof's); exact: 1


def go_scale(count: int, size: int, rate: int) -> tuple[int, int]:
    """runtime/pprof's scaleHeapSample: (objects, bytes) that `count` samples
    totalling `size` bytes stand for at MemProfileRate `rate`."""
    if count == 0 or size == 0:
        return 0, 0
    if rate <= 1:
        return count, size
    avg = size / count
    scale = 1 / (1 - math.exp(-avg / rate))
    return int(count * scale), int(size * scale)


def trim_runtime(locations: list[Location]) -> list[Location]:
    """Drops the runtime's frames above the allocating code, as runtime/pprof does."""
    for i, loc in enumerate(locations):
        if loc.frames and loc.frames[0].function.startswith(RUNTIME_PREFIXES):
            continue
        return locations[i:]
    return locations


def _specialized_call_from_mallocgc(locations: list[Location]) -> bool:
    """Go 1.27's mallocgc calls the size-specialized functions it dispatches to; the
    exact method probes both, so such a hit was already counted at mallocgc."""
    if len(locations) < 2 or not locations[0].frames or not locations[1].frames:
        return False
    leaf = locations[0].frames[-1].function
    caller = locations[1].frames[-1].function
    return leaf.startswith("runtime.mallocgc") and leaf != "runtime.mallocgc" and \
        caller == "runtime.mallocgc"


class AllocProfileBuilder:
    def __init__(self, builder: ProfileBuilder, methods: dict[ImageKey, MethodChoice]) -> None:
        self.builder = builder
        self.methods = methods
        self.deduplicated = 0  # exact: specialized hits under mallocgc, not counted twice

    def build(self, samples: Iterable[AllocSample], stats: MemStats, time_nanos: int,
              duration_nanos: int, comments: list[str], normalize_span: bool = True
              ) -> Profile:
        """normalize_span: scale span estimates to the kernel's exact totals, which are
        per run, not per process: only right when one process used the span method."""
        merged: dict[tuple[int, tuple[int, ...], int, int, int, Labels, int], list[int]] = \
            defaultdict(lambda: [0, 0, 0])
        for s in samples:
            acc = merged[(s.pid, s.user, s.leaf_ret, s.size, s.generation, s.labels, s.goid)]
            acc[0] += s.events
            acc[1] += s.objects
            acc[2] += s.bytes
        rates = {m.rate for m in self.methods.values()}
        profile = Profile(sample_types=list(ALLOC_SAMPLE_TYPES), period_type=MEM_PERIOD_TYPE,
                          period=max(rates) if rates else 1, time_nanos=time_nanos,
                          duration_nanos=duration_nanos, comments=comments,
                          default_sample_type="alloc_space")
        span: list[tuple[Sample, float, float]] = []  # span samples, unnormalized estimates
        for (pid, user, leaf_ret, size, generation, goroutine_labels, goid), \
                (events, objects, nbytes) in merged.items():
            image = image_key(pid, generation)
            choice = self.methods.get(image)
            if choice is None:
                continue
            locations = self.builder.user_locations(pid, user, leaf_ret, events, generation)
            if choice.method == "exact" and _specialized_call_from_mallocgc(locations):
                self.deduplicated += events
                continue
            locations = trim_runtime(locations)
            self.builder.count_frames(locations, events, kernel=False)
            labels = {"pid": str(pid), "comm": self.builder.comms.get(image, "?")}
            sample = Sample(tuple(locations), (0, 0), sample_labels(labels, goroutine_labels),
                            goroutine_number(goid))
            if choice.method == "span":
                w = 1 / -math.expm1(-size / choice.rate) if size else 0.0
                span.append((sample, objects * w, nbytes * w))
                profile.samples.append(sample)
                continue
            if choice.method == "go-sampler":
                sample.values = go_scale(events, nbytes, choice.rate)
            else:
                sample.values = (objects, nbytes)
            sample.num_labels = {**sample.num_labels, "bytes": (size, "bytes")}
            profile.samples.append(sample)
        if normalize_span:
            _normalize_span(span, stats)
        else:
            for sample, objects, nbytes in span:
                sample.values = (round(objects), round(nbytes))
        return profile


def _normalize_span(span: list[tuple[Sample, float, float]], stats: MemStats) -> None:
    """Scales span estimates so they add up to the exact totals the kernel counted."""
    est_objects = sum(o for _, o, _ in span)
    est_bytes = sum(b for _, _, b in span)
    k_obj = stats.span_objects / est_objects if est_objects else 0.0
    k_bytes = stats.span_bytes / est_bytes if est_bytes else 0.0
    for sample, objects, nbytes in span:
        sample.values = (round(objects * k_obj), round(nbytes * k_bytes))
