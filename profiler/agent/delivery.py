"""Reliable, ordered, non-blocking delivery of windows to one remote sink.

The profiler thread calls `Delivery.submit(window)`; one daemon worker thread sends
windows to the sink. submit never touches the network, and touches the disk only when
memory is full (the worker stuck in a send for long).

Design
------
Every submitted window gets a sequence number (`seq`), strictly increasing, which is
also its spool file's name, `{spool_dir}/{sink.name}/{seq:020d}.window`. Pending
windows live in one of three places:

* the spool (files on disk, indexed in memory, ordered by seq),
* the memory queue (a deque, at most `queue_bytes` of profiles and, when given,
  `queue_size` windows: a host with 200 processes makes 200 windows at once),
* "in flight": the memory head the worker popped and is sending right now, or the
  memory the worker took to write to the spool ("spilling").

Invariant: every spooled window is older than every window in memory, and the
in-flight window is older than both. Memory only ever goes to the spool whole, from
its head, so the invariant holds by construction:

* submit: appends to memory while it has room (and Delivery is not closing).
  Otherwise, with a spool, memory and then the window are written to the spool on
  the caller's thread; without one, the window is dropped.
* worker: while the sink is down, it first writes whatever is in memory to the
  spool (outside the lock: submit never waits on its fsyncs), so windows are on disk
  moments after they are made. Otherwise it sends the spool's oldest file if there is
  one, else memory's head. Success: the window is removed (its file unlinked).
  SinkRejected: removed, counted in `rejected`, logged. SinkError: the sink is marked
  down (one log line on the transition, not one per retry) and the in-flight window
  goes back to the front of memory (and so to the spool); the head is retried with
  exponential backoff (retry_initial_s doubling up to retry_max_s, with jitter). The
  first success after that logs one "back" line.
* close: the worker keeps delivering until `timeout_s` runs out, but only while the
  sink is up; whatever is still in memory is then written to the spool, which the
  next Delivery on the same spool_dir delivers first, in seq order.

So windows reach the sink in submission order, also across restarts. A window is
sent once, except (at-least-once) when the process dies after the sink accepted a
spooled window and before its file is unlinked: the next run sends it again.

Bounds: the spool holds at most `spool_bytes`; a window that does not fit is dropped
(the new one, never the old: the spool keeps its order and a gap-free prefix). When
the worker cannot write the spool (disk full, unwritable), windows stay in memory and
the spool is tried again retry_max_s later; a write that fails on submit's overflow or
at close drops its window. A spool file that cannot be read back (torn, corrupt) is
deleted. Without a spool_dir, delivery is memory only and a window that finds memory
full is dropped. All of these count in `dropped` and are logged, at most one line per
sink every drop_log_interval_s (goprof.agent.accounting says how). submit never raises.

Thread safety: one lock (a Condition) guards all bookkeeping; the network send, the
worker's spool writes and reading a spool file back happen outside it. (Spool
writes from submit's overflow and from close hold it: rare, and order matters there.)
The parts it guards are in their own modules, none thread-safe by itself: memqueue
(the memory queue), spool (the files), retry (up, down, backoff) and accounting
(counters, drop lines).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from goprof.agent.accounting import DROP_LOG_INTERVAL_S, Accounting, DeliveryStats
from goprof.agent.memqueue import MemoryQueue, Queued
from goprof.agent.retry import SinkHealth
from goprof.agent.spool import Spool, Spooled
from goprof.exporters.sink import Sink, SinkError, SinkRejected, WindowProfile

# One request's worth, for sinks whose send_many is atomic: a round of windows from a
# host of processes in a few calls, each well under gRPC's message limits.
BATCH_WINDOWS = 64
BATCH_BYTES = 4 << 20


class Delivery:
    """Ordered delivery of windows to `sink`, spooling to disk while it is down."""

    def __init__(self, sink: Sink, *, spool_dir: Path | None, queue_size: int | None = None,
                 queue_bytes: int = 64 << 20, spool_bytes: int = 512 << 20,
                 retry_initial_s: float = 1.0, retry_max_s: float = 30.0,
                 log: logging.Logger | None = None,
                 drop_log_interval_s: float = DROP_LOG_INTERVAL_S) -> None:
        self._mem = MemoryQueue(queue_bytes, queue_size)
        self._sink = sink
        self._name = sink.name
        self._log = log or logging.getLogger(__name__)
        self._health = SinkHealth(retry_initial_s, retry_max_s)
        self._counts = Accounting(self._name, self._log, drop_log_interval_s)
        self._spool = Spool(None if spool_dir is None else Path(spool_dir) / sink.name,
                            spool_bytes, self._health.max_s, self._name, self._log,
                            self._counts)

        self._cond = threading.Condition(threading.Lock())
        self._spilling = 0  # windows the worker took from memory and is writing to disk
        self._inflight: list[Queued] = []  # taken from memory, being sent
        # Sinks that take several windows in one all-or-nothing request (Parca's
        # WriteRaw) get runs of memory's windows: one call per round of windows, not
        # one per process. Others get one window a send: a failed send is retried
        # whole, so a batch that half landed would be sent twice.
        self._batches = sink.atomic_send_many
        self._unbatched = 0  # sends to make one window at a time (after a refusal)
        self._thread: threading.Thread | None = None
        self._closing = False  # close() called: deliver until the deadline while up
        self._closed = False  # close() done: the worker takes nothing more
        self._deadline = 0.0

        self._next_seq = 1
        if self._spool.dir is not None:
            self._next_seq = self._spool.load() or 1

    @property
    def name(self) -> str:
        """The sink's name (metrics and logs use it)."""
        return self._name

    # -- the profiler thread's side -------------------------------------------------

    def start(self) -> None:
        """Start the worker thread (once)."""
        with self._cond:
            if self._closing:
                raise RuntimeError("Delivery is closed")
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, daemon=True,
                                            name=f"goprof-delivery-{self._name}")
            self._thread.start()

    def submit(self, window: WindowProfile) -> None:
        """Queue one window; never waits on the network and never raises."""
        with self._cond:
            item = Queued(self._next_seq, window, time.time())
            self._next_seq += 1
            if not self._closing and self._mem.has_room(item):
                self._mem.push(item)
            elif not self._spool.usable() and not self._closing:
                self._counts.drop("memory", f"memory queue full ({self._mem.bound()})")
            elif self._spool.dir is None:
                self._counts.drop("closing", "submitted while closing, and no spool "
                                             "directory")
            else:
                self._spool.write_all(self._mem.clear())
                self._spool.write_all([item])
            self._cond.notify_all()

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the worker: deliver what is pending for up to timeout_s while the sink
        is up, then spool what is still in memory (lost, and counted, without a
        spool_dir). The sink itself is not closed: its owner does that."""
        with self._cond:
            if self._closing:
                return
            self._closing = True
            self._deadline = time.monotonic() + timeout_s
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(max(0.0, self._deadline - time.monotonic()))
        with self._cond:
            # A spill the worker started finishes first: its windows are older.
            self._cond.wait_for(lambda: not self._spilling,
                                max(0.0, self._deadline - time.monotonic()) + 1.0)
            self._closed = True
            if self._inflight and self._spool.dir is not None:
                # The worker is stuck in a send past the deadline: keep the window. If
                # that send still succeeds, the worker unlinks the file (by its seq).
                # (Without a spool the worker settles it: delivered, or lost.)
                self._requeue_inflight_locked()
            if self._spool.dir is not None:
                self._spool.write_all(self._mem.clear())
            elif self._mem:
                self._counts.drop("shutdown", "undelivered at shutdown, no spool directory",
                                  len(self._mem))
                self._mem.clear()
            self._counts.stop()
            self._cond.notify_all()

    def wait_idle(self, timeout_s: float) -> bool:
        """True once nothing is pending (memory, spool, in flight); False on timeout."""
        with self._cond:
            return self._cond.wait_for(self._idle_locked, timeout_s)

    def stats(self) -> DeliveryStats:
        with self._cond:
            heads = (self._inflight[0] if self._inflight else None, self._mem.head(),
                     self._spool.head())
            oldest = [h.since for h in heads if h is not None]
            c = self._counts
            return DeliveryStats(
                delivered=c.delivered,
                attempts_failed=c.attempts_failed,
                rejected=c.rejected,
                dropped=c.dropped,
                queued=len(self._mem) + len(self._inflight) + self._spilling,
                spooled_windows=len(self._spool),
                spooled_bytes=self._spool.total,
                up=self._health.up,
                last_success_mono=c.last_success,
                oldest_pending_age_s=max(0.0, time.time() - min(oldest)) if oldest else 0.0,
            )

    # -- the worker ---------------------------------------------------------------

    def _run(self) -> None:
        health = self._health
        while True:
            spill: list[Queued] = []
            with self._cond:
                while True:
                    self._counts.report_drops()  # a line that came due with no new drop
                    if self._closed or (self._closing and (
                            not health.up or time.monotonic() >= self._deadline)):
                        return
                    if not health.up and self._spool.usable() and self._mem:
                        spill = self._mem.clear()
                        self._spilling = len(spill)
                        break
                    wait = health.retry_at - time.monotonic()
                    if not health.up and wait > 0:
                        # woken early by submit (to spill), close, or a drop line due
                        due = self._counts.drop_line_wait()
                        self._cond.wait(wait if due is None else min(wait, due))
                        continue
                    head = self._take_locked()
                    if head is not None:
                        break
                    if self._closing:
                        return  # nothing left to deliver
                    self._cond.wait(self._counts.drop_line_wait())

            if spill:
                self._spill(spill)
                continue
            if isinstance(head, Spooled):
                window = self._read_spooled(head)
                if window is None:
                    continue
                batch = [(head.seq, window)]
            else:
                batch = [(item.seq, item.window) for item in head]

            error: Exception | None = None
            rejected = False
            try:
                if len(batch) == 1:
                    self._sink.send(batch[0][1])
                else:
                    self._sink.send_many([w for _, w in batch])
            except SinkRejected as e:
                rejected, error = True, e
            except SinkError as e:
                error = e
            except Exception as e:  # a sink bug: keep the window and retry, do not die
                error = e

            with self._cond:
                if rejected and len(batch) > 1:
                    # One bad window refuses the whole request: send these one by one
                    # to find it (and deliver the others).
                    self._unbatched = len(batch)
                    self._put_back_locked(head)
                elif error is None or rejected:
                    self._settled_locked(batch, error if rejected else None)
                else:
                    self._failed_locked(head, error)
                self._cond.notify_all()

    def _settled_locked(self, batch: list[tuple[int, WindowProfile]],
                        rejection: Exception | None) -> None:
        """The sink answered for the batch: delivered, or (one window) refused for good."""
        for seq, _ in batch:
            self._remove_locked(seq)
        if rejection is not None:
            self._counts.rejected += 1
            self._log.warning("sink %s rejected window seq=%d (%s): dropped, "
                              "not retried", self._name, batch[0][0], rejection)
        else:
            self._counts.delivered += len(batch)
        self._counts.last_success = time.monotonic()
        down_for = self._health.succeeded()
        if down_for is not None:
            self._log.warning(
                "sink %s back after %.0fs: delivering %d %s windows",
                self._name, down_for, self._pending_locked(),
                "spooled" if self._spool.dir is not None else "queued")

    def _failed_locked(self, head: Spooled | list[Queued], error: Exception) -> None:
        """A send that may go through later: the sink is down, the windows go back."""
        self._counts.attempts_failed += 1
        if self._health.failed():
            where = (f"spooling windows to {self._spool.dir}" if self._spool.dir is not None
                     else f"holding up to {self._mem.bound()} in memory")
            self._log.warning("sink %s down: %s; %s", self._name,
                              str(error) or type(error).__name__, where)
        self._put_back_locked(head)  # to the spool next, if any
        if self._spool.dir is None and self._closed and self._mem:
            # close() gave up on these
            self._counts.drop("shutdown", "undelivered at shutdown, no spool directory",
                              len(self._mem))
            self._mem.clear()

    def _take_locked(self) -> Spooled | list[Queued] | None:
        """The oldest pending window (spooled ones first: they are older), or, from
        memory, the oldest run of windows the sink takes in one request."""
        spooled = self._spool.head()
        if spooled is not None:
            return spooled
        if not self._mem:
            return None
        if self._unbatched or not self._batches:
            count, room = 1, 0
            self._unbatched = max(0, self._unbatched - 1)
        else:
            count, room = BATCH_WINDOWS, BATCH_BYTES
        while self._mem and len(self._inflight) < count:
            size = len(self._mem.head().window.pprof)
            if self._inflight and size > room:
                break
            self._inflight.append(self._mem.pop())
            room -= size
        return list(self._inflight)

    def _put_back_locked(self, head: Spooled | list[Queued]) -> None:
        """A send from memory that did not go through: its windows back at the front
        (unless close() already took them)."""
        if isinstance(head, list) and self._inflight and self._inflight[0] is head[0]:
            self._requeue_inflight_locked()

    def _requeue_inflight_locked(self) -> None:
        """The windows in flight back at memory's front, in order (they are oldest)."""
        for item in reversed(self._inflight):
            self._mem.push(item, front=True)
        self._inflight = []

    def _read_spooled(self, entry: Spooled) -> WindowProfile | None:
        """The window in a spool file; None (file deleted, counted) when unreadable."""
        try:
            return Spool.read(entry)
        except (OSError, ValueError) as e:
            problem = e
        with self._cond:
            self._remove_locked(entry.seq)
            # Rare (a torn or corrupt file), and the file is worth naming: a line each.
            self._counts.drop("unreadable", f"unreadable spool file {entry.path} "
                                            f"({problem})", now=True)
            self._cond.notify_all()
        return None

    def _remove_locked(self, seq: int) -> None:
        """Forget the window seq wherever it is pending, unlinking its spool file.
        (Run after the sink accepted it: a crash just before the unlink means the
        next run sends it again, the one at-least-once case.)"""
        for i, item in enumerate(self._inflight):
            if item.seq == seq:
                del self._inflight[i]
                return
        self._spool.remove(seq)

    def _spill(self, items: list[Queued]) -> None:
        """The worker's way: write windows taken from memory to the spool, the lock
        held only for the bookkeeping of each, never across a file write. When a write
        fails, that window and the rest go back to memory (nothing is lost yet) and
        the spool is left alone for a while: memory holds windows, and the worker
        keeps probing the sink with them."""
        for i, item in enumerate(items):
            with self._cond:
                data = self._spool.reserve(item)
            written = None if data is None else self._spool.write_file(item.seq, data)
            with self._cond:
                if data is not None and isinstance(written, OSError):
                    self._spool.release(data)
                    for back in reversed(items[i:]):
                        self._mem.push(back, front=True)
                    self._spilling = 0
                    self._counts.warn_limited("spool", f"sink {self._name}: cannot write to "
                                                       f"the spool {self._spool.dir} "
                                                       f"({written}): windows wait in memory")
                    break
                if data is not None:
                    self._spool.index(item, data, written)
                self._spilling -= 1
        self._spool.fsync_dir()  # one for the batch: the renames are durable from here
        with self._cond:
            self._cond.notify_all()

    def _pending_locked(self) -> int:
        return len(self._mem) + len(self._spool) + len(self._inflight) + self._spilling

    def _idle_locked(self) -> bool:
        return self._pending_locked() == 0
