"""pprof's profile.proto, gzipped, laid out as Go's runtime/pprof writes it.

Beyond what pprof itself accepts, the layout satisfies Parca's stricter validator:
mapping, location and function ids are exactly 1..n in the order they are listed,
every string index is in range, and each sample has one value per sample type.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import BinaryIO

from goprof.exporters._common import choose_value_index
from goprof.exporters.proto import profile_pb2 as pb
from goprof.model import Frame, Location, Mapping, Profile, ValueType

KERNEL_MAPPING = "[kernel.kallsyms]"


@dataclass
class _Strings:
    """The string table; index 0 is the empty string, as the format requires."""

    index: dict[str, int] = field(default_factory=lambda: {"": 0})

    def __call__(self, s: str) -> int:
        found = self.index.get(s)
        if found is None:
            found = self.index[s] = len(self.index)
        return found

    def table(self) -> list[str]:
        # dicts keep insertion order, and indices were handed out in that order.
        return list(self.index)


@dataclass
class _Builder:
    profile: Profile
    out: pb.Profile = field(default_factory=pb.Profile)
    strings: _Strings = field(default_factory=_Strings)
    mapping_ids: dict[Mapping, int] = field(default_factory=dict)
    location_ids: dict[tuple[int, Mapping | None], int] = field(default_factory=dict)
    function_ids: dict[tuple[str, str, int], int] = field(default_factory=dict)
    kernel_mapping: Mapping | None = None

    def value_type(self, vt: ValueType) -> pb.ValueType:
        return pb.ValueType(type=self.strings(vt.type), unit=self.strings(vt.unit))

    def add_mappings(self) -> None:
        for m in self.profile.mappings():
            self.mapping_ids[m] = len(self.mapping_ids) + 1
            self.out.mapping.append(pb.Mapping(
                id=self.mapping_ids[m],
                memory_start=m.start,
                memory_limit=m.limit,
                file_offset=m.offset,
                filename=self.strings(m.path),
                build_id=self.strings(m.build_id),
                # Like runtime/pprof: a symbolized mapping claims all four, so pprof
                # neither re-symbolizes it nor hides its inline frames.
                has_functions=m.symbolized,
                has_filenames=m.symbolized,
                has_line_numbers=m.symbolized,
                has_inline_frames=m.symbolized,
            ))
            if m.path == KERNEL_MAPPING and self.kernel_mapping is None:
                self.kernel_mapping = m

    def mapping_of(self, loc: Location) -> Mapping | None:
        if loc.mapping is not None:
            return loc.mapping
        # A kernel frame the model left unmapped still belongs to the kernel's mapping
        # when the profile has one, so pprof groups it with the other kernel addresses.
        if loc.frames and all(f.kernel for f in loc.frames):
            return self.kernel_mapping
        return None

    def function_id(self, frame: Frame) -> int:
        key = (frame.function, frame.file, frame.start_line)
        found = self.function_ids.get(key)
        if found is None:
            found = self.function_ids[key] = len(self.function_ids) + 1
            name = self.strings(frame.function)
            self.out.function.append(pb.Function(
                id=found,
                name=name,
                system_name=name,  # Go's own names are already package-qualified
                filename=self.strings(frame.file),
                start_line=frame.start_line,
            ))
        return found

    def location_id(self, loc: Location) -> int:
        mapping = self.mapping_of(loc)
        key = (loc.address, mapping)
        found = self.location_ids.get(key)
        if found is None:
            found = self.location_ids[key] = len(self.location_ids) + 1
            # Innermost first, as the model already stores them; a location with no
            # frames gets no lines and pprof prints its address.
            lines = [pb.Line(function_id=self.function_id(f), line=f.line) for f in loc.frames]
            self.out.location.append(pb.Location(
                id=found,
                mapping_id=self.mapping_ids[mapping] if mapping is not None else 0,
                address=loc.address,
                line=lines,
            ))
        return found

    def build(self, default_sample_type: str) -> pb.Profile:
        p, s = self.profile, self.strings
        self.out.sample_type.extend(self.value_type(vt) for vt in p.sample_types)
        self.add_mappings()
        width = len(p.sample_types)
        for sample in p.samples:
            if len(sample.values) != width:
                raise ValueError(f"sample has {len(sample.values)} values, "
                                 f"profile has {width} sample types")
            self.out.sample.append(pb.Sample(
                location_id=[self.location_id(loc) for loc in sample.locations],
                value=sample.values,
                label=[pb.Label(key=s(k), str=s(v)) for k, v in sorted(sample.labels.items())]
                + [pb.Label(key=s(k), num=n, num_unit=s(unit))
                   for k, (n, unit) in sorted(sample.num_labels.items())],
            ))
        self.out.time_nanos = p.time_nanos
        self.out.duration_nanos = p.duration_nanos
        self.out.period_type.CopyFrom(self.value_type(p.period_type))
        self.out.period = p.period
        self.out.comment.extend(s(c) for c in p.comments)
        if default_sample_type:
            self.out.default_sample_type = s(default_sample_type)
        # Last, so every index handed out above is in the table.
        self.out.string_table.extend(s.table())
        return self.out


def to_proto(profile: Profile, sample_type: str | None = None) -> pb.Profile:
    """The uncompressed message (tests and other exporters reuse it)."""
    default = profile.default_sample_type
    if sample_type:
        choose_value_index(profile, sample_type)  # raises for a type the profile lacks
        default = sample_type
    return _Builder(profile).build(default)


class PprofExporter:
    name = "pprof"
    suffix = ".pb.gz"  # gzipped, as runtime/pprof writes it
    suffixes = (suffix, ".pprof", ".pb")

    def write(self, profile: Profile, out: BinaryIO, *, sample_type: str | None = None) -> None:
        """Writes every value. `sample_type`, when given, becomes the file's
        default_sample_type (what `go tool pprof` shows first)."""
        data = to_proto(profile, sample_type).SerializeToString()
        # Level 1 is what runtime/pprof uses (gzip.BestSpeed). zlib's own gzip framing
        # (wbits 31): mtime 0 and no file name, so the same profile gives the same
        # bytes, and one call, a third of gzip.GzipFile's cost (which the agent pays
        # for every process every window).
        out.write(zlib.compress(data, 1, wbits=31))


EXPORTER = PprofExporter()
