"""A profiling run, whatever the kind: targets in, one profile out.

    run = privileges + targets -> collect -> build -> outputs -> summary (+ stats JSON)

`ProfileSession` is that skeleton; `RecordingSession` collects by recording (a recorder,
`-- CMD`, signals, the record loop, execs followed) and each kind in goprof.kinds gives
the hooks: what to check in a target, which recorder, how targets are added, how its
samples become a profile, and what its summary and stats say. A kind that only reads
(heap) collects in one step.

Order matters for what users get: symbol tables are snapshotted right after recording
starts (a target that exits keeps its names), the kernel side is drained window by
window, and whatever ends the run (duration, Ctrl-C, every target gone) the samples
collected so far are written.
"""

from __future__ import annotations

import json
import resource
import subprocess
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from goprof import output_files
from goprof.errors import EnvironmentProblem
from goprof.exporters import Exporter
from goprof.model import Profile
from goprof.recording.builder import ProfileBuilder
from goprof.recording.execs import ImageTracker, snapshot_symbols
from goprof.recording.loop import (
    MAX_WINDOW_S,
    Recorded,
    Recorder,
    StopSignals,
    announce,
    record,
)
from goprof.recording.windows import ExecEvent
from goprof.report import print_counters, print_top
from goprof.symbolizer import BinaryCache, KernelSymbolizer, ProcessSymbolizer, SymbolizerError
from goprof.targets import Target, check_privileges, target_for_pid
from rich.console import Console

Rows = list[tuple[str, str]]


@dataclass
class RunResult:
    profile: Profile
    collected: Any  # what the kind's collect() gave (a Recording for recording kinds)
    outputs: list[Path]
    targets: list[Target] = field(default_factory=list)
    exit_code: int = 0


class ProfileSession(ABC):
    """The skeleton every command that writes a profile follows."""

    kind: ClassVar[str]  # "cpu", "mem", "heap": the -o templates' {kind}
    empty_profile: ClassVar[str]  # what the summary says instead of an empty top table

    def __init__(self, pids: list[int], outputs: list[tuple[Path, Exporter]],
                 console: Console | None, stats_path: Path | None = None) -> None:
        self.pids = pids
        self.outputs = outputs
        self.console = console or Console(stderr=True)
        self.stats_path = stats_path
        self.images = ImageTracker(BinaryCache())  # symbol tables per target and exec
        self.written: list[tuple[Path, Exporter]] = []  # outputs, templates filled in
        self.started_mono = 0.0

    def run(self) -> RunResult:
        self.started_mono = time.monotonic()
        check_privileges()
        targets = [target_for_pid(pid) for pid in self.pids]
        self.inspect(targets)
        collected = self.collect(targets)
        builder = ProfileBuilder(self.images.symbolizers, self.kernel_symbolizer(),
                                 self.images.comms)
        profile = self.build(collected, builder, targets)
        self.written = output_files.write_outputs(profile, self.outputs, self.kind, targets)
        result = RunResult(profile, collected, [p for p, _ in self.written], targets)
        self.show(profile)
        print_counters(self.console, [
            *self.summary_rows(collected, builder),
            *[("wrote", f"{path} ({exporter.name})") for path, exporter in self.written]])
        if self.stats_path is not None:
            self._write_json(self.stats_path, self.stats_doc(collected, builder))
        return result

    # -- hooks ----------------------------------------------------------------
    def inspect(self, targets: list[Target]) -> None:
        """Checks a kind makes of each target before anything starts (mem: a Go program),
        so that a bad target is one clear error; also called for `-- CMD`'s target."""
        return None

    @abstractmethod
    def collect(self, targets: list[Target]) -> Any:
        """The kind's data (`targets` may grow: `-- CMD`)."""

    def show(self, profile: Profile) -> None:
        """What the end of a run shows above the summary: the top functions (goroutines:
        its own tables)."""
        shown = profile.default_sample_type
        print_top(self.console, profile, profile.value_index(shown) if shown else 0,
                  empty=self.empty_profile)

    def kernel_symbolizer(self) -> KernelSymbolizer | None:
        """kallsyms, for kinds that keep kernel frames (read after collecting: it takes
        ~0.3 s, off the first sample's path)."""
        return None

    @abstractmethod
    def build(self, collected: Any, builder: ProfileBuilder, targets: list[Target]
              ) -> Profile: ...

    @abstractmethod
    def summary_rows(self, collected: Any, builder: ProfileBuilder) -> Rows: ...

    def stats_doc(self, collected: Any, builder: ProfileBuilder) -> dict:
        """--stats FILE: the run's numbers as JSON (benchmarks, tests)."""
        return {}

    # -- shared steps ---------------------------------------------------------
    def snapshot_targets(self, targets: list[Target]) -> None:
        """Symbol tables of every target now, while they live (see snapshot_symbols)."""
        for t in targets:
            read_ns = time.monotonic_ns()
            self.images.add_first(t, snapshot_symbols(t, self.images.cache, self.console),
                                  read_ns)

    def _write_json(self, path: Path, doc: dict) -> None:
        try:
            path.write_text(json.dumps(doc, indent=1) + "\n")
        except OSError as e:
            raise EnvironmentProblem(f"cannot write {path}: {e.strerror}") from None


@dataclass
class Recording(Recorded):
    """A recording, with what the skeleton adds: the counters, when it started, the BPF
    programs' own run statistics."""

    stats: Any = None
    start_ns: int = 0  # wall clock, when the recorder started
    bpf: dict[str, int] = field(default_factory=dict)


class RecordingSession(ProfileSession):
    """Collects by recording: `-- CMD`, signals, a recorder and the record loop."""

    def __init__(self, pids: list[int], command: list[str], duration: float | None,
                 outputs: list[tuple[Path, Exporter]], console: Console | None,
                 stats_path: Path | None = None) -> None:
        super().__init__(pids, outputs, console, stats_path)
        self.command = command
        self.duration = duration
        self.child: subprocess.Popen | None = None
        # Drained at least every MAX_WINDOW_S; a shorter run is one window.
        self.window_s = min(duration or MAX_WINDOW_S, MAX_WINDOW_S)
        self.recording = False  # the recorder runs (probes attached now are enabled at once)
        self.setup_s = 0.0  # from the command to the recorder started
        self.record_cpu_s = 0.0  # goprof's own CPU time while recording

    # -- hooks ----------------------------------------------------------------
    @abstractmethod
    def open_recorder(self) -> Any:
        """The kind's recorder, its BPF object loaded (not started)."""

    @abstractmethod
    def add_targets(self, recorder: Any, targets: list[Target]) -> None:
        """Every target made known to the kernel side (before the recorder starts)."""

    @abstractmethod
    def new_stats(self) -> Any:
        """The kind's counters, empty: each drained window is added to them."""

    def cleanup(self) -> None:
        """Runs on every ending, after the recorder closed (mem: rates put back)."""

    def on_new_image(self, event: ExecEvent, recorder: Any, said: bool) -> None:
        """What a kind does when a target starts another program (mem: its probes and
        offsets are the new binary's). `said` is False for an exec that came before the
        first tables were read (`-- CMD`'s own): the same program, but the kernel side
        counts a new generation all the same."""

    # -- the skeleton's collect ---------------------------------------------------
    def collect(self, targets: list[Target]) -> Recording:
        recorder = self.open_recorder()
        try:
            with StopSignals() as signals:
                if self.command:
                    targets.append(self._start_command())
                    self.inspect(targets[-1:])
                self.add_targets(recorder, targets)
                start_ns = time.time_ns()
                recorder.start()
                self.recording = True
                self.setup_s = time.monotonic() - self.started_mono
                self.snapshot_targets(targets)
                stats = self.new_stats()
                announce(self.console)
                cpu_before = _cpu_seconds()
                recorded = record(
                    recorder, [t.pid for t in targets], stats, duration=self.duration,
                    window_s=self.window_s, signals=signals, console=self.console,
                    on_tick=lambda: self._follow_execs(recorder), on_drain=self._refresh)
                self.record_cpu_s = _cpu_seconds() - cpu_before
                return Recording(recorded.samples, recorded.ended_by, recorded.elapsed_s,
                                 stats, start_ns, recorder.program_stats())
        finally:
            recorder.close()
            self.cleanup()
            self._stop_child()  # also when the run failed: a started command is not left

    def _start_command(self) -> Target:
        try:
            # Popen returns once the exec succeeded, so the pid is the program's.
            # With -o - standard output is the profile's alone: the command's goes to stderr.
            self.child = subprocess.Popen(
                self.command,
                stdout=2 if output_files.uses_stdout(self.outputs) else None)
        except OSError as e:
            raise EnvironmentProblem(f"cannot start {self.command[0]}: {e.strerror}") from None
        return target_for_pid(self.child.pid)

    def _stop_child(self) -> None:
        """A command we started and that outlived the run is stopped (SIGTERM, then KILL)."""
        if self.child is None:
            return
        if self.child.poll() is None:
            self.child.terminate()
            try:
                self.child.wait(5)
            except subprocess.TimeoutExpired:
                self.child.kill()
                self.child.wait()

    def _follow_execs(self, recorder: Recorder) -> None:
        """Targets that exec'd since the last look: their new images' tables are read
        now, so their samples from then on are named from the right binary."""
        for event in recorder.take_execs():
            exec_record = self.images.on_exec(event, recorder.generation)
            if exec_record is not None:
                self.console.print(f"goprof: {exec_record.describe()}", highlight=False)
            self.on_new_image(event, recorder, said=exec_record is not None)

    def _refresh(self, live: set[int]) -> None:
        """After each window: mappings added since (dlopen) to the live targets' tables,
        keeping what is loaded."""
        for sym in self.images.current():
            if sym.pid in live:
                _refresh_mappings(sym)

    # -- what every recording says -----------------------------------------------
    def summary_rows(self, collected: Recording, builder: ProfileBuilder) -> Rows:
        return [("ended", collected.ended_by), *self.exec_rows(),
                *self.kind_rows(collected, builder)]

    @abstractmethod
    def kind_rows(self, collected: Recording, builder: ProfileBuilder) -> Rows: ...

    def exec_lines(self) -> list[str]:
        return [r.describe() for r in self.images.records]

    def exec_rows(self) -> Rows:
        return [("exec", line) for line in self.exec_lines()]

    def stats_doc(self, collected: Recording, builder: ProfileBuilder) -> dict:
        return {
            "ended_by": collected.ended_by,
            "execs": [{"pid": r.pid, "generation": r.generation, "exe": r.exe,
                       "comm": r.comm, "time": r.wall_time, "named": not r.problem}
                      for r in self.images.records],
            "unnamed_frames": builder.stats.unnamed_frames,
            "cut_stacks": builder.stats.cut_stacks,
            **builder.stats.damage_json(),
            "bpf_run_time_ns": collected.bpf["run_time_ns"],
            "bpf_run_cnt": collected.bpf["run_cnt"],
            "setup_s": self.setup_s,
            "recording_s": collected.elapsed_s,
            "recording_cpu_s": self.record_cpu_s,
            "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            **self.kind_stats(collected, builder),
        }

    def kind_stats(self, collected: Recording, builder: ProfileBuilder) -> dict:
        return {}


def _refresh_mappings(sym: ProcessSymbolizer) -> None:
    try:
        sym.refresh()
    except SymbolizerError:
        pass  # exited meanwhile: the snapshot stays


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
