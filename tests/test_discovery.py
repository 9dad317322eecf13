"""The agent's process discovery, in this process: which pids a scan reports, and when."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from goprof.agent import discovery
from goprof.agent.discovery import Discovery, ProcessFilter

from tests import gobuild


@pytest.fixture(scope="module")
def cpusplit_plain() -> gobuild.GoBinary:
    return gobuild.build("cpusplit", "go1.26", "normal")


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
    flag = tmp_path / "go"
    wrapper = subprocess.Popen(
        ["/bin/sh", "-c", f"while [ ! -e {flag} ]; do sleep 0.02; done; "
                          f"exec {cpusplit_plain.path}"],
        stdout=subprocess.DEVNULL)
    try:
        d = Discovery(ProcessFilter(exes=["cpusplit"]))
        assert [c.target.pid for c in d.scan()] == []  # a shell, decided
        time.sleep(0.05)  # settled (older than SETTLE_S)
        flag.touch()
        deadline = time.monotonic() + 10
        while _exe(wrapper.pid) != str(cpusplit_plain.path):
            assert time.monotonic() < deadline, "the wrapper never exec'd"
            time.sleep(0.01)
        scans = []
        for _ in range(discovery.RECHECK_TURNS):
            scans.append([c.target.pid for c in d.scan()])
        assert sum(scans, []) == [wrapper.pid], scans
    finally:
        wrapper.kill()
        wrapper.wait()


def test_a_young_process_is_checked_on_every_scan(tmp_path: Path, cpusplit_plain) -> None:
    flag = tmp_path / "go"
    wrapper = subprocess.Popen(
        ["/bin/sh", "-c", f"while [ ! -e {flag} ]; do sleep 0.02; done; "
                          f"exec {cpusplit_plain.path}"],
        stdout=subprocess.DEVNULL)
    try:
        d = Discovery(ProcessFilter(exes=["cpusplit"]))
        assert d.scan() == []
        flag.touch()
        deadline = time.monotonic() + 10
        while _exe(wrapper.pid) != str(cpusplit_plain.path):
            assert time.monotonic() < deadline, "the wrapper never exec'd"
            time.sleep(0.01)
        assert [c.target.pid for c in d.scan()] == [wrapper.pid], "the very next scan"
    finally:
        wrapper.kill()
        wrapper.wait()
