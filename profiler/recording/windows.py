"""What the CPU and memory recorders share: a compiled object loaded, perf events
with its programs attached, and BPF maps in two window sets.

A program counts into set 0 or 1, as a config slot says. Draining flips the
slot, waits for runs already under way on other CPUs, then reads and empties the
old set: windows have no gaps and the maps never fill over a long run. Error
counters are per-CPU and never reset in the kernel; differences are taken here.
"""

from __future__ import annotations

import dataclasses
import os
import struct
import time
from dataclasses import dataclass

from goprof.bpf import events, objects, syscalls
from goprof.errors import EnvironmentProblem
from goprof.recording.labels import (
    LabelCounts,
    Labels,
    LabelSet,
    decode_label_set,
    distinct_sets,
)

CONFIG_WINDOW = 0  # the config[] slot both programs read the window from
EXEC_PROGRAM = "on_exec"  # both objects' sched_process_exec program (see bpf/cpu.c)
EXEC_KEY = struct.Struct("<II")  # pid, generation

# How long program runs already under way may still write to the old window after
# a flip. A perf_event program runs in interrupt context for microseconds; a uprobe
# program runs in the probed task and can be preempted, so it gets longer (what
# still comes late is lost, and counted).
FLIP_GRACE_S = 0.005


@dataclass(frozen=True)
class ExecEvent:
    """A target exec'd: from now on its samples carry `generation`."""

    pid: int
    generation: int
    monotonic_ns: int  # bpf_ktime_get_ns(): CLOCK_MONOTONIC, as time.monotonic_ns()

    @property
    def wall_time(self) -> float:
        return wall_time_of(self.monotonic_ns)


def wall_time_of(monotonic_ns: int) -> float:
    """time.time() of a bpf_ktime_get_ns() stamp (CLOCK_MONOTONIC, as time.monotonic_ns())."""
    return time.time() - (time.monotonic_ns() - monotonic_ns) / 1e9


@dataclass
class Counters:
    """Base of a run's counters: windows add up field by field."""

    def add(self, other: Counters) -> None:
        _add_fields(self, other)


def _add_fields(into: object, other: object) -> None:
    """Field by field; a field that is itself a dataclass of counters, likewise."""
    for name in into.__dataclass_fields__:  # type: ignore[attr-defined]
        mine = getattr(into, name)
        if dataclasses.is_dataclass(mine):
            _add_fields(mine, getattr(other, name))
        else:
            setattr(into, name, mine + getattr(other, name))


@dataclass
class TakenWindow:
    """What one window's maps held: the counted entries (raw key, value), and the stacks
    and label sets (bpf/stacks.h, bpf/golabels.h) their keys refer to."""

    counted: list[tuple[bytes, bytes]]
    stacks: dict[int, tuple[int, ...]]
    label_sets: dict[int, LabelSet]

    def stack(self, stack_hash: int) -> tuple[int, ...]:
        """Addresses leaf first; () for no stack (0) or one the full map did not keep."""
        return self.stacks.get(stack_hash, ())

    def labels(self, fingerprint: int) -> Labels:
        label_set = self.label_sets.get(fingerprint)
        return label_set.labels if label_set else ()

    def label_counts(self, capped: int, unread: int, full: int) -> LabelCounts:
        """The window's label counters: its distinct sets, and the programs' counts."""
        return LabelCounts(distinct_sets(self.label_sets), capped, unread, full)


def stack_and_label_rows(stacks_full: int, labels: LabelCounts) -> list[tuple[str, str]]:
    """The summary rows of what bpf/stacks.h and bpf/golabels.h count (cpu and mem)."""
    return [("stack collisions", f"{stacks_full}"
             + (" (the stack map was full)" if stacks_full else "")),
            ("labels", labels.text())]


def stack_and_label_stats(stacks_full: int, labels: LabelCounts) -> dict:
    """The same for --stats. Stacks are hashed into a chained map: none is lost to a
    bucket collision; "stack_collisions" counts the stacks a full map could not keep."""
    return {"stack_collisions": stacks_full, "labels": labels.as_json()}


class WindowedMaps:
    def __init__(self, error_slots: int, flip_grace_s: float = FLIP_GRACE_S) -> None:
        self.window = 0
        self.flip_grace_s = flip_grace_s
        self.loaded: objects.LoadedObject | None = None
        self.compiled_from_cache = False
        self.stack_depth = 0  # frames a stack-map entry holds at most
        self.events: list[int] = []  # perf event fds with a program attached
        self.links: list[int] = []  # raw tracepoint fds (closing one detaches it)
        self._error_slots = error_slots
        self._errors_before = [0] * error_slots

    def load(self, source: str, programs: list[str], sizes: dict[str, int],
             prog_type: int) -> None:
        """The compiled object (cache, else compiled now) with its maps created at `sizes`;
        its exec program is attached at once (it only counts execs of targets)."""
        programs = [*programs, EXEC_PROGRAM]
        sizes = {"execs": sizes.get("targets", 64), **sizes}
        obj, self.compiled_from_cache = objects.compiled(source, programs)
        try:
            self.loaded = objects.load(obj, sizes=sizes, prog_type=prog_type,
                                       prog_types={EXEC_PROGRAM: syscalls.PROG_RAW_TRACEPOINT})
            self.links.append(events.raw_tracepoint_open(
                "sched_process_exec", self.loaded.programs[EXEC_PROGRAM]))
        except syscalls.BPFError as e:
            raise EnvironmentProblem(f"the kernel refused goprof's BPF program or maps: {e}; "
                                     "`goprof doctor` says what this kernel allows") from None
        # bpf/stacks.h keeps one word more than the frames it takes (always 0).
        self.stack_depth = obj.maps["stacks0"].value_size // 8 - 1
        self.set_config(CONFIG_WINDOW, 0)

    def start(self) -> None:
        for fd in self.events:
            events.enable_perf_event(fd)

    def stop(self) -> None:
        for fd in self.events:
            events.disable_perf_event(fd)

    def close(self) -> None:
        """Detaches everything (closing the fds is enough: so does our death)."""
        for fd in self.events + self.links:
            os.close(fd)
        self.events.clear()
        self.links.clear()
        if self.loaded is not None:
            self.loaded.close()
            self.loaded = None

    def map(self, name: str) -> syscalls.Map:
        assert self.loaded is not None, "open() first"
        return self.loaded.maps[name]

    def take_execs(self) -> list[ExecEvent]:
        """Execs of targets since the last call, oldest first (one syscall when none)."""
        events = [ExecEvent(*EXEC_KEY.unpack(k), struct.unpack("<Q", v)[0])
                  for k, v in self.map("execs").take_all()]
        return sorted(events, key=lambda e: (e.monotonic_ns, e.generation))

    def set_config(self, slot: int, value: int) -> None:
        self.map("config").update(struct.pack("<I", slot), struct.pack("<I", value))

    def flip(self) -> int:
        """Sends new counts to the other set; returns the set to read and empty."""
        old = self.window
        self.window ^= 1
        self.set_config(CONFIG_WINDOW, self.window)
        time.sleep(self.flip_grace_s)
        return old

    def take_window(self, window: int) -> TakenWindow:
        """The window's counts, stacks and label sets, each map emptied. Counts first:
        every stack and label set a counted entry refers to was stored before it."""
        counted = self.map(f"counts{window}").take_all()
        return TakenWindow(counted, self._take_stacks(window), self._take_label_sets(window))

    def _take_stacks(self, window: int) -> dict[int, tuple[int, ...]]:
        """The window's stacks (hash -> addresses leaf first), removed from the map."""
        out = {}
        for key, value in self.map(f"stacks{window}").take_all():
            words = struct.unpack(f"<{len(value) // 8}Q", value)
            out[struct.unpack("<Q", key)[0]] = tuple(ip for ip in words if ip)
        return out

    def _take_label_sets(self, window: int) -> dict[int, LabelSet]:
        """The window's label sets (fingerprint -> labels), removed from the map."""
        return {struct.unpack("<Q", k)[0]: decode_label_set(v)
                for k, v in self.map(f"labels{window}").take_all()}

    def error_total(self, slot: int) -> int:
        """One error counter summed over the CPUs (one lookup)."""
        raw = self.map("errors").lookup(struct.pack("<I", slot)) or b""
        return sum(struct.unpack(f"<{len(raw) // 8}Q", raw))

    def error_totals(self) -> list[int]:
        return [self.error_total(slot) for slot in range(self._error_slots)]

    def take_errors(self) -> list[int]:
        """The error counters since the last call."""
        totals = self.error_totals()
        prev, self._errors_before = self._errors_before, totals
        return [t - p for t, p in zip(totals, prev, strict=True)]
