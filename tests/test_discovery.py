"""The agent's process discovery, in this process: which pids a scan reports, and when."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from goprof.agent import discovery
from goprof.agent.discovery import Discovery, ProcessFilter

from tests import gobuild


class _Wrapper:
    """A shell that waits for its cue, then execs the Go program (an entrypoint script)."""

    def __init__(self, tmp_path: Path, binary: gobuild.GoBinary) -> None:
        self.flag = tmp_path / "go"
        self.binary = binary
        self.proc = subprocess.Popen(
            ["/bin/sh", "-c", f"while [ ! -e {self.flag} ]; do sleep 0.02; done; "
                              f"exec {binary.path}"],
            stdout=subprocess.DEVNULL)
        self.pid = self.proc.pid

    def exec_now(self) -> None:
        self.flag.touch()
        deadline = time.monotonic() + 10
        while _exe(self.pid) != str(self.binary.path):
            assert time.monotonic() < deadline, "the wrapper never exec'd"
            time.sleep(0.01)

    def __enter__(self) -> _Wrapper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.kill()
        self.proc.wait()


def _exe(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


def test_a_settled_process_that_execs_later_is_found_within_the_turns(
        tmp_path: Path, cpusplit_plain, monkeypatch) -> None:
    # Settled processes are checked one pid in RECHECK_TURNS per scan, to save the
    # agent two syscalls per process per scan: an exec must still be noticed.
    monkeypatch.setattr(discovery, "SETTLE_S", 0.0)  # every process counts as settled
    with _Wrapper(tmp_path, cpusplit_plain) as wrapper:
        d = Discovery(ProcessFilter(exes=["cpusplit"]))
        assert d.scan() == []  # a shell, decided
        time.sleep(0.05)  # settled (older than SETTLE_S)
        wrapper.exec_now()
        scans = [[c.target.pid for c in d.scan()] for _ in range(discovery.RECHECK_TURNS)]
        assert sum(scans, []) == [wrapper.pid], scans


def test_a_young_process_is_checked_on_every_scan(tmp_path: Path, cpusplit_plain) -> None:
    with _Wrapper(tmp_path, cpusplit_plain) as wrapper:
        d = Discovery(ProcessFilter(exes=["cpusplit"]))
        assert d.scan() == []
        wrapper.exec_now()
        assert [c.target.pid for c in d.scan()] == [wrapper.pid], "the very next scan"
