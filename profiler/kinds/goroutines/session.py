"""`goprof goroutines`' hooks into the skeleton: no recorder, one read of every goroutine
through /proc/PID/mem (the target is not stopped), written as runtime/pprof's goroutine
profile, or its text dumps (debug=2 "text", debug=1 "grouped")."""

from __future__ import annotations

import os
import resource
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from goprof import __version__, output_files
from goprof.errors import EnvironmentProblem
from goprof.exporters import Exporter
from goprof.golang.goroutines import GoroutineReader, Snapshot
from goprof.golang.layouts import goroutine_layout
from goprof.golang.process import GoProcess, inspect
from goprof.kinds.goroutines.build import (
    GoroutineEntry,
    GoroutineProfile,
    build_entries,
    build_profile,
)
from goprof.model import Profile
from goprof.recording.builder import ProfileBuilder
from goprof.recording.session import ProfileSession, Rows
from goprof.symbolizer import SymbolizerError
from goprof.targets import Target
from rich.console import Console
from rich.table import Table


@dataclass
class GoroutinesRead:
    snapshot: Snapshot
    entries: list[GoroutineEntry]  # every goroutine, system ones included


class GoroutineSession(ProfileSession):
    kind = "goroutines"
    empty_profile = "no goroutine"

    def __init__(self, pid: int, outputs: list[tuple[Path, Exporter]], console: Console | None,
                 stats_path: Path | None = None, include_system: bool = False,
                 top: int = 10) -> None:
        super().__init__([pid], outputs, console, stats_path)
        self.include_system = include_system
        self.top = top
        self.proc: GoProcess | None = None
        self.reader: GoroutineReader | None = None

    # -- hooks ----------------------------------------------------------------
    def inspect(self, targets: list[Target]) -> None:
        target = targets[0]
        try:
            binary = self.images.cache.get(f"/proc/{target.pid}/exe")
        except (OSError, SymbolizerError) as e:
            raise EnvironmentProblem(f"cannot read {target.label}'s executable: {e}") from None
        if not binary.is_go:
            raise EnvironmentProblem(f"{target.label} ({target.exe}) is not a Go program (no "
                                     "Go pclntab): goprof goroutines reads Go programs only")
        self.proc = inspect(target, self.images.cache)
        try:
            layout = goroutine_layout(self.proc.binary, path=target.exe)
        except SymbolizerError as e:
            raise EnvironmentProblem(str(e)) from None
        self.reader = GoroutineReader(target.pid, target.label, self.proc.binary,
                                      self.proc.path, self.proc.bias, layout)

    def collect(self, targets: list[Target]) -> GoroutinesRead:
        assert self.reader is not None
        self.snapshot_targets(targets)  # names first: they stay if the target exits
        snapshot = self.reader.read()
        sym = self.images.symbolizers[targets[0].pid]
        unwinder = self.reader.unwinder
        entries = build_entries(snapshot, sym, lambda pc: unwinder.info(pc).entry,
                                unwinder.inline_pcs)
        return GoroutinesRead(snapshot, entries)

    def build(self, collected: GoroutinesRead, builder: ProfileBuilder,
              targets: list[Target]) -> Profile:
        assert self.proc is not None
        target = targets[0]
        s = collected.snapshot.stats
        comments = [f"goprof {__version__} goroutines: {target.label} ({self.proc.go_version}), "
                    "read through /proc/PID/mem without stopping it",
                    f"changed while read: {s.changed}; running (no stack): {s.running}; "
                    f"unreadable: {s.unreadable}"]
        profile = build_profile(collected.entries, collected.snapshot.time_ns, comments,
                                self.include_system)
        for sample in profile.samples:
            builder.count_frames(list(sample.locations), sample.values[0], kernel=False)
        return profile

    def show(self, profile: Profile) -> None:
        """The goroutine tables instead of the top functions (none when the profile
        itself goes to standard output)."""
        assert isinstance(profile, GoroutineProfile)
        if not output_files.uses_stdout(self.outputs):
            self.print_tables(profile)

    def print_tables(self, profile: GoroutineProfile) -> None:
        gs = profile.goroutines
        states = Counter(g.state for g in gs)
        t = Table(title=f"{len(gs)} goroutines by state", title_justify="left", box=None,
                  pad_edge=False)
        t.add_column("count", justify="right")
        t.add_column("state")
        for state, n in states.most_common():
            t.add_row(str(n), state)
        self.console.print(t)
        groups = sorted(profile.samples, key=lambda s: -s.values[0])[:self.top]
        t = Table(title="biggest groups by stack", title_justify="left", box=None,
                  pad_edge=False)
        t.add_column("count", justify="right")
        t.add_column("top frame (first outside the runtime)", overflow="fold")
        t.add_column("labels", overflow="fold")
        for s in groups:
            t.add_row(str(s.values[0]), _top_frame(s.locations),
                      ", ".join(f"{k}={v}" for k, v in s.labels.items()))
        self.console.print(t)

    def summary_rows(self, collected: GoroutinesRead, builder: ProfileBuilder) -> Rows:
        s = collected.snapshot.stats
        system = sum(e.system for e in collected.entries)
        shown = "included" if self.include_system else "left out, as runtime/pprof does"
        return [
            ("goroutines", f"{len(collected.entries)} ({system} started by the runtime: "
                           f"{shown}); {s.dead} dead gs skipped"),
            ("changed while read", f"{s.changed} (still changing after 3 reads; {s.retried} "
                                   "changed once and were read again)"),
            ("no stack", f"{s.running} running; {s.unreadable} unreadable; "
                         f"{s.incomplete} incomplete"),
            ("frame-pointer frames", f"{s.fp_frames} (where the pcsp table was unreadable)"),
            ("read", f"{s.read_s * 1000:.0f} ms ({s.read_cpu_s * 1000:.0f} ms of CPU), "
                     f"{s.reads} reads, {s.bytes_read // 1024} KiB"),
            ("unnamed frames", f"{builder.stats.unnamed_frames}{builder.stats.damage_text()}"),
        ]

    def stats_doc(self, collected: GoroutinesRead, builder: ProfileBuilder) -> dict:
        s = collected.snapshot.stats
        return {
            "goroutines": len(collected.entries),
            "system_goroutines": sum(e.system for e in collected.entries),
            "by_state": dict(Counter(e.state for e in collected.entries)),
            "allglen": s.allglen, "dead": s.dead, "changed": s.changed, "retried": s.retried,
            "running": s.running, "unreadable": s.unreadable, "incomplete": s.incomplete,
            "fp_frames": s.fp_frames, "cut_stacks": s.cut_stacks, "reads": s.reads,
            "bytes_read": s.bytes_read, "read_s": s.read_s, "read_cpu_s": s.read_cpu_s,
            "labels": vars(s.labels),
            "unnamed_frames": builder.stats.unnamed_frames,
            "total_s": time.monotonic() - self.started_mono,
            "cpu_s": _cpu_seconds(),
            "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            "pid": os.getpid(),
        }


def _top_frame(locations) -> str:
    names = [f.function for loc in locations for f in loc.frames]
    for name in names:
        if not name.startswith(("runtime.", "internal/runtime/")):
            return name
    return names[0] if names else "(no stack)"


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
