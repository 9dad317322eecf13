"""Folded stacks (Brendan Gregg's collapsed format), for flamegraph.pl and inferno.

One line per distinct stack: frames root first, `;`-separated, a space, an integer
weight. Kernel frames get the conventional `_[k]` suffix. Inlined calls are written as
frames of their own with no `_[i]` suffix: Go users read them as ordinary calls, and
`go tool pprof` draws them the same way.
"""

from __future__ import annotations

from typing import BinaryIO

from goprof.exporters._common import (
    choose_value_index,
    flat_name,
    pid_of,
    process_names,
    root_first,
)
from goprof.model import Profile, Sample


def _clean(name: str) -> str:
    # `;` separates frames and a newline ends the record: neither may appear in a name.
    # Spaces are fine (readers split on the last space), so "comm (pid N)" stays readable.
    return name.replace(";", ":").replace("\n", " ").replace("\r", " ")


def stack_of(sample: Sample) -> list[str]:
    """A sample's frame names, root first."""
    out = []
    for loc, frame in root_first(sample.locations):
        name = _clean(flat_name(loc, frame))
        if frame is not None and frame.kernel:
            name += "_[k]"
        out.append(name)
    return out


def fold(profile: Profile, sample_type: str | None = None) -> dict[str, int]:
    """Folded stack -> summed weight. Zero weights and empty stacks are left out
    (a line needs at least one frame, and a zero line draws nothing)."""
    index = choose_value_index(profile, sample_type, prefer="samples")
    names = process_names(profile)
    # Only a profile that spans processes gets the per-process root frame.
    per_process = len(names) > 1
    totals: dict[str, int] = {}
    for sample in profile.samples:
        weight = sample.values[index]
        stack = stack_of(sample)
        if weight == 0 or not stack:
            continue
        if per_process:
            stack.insert(0, _clean(names[pid_of(sample)]))
        key = ";".join(stack)
        totals[key] = totals.get(key, 0) + weight
    return totals


class FoldedExporter:
    name = "folded"
    suffix = ".folded"
    suffixes = (suffix, ".collapsed", ".txt")

    def write(self, profile: Profile, out: BinaryIO, *, sample_type: str | None = None) -> None:
        """Weighs by `sample_type`; by default the profile's default_sample_type, else the
        "samples" count (what flamegraph.pl calls samples), else the last sample type."""
        totals = fold(profile, sample_type)
        text = "".join(f"{stack} {totals[stack]}\n" for stack in sorted(totals))
        out.write(text.encode("utf-8"))


EXPORTER = FoldedExporter()
