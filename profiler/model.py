"""The symbolized profile model: what a session produces and every exporter reads.

A sample flows one way: perf event -> stack map -> counts -> this model -> exporter.
The model is format-neutral. Stacks are stored leaf first (as pprof stores them);
exporters that want root first (folded, speedscope) reverse them.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Frame:
    """One source-level frame. Several frames share one address when calls were inlined."""

    function: str
    file: str = ""
    line: int = 0
    start_line: int = 0
    # True for every frame of a Location except the last (physical) one: the call
    # was inlined into the frame that follows it.
    inlined: bool = False
    kernel: bool = False


@dataclass(frozen=True)
class Mapping:
    """A mapped file of a target process (or the kernel), as /proc/PID/maps shows it."""

    start: int
    limit: int
    offset: int
    path: str
    build_id: str = ""
    # Names were resolved for its addresses (pprof's has_functions, ...).
    symbolized: bool = True


@dataclass(frozen=True)
class Location:
    """One instruction address and the source frames it stands for, innermost first.

    An address that could not be named has no frames; exporters then print a
    placeholder and the session counts it as an unnamed frame.
    """

    address: int
    mapping: Mapping | None = None
    frames: tuple[Frame, ...] = ()


@dataclass(frozen=True)
class ValueType:
    type: str
    unit: str


@dataclass
class Sample:
    locations: tuple[Location, ...]  # leaf first
    values: tuple[int, ...]  # one per Profile.sample_types
    labels: dict[str, str] = field(default_factory=dict)  # pid, tid, comm
    # Numeric labels: name -> (value, unit), e.g. an allocation's "bytes" as Go writes it.
    num_labels: dict[str, tuple[int, str]] = field(default_factory=dict)


@dataclass
class Profile:
    sample_types: list[ValueType]
    period_type: ValueType
    period: int
    samples: list[Sample] = field(default_factory=list)
    time_nanos: int = 0  # wall-clock start, ns since the epoch
    duration_nanos: int = 0
    comments: list[str] = field(default_factory=list)
    default_sample_type: str = ""

    def mappings(self) -> list[Mapping]:
        """Every mapping referenced by a sample, in first-seen order."""
        seen: dict[Mapping, None] = {}
        for sample in self.samples:
            for loc in sample.locations:
                if loc.mapping is not None:
                    seen.setdefault(loc.mapping, None)
        return list(seen)

    def value_index(self, sample_type: str) -> int:
        for i, vt in enumerate(self.sample_types):
            if vt.type == sample_type:
                return i
        raise KeyError(sample_type)


def frame_name(frame: Frame) -> str:
    """The name a flat format shows for a frame."""
    return frame.function


def unnamed_name(loc: Location) -> str:
    """What flat formats print for an address nothing could name (pprof keeps the address)."""
    if loc.mapping is not None and loc.mapping.path:
        file_offset = loc.address - loc.mapping.start + loc.mapping.offset
        return f"{loc.mapping.path.rsplit('/', 1)[-1]}+0x{file_offset:x}"
    return f"0x{loc.address:x}"
