"""The agent's loop: processes picked up and let go (goprof.agent.processes), windows
closed, profiles handed to the sinks.

One CPU recorder (and one memory recorder with --mem) runs the whole time; a new
process is one entry in the kernel's targets map (plus uprobes on its binary, once
per binary, for memory), so windows follow each other with no gap and nothing is
detached or attached per window. At each window's end both recorders flip to
their other map set; the closed set is split by pid, symbolized and encoded as
one pprof per process, and submitted to every sink's delivery queue (which never
blocks). Samples carry the pprof labels the BPF programs read from the goroutine
that ran (and its id with --goroutine-ids); with --goroutines each running process's
goroutines are read at the window's end into a goroutine profile of its own. A
process that exited is let go after the window that holds its last samples: its
targets entry, uprobes (if no other process uses the binary), symbol tables and
cache entries are released.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections import defaultdict

from goprof import __version__
from goprof.agent.delivery import Delivery
from goprof.agent.discovery import gone
from goprof.agent.goroutines import read_window
from goprof.agent.kube import PodDirectory
from goprof.agent.metrics import AgentMetrics
from goprof.agent.options import AgentOptions
from goprof.agent.processes import Processes, Profiled
from goprof.exporters import pprof
from goprof.exporters.sink import WindowProfile
from goprof.kinds.cpu.build import build_cpu
from goprof.kinds.cpu.recorder import CpuRecorder, RawSample
from goprof.kinds.mem.build import AllocProfileBuilder
from goprof.kinds.mem.recorder import AllocSample, MemRecorder
from goprof.model import Profile
from goprof.recording.builder import ImageKey, ProfileBuilder, image_key
from goprof.recording.labels import LabelCounts, fsbase_offset
from goprof.symbolizer import KernelSymbolizer, SymbolizerError, load_kernel_symbolizer

MAPS_REREAD_S = 60.0  # a process's maps are re-read at least this often


class Agent:
    def __init__(self, options: AgentOptions, deliveries: list[Delivery],
                 metrics: AgentMetrics, log: logging.Logger,
                 pods: PodDirectory | None = None) -> None:
        self.opts = options
        self.deliveries = deliveries
        self.metrics = metrics
        self.log = log
        self.processes = Processes(options, metrics, log, pods)
        self.cpu: CpuRecorder | None = None
        self.memrec: MemRecorder | None = None
        self.kernel: KernelSymbolizer | None = None
        self._sequence = 0
        self._window_start_ns = 0
        self.last_window_mono = time.monotonic()

    # -- lifecycle ----------------------------------------------------------------
    def open(self) -> None:
        """Loads and attaches the recorders (EnvironmentProblem when it cannot)."""
        fsbase, why = fsbase_offset()
        if why:
            self.log.warning(why)  # once: it is the kernel's, the same for every process
        self.cpu = CpuRecorder(self.opts.frequency, self.opts.kernel, self.opts.window_s,
                               max_targets=self.opts.max_targets,
                               goroutine_ids=self.opts.goroutine_ids, fsbase_offset=fsbase)
        self.cpu.open()
        if self.opts.mem:
            self.memrec = MemRecorder(self.opts.mem_rate, max_targets=self.opts.max_targets,
                                      goroutine_ids=self.opts.goroutine_ids)
            self.memrec.open()
        self.processes.use_recorders(self.cpu, self.memrec)
        if self.opts.kernel:
            self.kernel = load_kernel_symbolizer(self.log.warning)

    def close(self) -> None:
        for rec in (self.cpu, self.memrec):
            if rec is not None:
                rec.close()
        self.processes.close()

    def healthy(self) -> tuple[bool, str]:
        late = time.monotonic() - self.last_window_mono
        if late > 2 * self.opts.window_s + 5:
            return False, f"no window closed for {late:.0f} s"
        return True, f"ok: {len(self.processes.profiled)} processes"

    def run(self, stop: threading.Event) -> str:
        """Profiles until `stop` is set or the duration passes; returns why it ended.
        The last, partial window is closed and handed to the sinks too."""
        assert self.cpu is not None
        self.cpu.start()
        if self.memrec is not None:
            self.memrec.start()
        started = time.monotonic()
        self._window_start_ns = time.time_ns()
        self.last_window_mono = started
        deadline = started + self.opts.duration if self.opts.duration else None
        next_window = started + self.opts.window_s
        next_scan = started
        self.log.info("agent started", extra={"fields": {
            "window_s": self.opts.window_s, "frequency_hz": self.opts.frequency,
            "mem": self.opts.mem, "goroutines": self.opts.goroutines,
            "goroutine_ids": self.opts.goroutine_ids,
            "sinks": ",".join(d.name for d in self.deliveries)}})
        ended = ""
        while not ended:
            now = time.monotonic()
            if now >= next_scan:
                self.processes.scan()
                next_scan = now + self.opts.scan_interval_s
            if now >= next_window:
                self.close_window()
                # A slow window does not make the next ones short: they stay W long.
                next_window = max(next_window + self.opts.window_s, time.monotonic() + 0.1)
            wake = min(next_scan, next_window, deadline or next_window)
            if stop.wait(max(wake - time.monotonic(), 0)):
                ended = "stopped by a signal"
            elif deadline is not None and time.monotonic() >= deadline:
                ended = "duration reached"
        self.cpu.stop()
        if self.memrec is not None:
            self.memrec.stop()
        self.close_window()
        return ended

    # -- windows ----------------------------------------------------------------------
    def close_window(self) -> None:
        assert self.cpu is not None
        built = time.monotonic()
        end_ns = time.time_ns()
        start_ns, self._window_start_ns = self._window_start_ns, end_ns
        cpu_window = self.cpu.drain()
        mem_window = self.memrec.drain() if self.memrec is not None else None
        cpu_by_image: dict[ImageKey, list[RawSample]] = defaultdict(list)
        for s in cpu_window.samples:
            cpu_by_image[image_key(s.pid, s.generation)].append(s)
        st = cpu_window.stats
        self.metrics.lost.labels("cpu").inc(st.lost)
        self.metrics.collisions.labels("cpu").inc(st.stacks_full)
        self.metrics.truncated.labels("cpu").inc(st.truncated)
        self._count_labels("cpu", st.labels)
        for p in self.processes.images():
            samples = cpu_by_image.get(p.image)
            if not samples:
                self.metrics.empty_windows.labels("cpu").inc()
                continue
            try:
                self._cpu_profile(p, samples, start_ns, end_ns, st.lost)
            except Exception as e:  # noqa: BLE001 - that process's window only
                self._window_failed(p, "cpu", e)
        if mem_window is not None:
            self._mem_profiles(mem_window, start_ns, end_ns)
        if self.opts.goroutines:
            self._goroutine_profiles(start_ns, end_ns)
        self.processes.release_exited()
        self.last_window_mono = time.monotonic()
        self.metrics.last_window.set(time.time())
        self.metrics.window_build.observe(self.last_window_mono - built)

    def _cpu_profile(self, p: Profiled, samples: list[RawSample], start_ns: int, end_ns: int,
                     lost: int) -> None:
        # Reading /proc/PID/maps for every process every window was a good part of the
        # agent's cost with hundreds of processes: re-read it when a sample has an
        # address outside what is mapped (a library loaded since), and once a minute
        # in case something was mapped over an old range.
        now = time.monotonic()
        running = not (p.exited or p.retired)  # else its maps are gone or another's
        if running and (now - p.maps_read >= MAPS_REREAD_S or not p.symbolizer.covers(
                {a for s in samples for a in s.user})):
            p.maps_read = now
            try:
                p.symbolizer.refresh()  # what is loaded stays
            except SymbolizerError:
                pass
        assert self.cpu is not None
        builder = ProfileBuilder({p.image: p.symbolizer}, self.kernel,
                                 {p.image: p.candidate.target.comm})
        comments = [f"goprof {__version__} agent cpu: {self.opts.frequency} Hz cpu-clock, "
                    f"window {self.opts.window_s:g} s, {p.candidate.target.label}",
                    f"host window: lost samples {lost}"]
        profile = build_cpu(builder, samples, self.cpu.period_ns, start_ns, end_ns - start_ns,
                            comments)
        count = sum(s.count for s in samples)
        self.metrics.samples.labels("cpu").inc(count)
        self.metrics.unnamed.labels("cpu").inc(builder.stats.unnamed_frames)
        self.metrics.truncated.labels("cpu").inc(builder.stats.cut_stacks)
        self._submit("cpu", p, profile, start_ns, end_ns,
                     {"sample_rate": str(self.opts.frequency)})

    def _mem_profiles(self, window, start_ns: int, end_ns: int) -> None:
        st = window.stats
        self.metrics.lost.labels("mem").inc(st.lost)
        self.metrics.collisions.labels("mem").inc(st.stacks_full)
        self.metrics.truncated.labels("mem").inc(st.truncated)
        self._count_labels("mem", st.labels)
        by_image: dict[ImageKey, list[AllocSample]] = defaultdict(list)
        for s in window.samples:
            by_image[image_key(s.pid, s.generation)].append(s)
        # The kernel's exact span totals are per host, not per process: they can scale
        # the estimates only when one process used the span method.
        images = self.processes.images()
        span_images = [p.image for p in images if p.mem and p.mem.method == "span"]
        for p in images:
            if p.mem is None:
                continue
            samples = by_image.get(p.image)
            if not samples:
                self.metrics.empty_windows.labels("mem").inc()
                continue
            try:
                self._mem_profile(p, samples, st, start_ns, end_ns, span_images == [p.image])
            except Exception as e:  # noqa: BLE001 - that process's window only
                self._window_failed(p, "mem", e)

    def _count_labels(self, kind: str, labels: LabelCounts) -> None:
        self.metrics.label_sets.labels(kind).inc(labels.sets)
        self.metrics.labels_capped.labels(kind).inc(labels.capped)
        self.metrics.labels_unread.labels(kind).inc(labels.unreadable + labels.full)

    def _goroutine_profiles(self, start_ns: int, end_ns: int) -> None:
        """A goroutine profile of every running process, read now (the window's end):
        a snapshot, where CPU and allocations are the window's totals."""
        for p in list(self.processes.profiled.values()):
            if p.goroutines is None or p.exited:
                continue
            try:
                got, builder = read_window(p.goroutines, p.symbolizer, p.image,
                                           p.candidate.target.comm, p.candidate.target.label,
                                           self.opts.window_s)
            except Exception as e:  # noqa: BLE001 - that process's window only
                self._window_failed(p, "goroutines", e)
                continue
            self.metrics.goroutine_read.observe(got.seconds)
            self.metrics.samples.labels("goroutines").inc(got.goroutines)
            self.metrics.unnamed.labels("goroutines").inc(builder.stats.unnamed_frames)
            s = got.stats
            for why, n in (("running", s.running), ("unreadable", s.unreadable),
                           ("incomplete", s.incomplete), ("changed", s.changed)):
                self.metrics.goroutine_stacks.labels(why).inc(n)
            if not got.profile.samples:
                self.metrics.empty_windows.labels("goroutines").inc()
                continue
            self._submit("goroutines", p, got.profile, start_ns, end_ns,
                         {"read_ms": f"{got.seconds * 1000:.1f}"})

    def _window_failed(self, p: Profiled, kind: str, e: Exception) -> None:
        """A window of one process could not be built: dropped, counted; a failure
        (logged once) unless the process had exited, which explains it."""
        self.metrics.windows_failed.labels(kind).inc()
        if not p.exited and not gone(p.candidate):
            self.processes.failed(p, kind, f"a {kind} window of a process could not be "
                                  "built; dropped", e)

    def _mem_profile(self, p: Profiled, samples: list[AllocSample], st, start_ns: int,
                     end_ns: int, normalize_span: bool) -> None:
        assert p.mem is not None
        builder = ProfileBuilder({p.image: p.symbolizer}, None,
                                 {p.image: p.candidate.target.comm})
        alloc = AllocProfileBuilder(builder, {p.image: p.mem})
        comments = [f"goprof {__version__} agent mem: method {p.mem.method}, rate "
                    f"{p.mem.rate} bytes, window {self.opts.window_s:g} s, "
                    f"{p.candidate.target.label}"]
        profile = alloc.build(samples, st, start_ns, end_ns - start_ns, comments,
                              normalize_span=normalize_span)
        self.metrics.samples.labels("mem").inc(sum(s.events for s in samples))
        self.metrics.unnamed.labels("mem").inc(builder.stats.unnamed_frames)
        self._submit("mem", p, profile, start_ns, end_ns, {"method": p.mem.method})

    def _submit(self, kind: str, p: Profiled, profile: Profile, start_ns: int, end_ns: int,
                extra: dict[str, str]) -> None:
        buf = io.BytesIO()
        pprof.EXPORTER.write(profile, buf)
        self._sequence += 1
        window = WindowProfile(kind, dict(p.labels), start_ns, end_ns, buf.getvalue(),
                               self._sequence, extra)
        self.metrics.windows.labels(kind).inc()
        for d in self.deliveries:
            d.submit(window)

