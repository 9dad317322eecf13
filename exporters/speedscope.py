"""speedscope's JSON file format (https://www.speedscope.app/file-format-schema.json).

One "sampled" profile per process (the `pid` label), so speedscope's profile picker
switches between the processes a session saw. Stacks are written root first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from goprof.exporters._common import (
    choose_value_index,
    flat_name,
    goprof_version,
    pid_of,
    process_names,
    root_first,
)
from goprof.model import Frame, Location, Profile

SCHEMA = "https://www.speedscope.app/file-format-schema.json"

# The units speedscope knows; any other unit (count, ...) is written as "none".
UNITS = frozenset({"nanoseconds", "microseconds", "milliseconds", "seconds", "bytes"})

FrameKey = tuple[str, str, int]


@dataclass
class _Frames:
    """shared.frames, deduplicated.

    A frame is keyed by (name, file, function start line), not by the sampled line:
    speedscope merges call-tree nodes by frame, so per-line frames would split one
    function into several boxes of the flame graph.
    """

    index: dict[FrameKey, int] = field(default_factory=dict)
    frames: list[dict[str, Any]] = field(default_factory=list)

    def add(self, loc: Location, frame: Frame | None) -> int:
        name = flat_name(loc, frame)
        file = frame.file if frame is not None else ""
        line = frame.start_line if frame is not None else 0
        key = (name, file, line)
        found = self.index.get(key)
        if found is not None:
            return found
        entry: dict[str, Any] = {"name": name}
        if file:
            entry["file"] = file
        if line > 0:
            entry["line"] = line
        self.index[key] = len(self.frames)
        self.frames.append(entry)
        return self.index[key]


@dataclass
class _Process:
    # Identical stacks are merged: the profile is an aggregate, with no timeline to
    # preserve, and merging keeps the file small.
    stacks: dict[tuple[int, ...], int] = field(default_factory=dict)

    def add(self, stack: tuple[int, ...], weight: int) -> None:
        self.stacks[stack] = self.stacks.get(stack, 0) + weight

    def sorted_stacks(self, frames: _Frames) -> list[tuple[tuple[int, ...], int]]:
        # Sorted by frame names, root first, so speedscope's default "Time Order" view
        # draws each call path once, like a flame graph, instead of in arrival order.
        def names(item: tuple[tuple[int, ...], int]) -> list[str]:
            return [frames.frames[i]["name"] for i in item[0]]

        return sorted(self.stacks.items(), key=names)


def to_speedscope(profile: Profile, sample_type: str | None = None) -> dict[str, Any]:
    index = choose_value_index(profile, sample_type)
    vtype = profile.sample_types[index]
    unit = vtype.unit if vtype.unit in UNITS else "none"
    frames = _Frames()
    names = process_names(profile)
    processes: dict[str | None, _Process] = {pid: _Process() for pid in names}
    for sample in profile.samples:
        weight = sample.values[index]
        if weight == 0:
            continue
        stack = tuple(frames.add(loc, frame) for loc, frame in root_first(sample.locations))
        # An empty stack is kept: speedscope counts it at the root, so totals still add up.
        processes[pid_of(sample)].add(stack, weight)

    profiles = []
    # Busiest process first: speedscope opens the profile at activeProfileIndex 0.
    # sorted() is stable, so ties keep process_names' pid order.
    ranked = sorted(processes.items(), key=lambda kv: -sum(kv[1].stacks.values()))
    for pid, proc in ranked:
        if not proc.stacks:
            continue
        total = sum(proc.stacks.values())
        stacks = proc.sorted_stacks(frames)
        profiles.append({
            "type": "sampled",
            "name": names[pid],
            "unit": unit,
            "startValue": 0,
            "endValue": total,
            "samples": [list(stack) for stack, _ in stacks],
            "weights": [weight for _, weight in stacks],
        })
    if not profiles:
        # speedscope refuses a file with no profile: an empty one still opens.
        profiles.append({"type": "sampled", "name": "no samples", "unit": unit,
                         "startValue": 0, "endValue": 0, "samples": [], "weights": []})
    return {
        "$schema": SCHEMA,
        "shared": {"frames": frames.frames},
        "profiles": profiles,
        "name": f"goprof {vtype.type} ({vtype.unit})",
        "activeProfileIndex": 0,
        "exporter": f"goprof@{goprof_version()}",
    }


class SpeedscopeExporter:
    name = "speedscope"
    suffix = ".speedscope.json"
    suffixes = (suffix, ".json")

    def write(self, profile: Profile, out: BinaryIO, *, sample_type: str | None = None) -> None:
        """Weighs by `sample_type`; by default the profile's default_sample_type, else the
        last sample type (cpu/nanoseconds for a CPU profile, so speedscope shows time)."""
        doc = to_speedscope(profile, sample_type)
        out.write(json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))


EXPORTER = SpeedscopeExporter()
