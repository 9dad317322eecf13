"""The processes the agent profiles, and what each holds.

A process discovery finds is picked up: its labels, a symbolizer, a pidfd (its exit
wakes a poll), a targets entry in the kernel (with where its runtime keeps pprof labels,
which the BPF programs read on every sample), with --mem uprobes on its binary (shared
by the processes that run it, counted), with --goroutines a reader of its goroutines.
One that exec'd is a new process from then on. One that exited is let go after the
window that holds its last samples, and everything it held is released, each step
whatever the others did.
"""

from __future__ import annotations

import logging
import os
import select
import time
import traceback
from dataclasses import dataclass, field

from goprof.agent.discovery import Candidate, Discovery, gone, start_ticks
from goprof.agent.goroutines import open_reader
from goprof.agent.kube import PodDirectory
from goprof.agent.labels import process_labels
from goprof.agent.metrics import AgentMetrics
from goprof.agent.options import AgentOptions
from goprof.errors import EnvironmentProblem
from goprof.golang.goroutines import GoroutineReader
from goprof.golang.process import MEM_PROFILE_RATE, GoProcess, MethodUnavailable, inspect
from goprof.golang.writes import settle_writes
from goprof.kinds.cpu.recorder import CpuRecorder
from goprof.kinds.mem.build import MethodChoice
from goprof.kinds.mem.recorder import MemRecorder, Probe
from goprof.recording.builder import ImageKey, image_key
from goprof.recording.labels import go_info, target_go_info
from goprof.symbolizer import BinaryCache, ProcessGone, ProcessSymbolizer, SymbolizerError

ProbeKey = tuple[tuple[int, int], str]  # (binary dev, inode), function


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
    labelled: bool = False  # its CPU samples carry pprof labels (its runtime's offsets known)
    goroutines: GoroutineReader | None = None  # --goroutines, where they can be read

    @property
    def pid(self) -> int:
        return self.candidate.target.pid

    @property
    def image(self) -> ImageKey:
        return image_key(self.pid, self.generation)


class Processes:
    """The profiled processes (by pid) and the images retired by an exec, with the
    kernel-side entries and uprobes they hold. The recorders are set once opened."""

    def __init__(self, options: AgentOptions, metrics: AgentMetrics, log: logging.Logger,
                 pods: PodDirectory | None = None) -> None:
        self.opts = options
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
        self._probe_fds: dict[ProbeKey, tuple[int, int]] = {}  # -> (fd, processes using it)
        # Exits, by the profiled processes' pidfds: one poll() a scan instead of a
        # /proc/PID/stat read per process (and a pidfd cannot be fooled by a reused pid).
        self._exits = select.poll()

    def use_recorders(self, cpu: CpuRecorder, memrec: MemRecorder | None) -> None:
        self.cpu, self.memrec = cpu, memrec

    def close(self) -> None:
        for p in self.images():
            self._close_pidfd(p)

    def images(self) -> list[Profiled]:
        """Every image a window may hold samples of: the profiled ones and those
        retired by an exec during it."""
        return [*self.profiled.values(), *self.retired]

    # -- picking up, following execs -------------------------------------------------
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
            "service_name": p.labels.get("service_name", ""), "pprof_labels": p.labelled,
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
            # Where this program's runtime keeps the running goroutine's labels (found
            # through the thread's FS base): None leaves its samples unlabelled, never
            # wrongly labelled.
            go = target_go_info(c.target.pid, self.cache, from_tls=True)
            p.labelled = go is not None
            if generation is None:
                self.cpu.add_target(c.target.pid, go)
            else:
                # The kernel cleared the old program's offsets at the exec.
                self.cpu.set_go_info(c.target.pid, generation, go)
            if self.memrec is not None:
                self._start_mem(p)
            if self.opts.goroutines:
                self._start_goroutines(p)
        except BaseException:
            self._release(p)
            raise
        return p

    # -- allocations: uprobes, shared by the processes of a binary and counted -------
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
            self.failed(p, "mem", "no allocation profile for this process (CPU only)", e)

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
            self.memrec.add_target(p.pid, layout, p.generation, go_info(proc.binary, proc.path))
        except BaseException:
            # One site attached and not the next (the process exited meanwhile): the
            # first is let go now, not held for a method that is not running.
            self._release_probes(p.probes[held:])
            del p.probes[held:]
            raise
        return MethodChoice(method, rate if method == "go-sampler" else self.opts.mem_rate)

    def _start_goroutines(self, p: Profiled) -> None:
        """A process whose goroutines cannot be read (a Go version whose g layout goprof
        does not know, without DWARF) is profiled without them, said once."""
        try:
            p.goroutines = open_reader(p.candidate.target, self.cache)
        except Exception as e:  # noqa: BLE001 - one process's trouble is its own
            if isinstance(e, ProcessGone) or gone(p.candidate):
                raise  # it exited: the whole pick-up is rolled back (_pick_up)
            self.failed(p, "goroutines", "no goroutine profile for this process", e)

    # -- pidfds, failures, letting go -----------------------------------------------
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

    def failed(self, p: Profiled, kind: str, msg: str, e: BaseException) -> None:
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
            self.failed(p, "let_go", "could not release all a process held", errors[0])
        if p.retired:
            self.retired = [r for r in self.retired if r is not p]
        else:
            del self.profiled[p.pid]
            self.discovery.forget(p.pid)  # a new process on that pid is looked at anew
        self.metrics.let_go.inc()
        self.log.info("process let go", extra={"fields": {
            "pid": p.pid, "comm": p.candidate.target.comm, "exe": p.candidate.target.exe}})

    def release_exited(self) -> None:
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
