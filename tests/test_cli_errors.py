"""Bad input gets one clear line, exit code 2, and never a traceback."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from goprof import cli
from goprof.durations import parse_duration, parse_size
from goprof.errors import EnvironmentProblem, UsageError
from goprof.kinds.mem.session import EXACT_SLOWDOWN
from goprof.targets import target_for_pid

from tests import gobuild
from tests.conftest import requires_root
from tests.helpers import NOBODY, REPO, as_nobody, goprof_command, run_goprof, write_launcher


def _one_clear_line(res: subprocess.CompletedProcess, *words: str) -> None:
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert "Traceback" not in res.stderr
    err = " ".join(res.stderr.split())
    for w in words:
        assert w in err, (w, res.stderr)


@pytest.mark.parametrize("args,words", [
    (["cpu"], ["nothing to profile"]),
    (["cpu", "--pid", "1", "-F", "0"], ["--frequency 0"]),
    (["cpu", "--pid", "1", "-d", "soon"], ["--duration 'soon'"]),
    # a negative value as its own item: goprof's message, not argparse's "expected one
    # argument" (`--duration=-3s` always got goprof's)
    (["cpu", "--pid", "1", "-d", "-3s"], ["--duration '-3s': must be more than zero"]),
    (["mem", "--pid", "1", "--duration", "-1m", "-o", "-"], ["--duration '-1m': must be"]),
    (["cpu", "--pid", "1", "-d", "-inf"], ["--duration '-inf': use a number with a unit"]),
    (["agent", "--output-dir", "/tmp", "--window", "-1s"], ["--window '-1s': must be more"]),
    (["agent", "--output-dir", "/tmp", "--mem-rate", "-512K"], ["--mem-rate '-512K': must"]),
    (["agent", "--output-dir", "/tmp", "--retain", "-7d"], ["--retain '-7d': must be more"]),
    (["cpu", "--pid", "1", "-o", "/no/such/dir/x.pb.gz"], ["does not exist"]),
    (["cpu", "--pid", "1", "-o", "x.dat"], ["cannot tell the format"]),
])
def test_usage_errors(args, words):
    _one_clear_line(run_goprof(*args), *words)


def test_unknown_format_is_an_argparse_error():
    res = run_goprof("cpu", "--pid", "1", "--format", "svg")
    assert res.returncode == 2 and "invalid choice" in res.stderr


@requires_root
def test_no_such_pid():
    pid = 4_000_000  # above pid_max's default ceiling
    _one_clear_line(run_goprof("cpu", "--pid", str(pid), "-d", "1s"), f"no process with pid {pid}")


@requires_root
def test_thread_id_is_refused():
    tids = [int(t) for t in os.listdir("/proc/1/task")]
    other = next((int(t) for p in os.listdir("/proc") if p.isdigit()
                  for t in os.listdir(f"/proc/{p}/task") if int(t) != int(p)), None)
    if other is None:
        pytest.skip(f"no multi-threaded process found (pid 1 has {len(tids)} threads)")
    _one_clear_line(run_goprof("cpu", "--pid", str(other), "-d", "1s"), "is a thread of process")


@requires_root
def test_kernel_thread_is_refused():
    _one_clear_line(run_goprof("cpu", "--pid", "2", "-d", "1s"),
                    "pid 2 (kthreadd) is a kernel thread: there is no user program")


def test_zombie_is_refused_as_a_zombie():
    child = os.fork()
    if child == 0:
        os._exit(0)
    try:
        deadline = time.monotonic() + 10
        while stat_state(child) != "Z" and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(EnvironmentProblem, match=rf"pid {child} \(.*\) is a zombie"):
            target_for_pid(child)
    finally:
        os.waitpid(child, 0)


def stat_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
def test_a_live_process_whose_exe_is_refused_is_not_called_a_kernel_thread():
    """Another user's process (as pid 1 is to a container without ptrace rights over
    it): the line says what was refused, not "kernel thread or zombie"."""
    owner = subprocess.Popen(["sleep", "60"])  # root's
    try:
        res = subprocess.run(
            as_nobody(sys.executable, "-c", "from goprof import targets; "
                      f"targets.target_for_pid({owner.pid})", read_code=True),
            capture_output=True, text=True, timeout=60, env={**os.environ, "HOME": "/tmp"})
    finally:
        owner.kill()
        owner.wait()
    err = res.stderr.strip().splitlines()[-1]
    assert err.startswith("goprof.errors.EnvironmentProblem: "), res.stderr
    assert f"cannot read /proc/{owner.pid}/exe: Permission denied: pid {owner.pid} (sleep) " \
           "is running" in err and "run goprof as root" in err, err
    assert "kernel thread" not in err and "zombie" not in err, err


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
def test_nobody_who_may_read_the_code_is_still_not_root():
    """as_nobody(read_code=True), which the tests use to run goprof's Python from a
    checkout other users cannot read, changes nothing goprof checks: its privilege check
    says "not root", and another user's /proc/PID/exe and maps stay refused, as for
    nobody without any capability."""
    res = subprocess.run(
        as_nobody(sys.executable, "-c", "from goprof.targets import check_privileges; "
                  "check_privileges()", read_code=True),
        capture_output=True, text=True, timeout=60, env={**os.environ, "HOME": "/tmp"})
    assert res.returncode == 1 and "goprof.errors.EnvironmentProblem: " in res.stderr \
        and "run it as root" in res.stderr, res.stderr
    owner = subprocess.Popen(["sleep", "60"])  # root's
    try:
        script = (f"readlink -v /proc/{owner.pid}/exe; echo exe=$?; "
                  f"head -c1 /proc/{owner.pid}/maps; echo maps=$?")
        outs = [subprocess.run(as_nobody("sh", "-c", script, read_code=read_code),
                               capture_output=True, text=True, timeout=60)
                for read_code in (False, True)]
    finally:
        owner.kill()
        owner.wait()
    for out in outs:
        assert "exe=1" in out.stdout and "maps=1" in out.stdout, out
        assert out.stderr.count("Permission denied") == 2, out.stderr


@requires_root
def test_missing_command():
    _one_clear_line(run_goprof("cpu", "-d", "1s", "--", "/no/such/program"), "cannot start")


@pytest.fixture
def open_dir():
    """A folder everyone may enter (pytest's tmp_path is under a 0700 folder of root's)."""
    with tempfile.TemporaryDirectory(prefix="goprof-test-") as d:
        os.chmod(d, 0o755)
        yield Path(d)


def _nobody_runs(argv: list[str], read_code: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(as_nobody(*argv, read_code=read_code), capture_output=True,
                          text=True, timeout=60, env={**os.environ, "HOME": "/tmp"})


def _not_root_line() -> str:
    """goprof's own line for a user without root (goprof.targets.check_privileges)."""
    from unittest import mock

    from goprof import targets

    with mock.patch.object(os, "geteuid", return_value=NOBODY), \
            mock.patch.object(targets, "_effective_caps", return_value=0), \
            pytest.raises(EnvironmentProblem) as e:
        targets.check_privileges()
    return f"goprof: {e.value}"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
def test_not_root(open_dir):
    """What users run: the launcher `make setup` installs as /usr/local/bin/goprof, for
    this checkout (whose code nobody may or may not be able to read: a clone under /root
    is not readable)."""
    goprof = Path(goprof_command()[0])
    assert goprof.name == "goprof", "no .venv/bin/goprof: run `sudo make setup`"
    launcher = write_launcher(goprof, open_dir / "goprof")
    _one_clear_line(_nobody_runs([str(launcher), "cpu", "--pid", "1", "-d", "1s"]),
                    "run it as root", "CAP_BPF")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
def test_not_root_goprof_itself():
    """goprof's own check, run from this checkout wherever it is (read_code)."""
    _one_clear_line(_nobody_runs([*goprof_command(), "cpu", "--pid", "1", "-d", "1s"],
                                 read_code=True), "run it as root", "CAP_BPF")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
def test_launcher_for_a_checkout_others_cannot_read(open_dir):
    """The launcher pointed at this checkout through a folder only root may enter (as a
    clone under /root is): nobody gets goprof's own not-root line and exit code 2, not
    Python's "can't open file"; nobody with goprof's capabilities is told the code is
    unreadable; root, and nobody allowed to read it, run goprof itself."""
    closed = open_dir / "closed"
    closed.mkdir(mode=0o700)
    (closed / "checkout").symlink_to(REPO)
    goprof = closed / "checkout" / Path(goprof_command()[0]).relative_to(REPO)
    launcher = write_launcher(goprof, open_dir / "goprof")
    assert launcher.stat().st_mode & 0o777 == 0o755

    res = _nobody_runs([str(launcher), "cpu", "--pid", "1", "-d", "1s"])
    _one_clear_line(res, "run it as root", "CAP_BPF")
    assert res.stderr.strip() == _not_root_line() and not res.stdout, res.stderr
    res = _nobody_runs([str(launcher), "--version"])
    assert res.returncode == 2 and res.stderr.strip() == _not_root_line(), res.stderr

    caps = "-all,+bpf,+perfmon"
    res = subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
         f"--inh-caps={caps}", f"--ambient-caps={caps}", str(launcher), "--version"],
        capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and f"cannot read {goprof}" in res.stderr, res.stderr

    for argv in ([str(launcher), "--version"],
                 as_nobody(str(launcher), "--version", read_code=True)):
        res = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                             env={**os.environ, "HOME": "/tmp"})
        assert res.returncode == 0 and res.stdout.startswith("goprof "), res
    # ...and passes goprof's own refusal through
    _one_clear_line(_nobody_runs([str(launcher), "reset", "--pid", "1"], read_code=True),
                    "goprof reset writes into the process's memory")


@requires_root
def test_missing_kernel_headers(monkeypatch, tmp_path, capsys):
    """A kernel release without headers, and no compiled program cached for it."""
    real = os.uname()
    fake = os.uname_result((real.sysname, real.nodename, "9.9.9-goprof-test", real.version,
                            real.machine))
    monkeypatch.setattr(os, "uname", lambda: fake)
    monkeypatch.setenv("GOPROF_CACHE_DIR", str(tmp_path))
    assert cli.main(["cpu", "--pid", str(os.getpid()), "-d", "1s",
                     "-o", str(tmp_path / "x.pb.gz")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "kernel headers for 9.9.9-goprof-test not found" in err and "make setup" in err


@requires_root
def test_missing_bcc(monkeypatch, tmp_path, capsys):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "bcc" else real_find_spec(name, *a))
    monkeypatch.setenv("GOPROF_CACHE_DIR", str(tmp_path))
    assert cli.main(["cpu", "--pid", str(os.getpid()), "-d", "1s",
                     "-o", str(tmp_path / "x.pb.gz")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "python3-bpfcc" in err


@pytest.mark.parametrize("text,seconds", [
    ("30s", 30), ("2m", 120), ("500ms", 0.5), ("1h30m", 5400), ("1.5", 1.5), ("10", 10)])
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "10x", "1m-", "0", "-1s", "1s2", "inf", "nan",
                                  "1e400"])
def test_bad_durations(text):
    with pytest.raises(UsageError):
        parse_duration(text)


@pytest.mark.parametrize("text", ["-5s", "-5", "- 2m", "-1.5h"])
def test_negative_durations_and_sizes_say_so(text):
    with pytest.raises(UsageError, match="must be more than zero"):
        parse_duration(text, "--window")
    with pytest.raises(UsageError, match="must be more than zero"):
        parse_size(text.rstrip("smh") + "G", "--spool-size")


def test_doctor_runs():
    res = subprocess.run([*goprof_command(), "doctor"], capture_output=True, text=True,
                         timeout=120)
    assert "Traceback" not in res.stderr
    if os.geteuid() == 0:
        assert res.returncode == 0, res.stdout
        assert "goprof cpu works here" in res.stdout
    else:
        assert res.returncode == 2 and "FAIL" in res.stdout


def readme_exact_slowdowns() -> tuple[str, str]:
    """The exact method's measured slowdowns in the README's cost table (pure, json)."""
    row = next(line for line in (REPO / "README.md").read_text().splitlines()
               if line.startswith("| exact |") and "slower" in line)
    found = re.findall(r"\((\d+)× slower\)", row)
    assert len(found) == 2, row
    return found[0], found[1]


def test_exact_warning_states_the_measured_slowdown_the_readme_quotes():
    pure, json = readme_exact_slowdowns()
    assert EXACT_SLOWDOWN == f"{pure}x slower on an allocation-bound loop, {json}x on " \
                             "encoding/json"


@requires_root
def test_exact_run_prints_the_measured_slowdown(tmp_path):
    bench = gobuild.build("allocbench")
    res = run_goprof("mem", "--method", "exact", "-d", "1s", "-o", str(tmp_path / "m.pb.gz"),
                     "--", str(bench.path), "-workload", "json", "-duration", "30s")
    pure, json = readme_exact_slowdowns()
    err = " ".join(res.stderr.split())
    assert f"measured {pure}x slower on an allocation-bound loop, {json}x on encoding/json" \
        in err, res.stderr
