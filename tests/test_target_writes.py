"""goprof's writes into a target's runtime are owned, shared and put back (issue 14):
two `goprof mem --go-sampler` sessions on one process both get their whole run; a goprof
killed with -9 leaves a record that the next goprof (or `goprof reset`) puts back.

The state-file tests write into a real process (a Python child holding an int64 whose
address it prints) from real holder processes (Python children that hold, then release
or get killed); the session tests run goprof against a Go program whose heap sampler is
off (tests/fixtures/allocsteady, which allocates at a known steady rate)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from goprof.golang.process import inspect
from goprof.golang.writes import Proc, RuntimeVar, TargetWrites, image_of
from goprof.symbolizer import BinaryCache
from goprof.targets import target_for_pid

from tests import gobuild
from tests.conftest import requires_root
from tests.helpers import REPO, as_nobody, goprof_command, read_pprof, run_goprof, wait_ready
from tests.test_agent import Agent

pytestmark = requires_root
VAR = "runtime.MemProfileRate"

# -- a real process with a variable, and real holders ---------------------------------
TARGET = """
import ctypes, sys
v = ctypes.c_int64(0)
print("ready", ctypes.addressof(v), flush=True)
for line in sys.stdin:
    cmd = line.split()
    if cmd[0] == "set":
        v.value = int(cmd[1])
    print(v.value, flush=True)
"""

# Holds VAR at the given address with the given value, prints what hold() said, then on a
# line of stdin releases and prints release()'s notes.
HOLDER = """
import json, sys
from pathlib import Path
from goprof.golang.writes import RuntimeVar, TargetWrites
pid, address, value, directory = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
w = TargetWrites(pid, "target", Path(directory))
var = RuntimeVar("runtime.MemProfileRate", address)
h = w.hold(var, value)
print(json.dumps({"value": h.value, "held": h.held, "wrote": h.wrote, "notes": h.notes}),
      flush=True)
sys.stdin.readline()
print(json.dumps(w.release(var)), flush=True)
"""


class Target:
    def __init__(self) -> None:
        self.p = subprocess.Popen([sys.executable, "-c", TARGET], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        assert self.p.stdout is not None
        self.address = int(self.p.stdout.readline().split()[1])
        self.pid = self.p.pid
        self.var = RuntimeVar(VAR, self.address)

    def value(self, set_to: int | None = None) -> int:
        """The variable as the program itself sees it (and sets it)."""
        assert self.p.stdin is not None and self.p.stdout is not None
        self.p.stdin.write("get\n" if set_to is None else f"set {set_to}\n")
        self.p.stdin.flush()
        return int(self.p.stdout.readline())

    def writes(self, directory: Path) -> TargetWrites:
        return TargetWrites(self.pid, "target", directory)

    def close(self) -> None:
        self.p.kill()
        self.p.wait()


class Holder:
    def __init__(self, target: Target, value: int, directory: Path) -> None:
        self.p = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(target.pid), str(target.address), str(value),
             str(directory)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            cwd=REPO)
        assert self.p.stdout is not None
        line = self.p.stdout.readline()
        assert line, f"holder failed: {self.p.wait()}"
        self.hold = json.loads(line)

    def release(self) -> list[str]:
        out, _ = self.p.communicate("release\n", timeout=30)
        assert self.p.returncode == 0
        return json.loads(out)

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait()


@pytest.fixture
def target():
    t = Target()
    yield t
    t.close()


def records(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.json"))


# -- the state file --------------------------------------------------------------------
def test_holders_share_and_the_last_puts_back(target, tmp_path):
    a = Holder(target, 100, tmp_path)
    b = None
    try:
        assert a.hold == {"value": 100, "held": True, "wrote": True, "notes": []}
        assert target.value() == 100
        b = Holder(target, 200, tmp_path)  # joins: no write, keeps a's value, says so
        assert (b.hold["value"], b.hold["held"], b.hold["wrote"]) == (100, True, False)
        assert any("kept, not 200" in n and str(a.p.pid) in n for n in b.hold["notes"])
        assert target.value() == 100
        assert a.release() == []
        assert target.value() == 100, "the first holder to end turned it off under the other"
        assert b.release() == []
        assert target.value() == 0
        assert records(tmp_path) == []
    finally:
        for h in (a, b):
            if h:
                h.kill()


def test_killed_holder_is_put_back_and_said(target, tmp_path):
    a = Holder(target, 100, tmp_path)
    a.kill()
    assert target.value() == 100
    assert len(records(tmp_path)) == 1
    notes = target.writes(tmp_path).restore_stale()
    assert target.value() == 0
    assert len(notes) == 1 and f"pid {a.p.pid}" in notes[0] and "put back to 0" in notes[0]
    assert records(tmp_path) == []
    assert target.writes(tmp_path).restore_stale() == []  # said once


def test_a_new_holder_after_a_killed_one_writes_afresh(target, tmp_path):
    """The killed goprof's 100 is not taken for the program's own rate: put back, and the
    new holder's write records 0 as the old value."""
    a = Holder(target, 100, tmp_path)
    a.kill()
    b = Holder(target, 300, tmp_path)
    try:
        assert (b.hold["value"], b.hold["wrote"]) == (300, True)
        assert any("killed" in n for n in b.hold["notes"])
        assert b.release() == []
        assert target.value() == 0
    finally:
        b.kill()


def test_a_reused_pid_is_not_a_live_holder(target, tmp_path):
    """A holder whose pid now names another process (start time differs) is dead."""
    me = Proc.of(os.getpid())
    assert me is not None
    w = target.writes(tmp_path)
    target.value(set_to=100)
    w.path.write_text(json.dumps({"vars": {VAR: {
        "address": target.address, "old": 0, "written": 100, "image": image_of(target.pid),
        "holders": [[me.pid, me.start_ticks + 1]]}}}))
    notes = w.restore_stale()
    assert target.value() == 0 and len(notes) == 1 and "put back to 0" in notes[0]


def test_a_record_of_an_image_before_an_exec_is_never_written(target, tmp_path):
    """An exec keeps the pid and start time, not the variable's address: a record written
    in another image is dropped, the memory at its address left alone."""
    w = target.writes(tmp_path)
    target.value(set_to=100)  # what the new program happens to hold there
    w.path.write_text(json.dumps({"vars": {VAR: {
        "address": target.address, "old": 0, "written": 100, "image": "1:2@400000",
        "holders": [[999999999, 1]]}}}))
    assert w.restore_stale() == []
    assert target.value() == 100 and not w.path.exists()


def test_a_value_the_program_changed_itself_is_left(target, tmp_path):
    a = Holder(target, 100, tmp_path)
    try:
        target.value(set_to=4096)  # the program sets its own rate while goprof holds one
        notes = a.release()
        assert target.value() == 4096
        assert len(notes) == 1 and "changed it itself" in notes[0]
        assert records(tmp_path) == []
    finally:
        a.kill()
    # and the same for a killed holder's record
    b = Holder(target, 100, tmp_path)  # 4096 is the program's: not written, not held
    assert (b.hold["value"], b.hold["held"]) == (4096, False)
    b.kill()
    target.value(set_to=0)
    c = Holder(target, 100, tmp_path)
    c.kill()
    target.value(set_to=8192)
    notes = target.writes(tmp_path).restore_stale()
    assert target.value() == 8192 and "changed it itself" in notes[0]
    assert records(tmp_path) == []


@pytest.mark.parametrize("content", [
    "{not json", "[]", '{"vars": 3}', '{"vars": {"x": {"address": "a"}}}',
    '{"vars": {"x": {"address": 1, "old": 0, "written": 1, "holders": [[1]]}}}',
    '{"vars": {"x": {"address": 1, "old": 0, "written": 1.5, "holders": []}}}'])
def test_an_unreadable_state_file_is_treated_as_absent(target, tmp_path, content):
    w = target.writes(tmp_path)
    w.path.write_text(content)
    notes = w.restore_stale()
    assert len(notes) == 1 and "unreadable" in notes[0] and "treated as none" in notes[0]
    h = w.hold(target.var, 100)  # and a write still works, recorded afresh
    assert (h.value, h.wrote) == (100, True)
    assert '"written": 100' in w.path.read_text()
    assert w.release(target.var) == []
    assert target.value() == 0 and not w.path.exists()


def test_an_unusable_state_dir_still_writes_and_puts_back(target):
    w = target.writes(Path("/proc/goprof-cannot-exist/writes"))
    h = w.hold(target.var, 100)
    assert (h.value, h.held, h.wrote) == (100, True, True)
    assert len(h.notes) == 1 and "cannot record" in h.notes[0]
    assert target.value() == 100
    assert w.release(target.var) == []
    assert target.value() == 0


def test_reset_refuses_live_holders_unless_forced(target, tmp_path):
    a = Holder(target, 100, tmp_path)
    try:
        notes, refused = target.writes(tmp_path).reset(force=False)
        assert notes == [] and [h.pid for h in refused[VAR]] == [a.p.pid]
        assert target.value() == 100
        notes, refused = target.writes(tmp_path).reset(force=True)
        assert refused == {} and "put back" in notes[0] and target.value() == 0
        assert any("gone" in n for n in a.release())  # the holder is told, writes nothing
        assert target.value() == 0
    finally:
        a.kill()


# -- goprof sessions on a Go program ------------------------------------------------------
@pytest.fixture(scope="module")
def steady() -> gobuild.GoBinary:
    return gobuild.build("allocsteady", "go1.26", "pie")


def go_rate(pid: int) -> int | None:
    return inspect(target_for_pid(pid), BinaryCache()).read_rate()


def start_target(binary: gobuild.GoBinary) -> subprocess.Popen:
    p = subprocess.Popen([str(binary.path), "-duration", "120s"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    wait_ready(p)
    assert go_rate(p.pid) == 0, "the fixture's heap sampler must start off"
    return p


def start_goprof(args: list[str]) -> tuple[subprocess.Popen, list[str]]:
    """A goprof started and seen recording; its stderr lines so far."""
    p = subprocess.Popen([*goprof_command(), *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200"})
    assert p.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = p.stderr.readline()
        if not line and p.poll() is not None:
            raise AssertionError(f"goprof exited {p.returncode}:\n" + "".join(lines))
        lines.append(line)
        if "goprof: recording" in line:
            return p, lines
    raise AssertionError("goprof never started recording:\n" + "".join(lines))


def finish(p: subprocess.Popen, lines: list[str]) -> str:
    _, err = p.communicate(timeout=120)
    text = "".join(lines) + err
    assert p.returncode == 0, text
    return text


def bytes_per_second(path: Path) -> float:
    prof = read_pprof(path)
    types = [prof.string_table[st.type] for st in prof.sample_type]
    i = types.index("alloc_space")
    return sum(s.value[i] for s in prof.sample) / (prof.duration_nanos / 1e9)


def stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.kill()
    p.wait()


def test_overlapping_go_sampler_sessions_both_get_their_whole_run(tmp_path, steady):
    target = start_target(steady)
    first = second = None
    try:
        a_out, b_out = tmp_path / "a.pb.gz", tmp_path / "b.pb.gz"
        first, a_lines = start_goprof(["mem", "--pid", str(target.pid), "-d", "6s",
                                       "--go-sampler", "--rate", "65536", "-o", str(a_out)])
        time.sleep(2)
        second, b_lines = start_goprof(["mem", "--pid", str(target.pid), "-d", "8s",
                                        "--go-sampler", "--rate", "65536", "-o", str(b_out)])
        a_err = finish(first, a_lines)
        # The first has ended; the second still records: the sampler must still be on.
        assert second.poll() is None, "the second session should still be recording"
        assert go_rate(target.pid) == 65536
        b_err = finish(second, b_lines)
        assert go_rate(target.pid) == 0, "the last session to end puts the old value back"
        assert target.poll() is None
    finally:
        for p in (first, second, target):
            if p:
                stop(p)
    assert "turned Go's heap sampler on" in a_err
    assert "turned on by another goprof" in b_err and "shared" in b_err
    # The fixture allocates 16 MiB a second throughout. The second session spent about
    # half its run after the first ended: had the first turned the sampler off, it would
    # show about half the first's bytes a second.
    a_rate, b_rate = bytes_per_second(a_out), bytes_per_second(b_out)
    assert 0.75 < b_rate / a_rate < 1.33, (a_rate, b_rate)
    assert 0.6 < a_rate / (16 << 20) < 1.4, a_rate


def holder_pids(record: Path) -> list[int]:
    return [h[0] for h in json.loads(record.read_text())["vars"][VAR]["holders"]]


def test_sigterm_and_the_target_exiting_release(tmp_path, steady):
    """One session stopped by SIGTERM leaves the other's sampler on; the other, ended by
    the target's exit, leaves no record behind."""
    target = subprocess.Popen([str(steady.path), "-duration", "10s"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    first = second = None
    try:
        wait_ready(target)
        record = TargetWrites(target.pid, "target").path
        args = ["mem", "--pid", str(target.pid), "-d", "60s", "--go-sampler"]
        first, a_lines = start_goprof([*args, "-o", str(tmp_path / "a.pb.gz")])
        second, b_lines = start_goprof([*args, "-o", str(tmp_path / "b.pb.gz")])
        assert holder_pids(record) == [first.pid, second.pid]
        first.send_signal(signal.SIGTERM)
        assert "stopped by SIGTERM" in finish(first, a_lines)
        assert go_rate(target.pid) == 512 * 1024, "SIGTERM on one turned the other's off"
        assert holder_pids(record) == [second.pid]
        assert "every target exited" in finish(second, b_lines)
        assert not record.exists()
    finally:
        for p in (first, second, target):
            if p:
                stop(p)


def kill_a_go_sampler_session(target: subprocess.Popen, tmp_path: Path) -> int:
    goprof, _ = start_goprof(["mem", "--pid", str(target.pid), "-d", "60s", "--go-sampler",
                              "-o", str(tmp_path / "killed.pb.gz")])
    goprof.kill()
    goprof.wait()
    assert go_rate(target.pid) == 512 * 1024, "a killed goprof cannot put the rate back"
    return goprof.pid


def test_next_goprof_mem_puts_back_what_a_killed_one_left(tmp_path, steady):
    target = start_target(steady)
    try:
        killed = kill_a_go_sampler_session(target, tmp_path)
        res = run_goprof("mem", "--pid", str(target.pid), "-d", "1s",
                         "-o", str(tmp_path / "next.pb.gz"))
        assert res.returncode == 0, res.stderr
        assert f"pid {killed}" in res.stderr and "put back to 0" in res.stderr, res.stderr
        # put back before the method was chosen: the sampler was not the program's
        assert "method span" in res.stderr, res.stderr
        assert go_rate(target.pid) == 0
    finally:
        stop(target)


def test_the_agent_puts_back_what_a_killed_goprof_left(tmp_path, steady):
    """Else the agent takes the rate for the program's own and picks go-sampler."""
    target = start_target(steady)
    agent = None
    try:
        killed = kill_a_go_sampler_session(target, tmp_path)
        agent = Agent("--pid", str(target.pid), "--mem", "--output-dir", str(tmp_path / "out"))
        picked = agent.wait_log("process picked up", pid=target.pid)
        assert picked["mem_method"] == "span", picked
        note = agent.wait_log("a goprof that ended", prefix=True, pid=target.pid)
        assert f"pid {killed}" in note["msg"] and "put back to 0" in note["msg"], note
        assert go_rate(target.pid) == 0
        assert agent.stop() == 0
    finally:
        if agent and agent.proc.poll() is None:
            agent.proc.kill()
            agent.proc.wait()
        stop(target)


def test_the_agent_does_not_build_on_a_rate_a_running_goprof_turned_on(tmp_path, steady):
    """The rate is on only for that session: go-sampler would see nothing once it ends,
    so the agent takes span (and the session still puts the rate back)."""
    target = start_target(steady)
    goprof = agent = None
    try:
        goprof, lines = start_goprof(["mem", "--pid", str(target.pid), "-d", "60s",
                                      "--go-sampler", "-o", str(tmp_path / "m.pb.gz")])
        assert go_rate(target.pid) == 512 * 1024
        agent = Agent("--pid", str(target.pid), "--mem", "--output-dir", str(tmp_path / "out"))
        picked = agent.wait_log("process picked up", pid=target.pid)
        assert picked["mem_method"] == "span", picked
        assert agent.stop() == 0
        goprof.send_signal(signal.SIGINT)
        finish(goprof, lines)
        assert go_rate(target.pid) == 0
    finally:
        if agent and agent.proc.poll() is None:
            agent.proc.kill()
            agent.proc.wait()
        for p in (goprof, target):
            if p:
                stop(p)


def test_goprof_reset_puts_back_what_a_killed_one_left(tmp_path, steady):
    target = start_target(steady)
    try:
        killed = kill_a_go_sampler_session(target, tmp_path)
        res = run_goprof("reset", "--pid", str(target.pid))
        assert res.returncode == 0, res.stderr
        assert f"pid {killed}" in res.stderr and "put back to 0" in res.stderr, res.stderr
        assert go_rate(target.pid) == 0
        res = run_goprof("reset", "--pid", str(target.pid))
        assert res.returncode == 0 and "nothing to reset" in res.stderr, res.stderr
    finally:
        stop(target)


def test_goprof_reset_refuses_a_running_session_unless_forced(tmp_path, steady):
    target = start_target(steady)
    goprof = None
    try:
        goprof, lines = start_goprof(["mem", "--pid", str(target.pid), "-d", "60s",
                                      "--go-sampler", "-o", str(tmp_path / "m.pb.gz")])
        res = run_goprof("reset", "--pid", str(target.pid))
        assert res.returncode == 2 and f"goprof pid {goprof.pid}" in res.stderr, res.stderr
        assert "--force" in res.stderr and len(res.stderr.strip().splitlines()) == 1
        assert go_rate(target.pid) == 512 * 1024
        res = run_goprof("reset", "--pid", str(target.pid), "--force")
        assert res.returncode == 0 and "put back" in res.stderr, res.stderr
        assert go_rate(target.pid) == 0
        goprof.send_signal(signal.SIGINT)
        err = finish(goprof, lines)
        assert "gone" in err and go_rate(target.pid) == 0
    finally:
        for p in (goprof, target):
            if p:
                stop(p)


def test_goprof_reset_bad_pid_or_not_root_is_one_line():
    res = run_goprof("reset", "--pid", "999999999")
    assert res.returncode == 2 and "no process with pid" in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    # read_code: goprof's own check runs even from a checkout nobody cannot read
    res = subprocess.run(as_nobody(*goprof_command(), "reset", "--pid", str(os.getpid()),
                                   read_code=True),
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "HOME": "/tmp", "COLUMNS": "200"})
    assert res.returncode == 2 and "run it as root" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
