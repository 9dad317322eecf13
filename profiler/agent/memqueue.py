"""Delivery's memory queue: windows waiting in memory, oldest first, bounded by the
bytes of their profiles and, when given, by their number (a host with 200 processes
makes 200 windows at once)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from goprof.exporters.sink import WindowProfile


@dataclass(frozen=True)
class Queued:
    seq: int
    window: WindowProfile
    since: float  # time.time() when submitted


class MemoryQueue:
    """Not thread-safe: Delivery calls it holding its lock."""

    def __init__(self, max_bytes: int, max_windows: int | None) -> None:
        if max_windows is not None and max_windows < 1:
            raise ValueError("queue_size must be at least 1")
        if max_bytes < 1:
            raise ValueError("queue_bytes must be at least 1")
        self.max_bytes = max_bytes
        self.max_windows = max_windows
        self._items: deque[Queued] = deque()
        self.total = 0  # bytes of profile held

    def __len__(self) -> int:
        return len(self._items)

    def head(self) -> Queued | None:
        return self._items[0] if self._items else None

    def has_room(self, item: Queued) -> bool:
        if self.max_windows is not None and len(self._items) >= self.max_windows:
            return False
        # One window always fits (when nothing else is there), however large.
        return not self._items or self.total + len(item.window.pprof) <= self.max_bytes

    def bound(self) -> str:
        """The bounds, for messages."""
        bound = f"{self.max_bytes} bytes"
        return bound if self.max_windows is None else f"{bound}, {self.max_windows} windows"

    def push(self, item: Queued, front: bool = False) -> None:
        if front:
            self._items.appendleft(item)
        else:
            self._items.append(item)
        self.total += len(item.window.pprof)

    def pop(self) -> Queued:
        """The oldest window, taken out."""
        item = self._items.popleft()
        self.total -= len(item.window.pprof)
        return item

    def clear(self) -> list[Queued]:
        """Every window, taken out, oldest first."""
        items = list(self._items)
        self._items.clear()
        self.total = 0
        return items
