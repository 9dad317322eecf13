"""The agent's loop: processes picked up and let go, windows closed, profiles handed
to the sinks.

One CPU recorder (and one memory recorder with --mem) runs the whole time; a new
process is one entry in the kernel's targets map (plus uprobes on its binary, once
per binary, for memory), so windows follow each other with no gap and nothing is
detached or attached per window. At each window's end both recorders flip to
their other map set; the closed set is split by pid, symbolized and encoded as
one pprof per process, and submitted to every sink's delivery queue (which never
blocks). A process that exited is let go after the window that holds its last
samples: its targets entry, uprobes (if no other process uses the binary),
symbol tables and cache entries are released.
"""

from __future__ import annotations

import io
import logging
import os
import select
import threading
import time
import traceback
from collections import defaultdict
from dataclasses import dataclass, field

from goprof import __version__
from goprof.agent.delivery import Delivery
from goprof.agent.discovery import Candidate, Discovery, ProcessFilter, gone, start_ticks
from goprof.agent.labels import process_labels
from goprof.agent.metrics import AgentMetrics
from goprof.errors import EnvironmentProblem
from goprof.exporters import pprof
from goprof.exporters.sink import WindowProfile
from goprof.golang.process import MEM_PROFILE_RATE, GoProcess, MethodUnavailable, inspect
from goprof.golang.writes import settle_writes
from goprof.kinds.cpu.recorder import CpuRecorder, RawSample
from goprof.kinds.mem.build import AllocProfileBuilder, MethodChoice
from goprof.kinds.mem.recorder import AllocSample, MemRecorder, Probe
from goprof.kinds.mem.session import DEFAULT_SPAN_RATE
from goprof.model import Profile
from goprof.recording.builder import ImageKey, ProfileBuilder, image_key
from goprof.symbolizer import (
    BinaryCache,
    KernelSymbolizer,
    ProcessGone,
    ProcessSymbolizer,
    SymbolizerError,
    load_kernel_symbolizer,
)

ProbeKey = tuple[tuple[int, int], str]  # (binary dev, inode), function


MAPS_REREAD_S = 60.0  # a process's maps are re-read at least this often


@dataclass
class AgentOptions:
    filter: ProcessFilter
    hostname: str
    window_s: float = 10.0
    frequency: int = 99
    kernel: bool = False
    mem: bool = False
    mem_rate: int = DEFAULT_SPAN_RATE
    service_name: str | None = None
    node: str | None = None
    duration: float | None = None
    scan_interval_s: float = 1.0  # how often new processes are looked for
    max_targets: int = 4096


@dataclass
class Profiled:
    """A process being profiled, and what it holds."""

    candidate: Candidate
    labels: dict[str, str]
    symbolizer: ProcessSymbolizer
    mem: MethodChoice | None = None
    probes: list[ProbeKey] = field(default_factory=list)
    exited: bool = False
    pidfd: int | None = None  # readable once the process exits (None: no pidfd here)
    maps_read: float = field(default_factory=time.monotonic)  # its maps last read
    failed: set[str] = field(default_factory=set)  # kinds counted and logged, once each
    generation: int = 0  # the process's execs before this image (its samples carry it)
    retired: bool = False  # the process exec'd another program: this image is over

    @property
    def pid(self) -> int:
        return self.candidate.target.pid

    @property
    def image(self) -> ImageKey:
        return image_key(self.pid, self.generation)


class Agent:
    def __init__(self, options: AgentOptions, deliveries: list[Delivery],
                 metrics: AgentMetrics, log: logging.Logger, pods=None) -> None:
        self.opts = options
        self.deliveries = deliveries
        self.metrics = metrics
        self.log = log
        self.pods = pods
        self.discovery = Discovery(options.filter)
        self.cache = BinaryCache()
        self.profiled: dict[int, Profiled] = {}
        # Images a process exec'd away from: let go after the window holding their
        # last samples. Its pid's targets entries stay: they carry its new generation.
        self.retired: list[Profiled] = []
        self._exec_pending: dict[int, int] = {}  # pid -> generation, until picked up anew
        self.cpu: CpuRecorder | None = None
        self.memrec: MemRecorder | None = None
        self.kernel: KernelSymbolizer | None = None
        self._probe_fds: dict[ProbeKey, tuple[int, int]] = {}  # -> (fd, processes using it)
        # Exits, by the profiled processes' pidfds: one poll() a scan instead of a
        # /proc/PID/stat read per process (and a pidfd cannot be fooled by a reused pid).
        self._exits = select.poll()
        self._sequence = 0
        self._window_start_ns = 0
        self.last_window_mono = time.monotonic()

    # -- lifecycle ----------------------------------------------------------------
    def open(self) -> None:
        """Loads and attaches the recorders (EnvironmentProblem when it cannot)."""
        self.cpu = CpuRecorder(self.opts.frequency, self.opts.kernel, self.opts.window_s,
                               max_targets=self.opts.max_targets)
        self.cpu.open()
        if self.opts.mem:
            self.memrec = MemRecorder(self.opts.mem_rate, max_targets=self.opts.max_targets)
            self.memrec.open()
        if self.opts.kernel:
            self.kernel = load_kernel_symbolizer(self.log.warning)

    def close(self) -> None:
        for rec in (self.cpu, self.memrec):
            if rec is not None:
                rec.close()
        for p in self._images():
            self._close_pidfd(p)

    def healthy(self) -> tuple[bool, str]:
        late = time.monotonic() - self.last_window_mono
        if late > 2 * self.opts.window_s + 5:
            return False, f"no window closed for {late:.0f} s"
        return True, f"ok: {len(self.profiled)} processes"

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
            "mem": self.opts.mem, "sinks": ",".join(d.name for d in self.deliveries)}})
        ended = ""
        while not ended:
            now = time.monotonic()
            if now >= next_scan:
                self.scan()
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

    # -- processes ------------------------------------------------------------------
    def scan(self) -> None:
        self._follow_execs()
        found = self.discovery.scan(
            {pid for pid, p in self.profiled.items() if not p.exited and p.pidfd is None})
        ended = {fd for fd, _ in self._exits.poll(0)}
        for p in self.profiled.values():
            if p.exited:
                continue
            if (p.pidfd in ended if p.pidfd is not None
                    else not self.discovery.running(p.pid, p.candidate.start_ticks)):
                p.exited = True  # let go once its last window is closed
        for c in found:
            if c.target.pid not in self.profiled:
                self._pick_up(c)
        for pid, exe, e in self.discovery.take_failures():  # each process once
            self.metrics.failed.labels("cpu").inc()
            self.log.warning("cannot examine a process; skipped", extra={"fields": {
                "pid": pid, "exe": exe, "error": describe(e)}})
        self._drop_unpicked_execs()

    def _follow_execs(self) -> None:
        """A profiled process that exec'd is a new process from then on, as a reused pid
        is: its image so far is retired (let go after this window, which holds its
        last samples), and discovery looks at the pid anew in this very scan, so the
        new program gets its own labels, symbol tables and allocation probes."""
        assert self.cpu is not None
        events = self.cpu.take_execs()
        if self.memrec is not None:
            self.memrec.take_execs()  # the same execs, seen by the mem programs' map
        for event in events:
            p = self.profiled.get(event.pid)
            if p is None or p.exited or event.generation <= p.generation:
                continue
            del self.profiled[event.pid]
            p.retired = True
            self.retired.append(p)
            self._exec_pending[event.pid] = event.generation
            self.discovery.forget(event.pid)
            self.metrics.execs.inc()
            self.log.info("process exec'd: profiled anew", extra={"fields": {
                "pid": p.pid, "comm": p.candidate.target.comm, "old_exe": p.candidate.target.exe,
                "generation": event.generation}})

    def _drop_unpicked_execs(self) -> None:
        """An exec'd process whose new program is not one to profile (not Go, filtered
        out, gone, failed): its targets entries go, nothing more is counted for it."""
        assert self.cpu is not None
        for pid in self._exec_pending:
            if pid in self.profiled:
                continue
            for rec in (self.cpu, self.memrec):
                if rec is not None:
                    _attempt(lambda rec=rec, pid=pid: rec.remove_target(pid))
        self._exec_pending.clear()

    def _pick_up(self, c: Candidate) -> None:
        """A process that exits at any step of this (the normal case where short-lived
        programs come and go) is rolled back and counted as vanished, quietly; anything
        else going wrong is that process's failure alone: rolled back, counted, logged,
        and not tried again (discovery looks at it anew only if it execs)."""
        t = c.target
        try:
            p = self._set_up(c)
        except Exception as e:  # noqa: BLE001 - one process's trouble is its own
            self._trim_caches()  # the binaries its symbolizer loaded, if nobody else's
            if isinstance(e, ProcessGone) or gone(c):
                self.metrics.vanished.inc()
                return
            self.metrics.failed.labels("cpu").inc()
            self.log.warning("cannot profile this process; skipped", extra={"fields": {
                "pid": t.pid, "comm": t.comm, "exe": t.exe, "error": describe(e)}})
            return
        self.profiled[t.pid] = p
        self.metrics.picked_up.inc()
        self.metrics.processes.set(len(self.profiled))
        self.metrics.binaries.set(len(self.cache))
        self.log.info("process picked up", extra={"fields": {
            "pid": t.pid, "comm": t.comm, "exe": t.exe, "go_version": c.binary.go_version,
            "service_name": p.labels.get("service_name", ""),
            **({"mem_method": p.mem.method} if p.mem else {})}})

    def _set_up(self, c: Candidate) -> Profiled:
        """Everything a process needs to be profiled; what was set up is released if
        a later step raises (uprobes of one site and not the next, a targets entry)."""
        sym = ProcessSymbolizer(c.target.pid, self.cache)
        # After an exec the targets entries exist and count generations: kept as they are.
        generation = self._exec_pending.get(c.target.pid)
        p = Profiled(c, {}, sym, generation=generation or 0)
        try:
            p.labels = process_labels(c, hostname=self.opts.hostname, node=self.opts.node,
                                      service_name=self.opts.service_name, pods=self.pods)
            p.pidfd = self._open_pidfd(c)
            assert self.cpu is not None
            if generation is None:
                self.cpu.add_target(c.target.pid)
            if self.memrec is not None:
                self._start_mem(p)
        except BaseException:
            self._release(p)
            raise
        return p

    def _start_mem(self, p: Profiled) -> None:
        """Allocations: go-sampler where Go's own sampler is on, else span (as goprof mem
        chooses); a process where neither works is profiled for CPU only, and said."""
        assert self.memrec is not None
        try:
            proc = inspect(p.candidate.target, self.cache)
            # A rate a killed goprof left on is not the program's: put back before choosing.
            notes, held = settle_writes(p.pid, p.candidate.target.label)
            for note in notes:
                self.log.warning(note, extra={"fields": {"pid": p.pid}})
            rate = proc.read_rate() or 0
            if MEM_PROFILE_RATE in held:
                # On for a `goprof mem --go-sampler` session only: it goes off when that
                # session ends, and go-sampler would then see nothing.
                rate = 0
            methods = ["go-sampler", "span"] if rate > 0 else ["span"]
            reasons = []
            for method in methods:
                try:
                    p.mem = self._attach_method(p, proc, method, rate)
                    return
                except MethodUnavailable as e:
                    reasons.append(f"{method}: {e}")
            raise EnvironmentProblem("; ".join(reasons))
        except Exception as e:  # noqa: BLE001 - one process's trouble is its own
            if isinstance(e, ProcessGone) or gone(p.candidate):
                raise  # it exited: the whole pick-up is rolled back (_pick_up)
            self._failed(p, "mem", "no allocation profile for this process (CPU only)", e)

    def _attach_method(self, p: Profiled, proc: GoProcess, method: str, rate: int
                       ) -> MethodChoice:
        assert self.memrec is not None
        layout = proc.span_offsets() if method == "span" else (0, 0)
        sites = proc.sites(method)
        held = len(p.probes)
        try:
            for site in sites:
                key = (proc.inode, site.function)
                if key in self._probe_fds:
                    fd, users = self._probe_fds[key]
                    self._probe_fds[key] = (fd, users + 1)
                else:
                    fd = self.memrec.attach(Probe(proc.path, site.file_offset, site.program,
                                                  site.function), enable=True)
                    self._probe_fds[key] = (fd, 1)
                p.probes.append(key)
            self.memrec.add_target(p.pid, layout, p.generation)
        except BaseException:
            # One site attached and not the next (the process exited meanwhile): the
            # first is let go now, not held for a method that is not running.
            self._release_probes(p.probes[held:])
            del p.probes[held:]
            raise
        return MethodChoice(method, rate if method == "go-sampler" else self.opts.mem_rate)

    def _open_pidfd(self, c: Candidate) -> int | None:
        try:
            fd = os.pidfd_open(c.target.pid)
        except ProcessLookupError:
            raise ProcessGone(f"pid {c.target.pid} exited") from None
        except (OSError, AttributeError):
            return None  # no pidfds here: its exit is noticed by /proc reads
        if start_ticks(c.target.pid) != c.start_ticks:
            os.close(fd)  # exited, or the pid was reused since: that pidfd is another's
            raise ProcessGone(f"pid {c.target.pid} exited")
        self._exits.register(fd, select.POLLIN)
        return fd

    def _close_pidfd(self, p: Profiled) -> None:
        if p.pidfd is not None:
            fd, p.pidfd = p.pidfd, None
            try:
                self._exits.unregister(fd)
            finally:
                os.close(fd)

    def _failed(self, p: Profiled, kind: str, msg: str, e: BaseException) -> None:
        """Counts and logs one kind of failure of a process once, however many windows
        it hits: a bug in one binary's tables must not flood the log."""
        if kind in p.failed:
            return
        p.failed.add(kind)
        self.metrics.failed.labels(kind).inc()
        self.log.warning(msg, extra={"fields": {
            "pid": p.pid, "comm": p.candidate.target.comm, "error": describe(e)}})

    def _release(self, p: Profiled) -> list[Exception]:
        """Releases what p holds (its pidfd, targets entries, uprobe references), each
        step whatever the others did, so one failing leaks nothing else; the errors."""
        assert self.cpu is not None
        steps = [lambda: self._close_pidfd(p)]
        if not p.retired:  # a retired image's pid now runs another program
            steps.append(lambda: self.cpu.remove_target(p.pid))
            if self.memrec is not None:
                steps.append(lambda: self.memrec.remove_target(p.pid))
        errors = [e for e in map(_attempt, steps) if e is not None]
        errors += self._release_probes(p.probes)
        p.probes = []
        return errors

    def _release_probes(self, keys: list[ProbeKey]) -> list[Exception]:
        """Drops a reference to each uprobe; the last one detaches it."""
        errors = []
        for key in keys:
            fd, users = self._probe_fds.get(key, (-1, 0))
            if users > 1:
                self._probe_fds[key] = (fd, users - 1)
            elif users == 1:
                del self._probe_fds[key]
                assert self.memrec is not None
                error = _attempt(lambda fd=fd: self.memrec.detach(fd))
                if error is not None:
                    errors.append(error)
        return errors

    def _let_go(self, p: Profiled) -> None:
        errors = self._release(p)
        if errors:
            self._failed(p, "let_go", "could not release all a process held", errors[0])
        if p.retired:
            self.retired = [r for r in self.retired if r is not p]
        else:
            del self.profiled[p.pid]
            self.discovery.forget(p.pid)  # a new process on that pid is looked at anew
        self.metrics.let_go.inc()
        self.log.info("process let go", extra={"fields": {
            "pid": p.pid, "comm": p.candidate.target.comm, "exe": p.candidate.target.exe}})

    def _release_exited(self) -> None:
        exited = [p for p in self.profiled.values() if p.exited] + list(self.retired)
        for p in exited:
            self._let_go(p)
        if exited:
            self._trim_caches()
            self.metrics.processes.set(len(self.profiled))

    def _trim_caches(self) -> None:
        """Symbol tables and Go build facts of binaries no profiled process runs."""
        keep = [b for p in self.profiled.values() for b in p.symbolizer.binaries]
        self.cache.retain(keep)
        self.discovery.binaries.forget_except(
            {p.candidate.file_key for p in self.profiled.values()})
        self.metrics.binaries.set(len(self.cache))

    # -- windows --------------------------------------------------------------------
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
        self.metrics.collisions.labels("cpu").inc(st.user_collisions + st.kernel_collisions)
        self.metrics.truncated.labels("cpu").inc(st.truncated)
        for p in self._images():
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
        self._release_exited()
        self.last_window_mono = time.monotonic()
        self.metrics.last_window.set(time.time())
        self.metrics.window_build.observe(self.last_window_mono - built)

    def _images(self) -> list[Profiled]:
        """Every image this window may hold samples of: the profiled ones and those
        retired by an exec during it."""
        return [*self.profiled.values(), *self.retired]

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
        profile = builder.build_cpu(samples, self.cpu.period_ns, start_ns, end_ns - start_ns,
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
        self.metrics.collisions.labels("mem").inc(st.collisions)
        self.metrics.truncated.labels("mem").inc(st.truncated)
        by_image: dict[ImageKey, list[AllocSample]] = defaultdict(list)
        for s in window.samples:
            by_image[image_key(s.pid, s.generation)].append(s)
        # The kernel's exact span totals are per host, not per process: they can scale
        # the estimates only when one process used the span method.
        span_images = [p.image for p in self._images() if p.mem and p.mem.method == "span"]
        for p in self._images():
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

    def _window_failed(self, p: Profiled, kind: str, e: Exception) -> None:
        """A window of one process could not be built: dropped, counted; a failure
        (logged once) unless the process had exited, which explains it."""
        self.metrics.windows_failed.labels(kind).inc()
        if not p.exited and not gone(p.candidate):
            self._failed(p, kind, f"a {kind} window of a process could not be built; "
                         "dropped", e)

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


def _attempt(step) -> Exception | None:
    """Runs one release step; its exception, returned rather than raised."""
    try:
        step()
    except Exception as e:  # noqa: BLE001 - the caller reports it
        return e
    return None


def describe(e: BaseException) -> str:
    """One log line's worth of an error: the message of the errors goprof expects, and
    for anything else (a bug) its type and where it was raised, without a traceback."""
    if isinstance(e, (SymbolizerError, EnvironmentProblem, MethodUnavailable, OSError)):
        return str(e)
    frames = traceback.extract_tb(e.__traceback__)
    where = f" at {os.path.basename(frames[-1].filename)}:{frames[-1].lineno}" if frames else ""
    return f"{type(e).__name__}: {e}{where}"
