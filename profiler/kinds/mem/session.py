"""An allocation profiling session: Go targets in, one allocation profile out.

Per process, the cheapest method that works is chosen (or the one asked for):
go-sampler when the target's own heap sampler is on (or --go-sampler turns it
on), else span; a method whose functions or struct offsets are missing falls
back to the next, with a note. Whatever ends the run, what was counted is
written, and a MemProfileRate goprof set is put back.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from goprof import __version__
from goprof.errors import EnvironmentProblem, GoprofError
from goprof.exporters import Exporter
from goprof.golang.process import (
    DEFAULT_GO_RATE,
    MEM_PROFILE_RATE,
    GoProcess,
    MethodUnavailable,
    inspect,
)
from goprof.golang.writes import RuntimeVar, TargetWrites
from goprof.kinds.mem.build import AllocProfileBuilder, MethodChoice
from goprof.kinds.mem.recorder import MemRecorder, MemStats, Probe
from goprof.model import Profile
from goprof.recording.builder import ImageKey, ProfileBuilder, image_key
from goprof.recording.labels import explain_go_info
from goprof.recording.session import Recording, RecordingSession, Rows
from goprof.recording.windows import ExecEvent, stack_and_label_rows, stack_and_label_stats
from goprof.targets import Target, target_for_pid
from rich.console import Console
from rich.markup import escape

DEFAULT_SPAN_RATE = 512 * 1024

# What each method samples and how far its attribution can be trusted: said at
# the end of every run and in the profile's comments.
DESCRIPTIONS = {
    "go-sampler": "Go's own heap sampler (runtime.profilealloc): the allocations Go samples, "
                  "one per {rate} bytes on average, weighted as runtime/pprof weights them; "
                  "attribution as exact as runtime/pprof's",
    "span": "span refills and large objects ((*mcache).refill, allocLarge): exact byte and "
            "object totals; a stack per {rate} bytes on average, attribution approximate (the "
            "allocation that fills a span takes the span's bytes: a periodic pattern can "
            "alias)",
    "exact": "every allocation (runtime.mallocgc and its size-specialized entry points), "
             "each counted once with its stack; sizes as requested",
}
# Said before an exact run starts; the README's cost table has the same figures, from
# `sudo .venv/bin/python bench/mem_overhead.py --pairs 5` (tests/fixtures/allocbench,
# 2-core VM): throughput under the exact method 0.018 of alone on the pure allocation
# loop, 0.078 on encoding/json. Measure again and change both when the probe changes.
EXACT_SLOWDOWN = "55x slower on an allocation-bound loop, 13x on encoding/json"


@dataclass
class MemOptions:
    pids: list[int]
    command: list[str]
    duration: float | None
    outputs: list[tuple[Path, Exporter]]
    method: str | None = None  # None: chosen per process
    go_sampler: bool = False  # turn Go's sampler on where it is off
    rate: int = DEFAULT_GO_RATE  # bytes per sample, for --go-sampler and span
    weight: str = "alloc_space"  # default sample type of the written profile
    stats_path: Path | None = None
    goroutine_ids: bool = False  # the numeric label `goroutine` on every sample


class MemSession(RecordingSession):
    kind = "mem"
    empty_profile = "no allocations seen: the targets allocated nothing while recording"

    def __init__(self, options: MemOptions, console: Console | None = None) -> None:
        super().__init__(options.pids, options.command, options.duration, options.outputs,
                         console, options.stats_path)
        self.opts = options
        self.gos: list[GoProcess] = []  # the targets' Go runtimes, in target order
        self.writes: dict[int, TargetWrites] = {}  # pid -> goprof's writes into it
        self.methods: dict[ImageKey, MethodChoice] = {}
        self.attached: set[tuple[tuple[int, int], str]] = set()  # (binary, function) probed
        self.image_notes: list[str] = []  # targets whose allocation profile ended at an exec
        self.holds: list[tuple[TargetWrites, RuntimeVar]] = []  # released when the run ends
        self.deduplicated = 0

    # -- the skeleton's hooks ---------------------------------------------------
    def inspect(self, targets: list[Target]) -> None:
        # Non-Go targets: a clear error before anything is attached.
        self.gos += [inspect(t, self.images.cache) for t in targets]

    def open_recorder(self) -> MemRecorder:
        recorder = MemRecorder(self.opts.rate, goroutine_ids=self.opts.goroutine_ids)
        recorder.open()
        return recorder

    def add_targets(self, recorder: MemRecorder, targets: list[Target]) -> None:
        for proc in self.gos:
            self.methods[proc.target.pid] = self._prepare(proc, recorder)
        self._say_methods(self.gos, self.methods)

    def new_stats(self) -> MemStats:
        return MemStats()

    def cleanup(self) -> None:
        self._restore_rates()

    def build(self, collected: Recording, builder: ProfileBuilder, targets: list[Target]
              ) -> Profile:
        stats: MemStats = collected.stats
        methods = self.methods
        comments = [f"goprof {__version__} mem: targets {', '.join(t.label for t in targets)}"]
        comments += [f"{t.label}: method {_describe(methods[t.pid])}" for t in targets]
        comments += self.exec_lines()
        comments.append(f"ended: {collected.ended_by}")
        alloc = AllocProfileBuilder(builder, methods)
        profile = alloc.build(collected.samples, stats, collected.start_ns,
                              int(collected.elapsed_s * 1e9), comments)
        self.deduplicated = alloc.deduplicated
        profile.default_sample_type = self.opts.weight
        profile.comments.append(
            f"probe hits {stats.hits}, events with a stack {stats.sampled}, lost {stats.lost}, "
            f"stacks lost to a full stack map {stats.stacks_full}, labels: "
            f"{stats.labels.text()}, truncated stacks {stats.truncated} "
            f"(+{builder.stats.cut_stacks} cut), unnamed frames {builder.stats.unnamed_frames}"
            f"{builder.stats.damage_text()}")
        return profile

    def kind_stats(self, collected: Recording, builder: ProfileBuilder) -> dict:
        stats: MemStats = collected.stats
        return {
            "methods": {_image_name(key): {"method": m.method, "rate": m.rate}
                        for key, m in self.methods.items()},
            **{k: getattr(stats, k) for k in stats.__dataclass_fields__ if k != "labels"},
            **stack_and_label_stats(stats.stacks_full, stats.labels),
            "lost": stats.lost,
            "deduplicated": self.deduplicated,
        }

    # -- choosing and attaching -------------------------------------------------
    def _candidates(self, proc: GoProcess) -> list[str]:
        """Methods to try for a process, in order."""
        if self.opts.method:
            return [self.opts.method]
        rate = proc.read_rate()
        if (rate and rate > 0) or self.opts.go_sampler:
            return ["go-sampler", "span"]
        return ["span"]

    def _prepare(self, proc: GoProcess, recorder: MemRecorder, generation: int = 0
                 ) -> MethodChoice:
        """A method for the process (its image `generation`, after that many execs),
        attached."""
        reasons = []
        # A rate a killed goprof left on is put back before the rate picks the method.
        self._writes_of(proc)
        for method in self._candidates(proc):
            try:
                choice = self._try_method(proc, method, recorder, generation)
            except MethodUnavailable as e:
                reasons.append(f"{method}: {e}")
                if self.opts.method is None:
                    self.console.print(f"[yellow]note:[/] {proc.target.label}: method {method} "
                                       f"unavailable ({e}); falling back")
                continue
            return choice
        raise EnvironmentProblem(f"no allocation method works for {proc.target.label} "
                                 f"({proc.go_version}): {'; '.join(reasons)}")

    def _try_method(self, proc: GoProcess, method: str, recorder: MemRecorder,
                    generation: int) -> MethodChoice:
        pid = proc.target.pid
        layout = (0, 0)
        rate = 1
        if method == "span":
            layout = proc.span_offsets()
            rate = self.opts.rate
        sites = proc.sites(method)
        if method == "go-sampler":
            rate = self._sampler_rate(proc)
        for site in sites:
            key = (proc.inode, site.function)
            if key in self.attached:
                continue  # one uprobe per binary file: it fires for every process using it
            recorder.attach(Probe(proc.path, site.file_offset, site.program, site.function),
                            enable=self.recording)
            self.attached.add(key)
        go, why = explain_go_info(proc.binary, proc.path)
        if why:
            self.console.print(f"[yellow]note:[/] {proc.target.label}: its allocations carry "
                               f"no pprof labels: {why}")
        recorder.add_target(pid, layout, generation, go)
        return MethodChoice(method, rate)

    def on_new_image(self, event: ExecEvent, recorder: MemRecorder, said: bool) -> None:
        """A target exec'd: the new binary's probe sites and offsets, and a method for it
        (the old probes are on the old file); the kernel side counts nothing for it
        until then. A new image that is not Go, or where no method works, ends that
        target's allocation profile, said in the summary."""
        assert isinstance(recorder, MemRecorder)
        pid = event.pid
        if recorder.generation(pid) != event.generation:
            return  # exec'd again meanwhile: the later exec's event comes next
        try:
            target = target_for_pid(pid)
            proc = inspect(target, self.images.cache)
            choice = self._prepare(proc, recorder, event.generation)
        except GoprofError as e:
            self.image_notes.append(f"pid {pid}: allocations after its exec are not "
                                    f"profiled: {e}")
            self.console.print(f"[yellow]note:[/] {escape(self.image_notes[-1])}",
                               highlight=False)
            return
        self.methods[image_key(pid, event.generation)] = choice
        if said:
            self.console.print(f"goprof: {target.label} ({proc.go_version}) after its exec: "
                               f"method {choice.method}", highlight=False)

    def _sampler_rate(self, proc: GoProcess) -> int:
        """The target's MemProfileRate; turned on first when asked (and put back later)."""
        if proc.rate_address is None:
            raise MethodUnavailable("runtime.MemProfileRate not found in the binary")
        # Held (shared with other goprof processes, put back by the last) when the rate
        # in force is goprof's: another session's write ends with that session otherwise.
        writes = self._writes_of(proc)
        var = RuntimeVar(MEM_PROFILE_RATE, proc.rate_address)
        if (writes, var) in self.holds:  # held already (the same image, seen again)
            return proc.read_rate() or 0
        hold = writes.hold(var, self.opts.rate, write=self.opts.go_sampler)
        self._notes(hold.notes)
        if hold.held:
            self.holds.append((writes, var))
        if hold.value > 0:
            if hold.wrote:
                self.console.print(f"goprof: turned Go's heap sampler on in "
                                   f"{proc.target.label}: runtime.MemProfileRate = {hold.value} "
                                   "(was 0; put back when goprof ends)", highlight=False)
            elif hold.held:
                self.console.print(f"goprof: Go's heap sampler in {proc.target.label} was "
                                   f"turned on by another goprof (runtime.MemProfileRate = "
                                   f"{hold.value}): shared, on until the last goprof ends",
                                   highlight=False)
            return hold.value
        raise MethodUnavailable("Go's heap sampler is off in this process "
                                "(runtime.MemProfileRate is 0); --go-sampler turns it on")

    def _writes_of(self, proc: GoProcess) -> TargetWrites:
        """goprof's writes into a process; the first time, what dead goprof processes left
        on is put back (and said)."""
        pid = proc.target.pid
        if pid not in self.writes:
            self.writes[pid] = TargetWrites(pid, proc.target.label)
            self._notes(self.writes[pid].restore_stale())
        return self.writes[pid]

    def _restore_rates(self) -> None:
        """Every ending passes here (finally): the last goprof holding a rate puts it back."""
        for writes, var in self.holds:
            try:
                self._notes(writes.release(var))
            except (EnvironmentProblem, OSError) as e:
                self._notes([f"could not release {var.name} in {writes.label}: {e}"])
        self.holds.clear()

    def _notes(self, notes: list[str]) -> None:
        for note in notes:
            self.console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)

    def _say_methods(self, gos: list[GoProcess], methods: dict[int, MethodChoice]) -> None:
        for proc in gos:
            m = methods[proc.target.pid]
            self.console.print(f"goprof: {proc.target.label} ({proc.go_version}): method "
                               f"{m.method}", highlight=False)
            if m.method == "exact":
                self.console.print(f"[yellow]warning:[/] the exact method puts a uprobe and a "
                                   f"stack walk on every allocation: measured {EXACT_SLOWDOWN} "
                                   "(bench/mem_overhead.py); prefer go-sampler or span for a "
                                   "service", highlight=False)

    def kind_rows(self, collected: Recording, builder: ProfileBuilder) -> Rows:
        stats: MemStats = collected.stats
        rows = [("note", note) for note in self.image_notes]
        for proc in self.gos:
            t = proc.target
            rows.append((f"method ({t.label})", _describe(self.methods[t.pid])))
        execs = {(r.pid, r.generation) for r in self.images.records}
        for key, m in self.methods.items():
            if key in execs:
                rows.append((f"method (pid {key[0]} after exec {key[1]})", _describe(m)))
        if stats.exec_pending:
            rows.append(("before re-read", f"{stats.exec_pending} probe hits in a target "
                                           "that exec'd, before goprof read its new image"))
        rows += [
            ("probe hits", f"{stats.hits} ({stats.morestack} skipped: stack growth restarts "
                           "the function)"),
            ("events with a stack", f"{stats.sampled}"),
            ("lost", f"{stats.lost}" + (f" (maps full: {stats.counts_full})"
                                        if stats.counts_full else "")),
            *stack_and_label_rows(stats.stacks_full, stats.labels),
            ("truncated stacks", f"{stats.truncated} at the depth limit, "
                                 f"{builder.stats.cut_stacks} cut"),
            ("unnamed frames", f"{builder.stats.unnamed_frames}{builder.stats.damage_text()}"),
        ]
        if stats.read_errors:
            rows.append(("unreadable spans", f"{stats.read_errors}"))
        return rows


def _image_name(key: ImageKey) -> str:
    """"4242" for a process's first image, "4242/1" for the one after its first exec."""
    return str(key) if isinstance(key, int) else f"{key[0]}/{key[1]}"


def _describe(m: MethodChoice) -> str:
    """"span: span refills and ..." : a method and what it samples, as runs say it."""
    return f"{m.method}: " + DESCRIPTIONS[m.method].format(rate=m.rate)
