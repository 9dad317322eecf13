"""--goroutines: one goroutine profile of each process per window, as runtime/pprof's
goroutine profile (goroutine/count, period 1, one sample per stack and label set), read
through /proc/PID/mem by goprof.golang.goroutines without stopping the process.

A process's reader is made once, when it is picked up (the runtime's g layout, where
runtime.allgs is, an unwinder whose per-pc facts stay valid for the binary), and read
at the end of every window it is running in. Nothing in the kernel: the cost is the
agent's own time, per process, in goprof_goroutine_read_seconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from goprof import __version__
from goprof.golang.goroutines import GoroutineReader, ReadStats
from goprof.golang.layouts import goroutine_layout
from goprof.golang.process import inspect
from goprof.kinds.goroutines.build import GoroutineProfile, build_entries, build_profile
from goprof.recording.builder import ImageKey, ProfileBuilder
from goprof.symbolizer import BinaryCache, ProcessSymbolizer, SymbolizerError
from goprof.targets import Target


@dataclass
class GoroutineWindow:
    profile: GoroutineProfile
    stats: ReadStats
    goroutines: int  # in the profile (system goroutines left out, as runtime/pprof does)
    seconds: float  # reading and building it


def open_reader(target: Target, cache: BinaryCache) -> GoroutineReader:
    """A reader of the process's goroutines. Raises what goprof goroutines says when it
    cannot read them (not Go, a Go version whose g layout is unknown without DWARF,
    runtime.allgs not found): EnvironmentProblem or SymbolizerError."""
    proc = inspect(target, cache)
    layout = goroutine_layout(proc.binary, path=proc.path)
    return GoroutineReader(target.pid, target.label, proc.binary, proc.path, proc.bias, layout)


def read_window(reader: GoroutineReader, symbolizer: ProcessSymbolizer, image: ImageKey,
                comm: str, label: str, window_s: float) -> tuple[GoroutineWindow, ProfileBuilder]:
    """Every goroutine now, as a goroutine profile; and the builder that counted its
    frames (unnamed ones for the metrics). TargetGone when the process exited."""
    started = time.monotonic()
    snapshot = reader.read()  # label sets and stacks are cached within one read only
    pcs = {a for g in snapshot.goroutines for a in g.lookups}
    if not symbolizer.covers(pcs):
        try:
            symbolizer.refresh()  # a library loaded since the maps were read
        except SymbolizerError:
            pass
    unwinder = reader.unwinder
    entries = build_entries(snapshot, symbolizer, lambda pc: unwinder.info(pc).entry,
                            unwinder.inline_pcs)
    s = snapshot.stats
    comments = [f"goprof {__version__} agent goroutines: window {window_s:g} s, {label}, "
                "read through /proc/PID/mem without stopping it",
                f"changed while read: {s.changed}; running (no stack): {s.running}; "
                f"unreadable: {s.unreadable}"]
    profile = build_profile(entries, snapshot.time_ns, comments, include_system=False)
    builder = ProfileBuilder({image: symbolizer}, None, {image: comm})
    for sample in profile.samples:
        builder.count_frames(list(sample.locations), sample.values[0], kernel=False)
    count = sum(sample.values[0] for sample in profile.samples)
    return GoroutineWindow(profile, s, count, time.monotonic() - started), builder
