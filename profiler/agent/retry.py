"""Whether a sink is up and, while it is down, when Delivery tries it again."""

from __future__ import annotations

import random
import time


class SinkHealth:
    """Up until a send fails; then down, with sends retried after exponential backoff
    (initial_s doubling up to max_s, with jitter: a random point in the second half
    of the delay), until one goes through. Not thread-safe: Delivery calls it holding
    its lock."""

    def __init__(self, initial_s: float, max_s: float) -> None:
        self.initial_s = initial_s
        self.max_s = max(max_s, initial_s)
        self.up = True
        self.down_since = 0.0  # time.monotonic() of the failure that took it down
        self.retry_at = 0.0  # while down: when to try the sink again
        self._failures = 0  # in a row

    def failed(self) -> bool:
        """A send failed: the next try is scheduled. True when this took the sink down
        (it was up), for the one log line of the transition."""
        self._failures += 1
        went_down = self.up
        if went_down:
            self.up = False
            self.down_since = time.monotonic()
        delay = min(self.max_s, self.initial_s * 2 ** min(self._failures - 1, 32))
        self.retry_at = time.monotonic() + random.uniform(delay / 2, delay)
        return went_down

    def succeeded(self) -> float | None:
        """The sink answered (took a window, or refused one for good): it is up. The
        seconds it had been down, or None when it was up already."""
        self._failures = 0
        if self.up:
            return None
        self.up = True
        return time.monotonic() - self.down_since
