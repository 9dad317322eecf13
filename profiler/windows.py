"""What the CPU and memory recorders share: BPF maps in two window sets.

A program counts into set 0 or 1, as a config slot says. Draining flips the
slot, waits for runs already under way on other CPUs, then reads and empties the
old set: windows have no gaps and the maps never fill over a long run. Error
counters are per-CPU and never reset in the kernel; differences are taken here.
"""

from __future__ import annotations

import struct
import time

from goprof.bpf import objects, syscalls

CONFIG_WINDOW = 0  # the config[] slot both programs read the window from

# How long program runs already under way may still write to the old window after
# a flip. A perf_event program runs in interrupt context for microseconds; a uprobe
# program runs in the probed task and can be preempted, so it gets longer (what
# still comes late is lost, and counted).
FLIP_GRACE_S = 0.005


class WindowedMaps:
    def __init__(self, error_slots: int, flip_grace_s: float = FLIP_GRACE_S) -> None:
        self.window = 0
        self.flip_grace_s = flip_grace_s
        self.loaded: objects.LoadedObject | None = None
        self._error_slots = error_slots
        self._errors_before = [0] * error_slots

    def map(self, name: str) -> syscalls.Map:
        assert self.loaded is not None, "open() first"
        return self.loaded.maps[name]

    def set_config(self, slot: int, value: int) -> None:
        self.map("config").update(struct.pack("<I", slot), struct.pack("<I", value))

    def flip(self) -> int:
        """Sends new counts to the other set; returns the set to read and empty."""
        old = self.window
        self.window ^= 1
        self.set_config(CONFIG_WINDOW, self.window)
        time.sleep(self.flip_grace_s)
        return old

    def stack_reader(self, window: int):
        """stack(id) -> addresses leaf first, () for a failed walk; cached per drain."""
        stacks = self.map(f"stacks{window}")
        cache: dict[int, tuple[int, ...]] = {}

        def stack(stack_id: int) -> tuple[int, ...]:
            if stack_id < 0:
                return ()
            if stack_id not in cache:
                raw = stacks.lookup(struct.pack("<I", stack_id))
                ips: tuple[int, ...] = ()
                if raw is not None:
                    words = struct.unpack(f"<{len(raw) // 8}Q", raw)
                    ips = tuple(ip for ip in words if ip)
                cache[stack_id] = ips
            return cache[stack_id]

        return stack

    def error_totals(self) -> list[int]:
        errors = self.map("errors")
        totals = []
        for slot in range(self._error_slots):
            raw = errors.lookup(struct.pack("<I", slot)) or b""
            totals.append(sum(struct.unpack(f"<{len(raw) // 8}Q", raw)))
        return totals

    def take_errors(self) -> list[int]:
        """The error counters since the last call."""
        totals = self.error_totals()
        prev, self._errors_before = self._errors_before, totals
        return [t - p for t, p in zip(totals, prev, strict=True)]

    def close_maps(self) -> None:
        if self.loaded is not None:
            self.loaded.close()
            self.loaded = None
