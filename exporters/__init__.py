"""Profile exporters: each turns a goprof.model.Profile into one file format.

Every exporter reads only the model, so adding a format never touches the profiler.

Which value a single-valued format weighs by (`sample_type=None`):
  - the profile's default_sample_type when it has one;
  - folded: else the "samples" count when present (flamegraph.pl's unit), else the last type;
  - speedscope: else the last sample type, as `go tool pprof` does; for a CPU profile
    that is cpu/nanoseconds, so speedscope shows time rather than a bare count.
pprof writes every value; a given `sample_type` becomes its default_sample_type.
"""

from __future__ import annotations

from typing import BinaryIO, Protocol

from goprof.model import Profile


class Exporter(Protocol):
    name: str  # "pprof" | "folded" | "speedscope"
    suffix: str  # the file name ending goprof gives this format (default names)
    suffixes: tuple[str, ...]  # file name endings that select this format, suffix first

    def write(self, profile: Profile, out: BinaryIO, *, sample_type: str | None = None) -> None:
        ...


def _registry() -> dict[str, Exporter]:
    # Imported here so `import goprof.exporters` stays cheap for code that only wants
    # the names (the CLI's --help), and pprof's protobuf import happens on first use.
    from goprof.exporters import folded, goroutine_grouped, goroutine_text, pprof, speedscope

    return {e.name: e for e in (pprof.EXPORTER, folded.EXPORTER, speedscope.EXPORTER,
                                goroutine_text.EXPORTER, goroutine_grouped.EXPORTER)}


FORMATS: tuple[str, ...] = ("pprof", "folded", "speedscope")
# `goprof goroutines` also writes the runtime's own text dumps: "text" (?debug=2, one
# block per goroutine) and "grouped" (?debug=1). They claim no file suffix here, so a
# profile of another kind never picks them by name; that command maps its own.
GOROUTINE_FORMATS: tuple[str, ...] = (*FORMATS, "text", "grouped")


def get_exporter(name: str) -> Exporter:
    """The exporter called `name` (case-insensitive); ValueError names the known ones."""
    exporter = _registry().get(name.strip().lower())
    if exporter is None:
        raise ValueError(f"unknown format {name!r}; known formats: {', '.join(FORMATS)}")
    return exporter


def exporter_for_path(path: str) -> Exporter | None:
    """The exporter a file name asks for by its suffix, or None.

    Longest suffix first, so "x.speedscope.json" is decided by ".speedscope.json"
    rather than by a shorter ending some other format might claim.
    """
    lowered = path.lower()
    candidates = [(s, e) for e in _registry().values() for s in e.suffixes]
    for suffix, exporter in sorted(candidates, key=lambda c: len(c[0]), reverse=True):
        if lowered.endswith(suffix):
            return exporter
    return None


def written_suffixes() -> tuple[str, ...]:
    """The suffix goprof writes for each format, in FORMATS order (for messages)."""
    return tuple(get_exporter(name).suffix for name in FORMATS)


def profile_suffixes() -> tuple[str, ...]:
    """The endings of the profile files goprof writes, which retention (`goprof prune`,
    the directory sink's --retain) may remove: each format's suffix, and for a gzipped
    one the name gunzip leaves (x.cpu.pb.gz -> x.cpu.pb: still goprof's profile).
    Longest first. The other endings a format accepts on -o (.pprof, .txt, .json, ...)
    are common enough that a folder may hold such files that are not goprof's: those
    are never removed."""
    found: set[str] = set()
    for suffix in written_suffixes():
        found.add(suffix)
        if suffix.endswith(".gz"):
            found.add(suffix.removesuffix(".gz"))
    return tuple(sorted(found, key=lambda s: (-len(s), s)))


__all__ = ["FORMATS", "GOROUTINE_FORMATS", "Exporter", "exporter_for_path", "get_exporter",
           "profile_suffixes", "written_suffixes"]
