"""Helpers the flat exporters (folded, speedscope) share: which value to weigh by,
how to split samples by process, and how to name frames root first."""

from __future__ import annotations

from collections.abc import Iterator
from importlib import metadata

from goprof.model import Frame, Location, Profile, Sample, frame_name, unnamed_name


def choose_value_index(profile: Profile, sample_type: str | None, *, prefer: str = "") -> int:
    """The index into Sample.values that a single-valued format weighs by.

    Order: the caller's `sample_type`; else the profile's default_sample_type; else the
    type named `prefer` when the profile has it; else the last type, which is what
    `go tool pprof` shows when a profile names no default.
    """
    if not profile.sample_types:
        raise ValueError("profile has no sample types")
    if sample_type:
        # The caller's explicit choice must exist; the fallbacks below may be absent.
        try:
            return profile.value_index(sample_type)
        except KeyError:
            known = ", ".join(vt.type for vt in profile.sample_types)
            raise ValueError(
                f"unknown sample type {sample_type!r}; this profile has: {known}"
            ) from None
    for fallback in (profile.default_sample_type, prefer):
        if fallback:
            try:
                return profile.value_index(fallback)
            except KeyError:
                pass
    return len(profile.sample_types) - 1


def pid_of(sample: Sample) -> str | None:
    return sample.labels.get("pid")


def process_names(profile: Profile) -> dict[str | None, str]:
    """pid label -> display name ("comm (pid N)"), ordered by numeric pid.

    comm is per thread on Linux, so the first comm seen for a pid names the process.
    Samples without a pid label form one group keyed None, placed last.
    """
    comms: dict[str | None, str] = {}
    for sample in profile.samples:
        pid = pid_of(sample)
        if pid not in comms or not comms[pid]:
            comms[pid] = sample.labels.get("comm", "")
    names: dict[str | None, str] = {}
    for pid in sorted(comms, key=_pid_order):
        comm = comms[pid]
        if pid is None:
            names[pid] = f"{comm} (no pid)" if comm else "(no pid)"
        else:
            names[pid] = f"{comm} (pid {pid})" if comm else f"pid {pid}"
    return names


def _pid_order(pid: str | None) -> tuple[int, int, str]:
    # Numeric pids in numeric order, odd labels after them, "no pid" last.
    if pid is None:
        return (2, 0, "")
    if pid.isdigit():
        return (0, int(pid), pid)
    return (1, 0, pid)


def root_first(locations: tuple[Location, ...]) -> Iterator[tuple[Location, Frame | None]]:
    """Walk a leaf-first stack root first, expanding inlined frames (caller before callee).

    Yields (location, None) for a location nothing could name.
    """
    for loc in reversed(locations):
        if not loc.frames:
            yield loc, None
            continue
        for frame in reversed(loc.frames):
            yield loc, frame


def flat_name(loc: Location, frame: Frame | None) -> str:
    """The name a flat format shows for one root-first entry of root_first()."""
    return unnamed_name(loc) if frame is None else frame_name(frame)


def goprof_version() -> str:
    try:
        return metadata.version("goprof")
    except metadata.PackageNotFoundError:
        return "dev"
