"""The record loop: it sleeps until something needs it, and nothing else.

goprof is a guest on the host it profiles, so the loop wakes only for what it must act
on: a signal (Ctrl-C, SIGTERM), a target's exit (its pidfd), the duration's end, the
window timer (drain the maps), and a slow tick that follows execs (one batch read of the
exec queue) and, on a terminal, redraws the progress line, reading the sample counter
then. It never polls the kernel's counters to find out whether anything happened.
"""

from __future__ import annotations

import math
import os
import select
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from goprof.recording.windows import ExecEvent
from goprof.targets import ExitWatch
from rich.console import Console
from rich.live import Live
from rich.text import Text

# Windows are drained at least this often, so the maps stay small on long runs.
MAX_WINDOW_S = 10.0
# Execs are followed this often: a target's new image must be read before it exits.
TICK_S = 0.5


class Recorder(Protocol):
    """What the loop needs of a recorder (goprof.kinds.*.recorder)."""

    def samples_seen(self) -> int: ...  # a counter read: for the progress line only
    def drain(self) -> Any: ...  # a window: .samples (list) and .stats (with add())
    def stop(self) -> None: ...
    def take_execs(self) -> list[ExecEvent]: ...
    def generation(self, pid: int) -> int | None: ...


class StopSignals:
    """SIGINT and SIGTERM end the run: the reason is kept, and the loop's poll() is woken
    through a pipe (the handler runs between poll()s: PEP 475 restarts the call, and the
    pipe makes the restarted one return at once)."""

    def __init__(self) -> None:
        self.reason = ""
        self._old: dict = {}
        self._read_fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def fileno(self) -> int:
        return self._read_fd

    def __enter__(self) -> StopSignals:
        self._old = {s: signal.signal(s, self._on_signal)
                     for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)
        os.close(self._read_fd)
        os.close(self._write_fd)

    def _on_signal(self, signum: int, _frame) -> None:
        if not self.reason:
            self.reason = "interrupted (Ctrl-C)" if signum == signal.SIGINT else \
                f"stopped by {signal.Signals(signum).name}"
        try:
            os.write(self._write_fd, b"\0")
        except BlockingIOError:
            pass  # woken already


@dataclass
class Recorded:
    """What a recording gave: every window's samples, why it ended and how long it ran
    (the counters are added to the `stats` the caller passed)."""

    samples: list
    ended_by: str
    elapsed_s: float


def record(recorder: Recorder, pids: list[int], stats: Any, *, duration: float | None,
           window_s: float, signals: StopSignals, console: Console,
           on_tick: Callable[[], None], on_drain: Callable[[set[int]], None]) -> Recorded:
    """Records until the duration, a signal or every target's exit; `stats` are added
    to. `on_tick` runs every TICK_S (execs), `on_drain(live pids)` after each window."""
    started = time.monotonic()
    deadline = started + duration if duration else math.inf
    next_drain = started + window_s
    next_tick = started + TICK_S
    samples: list = []
    exits = ExitWatch(pids)
    poller = select.poll()
    poller.register(signals.fileno(), select.POLLIN)
    for fd in exits.fds:
        poller.register(fd, select.POLLIN)
    progress = _Progress(console, duration)
    ended_by = ""
    try:
        with progress:
            while True:
                timeout = min(next_tick, next_drain, deadline) - time.monotonic()
                ready = {fd for fd, _ in poller.poll(max(math.ceil(timeout * 1000), 0))}
                if signals.reason:
                    ended_by = signals.reason
                    break
                now = time.monotonic()
                if now >= deadline:
                    ended_by = "duration reached"
                    break
                exited = ready & exits.fds.keys()
                for fd in exited:
                    poller.unregister(fd)
                exits.check(exited)
                if now >= next_tick:
                    on_tick()
                    next_tick = now + TICK_S
                    if progress.shown:
                        progress.update(now - started, recorder.samples_seen(), stats.lost)
                if not exits.live:
                    ended_by = "every target exited"
                    break
                if now >= next_drain:
                    _drain_into(recorder, samples, stats)
                    on_drain(exits.live)
                    next_drain = now + window_s
    finally:
        exits.close()
    elapsed = time.monotonic() - started
    recorder.stop()
    on_tick()  # an exec just before the end still gets its names
    # Both windows: the current one, then the other (empty unless a flip raced).
    _drain_into(recorder, samples, stats)
    _drain_into(recorder, samples, stats)
    return Recorded(samples, ended_by, elapsed)


def announce(console: Console) -> None:
    """Said once recording runs (tests and scripts wait for it); a terminal gets the
    progress line instead."""
    if not console.is_terminal:
        console.print("goprof: recording (Ctrl-C stops and writes)", highlight=False)


def _drain_into(recorder: Recorder, samples: list, stats: Any) -> None:
    window = recorder.drain()
    samples.extend(window.samples)
    stats.add(window.stats)


class _Progress:
    """One line while recording, on a terminal only."""

    def __init__(self, console: Console, duration: float | None) -> None:
        self.console = console
        self.duration = duration
        self.live: Live | None = None

    @property
    def shown(self) -> bool:
        return self.live is not None

    def __enter__(self) -> _Progress:
        if self.console.is_terminal:
            self.live = Live(Text("recording..."), console=self.console, transient=True,
                             auto_refresh=False)
            self.live.__enter__()
        return self

    def update(self, elapsed: float, samples: int, lost: int) -> None:
        if self.live is None:
            return
        total = f"/{self.duration:.0f}s" if self.duration else ""
        self.live.update(Text(f"recording {elapsed:5.1f}s{total}  samples {samples}  "
                              f"lost {lost}  (Ctrl-C stops and writes)"), refresh=True)

    def __exit__(self, *exc) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)
