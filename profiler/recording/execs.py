"""Targets that exec: one pid, several programs over a run.

The kernel side gives every exec of a target a new generation, carried by each later
sample (bpf/cpu.c, bpf/mem.c: on_exec). Here each generation gets the symbol tables of
the image it ran, read as soon as the exec is seen (the recording loop looks every
tick), so its samples are named from the right binary, and each exec is recorded for
the summary ("pid P exec'd /path at T").

An image that could not be read in time (it exec'd again, or exited, before goprof
looked) keeps its samples with their addresses, unnamed and counted, never named
from another binary.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from goprof.errors import EnvironmentProblem
from goprof.recording.builder import ImageKey, image_key
from goprof.recording.windows import ExecEvent
from goprof.symbolizer import BinaryCache, ProcessGone, ProcessSymbolizer, SymbolizerError
from goprof.targets import Target, read_comm
from rich.console import Console


@dataclass
class ExecRecord:
    """One exec of a target, as the summary and the profile's comments say it."""

    pid: int
    generation: int
    exe: str
    comm: str
    wall_time: float
    problem: str = ""  # why its samples stay unnamed ("" when its tables were read)

    def describe(self) -> str:
        when = time.strftime("%H:%M:%S", time.localtime(self.wall_time)) + \
            f".{int(self.wall_time * 1000) % 1000:03d}"
        text = f"pid {self.pid} exec'd {self.exe or '?'} ({self.comm}) at {when}"
        return f"{text}: {self.problem}" if self.problem else text


class ImageTracker:
    """Symbol tables and comms per image of every target, first images included."""

    def __init__(self, cache: BinaryCache) -> None:
        self.cache = cache
        self.symbolizers: dict[ImageKey, ProcessSymbolizer] = {}
        self.comms: dict[ImageKey, str] = {}
        self.latest: dict[int, ImageKey] = {}  # pid -> the image it runs now
        self.records: list[ExecRecord] = []
        self._first_read_ns: dict[int, int] = {}

    def add_first(self, target: Target, symbolizer: ProcessSymbolizer, read_ns: int) -> None:
        """A target's tables as read when the run started (`read_ns`: monotonic, just
        before they were read)."""
        self.symbolizers[target.pid] = symbolizer
        self.comms[target.pid] = target.comm
        self.latest[target.pid] = target.pid
        self._first_read_ns[target.pid] = read_ns

    def on_exec(self, event: ExecEvent, current_generation: Callable[[int], int | None]
                ) -> ExecRecord | None:
        """Reads the new image's tables; returns the exec's record, or None for an exec
        that happened before the first tables were read (they already show its image:
        `-- CMD`'s own exec can land just after the target was added)."""
        pid, key = event.pid, image_key(event.pid, event.generation)
        first_read = self._first_read_ns.get(pid)
        if first_read is not None and event.monotonic_ns < first_read and pid in self.symbolizers:
            self.symbolizers[key] = self.symbolizers[pid]
            self.comms[key] = self.comms[pid]
            self.latest[pid] = key
            return None
        record = ExecRecord(pid, event.generation, _exe(pid), read_comm(pid), event.wall_time)
        try:
            symbolizer = ProcessSymbolizer(pid, self.cache)
        except ProcessGone:
            symbolizer, record.problem = None, "it exited before goprof could read the new " \
                                               "image: its samples stay unnamed"
        except SymbolizerError as e:
            symbolizer, record.problem = None, f"cannot read the new image ({e}): its samples " \
                                               "stay unnamed"
        # Read after an exec seen later would be that later image's: those tables
        # must not name this generation's samples.
        if symbolizer is not None and current_generation(pid) != event.generation:
            symbolizer, record.problem = None, "it exec'd again before goprof could read " \
                                               "this image: its samples stay unnamed"
        if symbolizer is not None:
            self.symbolizers[key] = symbolizer
            self.latest[pid] = key
        self.comms[key] = record.comm
        self.records.append(record)
        return record

    def current(self) -> list[ProcessSymbolizer]:
        """Each target's tables for the image it runs now (what a refresh updates)."""
        return [self.symbolizers[k] for k in self.latest.values() if k in self.symbolizers]


def snapshot_symbols(target: Target, cache: BinaryCache, console: Console
                     ) -> ProcessSymbolizer:
    """The target's symbol tables now, while it lives (a target that exits later keeps
    its names); what could not be read is said as a note."""
    try:
        sym = ProcessSymbolizer(target.pid, cache)
    except ProcessGone:
        raise EnvironmentProblem(f"{target.label} exited before goprof could read its "
                                 "memory map") from None
    except SymbolizerError as e:
        raise EnvironmentProblem(f"cannot read {target.label}'s binaries: {e}") from None
    for err in sym.errors:
        console.print(f"[yellow]note:[/] {target.label}: {err}")
    return sym


def _exe(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""
