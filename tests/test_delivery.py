"""goprof.agent.delivery: ordered, non-blocking delivery to one sink, spooling to disk
while it is down. The sink here is a fake whose up/down state the test flips (the
real Parca and Pyroscope sinks are tested elsewhere)."""

from __future__ import annotations

import logging
import re
import subprocess
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from goprof.agent.delivery import Delivery
from goprof.agent.metrics import TimedSink
from goprof.exporters.sink import Sink, SinkError, SinkRejected, WindowProfile
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram

from tests.conftest import requires_root

FAST = {"retry_initial_s": 0.005, "retry_max_s": 0.02}
LOGGER = "goprof.agent.delivery"


class FakeSink(Sink):
    name = "fake"

    def __init__(self) -> None:
        self.up = True
        self.reject: set[int] = set()
        self.got: list[int] = []
        self.attempts: Counter[int] = Counter()

    def send(self, window: WindowProfile) -> None:
        self.attempts[window.sequence] += 1
        if window.sequence in self.reject:
            raise SinkRejected("400 invalid profile")
        if not self.up:
            raise SinkError("connection refused")
        self.got.append(window.sequence)

    def close(self) -> None:
        pass


class BatchSink(FakeSink):
    """Takes several windows per call, all or nothing, as Parca's WriteRaw does."""

    atomic_send_many = True

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[list[int]] = []

    def send_many(self, windows: list[WindowProfile]) -> None:
        seqs = [w.sequence for w in windows]
        self.calls.append(seqs)
        for seq in seqs:
            self.attempts[seq] += 1
        if self.reject & set(seqs):
            raise SinkRejected("400 one invalid profile in the request")
        if not self.up:
            raise SinkError("connection refused")
        self.got.extend(seqs)


class HangingSink(FakeSink):
    """send() blocks (up to 5 s) until released."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def send(self, window: WindowProfile) -> None:
        self.entered.set()
        self.release.wait(5)
        super().send(window)


def win(i: int, size: int = 100) -> WindowProfile:
    return WindowProfile(kind="cpu", labels={"service_name": "app", "pid": "42"},
                         start_ns=i * 10, end_ns=i * 10 + 10, pprof=b"p" * size, sequence=i)


def until(pred, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.002)
    return pred()


def spool_files(root: Path) -> list[str]:
    d = root / FakeSink.name
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


# "sink fake: [at stop: ]N window(s) dropped[ since the last report] (why); T dropped in total"
DROP_LINE = re.compile(
    r"^sink \w+: (?:at stop: )?(\d+) windows? dropped.*; (\d+) dropped in total$")
STOP_TOTAL = re.compile(r"^sink \w+: at stop: (\d+) dropped in total, none since")


def drop_lines(caplog) -> list[tuple[int, int]]:
    """(windows dropped since the line before, total) of each drop line logged."""
    return [(int(m[1]), int(m[2])) for r in caplog.records
            if (m := DROP_LINE.match(r.getMessage()))]


def stop_total(caplog) -> int | None:
    """The total that close()'s line states."""
    for r in reversed(caplog.records):
        msg = r.getMessage()
        if m := STOP_TOTAL.match(msg):
            return int(m[1])
        if msg.startswith("sink ") and "at stop: " in msg and (m := DROP_LINE.match(msg)):
            return int(m[2])
    return None


def go_down(d: Delivery, sink: FakeSink, first: int = 1) -> None:
    """Take the sink down and submit window `first`, so Delivery sees it down."""
    sink.up = False
    d.submit(win(first))
    assert until(lambda: not d.stats().up)


@pytest.mark.parametrize("spooled", [True, False], ids=["spool", "memory"])
def test_all_delivered_in_order_when_up(tmp_path, spooled):
    sink = FakeSink()
    # a burst: with a spool, memory overflows to it; without, memory must hold it
    d = Delivery(sink, spool_dir=tmp_path if spooled else None,
                 queue_size=4 if spooled else 64, **FAST)
    d.start()
    for i in range(1, 51):
        d.submit(win(i))
    assert d.wait_idle(5)
    assert sink.got == list(range(1, 51))
    s = d.stats()
    assert (s.delivered, s.attempts_failed, s.rejected, s.dropped) == (50, 0, 0, 0)
    assert (s.queued, s.spooled_windows, s.spooled_bytes) == (0, 0, 0)
    assert s.up and s.last_success_mono is not None and s.oldest_pending_age_s == 0.0
    d.close()
    assert spool_files(tmp_path) == []


def test_down_then_up_spools_and_delivers_in_order(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    sink = FakeSink()
    d = Delivery(sink, spool_dir=tmp_path, **FAST)
    d.start()
    go_down(d, sink)
    for i in range(2, 11):
        d.submit(win(i))
    # The worker writes them to disk (submit only queues them in memory).
    assert until(lambda: d.stats().spooled_windows == 10)
    files = spool_files(tmp_path)
    assert files == [f"{i:020d}.window" for i in range(1, 11)]
    s = d.stats()
    assert s.spooled_windows == 10 and s.queued == 0 and not s.up
    assert s.spooled_bytes == sum((tmp_path / "fake" / f).stat().st_size for f in files)
    assert until(lambda: d.stats().attempts_failed >= 3)  # several retries ...
    assert s.oldest_pending_age_s > 0
    sink.up = True
    assert d.wait_idle(5)
    assert sink.got == list(range(1, 11))
    assert spool_files(tmp_path) == []
    d.close()
    down = [r.message for r in caplog.records if " down: " in r.message]
    back = [r.message for r in caplog.records if " back after " in r.message]
    assert down == [f"sink fake down: connection refused; spooling windows to {tmp_path}/fake"]
    assert len(back) == 1 and back[0].endswith("delivering 9 spooled windows")  # ... one line each


def test_close_while_down_then_restart_delivers_everything(tmp_path):
    sink = FakeSink()
    d1 = Delivery(sink, spool_dir=tmp_path, queue_size=4, **FAST)
    d1.start()
    go_down(d1, sink)
    for i in range(2, 21):
        d1.submit(win(i))
    t0 = time.monotonic()
    d1.close(timeout_s=2)
    assert time.monotonic() - t0 < 1  # down: close does not wait for the timeout
    assert len(spool_files(tmp_path)) == 20
    assert sink.got == []

    sink.up = True
    d2 = Delivery(sink, spool_dir=tmp_path, queue_size=4, **FAST)
    assert d2.stats().spooled_windows == 20
    d2.start()
    for i in range(21, 26):
        d2.submit(win(i))
    assert d2.wait_idle(5)
    d2.close()
    assert sink.got == list(range(1, 26))
    assert spool_files(tmp_path) == []


def test_close_spools_what_is_still_in_memory(tmp_path):
    sink = FakeSink()
    d1 = Delivery(sink, spool_dir=tmp_path, queue_size=8, **FAST)  # never started
    for i in range(1, 6):
        d1.submit(win(i))
    assert d1.stats().queued == 5 and spool_files(tmp_path) == []
    d1.close()
    assert len(spool_files(tmp_path)) == 5
    d1.submit(win(6))  # after close: straight to the spool
    d2 = Delivery(sink, spool_dir=tmp_path, **FAST)
    d2.start()
    assert d2.wait_idle(5)
    d2.close()
    assert sink.got == [1, 2, 3, 4, 5, 6]


def test_close_without_spool_counts_what_is_lost():
    sink = FakeSink()
    d = Delivery(sink, spool_dir=None, queue_size=8, **FAST)
    d.start()
    go_down(d, sink)
    d.submit(win(2))
    d.close(timeout_s=1)
    s = d.stats()
    assert s.dropped == 2 and s.queued == 0


def test_spool_full_drops_new_windows_and_recovers(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    size = len(win(99, 1000).to_bytes())
    sink = FakeSink()
    d = Delivery(sink, spool_dir=tmp_path, spool_bytes=5 * size, **FAST)
    d.start()
    sink.up = False
    d.submit(win(1, 1000))
    assert until(lambda: not d.stats().up)
    for i in range(2, 21):
        d.submit(win(i, 1000))
    assert until(lambda: d.stats().queued == 0)  # all written or dropped by the worker
    s = d.stats()
    assert s.spooled_windows == 5 and s.spooled_bytes <= 5 * size
    assert s.dropped == 15
    drops = [r.message for r in caplog.records if DROP_LINE.match(r.message)]
    assert len(drops) == 1 and "spool" in drops[0] and "full" in drops[0]  # rate-limited
    assert drop_lines(caplog) == [(1, 1)]  # the first at once; the others wait their turn
    sink.up = True
    assert d.wait_idle(5)  # until the spool drains, new windows may find it full
    for i in range(21, 26):
        d.submit(win(i, 1000))
    assert d.wait_idle(5)
    d.close()
    assert sink.got == [1, 2, 3, 4, 5, 21, 22, 23, 24, 25]  # the oldest kept, in order
    assert d.stats().delivered + d.stats().dropped == 25
    assert drop_lines(caplog) == [(1, 1), (14, 15)]  # the rest, with the total, at stop


def test_memory_only_queue_full_drops_new_windows():
    sink = HangingSink()
    d = Delivery(sink, spool_dir=None, queue_size=3, **FAST)
    d.start()
    d.submit(win(1))
    assert sink.entered.wait(5)
    assert d.stats().queued == 1  # in flight
    for i in range(2, 8):
        d.submit(win(i))
    assert d.stats().dropped == 3  # 2..4 fit beside the one in flight (1), 5..7 do not
    assert d.stats().queued == 4
    sink.release.set()
    assert d.wait_idle(5)
    d.close()
    assert sink.got == [1, 2, 3, 4]


def test_unwritable_spool_keeps_windows_in_memory_then_drops_counted(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    sink = FakeSink()
    d = Delivery(sink, spool_dir=not_a_dir, queue_size=3,
                 retry_initial_s=0.005, retry_max_s=60)  # the spool is not retried
    d.start()
    go_down(d, sink)
    assert until(lambda: any("cannot write to the spool" in r.message
                             for r in caplog.records))
    for i in range(2, 6):
        d.submit(win(i))  # never raises
    s = d.stats()
    assert (s.queued, s.dropped, s.spooled_windows) == (3, 2, 0)  # memory holds 1..3
    sink.up = True
    assert until(lambda: sink.got == [1, 2, 3]), sink.got  # the worker kept probing
    d.submit(win(6))
    assert d.wait_idle(5)
    d.close()
    assert sink.got == [1, 2, 3, 6] and d.stats().dropped == 2


def test_corrupt_spool_file_is_dropped_others_delivered(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    spool = tmp_path / "fake"
    spool.mkdir()
    for i in range(1, 6):
        (spool / f"{i:020d}.window").write_bytes(win(i).to_bytes())
    (spool / f"{3:020d}.window").write_bytes(b"\x05\x00\x00\x00{bad}")  # not a record
    (spool / f"{4:020d}.window").write_bytes(b"\x01")  # torn
    (spool / f".{9:020d}.window.tmp").write_bytes(b"half")  # a write a crash cut short
    (spool / "README").write_text("not ours")
    sink = FakeSink()
    d = Delivery(sink, spool_dir=tmp_path, **FAST)
    assert not (spool / f".{9:020d}.window.tmp").exists()
    d.start()
    d.submit(win(6))
    assert d.wait_idle(5)
    d.close()
    assert sink.got == [1, 2, 5, 6]
    assert d.stats().dropped == 2 and d.stats().delivered == 4
    assert sorted(p.name for p in spool.iterdir()) == ["README"]
    assert sum("unreadable spool file" in r.message for r in caplog.records) == 2


def test_sequence_resumes_after_existing_files(tmp_path):
    spool = tmp_path / "fake"
    spool.mkdir()
    (spool / f"{41:020d}.window").write_bytes(win(1).to_bytes())
    sink = FakeSink()
    sink.up = False
    d = Delivery(sink, spool_dir=tmp_path, **FAST)
    d.submit(win(2))  # the spool is non-empty: goes behind the existing file
    d.close()
    assert spool_files(tmp_path) == [f"{41:020d}.window", f"{42:020d}.window"]


def test_rejected_is_not_retried(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    sink = FakeSink()
    sink.reject = {3}
    d = Delivery(sink, spool_dir=tmp_path, **FAST)
    d.start()
    for i in range(1, 6):
        d.submit(win(i))
    assert d.wait_idle(5)
    time.sleep(0.05)
    d.close()
    assert sink.got == [1, 2, 4, 5]
    assert sink.attempts[3] == 1
    s = d.stats()
    assert (s.delivered, s.rejected, s.dropped, s.attempts_failed) == (4, 1, 0, 0)
    assert s.up
    assert any("rejected window" in r.message for r in caplog.records)


@pytest.mark.parametrize("spooled", [True, False], ids=["spool", "memory"])
def test_submit_never_blocks_on_a_hanging_sink(tmp_path, spooled):
    sink = HangingSink()
    d = Delivery(sink, spool_dir=tmp_path if spooled else None, queue_size=16, **FAST)
    d.start()
    try:
        t0 = time.monotonic()
        for i in range(1, 101):
            d.submit(win(i))
        elapsed = time.monotonic() - t0
        # memory: microseconds; spool: ~84 fsync'd file writes, a few ms each
        assert elapsed < (1.0 if spooled else 0.2), elapsed
        t0 = time.monotonic()
        d.close(timeout_s=0.2)
        assert time.monotonic() - t0 < 1
        if spooled:
            # everything pending is on disk, the window stuck in flight included
            assert len(spool_files(tmp_path)) == 100
            sink.release.set()
            # that send then succeeds: its file goes, so a restart does not resend it
            assert until(lambda: len(spool_files(tmp_path)) == 99)
            assert sink.got == [1]
            assert spool_files(tmp_path)[0] == f"{2:020d}.window"
        else:
            # 1 in flight, 2..17 in memory (lost at close), 18..100 found memory full
            assert d.stats().dropped == 99
            sink.release.set()
            assert until(lambda: d.stats().delivered == 1)
            assert sink.got == [1] and d.stats().dropped == 99
    finally:
        sink.release.set()


def test_a_batching_sink_gets_a_round_of_windows_in_few_requests(tmp_path):
    sink = BatchSink()
    d = Delivery(sink, spool_dir=tmp_path, **FAST)
    for i in range(1, 201):  # a round from 200 processes, made before the worker runs
        d.submit(win(i))
    d.start()
    assert d.wait_idle(5)
    d.close()
    assert sink.got == list(range(1, 201))
    assert [len(c) for c in sink.calls] == [64, 64, 64, 8]
    assert d.stats().delivered == 200


def test_a_refused_batch_is_resent_one_by_one_and_only_the_bad_window_dropped(tmp_path):
    sink = BatchSink()
    sink.reject = {5}
    d = Delivery(sink, spool_dir=tmp_path, **FAST)
    for i in range(1, 11):
        d.submit(win(i))
    d.start()
    assert d.wait_idle(5)
    d.close()
    assert sink.got == [1, 2, 3, 4, 6, 7, 8, 9, 10]
    assert sink.attempts[5] == 2 and sink.attempts[6] == 2  # in the batch, then alone
    s = d.stats()
    assert (s.delivered, s.rejected, s.dropped) == (9, 1, 0)



def test_timed_sink_batches_exactly_as_the_sink_it_wraps(tmp_path):
    registry = CollectorRegistry()
    latency = Histogram("latency", "", ["sink"], registry=registry)
    batch, plain = BatchSink(), FakeSink()
    assert TimedSink(batch, latency).atomic_send_many
    assert not TimedSink(plain, latency).atomic_send_many
    TimedSink(plain, latency).send_many([win(1), win(2)])  # the default: send() each
    assert plain.got == [1, 2]
    d = Delivery(TimedSink(batch, latency), spool_dir=tmp_path, **FAST)
    for i in range(1, 71):
        d.submit(win(i))
    d.start()
    assert d.wait_idle(5)
    d.close()
    assert [len(c) for c in batch.calls] == [64, 6]
    assert registry.get_sample_value("latency_count", {"sink": "fake"}) == 2 + 70

# -- a random schedule of submits, outages and restarts --------------------------

OPS = st.lists(st.sampled_from(["submit"] * 6 + ["up", "down", "pause", "restart"]),
               max_size=60)


@settings(max_examples=40, deadline=None)
@given(ops=OPS, spooled=st.booleans(), queue_size=st.integers(1, 4),
       spool_windows=st.sampled_from([2, 5, 1000]), batching=st.booleans())
def test_random_schedule_delivers_in_order(ops, spooled, queue_size, spool_windows,
                                           batching):
    with tempfile.TemporaryDirectory() as tmp:
        sink = BatchSink() if batching else FakeSink()
        spool_bytes = spool_windows * len(win(10**6).to_bytes())

        def new() -> Delivery:
            d = Delivery(sink, spool_dir=Path(tmp) if spooled else None,
                         queue_size=queue_size, spool_bytes=spool_bytes,
                         retry_initial_s=0.001, retry_max_s=0.003)
            d.start()
            return d

        d = new()
        submitted = dropped = 0
        for op in ops:
            if op == "submit":
                submitted += 1
                d.submit(win(submitted))
            elif op == "up":
                sink.up = True
            elif op == "down":
                sink.up = False
            elif op == "pause":
                time.sleep(0.003)
            else:
                d.close(timeout_s=1)
                dropped += d.stats().dropped
                d = new()
        sink.up = True
        assert d.wait_idle(5)
        d.close()
        dropped += d.stats().dropped

        got = sink.got
        assert all(a < b for a, b in zip(got, got[1:], strict=False)), got
        assert set(got) <= set(range(1, submitted + 1))
        assert len(got) + dropped == submitted
        if spooled and spool_windows == 1000:
            assert got == list(range(1, submitted + 1))  # nothing dropped: all of them


# -- drops: every one counted in the log, rate-limited, the total at stop ----------


@pytest.fixture
def full_disk(tmp_path):
    """A 64 KiB tmpfs: the spool's disk, full after a few windows."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


@requires_root
def test_full_disk_drops_are_all_in_the_log_with_the_total_at_stop(full_disk, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    sink = FakeSink()
    d = Delivery(sink, spool_dir=full_disk, queue_size=3, retry_initial_s=0.005,
                 retry_max_s=0.02)  # the spool is tried again (and fails) every 20 ms
    d.start()
    go_down(d, sink)
    for i in range(2, 61):
        d.submit(win(i, 10_000))  # six fit on the 64 KiB disk
        time.sleep(0.002)
    d.close(timeout_s=1)
    s = d.stats()
    assert s.spooled_windows + s.dropped == 60 and s.queued == 0
    assert s.dropped >= 40, s  # the disk held only a few
    lines = drop_lines(caplog)
    assert sum(n for n, _ in lines) == s.dropped, lines  # the log accounts for every drop
    assert [t for _, t in lines] == sorted(t for _, t in lines) and lines[-1][1] == s.dropped
    assert stop_total(caplog) == s.dropped
    assert len(lines) <= 3, lines  # the first at once, then at most one a minute, at stop
    reasons = " ".join(r.getMessage() for r in caplog.records if DROP_LINE.match(r.getMessage()))
    assert "No space left on device" in reasons or "memory queue full" in reasons, reasons


def test_drop_lines_come_due_without_another_drop_and_add_up(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    sink = FakeSink()
    d = Delivery(sink, spool_dir=None, queue_size=2, drop_log_interval_s=0.2, **FAST)
    d.start()
    go_down(d, sink)  # window 1 in memory, the sink down: memory holds one more
    for i in range(2, 8):
        d.submit(win(i))  # 2 fits, 3..7 are dropped: one line at once, four wait
    assert drop_lines(caplog) == [(1, 1)]
    # No further drop: the worker writes the waiting line once it is due.
    assert until(lambda: len(drop_lines(caplog)) == 2, 5), drop_lines(caplog)
    assert drop_lines(caplog)[1] == (4, 5)
    assert "since the last report" in caplog.records[-1].getMessage()
    d.submit(win(8))
    d.close(timeout_s=0.1)  # 1 and 2 are lost with no spool; 8 waits at stop
    s = d.stats()
    assert s.dropped == 8
    lines = drop_lines(caplog)
    assert sum(n for n, _ in lines) == 8 and lines[-1][1] == 8, lines
    assert stop_total(caplog) == 8
    assert "undelivered at shutdown" in caplog.records[-1].getMessage()


def test_the_stop_line_states_the_total_when_nothing_is_left_to_report(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    sink = FakeSink()
    d = Delivery(sink, spool_dir=None, queue_size=1, **FAST)  # never started
    d.submit(win(1))
    d.submit(win(2))  # memory full: dropped, its line at once
    assert drop_lines(caplog) == [(1, 1)]
    sink_lines = len(caplog.records)
    d.close(timeout_s=0.1)  # window 1 lost: no spool
    assert drop_lines(caplog) == [(1, 1), (1, 2)]
    assert stop_total(caplog) == 2 and len(caplog.records) == sink_lines + 1
    d.submit(win(3))  # after close: its own line at once
    assert drop_lines(caplog)[-1] == (1, 3)
