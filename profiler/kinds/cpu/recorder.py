"""The kernel side of a CPU profile, seen from user space.

Loads bpf/cpu.c (from the compile cache), opens a cpu-clock perf event on every
CPU with the program attached, and drains counted samples window by window
(goprof.recording.windows). Closing the file descriptors (or our death) detaches it all.
"""

from __future__ import annotations

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

SOURCE = "cpu.c"
PROGRAM = "on_cpu_sample"

# config[] and errors[] slots: keep in sync with bpf/cpu.c.
CONFIG_WANT_KERNEL = 1
CONFIG_WANT_GOID = 2
CONFIG_FSBASE = 3
ERR_SAMPLES = 0
ERR_USER_STACKS_FULL = 1
ERR_KERNEL_STACKS_FULL = 2
ERR_USER_STACK = 3
ERR_KERNEL_STACK = 4
ERR_COUNTS_FULL = 5
ERR_LABELS_UNREAD = 6
ERR_LABELS_CAPPED = 7
ERR_LABELS_FULL = 8
ERR_SLOTS = 10

# pid, tid, user_stack, kernel_stack, leaf_ret, labels, goid, generation, padding
SAMPLE_KEY = struct.Struct("<IIQQQQQII")
# generation, padding, then bpf/golabels.h's go_info
TARGET_INFO = struct.Struct("<II" + GO_INFO.format[1:])
# Label sets one window can hold (1952 bytes each, preallocated). A service that labels
# every request with pprof.Do makes a new set per request, so there can be one per
# sample; a full map leaves a sample's labels unread, counted.
LABEL_SETS_SIZE = 8192


@dataclass(frozen=True)
class RawSample:
    pid: int
    tid: int
    user: tuple[int, ...]  # leaf first; empty when the user stack was not taken
    kernel: tuple[int, ...]
    leaf_ret: int
    count: int
    generation: int = 0  # the target's execs before this sample (0: its first image)
    labels: Labels = ()  # the goroutine's pprof labels
    goid: int = 0  # the goroutine's id (with --goroutine-ids), 0: none


@dataclass
class Stats(Counters):
    """Counters a run reports at its end (nothing silent)."""

    seen: int = 0  # target samples the program saw
    counted: int = 0  # samples in the profile
    # Stacks lost because the window's stack map was full (stacks are hashed into a
    # chained map: they no longer collide).
    user_stacks_full: int = 0
    kernel_stacks_full: int = 0
    user_stack_errors: int = 0
    kernel_stack_errors: int = 0
    counts_full: int = 0
    truncated: int = 0  # samples whose user stack hit the depth limit
    missed_runs: int = 0  # program runs the kernel skipped (recursion)
    labels: LabelCounts = field(default_factory=LabelCounts)

    @property
    def stacks_full(self) -> int:
        return self.user_stacks_full + self.kernel_stacks_full

    @property
    def lost(self) -> int:
        return max(self.seen - self.counted, 0) + self.missed_runs


@dataclass
class Window:
    samples: list[RawSample] = field(default_factory=list)
    stats: Stats = field(default_factory=Stats)


def map_sizes(frequency: int, window_s: float, cpus: int) -> dict[str, int]:
    """Map sizes from the most samples one window can hold.

    Counts: at most one new key per sample. Stacks: at most two new ones (user +
    kernel), capped (an entry is 1 KiB, preallocated): a full map loses the stack,
    counted. Label sets: up to one per sample (pprof.Do makes a set per call), capped.
    """
    samples = max(int(frequency * window_s * cpus * 1.25), 256)
    stacks = min(samples * 2, 32768)
    counts = min(samples, 65536)
    labels = min(samples, LABEL_SETS_SIZE)
    return {"counts0": counts, "counts1": counts, "stacks0": stacks, "stacks1": stacks,
            "labels0": labels, "labels1": labels}


class CpuRecorder(WindowedMaps):
    def __init__(self, frequency: int, want_kernel: bool, window_s: float,
                 max_targets: int = 64, goroutine_ids: bool = False,
                 fsbase_offset: int = 0) -> None:
        super().__init__(ERR_SLOTS)
        self.frequency = frequency
        self.period_ns = 1_000_000_000 // frequency
        self.want_kernel = want_kernel
        self.goroutine_ids = goroutine_ids
        # offsetof(task_struct, thread.fsbase) from the kernel's BTF; 0: labels unread.
        self.fsbase_offset = fsbase_offset
        self.cpus = syscalls.online_cpus()
        self._window_s = window_s
        self._max_targets = max_targets
        self._missed_before = 0

    # -- lifecycle ------------------------------------------------------------
    def open(self) -> None:
        sizes = map_sizes(self.frequency, self._window_s, len(self.cpus))
        sizes["targets"] = self._max_targets
        self.load(SOURCE, [PROGRAM], sizes, syscalls.PROG_PERF_EVENT)
        self.set_config(CONFIG_WANT_KERNEL, int(self.want_kernel))
        self.set_config(CONFIG_WANT_GOID, int(self.goroutine_ids))
        self.set_config(CONFIG_FSBASE, self.fsbase_offset)
        assert self.loaded is not None
        prog = self.loaded.programs[PROGRAM]
        try:
            for cpu in self.cpus:
                fd = events.perf_event_open(cpu, self.period_ns)
                self.events.append(fd)
                events.attach_perf_event(fd, prog)
        except syscalls.BPFError as e:
            self.close()
            raise EnvironmentProblem(f"cannot open a cpu-clock perf event: {e}; check "
                                     "kernel.perf_event_paranoid and that perf events are "
                                     "available (`goprof doctor`)") from None

    # -- targets --------------------------------------------------------------
    def add_target(self, pid: int, go: GoInfo | None = None) -> None:
        """`go`: where its runtime keeps labels (None: not Go, or unknown: no labels)."""
        self.map("targets").update(struct.pack("<I", pid),
                                   TARGET_INFO.pack(0, 0, *go_info_fields(go)))

    def set_go_info(self, pid: int, generation: int, go: GoInfo | None) -> bool:
        """The offsets of the image a target runs after an exec (its samples carry no
        labels until then). False when the target exec'd again meanwhile or is gone."""
        key = struct.pack("<I", pid)
        raw = self.map("targets").lookup(key)
        if raw is None or TARGET_INFO.unpack(raw)[0] != generation:
            return False
        self.map("targets").update(key, TARGET_INFO.pack(
            generation, 0, *go_info_fields(go)))
        return True

    def generation(self, pid: int) -> int | None:
        """The target's current generation (its execs so far), None when not a target."""
        raw = self.map("targets").lookup(struct.pack("<I", pid))
        return TARGET_INFO.unpack(raw)[0] if raw is not None else None

    def remove_target(self, pid: int) -> None:
        self.map("targets").delete(struct.pack("<I", pid))

    # -- reading --------------------------------------------------------------
    def samples_seen(self) -> int:
        """Target samples so far (one per-CPU lookup), for the progress line."""
        return self.error_total(ERR_SAMPLES)

    def first_sample_ns(self) -> int | None:
        """CLOCK_MONOTONIC time of the first target sample on any CPU (None: none yet)."""
        raw = self.map("first_sample").lookup(struct.pack("<I", 0)) or b""
        times = [t for t in struct.unpack(f"<{len(raw) // 8}Q", raw) if t]
        return min(times) if times else None

    def drain(self) -> Window:
        """Flips the window and returns what the old one holds, leaving it empty."""
        return self._read_window(self.flip())

    def _read_window(self, w: int) -> Window:
        taken = self.take_window(w)
        out = Window()
        for key, value in taken.counted:
            pid, tid, ustack, kstack, leaf_ret, labels, goid, generation, _ = \
                SAMPLE_KEY.unpack(key)
            (count,) = struct.unpack("<Q", value)
            user = taken.stack(ustack)
            if len(user) >= self.stack_depth:
                out.stats.truncated += count
            out.samples.append(RawSample(pid, tid, user, taken.stack(kstack), leaf_ret, count,
                                         generation, taken.labels(labels), goid))
            out.stats.counted += count
        totals = self.take_errors()
        out.stats.seen = totals[ERR_SAMPLES]
        out.stats.user_stacks_full = totals[ERR_USER_STACKS_FULL]
        out.stats.kernel_stacks_full = totals[ERR_KERNEL_STACKS_FULL]
        out.stats.user_stack_errors = totals[ERR_USER_STACK]
        out.stats.kernel_stack_errors = totals[ERR_KERNEL_STACK]
        out.stats.counts_full = totals[ERR_COUNTS_FULL]
        out.stats.labels = taken.label_counts(totals[ERR_LABELS_CAPPED],
                                              totals[ERR_LABELS_UNREAD], totals[ERR_LABELS_FULL])
        missed = self._program_info().recursion_misses
        out.stats.missed_runs = missed - self._missed_before
        self._missed_before = missed
        return out

    def _program_info(self) -> syscalls.ProgInfo:
        assert self.loaded is not None
        return syscalls.prog_info(self.loaded.programs[PROGRAM])

    def program_stats(self) -> dict[str, int]:
        """The program's run statistics, and when it first sampled a target (read once,
        at the end of a run: a drain needs only the recursion misses)."""
        info = self._program_info()
        return {"run_time_ns": info.run_time_ns, "run_cnt": info.run_cnt,
                "recursion_misses": info.recursion_misses,
                "first_sample_ns": self.first_sample_ns() or 0}
