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
at close drops its window. A spool file
that cannot be read back (torn, corrupt) is deleted. Without a spool_dir, delivery
is memory only and a window that finds memory full is dropped. All of these count
in `dropped` and are logged: at most one line per sink every drop_log_interval_s
(a minute), saying how many windows were dropped since the last such line, why, and
the total; the worker writes a line that is due even when no further drop comes, and
close() writes the rest with the total at stop (drops after that get a line each). So
the logged counts add up to `dropped`. submit never raises.

Thread safety: one lock (a Condition) guards all bookkeeping; the network send, the
worker's spool writes and reading a spool file back happen outside it. (Spool
writes from submit's overflow and from close hold it: rare, and order matters there.)
"""

from __future__ import annotations

import bisect
import logging
import os
import random
import re
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from goprof.exporters.sink import Sink, SinkError, SinkRejected, WindowProfile

_FILE = re.compile(r"^(\d{20})\.window$")
_TMP_SUFFIX = ".window.tmp"
_DROP_LOG_INTERVAL_S = 60.0
# One request's worth, for sinks whose send_many is atomic: a round of windows from a host of
# processes in a few calls, each well under gRPC's message limits.
BATCH_WINDOWS = 64
BATCH_BYTES = 4 << 20


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


@dataclass(frozen=True)
class _Queued:
    seq: int
    window: WindowProfile
    since: float  # time.time() when submitted


@dataclass(frozen=True)
class _Spooled:
    seq: int
    path: Path
    size: int
    since: float  # time.time() when written (file mtime for an earlier run's files)


class Delivery:
    """Ordered delivery of windows to `sink`, spooling to disk while it is down."""

    def __init__(self, sink: Sink, *, spool_dir: Path | None, queue_size: int | None = None,
                 queue_bytes: int = 64 << 20, spool_bytes: int = 512 << 20,
                 retry_initial_s: float = 1.0, retry_max_s: float = 30.0,
                 log: logging.Logger | None = None,
                 drop_log_interval_s: float = _DROP_LOG_INTERVAL_S) -> None:
        if queue_size is not None and queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        if queue_bytes < 1:
            raise ValueError("queue_bytes must be at least 1")
        self._sink = sink
        self._name = sink.name
        self._dir = None if spool_dir is None else Path(spool_dir) / sink.name
        self._queue_size = queue_size
        self._queue_bytes = queue_bytes
        self._spool_limit = spool_bytes
        self._retry_initial = retry_initial_s
        self._retry_max = max(retry_max_s, retry_initial_s)
        self._log = log or logging.getLogger(__name__)

        self._cond = threading.Condition(threading.Lock())
        self._mem: deque[_Queued] = deque()
        self._mem_total = 0  # bytes of profile in _mem
        self._spilling = 0  # windows the worker took from memory and is writing to disk
        self._spool_retry_at = 0.0  # after a failed spool write: memory only until then
        self._spool: list[_Spooled] = []  # sorted by seq
        self._spool_total = 0
        self._inflight: list[_Queued] = []  # taken from memory, being sent
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

        self._up = True
        self._down_since = 0.0
        self._delivered = 0
        self._attempts_failed = 0
        self._rejected = 0
        self._dropped = 0
        self._last_success: float | None = None
        self._last_warned: dict[str, float] = {}
        # Drops not yet in a log line: how many, and the latest message per reason.
        self._drop_log_interval = drop_log_interval_s
        self._drops_unlogged = 0
        self._drop_reasons: dict[str, str] = {}
        self._drop_line_at: float | None = None  # monotonic time of the last drop line
        self._stop_reported = False  # close() wrote the total: later drops log at once

        self._next_seq = 1
        if self._dir is not None:
            self._load_spool()

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
            item = _Queued(self._next_seq, window, time.time())
            self._next_seq += 1
            if not self._closing and self._mem_has_room(item):
                self._mem_push(item)
            elif not self._spool_usable() and not self._closing:
                self._drop_locked("memory", f"memory queue full ({self._mem_bound()})")
            elif self._dir is None:
                self._drop_locked("closing", "submitted while closing, and no spool directory")
            else:
                self._flush_memory_locked()
                self._spool_locked([item])
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
            if self._inflight and self._dir is not None:
                # The worker is stuck in a send past the deadline: keep the window. If
                # that send still succeeds, the worker unlinks the file (by its seq).
                # (Without a spool the worker settles it: delivered, or lost.)
                self._requeue_inflight_locked()
            if self._dir is not None:
                self._flush_memory_locked()
            elif self._mem:
                self._drop_locked("shutdown", "undelivered at shutdown, no spool directory",
                                  len(self._mem))
                self._mem_clear()
            self._report_drops_locked(at_stop=True)
            self._stop_reported = True
            self._cond.notify_all()

    def wait_idle(self, timeout_s: float) -> bool:
        """True once nothing is pending (memory, spool, in flight); False on timeout."""
        with self._cond:
            return self._cond.wait_for(self._idle_locked, timeout_s)

    def stats(self) -> DeliveryStats:
        with self._cond:
            heads = (self._inflight[0] if self._inflight else None,
                     self._mem[0] if self._mem else None,
                     self._spool[0] if self._spool else None)
            oldest = [h.since for h in heads if h is not None]
            return DeliveryStats(
                delivered=self._delivered,
                attempts_failed=self._attempts_failed,
                rejected=self._rejected,
                dropped=self._dropped,
                queued=len(self._mem) + len(self._inflight) + self._spilling,
                spooled_windows=len(self._spool),
                spooled_bytes=self._spool_total,
                up=self._up,
                last_success_mono=self._last_success,
                oldest_pending_age_s=max(0.0, time.time() - min(oldest)) if oldest else 0.0,
            )

    # -- the worker ---------------------------------------------------------------

    def _run(self) -> None:
        failures = 0
        retry_at = 0.0  # while down: when to try the sink again
        while True:
            spill: list[_Queued] = []
            with self._cond:
                while True:
                    self._report_drops_locked()  # a line that came due with no new drop
                    if self._closed or (self._closing and (
                            not self._up or time.monotonic() >= self._deadline)):
                        return
                    if not self._up and self._spool_usable() and self._mem:
                        spill = self._mem_clear()
                        self._spilling = len(spill)
                        break
                    wait = retry_at - time.monotonic()
                    if not self._up and wait > 0:
                        # woken early by submit (to spill), close, or a drop line due
                        due = self._drop_line_wait_locked()
                        self._cond.wait(wait if due is None else min(wait, due))
                        continue
                    head = self._take_locked()
                    if head is not None:
                        break
                    if self._closing:
                        return  # nothing left to deliver
                    self._cond.wait(self._drop_line_wait_locked())

            if spill:
                self._spill(spill)
                continue
            if isinstance(head, _Spooled):
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
                    failures = 0
                    for seq, _ in batch:
                        self._remove_locked(seq)
                    if rejected:
                        self._rejected += 1
                        self._log.warning("sink %s rejected window seq=%d (%s): dropped, "
                                          "not retried", self._name, batch[0][0], error)
                    else:
                        self._delivered += len(batch)
                    self._last_success = time.monotonic()
                    if not self._up:
                        self._up = True
                        self._log.warning(
                            "sink %s back after %.0fs: delivering %d %s windows",
                            self._name, time.monotonic() - self._down_since,
                            self._pending_locked(),
                            "spooled" if self._dir is not None else "queued")
                else:
                    failures += 1
                    self._attempts_failed += 1
                    if self._up:
                        self._up = False
                        self._down_since = time.monotonic()
                        where = (f"spooling windows to {self._dir}" if self._dir is not None
                                 else f"holding up to {self._mem_bound()} in memory")
                        self._log.warning("sink %s down: %s; %s", self._name,
                                          str(error) or type(error).__name__, where)
                    self._put_back_locked(head)  # to the spool next, if any
                    if self._dir is None and self._closed and self._mem:
                        # close() gave up on these
                        self._drop_locked("shutdown", "undelivered at shutdown, no spool "
                                                      "directory", len(self._mem))
                        self._mem_clear()
                    delay = min(self._retry_max,
                                self._retry_initial * 2 ** min(failures - 1, 32))
                    retry_at = time.monotonic() + random.uniform(delay / 2, delay)
                self._cond.notify_all()

    def _take_locked(self) -> _Spooled | list[_Queued] | None:
        """The oldest pending window (spooled ones first: they are older), or, from
        memory, the oldest run of windows the sink takes in one request."""
        if self._spool:
            return self._spool[0]
        if not self._mem:
            return None
        if self._unbatched or not self._batches:
            count, room = 1, 0
            self._unbatched = max(0, self._unbatched - 1)
        else:
            count, room = BATCH_WINDOWS, BATCH_BYTES
        while self._mem and len(self._inflight) < count:
            size = len(self._mem[0].window.pprof)
            if self._inflight and size > room:
                break
            item = self._mem.popleft()
            self._mem_total -= size
            room -= size
            self._inflight.append(item)
        return list(self._inflight)

    def _put_back_locked(self, head: _Spooled | list[_Queued]) -> None:
        """A send from memory that did not go through: its windows back at the front
        (unless close() already took them)."""
        if isinstance(head, list) and self._inflight and self._inflight[0] is head[0]:
            self._requeue_inflight_locked()

    def _requeue_inflight_locked(self) -> None:
        """The windows in flight back at memory's front, in order (they are oldest)."""
        for item in reversed(self._inflight):
            self._mem_push(item, front=True)
        self._inflight = []

    # -- the memory queue -----------------------------------------------------------

    def _mem_has_room(self, item: _Queued) -> bool:
        if self._queue_size is not None and len(self._mem) >= self._queue_size:
            return False
        # One window always fits (when nothing else is there), however large.
        return not self._mem or self._mem_total + len(item.window.pprof) <= self._queue_bytes

    def _mem_bound(self) -> str:
        bound = f"{self._queue_bytes} bytes"
        return bound if self._queue_size is None else f"{bound}, {self._queue_size} windows"

    def _mem_push(self, item: _Queued, front: bool = False) -> None:
        if front:
            self._mem.appendleft(item)
        else:
            self._mem.append(item)
        self._mem_total += len(item.window.pprof)

    def _mem_clear(self) -> list[_Queued]:
        items = list(self._mem)
        self._mem.clear()
        self._mem_total = 0
        return items

    def _read_spooled(self, entry: _Spooled) -> WindowProfile | None:
        """The window in a spool file; None (file deleted, counted) when unreadable."""
        try:
            return WindowProfile.from_bytes(entry.path.read_bytes())
        except (OSError, ValueError) as e:
            problem = e
        with self._cond:
            self._remove_locked(entry.seq)
            # Rare (a torn or corrupt file), and the file is worth naming: a line each.
            self._drop_locked("unreadable", f"unreadable spool file {entry.path} "
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
        i = bisect.bisect_left(self._spool, seq, key=lambda e: e.seq)
        if i < len(self._spool) and self._spool[i].seq == seq:
            entry = self._spool.pop(i)
            self._spool_total -= entry.size
            try:
                entry.path.unlink(missing_ok=True)
            except OSError as e:
                self._log.warning("sink %s: cannot delete spool file %s: %s",
                                  self._name, entry.path, e)

    # -- the spool ------------------------------------------------------------------

    def _load_spool(self) -> None:
        """Index files an earlier run left (pending work, delivered first) and resume
        numbering after the newest; remove temp files of writes a crash cut short."""
        assert self._dir is not None
        try:
            self._dir.mkdir(parents=True, exist_ok=True)
            names = os.listdir(self._dir)
        except OSError as e:
            self._log.error("sink %s: spool directory %s unusable (%s): while the sink "
                            "is down, windows wait in memory and are dropped when it is "
                            "full", self._name, self._dir, e)
            return
        for name in names:
            path = self._dir / name
            m = _FILE.match(name)
            try:
                if m:
                    st = path.stat()
                    self._spool.append(_Spooled(int(m.group(1)), path, st.st_size,
                                                st.st_mtime))
                elif name.startswith(".") and name.endswith(_TMP_SUFFIX):
                    path.unlink()
            except OSError as e:
                self._log.warning("sink %s: skipping spool file %s: %s", self._name, path, e)
        self._spool.sort(key=lambda e: e.seq)
        self._spool_total = sum(e.size for e in self._spool)
        if self._spool:
            self._next_seq = self._spool[-1].seq + 1
            self._log.info("sink %s: %d windows (%d bytes) pending in %s from an earlier "
                           "run", self._name, len(self._spool), self._spool_total, self._dir)

    def _flush_memory_locked(self) -> None:
        self._spool_locked(self._mem_clear())

    def _spool_locked(self, items: list[_Queued]) -> None:
        """Write windows to the spool holding the lock (submit's overflow, close)."""
        for item in items:
            data = self._reserve_locked(item)
            if data is not None:
                self._index_locked(item, data, self._write_file(item.seq, data))
        if items:
            self._fsync_dir()

    def _spill(self, items: list[_Queued]) -> None:
        """The worker's way: write windows taken from memory to the spool, the lock
        held only for the bookkeeping of each, never across a file write. When a write
        fails, that window and the rest go back to memory (nothing is lost yet) and
        the spool is left alone for a while: memory holds windows, and the worker
        keeps probing the sink with them."""
        for i, item in enumerate(items):
            with self._cond:
                data = self._reserve_locked(item)
            written = None if data is None else self._write_file(item.seq, data)
            with self._cond:
                if data is not None and isinstance(written, OSError):
                    self._release_locked(data)
                    for back in reversed(items[i:]):
                        self._mem_push(back, front=True)
                    self._spilling = 0
                    self._warn_limited("spool", f"sink {self._name}: cannot write to the "
                                                f"spool {self._dir} ({written}): windows "
                                                "wait in memory")
                    break
                if data is not None:
                    self._index_locked(item, data, written)
                self._spilling -= 1
        self._fsync_dir()  # one for the batch: the renames are durable from here
        with self._cond:
            self._cond.notify_all()

    def _spool_usable(self) -> bool:
        return self._dir is not None and time.monotonic() >= self._spool_retry_at

    def _release_locked(self, data: bytes) -> None:
        """A reserved spool record whose write failed: its bytes no longer counted, and
        the spool left alone for retry_max_s (memory holds windows meanwhile)."""
        self._spool_total -= len(data)
        self._spool_retry_at = time.monotonic() + self._retry_max

    def _reserve_locked(self, item: _Queued) -> bytes | None:
        """The window's spool record, its bytes counted against the bound; None when
        it cannot be encoded or does not fit (dropped, counted)."""
        try:
            data = item.window.to_bytes()
        except Exception as e:  # labels that are not JSON: a bug upstream, not ours
            self._drop_locked("encode", f"cannot encode window seq={item.seq}: {e}")
            return None
        if self._spool_total + len(data) > self._spool_limit:
            self._drop_locked("full", f"spool {self._dir} full ({self._spool_total} of "
                                      f"{self._spool_limit} bytes)")
            return None
        self._spool_total += len(data)
        return data

    def _index_locked(self, item: _Queued, data: bytes, written: Path | OSError) -> None:
        """Record a reserved window as spooled, or as dropped when its write failed."""
        if isinstance(written, OSError):
            self._release_locked(data)
            self._drop_locked("write", f"cannot write to the spool {self._dir}: "
                                       f"{written.strerror or written}")
            return
        bisect.insort(self._spool, _Spooled(item.seq, written, len(data), item.since),
                      key=lambda e: e.seq)

    def _write_file(self, seq: int, data: bytes) -> Path | OSError:
        """Write one spool file atomically (temp file, fsync, rename); its path, or
        the error. Needs no lock: the name is the window's own."""
        assert self._dir is not None
        path = self._dir / f"{seq:020d}.window"
        tmp = self._dir / f".{seq:020d}{_TMP_SUFFIX}"
        try:
            self._dir.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            return e
        return path

    def _fsync_dir(self) -> None:
        """Make the rename durable; best effort (not every file system allows it)."""
        try:
            fd = os.open(self._dir, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)

    # -- bookkeeping ----------------------------------------------------------------

    def _drop_locked(self, reason: str, message: str, count: int = 1,
                     now: bool = False) -> None:
        """Count dropped windows; the log line may wait (see _report_drops_locked)."""
        self._dropped += count
        self._drops_unlogged += count
        self._drop_reasons[reason] = message
        self._report_drops_locked(now=now or self._stop_reported)

    def _report_drops_locked(self, now: bool = False, at_stop: bool = False) -> None:
        """One line for the drops not logged yet, at most one per drop_log_interval_s
        (unless `now` or `at_stop`), with the total; at stop, the total even when
        every drop was logged already."""
        n = self._drops_unlogged
        due = self._drop_line_wait_locked() == 0.0
        if at_stop and not n:
            if self._dropped:
                self._log.warning("sink %s: at stop: %d dropped in total, none since the "
                                  "last report", self._name, self._dropped)
            return
        if not n or not (now or at_stop or due):
            return
        since = " since the last report" if self._drop_line_at is not None else ""
        self._log.warning("sink %s: %s%d %s dropped%s (%s); %d dropped in total",
                          self._name, "at stop: " if at_stop else "", n,
                          "window" if n == 1 else "windows", since,
                          "; ".join(self._drop_reasons.values()), self._dropped)
        self._drops_unlogged = 0
        self._drop_reasons.clear()
        self._drop_line_at = time.monotonic()

    def _drop_line_wait_locked(self) -> float | None:
        """Seconds until the pending drops' line is due (0.0: now); None when none
        is pending."""
        if not self._drops_unlogged:
            return None
        if self._drop_line_at is None:
            return 0.0
        return max(0.0, self._drop_line_at + self._drop_log_interval - time.monotonic())

    def _warn_limited(self, reason: str, message: str) -> None:
        """Log at most once a minute per reason."""
        now = time.monotonic()
        last = self._last_warned.get(reason)
        if last is None or now - last >= _DROP_LOG_INTERVAL_S:
            self._last_warned[reason] = now
            self._log.warning("%s", message)

    def _pending_locked(self) -> int:
        return (len(self._mem) + len(self._spool) + len(self._inflight)
                + self._spilling)

    def _idle_locked(self) -> bool:
        return self._pending_locked() == 0
