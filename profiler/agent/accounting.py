"""What one Delivery counts (delivered, failed attempts, rejected, dropped) and how it
says so: drops in at most one log line per sink every drop_log_interval_s, saying how
many windows were dropped since the last such line, why, and the total.

The worker writes a line that is due even when no further drop comes (it waits on
drop_line_wait()), and close() writes the rest with the total at stop (drops after
that get a line each). So the logged counts add up to `dropped`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

DROP_LOG_INTERVAL_S = 60.0


@dataclass(frozen=True)
class DeliveryStats:
    """A consistent snapshot of one Delivery's counters and state."""

    delivered: int  # windows the sink accepted
    attempts_failed: int  # sends that raised SinkError (retried later)
    rejected: int  # windows the sink refused for good (SinkRejected): not retried
    dropped: int  # windows lost here: spool full or unwritable, corrupt file, memory full
    queued: int  # pending in memory (including the one being sent from memory)
    spooled_windows: int  # pending on disk
    spooled_bytes: int
    up: bool  # false from a failed send until the next successful one
    last_success_mono: float | None  # time.monotonic() of the last accepted window
    oldest_pending_age_s: float  # wall-clock age of the oldest pending window; 0 if none


class Accounting:
    """One sink's counters and its rate-limited warnings. Not thread-safe: Delivery
    calls it holding its lock."""

    def __init__(self, name: str, log: logging.Logger,
                 drop_log_interval_s: float = DROP_LOG_INTERVAL_S) -> None:
        self._name = name
        self._log = log
        self.delivered = 0
        self.attempts_failed = 0
        self.rejected = 0
        self.dropped = 0
        self.last_success: float | None = None  # time.monotonic() of the last delivery
        self._last_warned: dict[str, float] = {}
        # Drops not yet in a log line: how many, and the latest message per reason.
        self._drop_log_interval = drop_log_interval_s
        self._drops_unlogged = 0
        self._drop_reasons: dict[str, str] = {}
        self._drop_line_at: float | None = None  # monotonic time of the last drop line
        self._stop_reported = False  # stop() wrote the total: later drops log at once

    def drop(self, reason: str, message: str, count: int = 1, now: bool = False) -> None:
        """Count dropped windows; the log line may wait (see report_drops)."""
        self.dropped += count
        self._drops_unlogged += count
        self._drop_reasons[reason] = message
        self.report_drops(now=now or self._stop_reported)

    def report_drops(self, now: bool = False, at_stop: bool = False) -> None:
        """One line for the drops not logged yet, at most one per drop_log_interval_s
        (unless `now` or `at_stop`), with the total; at stop, the total even when
        every drop was logged already."""
        n = self._drops_unlogged
        due = self.drop_line_wait() == 0.0
        if at_stop and not n:
            if self.dropped:
                self._log.warning("sink %s: at stop: %d dropped in total, none since the "
                                  "last report", self._name, self.dropped)
            return
        if not n or not (now or at_stop or due):
            return
        since = " since the last report" if self._drop_line_at is not None else ""
        self._log.warning("sink %s: %s%d %s dropped%s (%s); %d dropped in total",
                          self._name, "at stop: " if at_stop else "", n,
                          "window" if n == 1 else "windows", since,
                          "; ".join(self._drop_reasons.values()), self.dropped)
        self._drops_unlogged = 0
        self._drop_reasons.clear()
        self._drop_line_at = time.monotonic()

    def stop(self) -> None:
        """close(): the line for what is left, with the total; from now on each drop
        gets its line at once."""
        self.report_drops(at_stop=True)
        self._stop_reported = True

    def drop_line_wait(self) -> float | None:
        """Seconds until the pending drops' line is due (0.0: now); None when none
        is pending."""
        if not self._drops_unlogged:
            return None
        if self._drop_line_at is None:
            return 0.0
        return max(0.0, self._drop_line_at + self._drop_log_interval - time.monotonic())

    def warn_limited(self, reason: str, message: str) -> None:
        """Log at most once a minute per reason."""
        now = time.monotonic()
        last = self._last_warned.get(reason)
        if last is None or now - last >= DROP_LOG_INTERVAL_S:
            self._last_warned[reason] = now
            self._log.warning("%s", message)
