"""A CPU profiling session: targets in, one profile file out.

Order matters for what users get: symbol tables are snapshotted before
recording (a target that exits keeps its names), the kernel side is drained
window by window, and whatever ends the run (duration, Ctrl-C, every target
gone) the samples collected so far are written.
"""

from __future__ import annotations

import json
import resource
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from goprof import __version__, output_files
from goprof.errors import EnvironmentProblem
from goprof.exporters import Exporter
from goprof.exporters.sink import render_template
from goprof.kinds.cpu.recorder import CpuRecorder, Stats
from goprof.model import Profile
from goprof.recording.builder import ProfileBuilder
from goprof.recording.execs import ImageTracker
from goprof.recording.windows import ExecEvent
from goprof.report import print_counters, print_top
from goprof.symbolizer import (
    BinaryCache,
    KernelSymbolizer,
    ProcessGone,
    ProcessSymbolizer,
    SymbolizerError,
    load_kernel_symbolizer,
)
from goprof.targets import Target, alive, check_privileges, target_for_pid
from rich.console import Console
from rich.live import Live
from rich.text import Text

# Windows are drained at least this often, so the maps stay small on long runs.
MAX_WINDOW_S = 10.0
TICK_S = 0.5
FIRST_SAMPLE_POLL_S = 0.01


@dataclass
class CpuOptions:
    pids: list[int]
    command: list[str]
    duration: float | None
    frequency: int
    kernel: bool
    outputs: list[tuple[Path, Exporter]]
    stats_path: Path | None = None  # run statistics as JSON (benchmarks, the agent)


@dataclass
class RunResult:
    profile: Profile
    stats: Stats
    ended_by: str
    outputs: list[Path]
    targets: list[Target] = field(default_factory=list)
    exit_code: int = 0


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


def write_outputs(profile: Profile, outputs: list[tuple[Path, Exporter]], kind: str = "",
                  targets: list[Target] | None = None) -> list[tuple[Path, Exporter]]:
    """Each output written as goprof.output_files says (files whole or not at all,
    devices, FIFOs and stdout in place, never replaced); -o templates are filled in, one
    file per process when they name {pid}. Returns the files written."""
    jobs = [(path, part, exporter) for out, exporter in outputs
            for path, part in _expand(out, profile, kind, targets or [])]
    return output_files.write_all(jobs)


def _expand(out: Path, profile: Profile, kind: str, targets: list[Target]
            ) -> list[tuple[Path, Profile]]:
    template = str(out)
    if "{" not in template:
        return [(out, profile)]
    host = socket.gethostname()
    fill = partial(render_template, template, host=host, kind=kind, when_ns=profile.time_nanos)
    if "{pid}" not in template or len(targets) < 2:
        first = targets[0] if targets else Target(0, "", "")
        return [(Path(fill(exe=first.exe, pid=first.pid)), profile)]
    parts = []
    for t in targets:
        samples = [s for s in profile.samples if s.labels.get("pid") == str(t.pid)]
        parts.append((Path(fill(exe=t.exe, pid=t.pid)), replace(profile, samples=samples)))
    return parts


class Recorder(Protocol):
    """What the recording loop needs of a recorder (CPU or memory)."""

    def samples_seen(self) -> int: ...
    def drain(self) -> Any: ...  # a window: .samples (list) and .stats (with add())
    def stop(self) -> None: ...
    def take_execs(self) -> list[ExecEvent]: ...
    def generation(self, pid: int) -> int | None: ...


class RecordingSession:
    """What every recording command shares: signals, a started command, symbol
    snapshots, the record loop with its progress line, and atomic writes."""

    def __init__(self, duration: float | None, command: list[str],
                 outputs: list[tuple[Path, Exporter]], console: Console | None) -> None:
        self.duration = duration
        self.command = command
        self.outputs = outputs
        self.console = console or Console(stderr=True)
        self._stop = threading.Event()
        self._stop_reason = ""
        self.child: subprocess.Popen | None = None
        self.first_sample_at: float | None = None  # wall clock (time.time())
        # Drained at least every MAX_WINDOW_S; a shorter run is one window.
        self.window_s = min(duration or MAX_WINDOW_S, MAX_WINDOW_S)
        self.record_cpu_s = 0.0
        self.written: list[tuple[Path, Exporter]] = []  # outputs, templates filled in
        self.images = ImageTracker(BinaryCache())  # symbol tables per target and exec

    # -- signals --------------------------------------------------------------
    def _on_signal(self, signum: int, _frame) -> None:
        if not self._stop.is_set():
            self._stop_reason = "interrupted (Ctrl-C)" if signum == signal.SIGINT else \
                f"stopped by {signal.Signals(signum).name}"
        self._stop.set()

    def _install_signals(self) -> dict:
        return {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}

    @staticmethod
    def _restore_signals(old: dict) -> None:
        for s, h in old.items():
            signal.signal(s, h)

    # -- steps ----------------------------------------------------------------
    def _start_command(self) -> Target:
        try:
            # Popen returns once the exec succeeded, so the pid is the program's.
            # With -o - standard output is the profile's alone: the command's goes to stderr.
            self.child = subprocess.Popen(
                self.command, stdout=2 if output_files.uses_stdout(self.outputs) else None)
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

    def snapshot_targets(self, targets: list[Target]) -> None:
        """Symbol tables of every target now, while they live (see snapshot_symbols)."""
        for t in targets:
            read_ns = time.monotonic_ns()
            self.images.add_first(t, snapshot_symbols(t, self.images.cache, self.console),
                                  read_ns)

    def _follow_execs(self, recorder: Recorder) -> None:
        """Targets that exec'd since the last look: their new images' tables are read
        now, so their samples from then on are named from the right binary."""
        for event in recorder.take_execs():
            record = self.images.on_exec(event, recorder.generation)
            if record is not None:
                self.console.print(f"goprof: {record.describe()}", highlight=False)
            self._on_new_image(event, recorder, said=record is not None)

    def _on_new_image(self, event: ExecEvent, recorder: Recorder, said: bool) -> None:
        """What a profile kind does when a target starts another program (mem: its
        probes and offsets are the new binary's). `said` is False for an exec that came
        before the first tables were read (`-- CMD`'s own): the same program, but the
        kernel side counts a new generation all the same."""

    def _record(self, recorder: Recorder, targets: list[Target], stats: Any
                ) -> tuple[list, str, float]:
        """Records until the duration, a signal or every target's exit; returns
        (samples, what ended the run, seconds recorded); stats are added to."""
        started = time.monotonic()
        window_s = self.window_s
        next_drain = started + window_s
        deadline = started + self.duration if self.duration else None
        samples: list = []
        live_pids = {t.pid for t in targets}
        progress = _Progress(self.console, self.duration)
        if not self.console.is_terminal:  # a terminal gets the progress line instead
            self.console.print("goprof: recording (Ctrl-C stops and writes)")
        ended_by = ""
        last_tick = started
        with progress:
            while True:
                now = time.monotonic()
                # Poll finely until the first sample, to report when it came.
                tick = TICK_S if self.first_sample_at else FIRST_SAMPLE_POLL_S
                wait = min(tick, next_drain - now)
                if deadline is not None:
                    wait = min(wait, deadline - now)
                if self._stop.wait(max(wait, 0)):
                    ended_by = self._stop_reason
                    break
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    ended_by = "duration reached"
                    break
                seen = recorder.samples_seen()
                if seen and self.first_sample_at is None:
                    self.first_sample_at = time.time()
                if self.first_sample_at is None and now - last_tick < TICK_S:
                    continue
                last_tick = now
                self._follow_execs(recorder)
                for pid in list(live_pids):
                    if not alive(pid):
                        live_pids.discard(pid)
                if not live_pids:
                    ended_by = "every target exited"
                    break
                if now >= next_drain:
                    self._drain_into(recorder, samples, stats)
                    for sym in self.images.current():
                        if sym.pid in live_pids:
                            self._refresh(sym)
                    next_drain = now + window_s
                progress.update(now - started, seen, stats.lost)
        elapsed = time.monotonic() - started
        recorder.stop()
        self._follow_execs(recorder)  # an exec just before the end still gets its names
        # Both windows: the current one, then the other (empty unless a flip raced).
        self._drain_into(recorder, samples, stats)
        self._drain_into(recorder, samples, stats)
        return samples, ended_by, elapsed

    @staticmethod
    def _drain_into(recorder: Recorder, samples: list, stats: Any) -> None:
        window = recorder.drain()
        samples.extend(window.samples)
        stats.add(window.stats)

    @staticmethod
    def _refresh(sym: ProcessSymbolizer) -> None:
        try:
            sym.refresh()  # mappings added since (dlopen): keep what is loaded
        except SymbolizerError:
            pass  # exited meanwhile: the snapshot stays

    # -- execs in what a run says ------------------------------------------------
    def exec_lines(self) -> list[str]:
        return [r.describe() for r in self.images.records]

    def exec_rows(self) -> list[tuple[str, str]]:
        return [("exec", line) for line in self.exec_lines()]

    def exec_stats(self) -> list[dict]:
        return [{"pid": r.pid, "generation": r.generation, "exe": r.exe, "comm": r.comm,
                 "time": r.wall_time, "named": not r.problem} for r in self.images.records]

    def _write_json(self, path: Path, doc: dict) -> None:
        try:
            path.write_text(json.dumps(doc, indent=1) + "\n")
        except OSError as e:
            raise EnvironmentProblem(f"cannot write {path}: {e.strerror}") from None


class CpuSession(RecordingSession):
    def __init__(self, options: CpuOptions, console: Console | None = None) -> None:
        super().__init__(options.duration, options.command, options.outputs, console)
        self.opts = options

    def run(self) -> RunResult:
        started_mono = time.monotonic()
        check_privileges()
        targets = [target_for_pid(pid) for pid in self.opts.pids]
        recorder = CpuRecorder(self.opts.frequency, self.opts.kernel, self.window_s)
        recorder.open()
        old_handlers = self._install_signals()
        try:
            if self.opts.command:
                targets.append(self._start_command())
            for t in targets:
                recorder.add_target(t.pid)
            start_ns = time.time_ns()
            recorder.start()
            setup_s = time.monotonic() - started_mono
            # Symbol tables right after the start (off the first sample's path), while
            # the targets are alive: one that exits later keeps its names.
            self.snapshot_targets(targets)
            cpu_before = _cpu_seconds()
            stats = Stats()
            samples, ended_by, elapsed = self._record(recorder, targets, stats)
            self.record_cpu_s = _cpu_seconds() - cpu_before
            bpf_stats = recorder.program_stats()
        finally:
            recorder.close()
            self._restore_signals(old_handlers)
            self._stop_child()  # also when the run failed: a started command is not left
        # kallsyms takes ~0.3 s to read: after recording, off the first sample's path.
        builder = ProfileBuilder(self.images.symbolizers, self._kernel_symbolizer(),
                                 self.images.comms)
        comments = [
            f"goprof {__version__} cpu: {self.opts.frequency} Hz cpu-clock on every CPU, "
            f"targets {', '.join(t.label for t in targets)}",
            *self.exec_lines(),
            f"ended: {ended_by}",
        ]
        sym_started = time.monotonic()
        profile = builder.build_cpu(samples, recorder.period_ns, start_ns, int(elapsed * 1e9),
                                    comments)
        symbolize_s = time.monotonic() - sym_started
        profile.comments.append(
            f"samples {stats.counted}, lost {stats.lost}, stack collisions "
            f"{stats.user_collisions + stats.kernel_collisions}, truncated stacks "
            f"{stats.truncated} (+{builder.stats.cut_stacks} cut at a bad frame), unnamed frames "
            f"{builder.stats.unnamed_frames}{builder.stats.damage_text()}")
        self.written = write_outputs(profile, self.outputs, "cpu", targets)
        result = RunResult(profile, stats, ended_by, [p for p, _ in self.written], targets)
        self._print_summary(result, builder)
        if self.opts.stats_path is not None:
            self._write_stats(result, builder, bpf_stats, setup_s, elapsed, symbolize_s,
                              recorder.compiled_from_cache)
        return result

    def _write_stats(self, result: RunResult, builder: ProfileBuilder, bpf_stats: dict,
                     setup_s: float, elapsed: float, symbolize_s: float, cached: bool) -> None:
        assert self.opts.stats_path is not None
        stats = result.stats
        doc = {
            "ended_by": result.ended_by,
            "samples": stats.counted,
            "seen": stats.seen,
            "lost": stats.lost,
            "stack_collisions": stats.user_collisions + stats.kernel_collisions,
            "truncated_stacks": stats.truncated,
            "cut_stacks": builder.stats.cut_stacks,
            "user_frames": builder.stats.user_frames,
            "unnamed_user_frames": builder.stats.unnamed_user_frames,
            "unnamed_frames": builder.stats.unnamed_frames,
            **builder.stats.damage_json(),
            "bpf_run_time_ns": bpf_stats["run_time_ns"],
            "bpf_run_cnt": bpf_stats["run_cnt"],
            "setup_s": setup_s,
            "first_sample_at": self.first_sample_at,
            "recording_s": elapsed,
            "recording_cpu_s": self.record_cpu_s,
            "symbolize_s": symbolize_s,
            "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            "children_peak_rss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
            "bpf_from_cache": cached,
            "execs": self.exec_stats(),
        }
        self._write_json(self.opts.stats_path, doc)

    def _kernel_symbolizer(self) -> KernelSymbolizer | None:
        if not self.opts.kernel:
            return None
        return load_kernel_symbolizer(
            lambda text: self.console.print(f"[yellow]note:[/] {text}"))

    def _print_summary(self, result: RunResult, builder: ProfileBuilder) -> None:
        c = self.console
        stats = result.stats
        print_top(c, result.profile)
        sym = builder.stats
        named_pct = 100.0 * (1 - sym.unnamed_user_frames / sym.user_frames) if sym.user_frames \
            else 100.0
        rows = [
            ("ended", result.ended_by),
            *self.exec_rows(),
            ("samples", f"{stats.counted}"),
            ("lost samples", f"{stats.lost}" + (f" (maps full: {stats.counts_full})"
                                                 if stats.counts_full else "")),
            ("stack collisions", f"{stats.user_collisions + stats.kernel_collisions}"),
            ("truncated stacks", f"{stats.truncated} at the depth limit, {sym.cut_stacks} cut "
                                 "where the frame-pointer walk left the mapped code"),
            ("unnamed frames", f"{sym.unnamed_frames} ({named_pct:.1f} % of user frames named)"
                               f"{sym.damage_text()}"),
        ]
        rows += [("wrote", f"{path} ({exporter.name})") for path, exporter in self.written]
        print_counters(c, rows)


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class _Progress:
    """One line while recording, on a terminal only."""

    def __init__(self, console: Console, duration: float | None) -> None:
        self.console = console
        self.duration = duration
        self.live: Live | None = None

    def __enter__(self) -> _Progress:
        if self.console.is_terminal:
            self.live = Live(Text("recording..."), console=self.console, transient=True,
                             auto_refresh=False)
            self.live.__enter__()
        return self

    def update(self, elapsed: float, samples: int, lost: int) -> None:
        if self.live is None:
            return
        total = f"/{self.duration:.0f}s" if self.duration else ""
        self.live.update(Text(f"recording {elapsed:5.1f}s{total}  samples {samples}  "
                              f"lost {lost}  (Ctrl-C stops and writes)"), refresh=True)

    def __exit__(self, *exc) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)
