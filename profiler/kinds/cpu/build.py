"""CPU samples -> a CPU profile (runtime/pprof's: samples/count and cpu/nanoseconds),
labelled with pid, tid and comm as goprof's own profiles are, with the goroutine's pprof
labels as runtime/pprof writes them, and its id (numeric label `goroutine`) when asked."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from goprof.kinds.cpu.recorder import RawSample
from goprof.model import Profile, Sample, ValueType
from goprof.recording.builder import ProfileBuilder, image_key
from goprof.recording.labels import Labels, goroutine_number, sample_labels

CPU_SAMPLE_TYPES = [ValueType("samples", "count"), ValueType("cpu", "nanoseconds")]
CPU_PERIOD_TYPE = ValueType("cpu", "nanoseconds")


def build_cpu(builder: ProfileBuilder, samples: Iterable[RawSample], period_ns: int,
              time_nanos: int, duration_nanos: int, comments: list[str]) -> Profile:
    # Merge identical keys first (the same stack in several windows).
    merged: Counter[tuple[int, int, tuple[int, ...], tuple[int, ...], int, int, Labels, int]] \
        = Counter()
    for raw in samples:
        merged[(raw.pid, raw.tid, raw.user, raw.kernel, raw.leaf_ret, raw.generation,
                raw.labels, raw.goid)] += raw.count
    profile = Profile(sample_types=list(CPU_SAMPLE_TYPES), period_type=CPU_PERIOD_TYPE,
                      period=period_ns, time_nanos=time_nanos,
                      duration_nanos=duration_nanos, comments=comments)
    for (pid, tid, user, kernel, leaf_ret, generation, goroutine_labels, goid), count \
            in merged.items():
        klocs = builder.kernel_locations(kernel)
        ulocs = builder.user_locations(pid, user, leaf_ret, count, generation)
        builder.count_frames(klocs, count, kernel=True)
        builder.count_frames(ulocs, count, kernel=False)
        locations = tuple(klocs + ulocs)  # leaf first: kernel frames are the leaves
        labels = {"pid": str(pid), "tid": str(tid),
                  "comm": builder.comms.get(image_key(pid, generation), "?")}
        profile.samples.append(Sample(locations, (count, count * period_ns),
                                      sample_labels(labels, goroutine_labels),
                                      goroutine_number(goid)))
    return profile
