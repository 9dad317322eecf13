"""The kernel side of an allocation profile, seen from user space.

Loads bpf/mem.c (from the compile cache), puts uprobes on the runtime functions
of the chosen method (one perf event per probe, for every process using the
binary: the program keeps only target pids), and drains counted allocations
window by window (goprof.recording.windows).
"""

from __future__ import annotations

import math
import os
import random
import struct
from dataclasses import dataclass, field

from goprof.bpf import events, syscalls
from goprof.errors import EnvironmentProblem
from goprof.recording.labels import (
    GO_INFO,
    GoInfo,
    LabelCounts,
    Labels,
    go_info_fields,
)
from goprof.recording.windows import Counters, WindowedMaps

SOURCE = "mem.c"
PROGRAMS = ["on_sampled_alloc", "on_malloc", "on_refill", "on_alloc_large"]

# errors[] slots: keep in sync with bpf/mem.c.
CONFIG_WANT_GOID = 2
ERR_HITS = 0
ERR_STACKS_FULL = 1
ERR_STACK = 2
ERR_COUNTS_FULL = 3
ERR_MORESTACK = 4
ERR_READ = 5
ERR_EXEC_PENDING = 6
ERR_LABELS_UNREAD = 7
ERR_LABELS_CAPPED = 8
ERR_SAMPLED = 9
ERR_LABELS_FULL = 10
ERR_SLOTS = 16

THRESHOLDS = 1024
# pid, padding, user_stack, leaf_ret, size, labels, goid, generation, padding
ALLOC_KEY = struct.Struct("<IIQQQQQII")
ALLOC_VALUE = struct.Struct("<QQQ")  # events, objects, bytes
# offsets (mcache.alloc, mspan.allocCount), generation, ready, then golabels.h's go_info
TARGET_INFO = struct.Struct("<IIII" + GO_INFO.format[1:])
SPAN_STATE = struct.Struct("<qQQQ")  # until_sample, bytes, objects, events (per CPU)

# Map sizes: distinct (stack, size, labels) keys one window can hold, at most as
# many stacks (a full map loses the stack, counted), and label sets.
UPROBE_FLIP_GRACE_S = 0.05  # see goprof.recording.windows
COUNTS_SIZE = 16384
STACKS_SIZE = 16384
LABEL_SETS_SIZE = 4096  # 1952 bytes each; a full map leaves labels unread, counted


@dataclass(frozen=True)
class AllocSample:
    pid: int
    user: tuple[int, ...]  # leaf first (the probed function); () when the walk failed
    leaf_ret: int
    size: int  # object size (sampled, exact) or the bytes of one span event
    events: int
    objects: int
    bytes: int
    generation: int = 0  # the target's execs before this event (0: its first image)
    labels: Labels = ()  # the allocating goroutine's pprof labels
    goid: int = 0  # its id (with --goroutine-ids), 0: none


@dataclass
class MemStats(Counters):
    """Counters a run reports at its end (nothing silent)."""

    hits: int = 0  # probe hits in targets
    sampled: int = 0  # events that took a stack
    counted: int = 0  # events in the profile
    stacks_full: int = 0  # events whose stack the full stack map could not keep
    stack_errors: int = 0
    counts_full: int = 0
    morestack: int = 0  # hits skipped: the function restarts on a grown stack
    read_errors: int = 0
    exec_pending: int = 0  # hits in a target that exec'd, before its new image was read
    truncated: int = 0
    missed_runs: int = 0
    span_bytes: int = 0  # span method: exact totals
    span_objects: int = 0
    span_events: int = 0
    labels: LabelCounts = field(default_factory=LabelCounts)

    @property
    def lost(self) -> int:
        return max(self.sampled - self.counted, 0) + self.missed_runs


@dataclass
class MemWindow:
    samples: list[AllocSample] = field(default_factory=list)
    stats: MemStats = field(default_factory=MemStats)


@dataclass(frozen=True)
class Probe:
    """One uprobe: a program on an instruction of a binary (a file offset)."""

    path: str
    file_offset: int
    program: str
    function: str


def exponential_thresholds(rate: int, n: int = THRESHOLDS, seed: int | None = None) -> list[int]:
    """n draws from an exponential distribution of mean `rate` bytes, at evenly
    spaced quantiles in random order: the kernel picks one at random per sample."""
    draws = [max(1, round(-math.log((i + 0.5) / n) * rate)) for i in range(n)]
    random.Random(seed).shuffle(draws)
    return draws


class MemRecorder(WindowedMaps):
    def __init__(self, span_rate: int, max_targets: int = 64, goroutine_ids: bool = False
                 ) -> None:
        super().__init__(ERR_SLOTS, flip_grace_s=UPROBE_FLIP_GRACE_S)
        self.span_rate = span_rate
        self.goroutine_ids = goroutine_ids
        self._max_targets = max_targets
        self.probes: list[Probe] = []
        self._missed_before = 0
        self._span_before = [0, 0, 0]

    # -- lifecycle ------------------------------------------------------------
    def open(self) -> None:
        sizes = {"counts0": COUNTS_SIZE, "counts1": COUNTS_SIZE,
                 "stacks0": STACKS_SIZE, "stacks1": STACKS_SIZE, "targets": self._max_targets,
                 "labels0": LABEL_SETS_SIZE, "labels1": LABEL_SETS_SIZE}
        self.load(SOURCE, PROGRAMS, sizes, syscalls.PROG_KPROBE)
        self.set_config(CONFIG_WANT_GOID, int(self.goroutine_ids))
        thresholds = self.map("thresholds")
        for i, t in enumerate(exponential_thresholds(self.span_rate)):
            thresholds.update(struct.pack("<I", i), struct.pack("<Q", t))

    def attach(self, probe: Probe, enable: bool = False) -> int:
        """A uprobe (hits on every CPU run the program), disabled until start() unless
        `enable` (a probe added to a running recorder); returns its perf event fd."""
        assert self.loaded is not None
        prog = self.loaded.programs[probe.program]
        try:
            fd = events.uprobe_open(probe.path, probe.file_offset)
        except syscalls.BPFError as e:
            raise EnvironmentProblem(f"cannot put a uprobe on {probe.function}: {e}") from None
        try:
            events.attach_perf_event(fd, prog)
            if enable:
                events.enable_perf_event(fd)
        except BaseException as e:
            # The agent attaches while running, for processes that may exit meanwhile:
            # a probe half set up is closed here, not left open until the run ends.
            os.close(fd)
            if isinstance(e, syscalls.BPFError):
                raise EnvironmentProblem(f"cannot put a uprobe on {probe.function}: {e}") \
                    from None
            raise
        self.events.append(fd)
        self.probes.append(probe)
        return fd

    def stop(self) -> None:
        """Closes the uprobes. Disabling is not enough: the kernel runs a uprobe's BPF
        program on every hit while its perf event is open, enabled or not (measured:
        the exact method's last drains missed ~1 % of the events, which kept coming
        after the end), so the last drains would race with new events."""
        for fd in self.events:
            os.close(fd)
        self.events.clear()

    def detach(self, fd: int) -> None:
        """Removes one uprobe attach() made (the binary's last target is gone)."""
        if fd in self.events:
            self.events.remove(fd)
            os.close(fd)

    # -- targets --------------------------------------------------------------
    def add_target(self, pid: int, layout: tuple[int, int] = (0, 0), generation: int = 0,
                   go: GoInfo | None = None) -> None:
        """layout: the span method's offsets (mcache.alloc, mspan.allocCount) of the
        target's Go version (bpf/mem.c says what it assumes of the fields after);
        generation: the image they belong to (after an exec, the one it announced);
        go: where its runtime keeps labels (None: unknown, no labels)."""
        self.map("targets").update(struct.pack("<I", pid), TARGET_INFO.pack(
            *layout, generation, 1, *go_info_fields(go)))

    def generation(self, pid: int) -> int | None:
        """The target's current generation (its execs so far), None when not a target."""
        raw = self.map("targets").lookup(struct.pack("<I", pid))
        return TARGET_INFO.unpack(raw)[2] if raw is not None else None

    def remove_target(self, pid: int) -> None:
        self.map("targets").delete(struct.pack("<I", pid))

    # -- reading --------------------------------------------------------------
    def samples_seen(self) -> int:
        return self.error_total(ERR_HITS)

    def drain(self) -> MemWindow:
        return self._read_window(self.flip())

    def _read_window(self, w: int) -> MemWindow:
        taken = self.take_window(w)
        out = MemWindow()
        for key, value in taken.counted:
            pid, _, ustack, leaf_ret, size, labels, goid, generation, _ = ALLOC_KEY.unpack(key)
            events, objects_, bytes_ = ALLOC_VALUE.unpack(value)
            user = taken.stack(ustack)
            if len(user) >= self.stack_depth:
                out.stats.truncated += events
            out.samples.append(AllocSample(pid, user, leaf_ret, size, events, objects_, bytes_,
                                           generation, taken.labels(labels), goid))
            out.stats.counted += events
        t = self.take_errors()
        s = out.stats
        s.hits, s.sampled, s.stacks_full = t[ERR_HITS], t[ERR_SAMPLED], t[ERR_STACKS_FULL]
        s.labels = taken.label_counts(t[ERR_LABELS_CAPPED], t[ERR_LABELS_UNREAD],
                                      t[ERR_LABELS_FULL])
        s.stack_errors, s.counts_full = t[ERR_STACK], t[ERR_COUNTS_FULL]
        s.morestack, s.read_errors = t[ERR_MORESTACK], t[ERR_READ]
        s.exec_pending = t[ERR_EXEC_PENDING]
        s.span_bytes, s.span_objects, s.span_events = self._take_span_totals()
        missed = self.program_stats()["recursion_misses"]
        s.missed_runs = missed - self._missed_before
        self._missed_before = missed
        return out

    def _take_span_totals(self) -> tuple[int, int, int]:
        """The span method's exact totals since the last call, summed over CPUs."""
        raw = self.map("span_states").lookup(struct.pack("<I", 0)) or b""
        totals = [0, 0, 0]
        for off in range(0, len(raw), SPAN_STATE.size):
            _, nbytes, nobjects, events = SPAN_STATE.unpack_from(raw, off)
            totals = [totals[0] + nbytes, totals[1] + nobjects, totals[2] + events]
        prev, self._span_before = self._span_before, totals
        return totals[0] - prev[0], totals[1] - prev[1], totals[2] - prev[2]

    def program_stats(self) -> dict[str, int]:
        """Summed over the programs this run attached."""
        assert self.loaded is not None
        totals = {"run_time_ns": 0, "run_cnt": 0, "recursion_misses": 0}
        for name in {p.program for p in self.probes}:
            info = syscalls.prog_info(self.loaded.programs[name])
            totals["run_time_ns"] += info.run_time_ns
            totals["run_cnt"] += info.run_cnt
            totals["recursion_misses"] += info.recursion_misses
        return totals
