"""`goprof cpu`'s hooks into the recording skeleton: a cpu-clock recorder on every CPU,
every target added as it is, samples named (kernel frames too) into a CPU profile."""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass
from pathlib import Path

from goprof import __version__
from goprof.exporters import Exporter
from goprof.kinds.cpu.build import build_cpu
from goprof.kinds.cpu.recorder import CpuRecorder, Stats
from goprof.model import Profile
from goprof.recording.builder import ProfileBuilder
from goprof.recording.labels import fsbase_offset, target_go_info, target_labels
from goprof.recording.session import Recording, RecordingSession, Rows
from goprof.recording.windows import (
    ExecEvent,
    stack_and_label_rows,
    stack_and_label_stats,
    wall_time_of,
)
from goprof.symbolizer import KernelSymbolizer, load_kernel_symbolizer
from goprof.targets import Target
from rich.console import Console


@dataclass
class CpuOptions:
    pids: list[int]
    command: list[str]
    duration: float | None
    frequency: int
    kernel: bool
    outputs: list[tuple[Path, Exporter]]
    stats_path: Path | None = None  # run statistics as JSON (benchmarks, the agent)
    goroutine_ids: bool = False  # the numeric label `goroutine` on every sample


class CpuSession(RecordingSession):
    kind = "cpu"
    empty_profile = "no samples: the targets used no CPU while recording"

    def __init__(self, options: CpuOptions, console: Console | None = None) -> None:
        super().__init__(options.pids, options.command, options.duration, options.outputs,
                         console, options.stats_path)
        self.opts = options
        self.period_ns = 0
        self.compiled_from_cache = False
        self.symbolize_s = 0.0

    def open_recorder(self) -> CpuRecorder:
        fsbase, why = fsbase_offset()
        if why:
            self.console.print(f"[yellow]note:[/] {why}")
        recorder = CpuRecorder(self.opts.frequency, self.opts.kernel, self.window_s,
                               goroutine_ids=self.opts.goroutine_ids, fsbase_offset=fsbase)
        recorder.open()
        self.period_ns = recorder.period_ns
        self.compiled_from_cache = recorder.compiled_from_cache
        return recorder

    def add_targets(self, recorder: CpuRecorder, targets: list[Target]) -> None:
        for t in targets:
            go, why = target_labels(t.pid, self.images.cache, from_tls=True)
            if why:
                self.console.print(f"[yellow]note:[/] {t.label}: its samples carry no pprof "
                                   f"labels: {why}")
            recorder.add_target(t.pid, go)

    def on_new_image(self, event: ExecEvent, recorder: CpuRecorder, said: bool) -> None:
        # Labels of the new program's goroutines: its own Go version's offsets.
        recorder.set_go_info(event.pid, event.generation,
                             target_go_info(event.pid, self.images.cache, from_tls=True))

    def new_stats(self) -> Stats:
        return Stats()

    def kernel_symbolizer(self) -> KernelSymbolizer | None:
        if not self.opts.kernel:
            return None
        return load_kernel_symbolizer(
            lambda text: self.console.print(f"[yellow]note:[/] {text}"))

    def build(self, collected: Recording, builder: ProfileBuilder, targets: list[Target]
              ) -> Profile:
        stats: Stats = collected.stats
        comments = [
            f"goprof {__version__} cpu: {self.opts.frequency} Hz cpu-clock on every CPU, "
            f"targets {', '.join(t.label for t in targets)}",
            *self.exec_lines(),
            f"ended: {collected.ended_by}",
        ]
        started = time.monotonic()
        profile = build_cpu(builder, collected.samples, self.period_ns, collected.start_ns,
                            int(collected.elapsed_s * 1e9), comments)
        self.symbolize_s = time.monotonic() - started
        profile.comments.append(
            f"samples {stats.counted}, lost {stats.lost}, stacks lost to a full stack map "
            f"{stats.stacks_full}, labels: {stats.labels.text()}, truncated stacks "
            f"{stats.truncated} (+{builder.stats.cut_stacks} cut at a bad frame), unnamed frames "
            f"{builder.stats.unnamed_frames}{builder.stats.damage_text()}")
        return profile

    def kind_rows(self, collected: Recording, builder: ProfileBuilder) -> Rows:
        stats: Stats = collected.stats
        sym = builder.stats
        named_pct = 100.0 * (1 - sym.unnamed_user_frames / sym.user_frames) if sym.user_frames \
            else 100.0
        return [
            ("samples", f"{stats.counted}"),
            ("lost samples", f"{stats.lost}" + (f" (maps full: {stats.counts_full})"
                                                 if stats.counts_full else "")),
            *stack_and_label_rows(stats.stacks_full, stats.labels),
            ("truncated stacks", f"{stats.truncated} at the depth limit, {sym.cut_stacks} cut "
                                 "where the frame-pointer walk left the mapped code"),
            ("unnamed frames", f"{sym.unnamed_frames} ({named_pct:.1f} % of user frames named)"
                               f"{sym.damage_text()}"),
        ]

    def kind_stats(self, collected: Recording, builder: ProfileBuilder) -> dict:
        stats: Stats = collected.stats
        first_ns = collected.bpf.get("first_sample_ns")
        return {
            "samples": stats.counted,
            "seen": stats.seen,
            "lost": stats.lost,
            **stack_and_label_stats(stats.stacks_full, stats.labels),
            "truncated_stacks": stats.truncated,
            "user_frames": builder.stats.user_frames,
            "unnamed_user_frames": builder.stats.unnamed_user_frames,
            # Wall clock of the first sample, from the BPF program's own timestamp.
            "first_sample_at": wall_time_of(first_ns) if first_ns else None,
            "symbolize_s": self.symbolize_s,
            "children_peak_rss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
            "bpf_from_cache": self.compiled_from_cache,
        }
