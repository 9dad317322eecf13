"""Damaged Go binaries that still run, profiled for real (root, real BPF): one odd
binary must cost its own names, counted, and never a traceback, a lost profile or the
profiling of the other processes.

Every damage here is to bytes the Go runtime does not need to run (tests/gotables.py
says which and why): function names, file and line tables, an inline tree's names,
the pcHeader's function count, the build info's version string.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests import gobuild, gotables
from tests.conftest import requires_root
from tests.helpers import read_pprof, run_goprof, wait_ready
from tests.test_agent import Agent

pytestmark = requires_root
MAIN = ["main.alpha", "main.beta", "main.gamma"]
SITES = ["goprof.test/fixtures/allocwork.Small", "goprof.test/fixtures/allocwork.Medium"]


def damaged(tmp_path: Path, program: str, kind: str, variant: str = "stripped") -> Path:
    src = gobuild.build(program, "go1.26", variant).path
    edits = {
        "unterminated names": lambda: gotables.unterminated_names(src),
        "garbage names": lambda: gotables.garbage_names(src, MAIN if program == "cpusplit"
                                                        else SITES),
        "line tables": lambda: gotables.bad_line_tables(src, MAIN),
        "inline tree": lambda: gotables.bad_inline_tree(src, "main.gamma", "main.alpha"),
        "pclntab header": lambda: gotables.bad_pclntab_header(src),
        "build info": lambda: gotables.bad_build_info(src),
    }[kind]()
    return gotables.write_copy(src, tmp_path / f"{program}-damaged", edits)


def start(path: Path, *args: str) -> subprocess.Popen:
    p = subprocess.Popen([str(path), *args], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True)
    wait_ready(p)
    return p


def names(path: Path) -> set[str]:
    prof = read_pprof(path)
    assert prof.sample, "the profile has samples"
    return {prof.string_table[f.name] for f in prof.function}


def printable(name: str) -> bool:
    return name.isprintable() and "\ufffd" not in name


# kind -> (what the profile must name, what it must not, the counter that counts it)
CPU_CASES = {
    "unterminated names": (set(), set(MAIN), "damaged_functions"),
    "garbage names": ({"main.main"}, set(MAIN), "damaged_functions"),
    "line tables": (set(MAIN), set(), "damaged_functions"),
    "inline tree": ({"main.gamma", "main.beta"}, {"main.mix"}, "damaged_functions"),
    "pclntab header": (set(), set(MAIN), "unreadable_binaries"),
    "build info": (set(MAIN), set(), "damaged_build_info"),
}


@pytest.mark.parametrize("kind", CPU_CASES)
def test_cpu_profiles_a_damaged_binary(tmp_path: Path, kind: str) -> None:
    named, unnamed, counter = CPU_CASES[kind]
    target = start(damaged(tmp_path, "cpusplit", kind), "-duration", "20s")
    try:
        out, stats = tmp_path / "cpu.pb.gz", tmp_path / "stats.json"
        res = run_goprof("cpu", "--pid", str(target.pid), "-d", "2s", "-o", str(out),
                         "--stats", str(stats))
    finally:
        target.kill()
        target.wait()
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    got = names(out)
    assert named <= got and not unnamed & got, sorted(got)
    assert all(printable(n) for n in got), [n for n in got if not printable(n)]
    doc = json.loads(stats.read_text())
    assert doc[counter] >= 1, doc
    assert counter.replace("_", " ") in res.stderr  # said in the summary too
    if kind == "line tables":
        prof = read_pprof(out)
        lines = {prof.string_table[f.name]: prof.string_table[f.filename]
                 for f in prof.function}
        assert all(lines[f] == "?" for f in ("main.alpha", "main.beta")), lines


def test_mem_on_damaged_site_names_profiles_and_counts(tmp_path: Path) -> None:
    """The allocating sites' names are garbage: the runtime's are sound, so the span
    method runs; the sites stay unnamed, counted."""
    target = start(damaged(tmp_path, "allocsplit", "garbage names"), "-duration", "20s")
    try:
        out, stats = tmp_path / "mem.pb.gz", tmp_path / "stats.json"
        res = run_goprof("mem", "--pid", str(target.pid), "-d", "2s", "-o", str(out),
                         "--stats", str(stats))
    finally:
        target.kill()
        target.wait()
    assert res.returncode == 0, res.stdout + res.stderr
    got = names(out)
    assert not set(SITES) & got and all(printable(n) for n in got), sorted(got)
    assert json.loads(stats.read_text())["damaged_functions"] >= 1


@pytest.mark.parametrize("kind,variant,code", [
    ("unterminated names", "normal", 0),  # .symtab still names the probed functions
    ("unterminated names", "stripped", 2),  # nothing names them: no method can run
    ("pclntab header", "stripped", 2),
])
def test_mem_on_a_damaged_function_table(tmp_path: Path, kind: str, variant: str,
                                         code: int) -> None:
    """The tester's binary: exit 0 with a profile where something still finds the
    probe sites, else one line and exit 2; never a traceback."""
    target = start(damaged(tmp_path, "allocsplit", kind, variant), "-duration", "20s")
    try:
        out = tmp_path / "mem.pb.gz"
        res = run_goprof("mem", "--pid", str(target.pid), "-d", "2s", "-o", str(out))
    finally:
        target.kill()
        target.wait()
    assert res.returncode == code, res.stdout + res.stderr
    assert "Traceback" not in res.stdout + res.stderr
    if code == 2:
        errors = [line for line in res.stderr.splitlines() if line.startswith("goprof:")]
        assert len(errors) == 1, res.stderr
    else:
        read_pprof(out)


def test_agent_keeps_profiling_a_healthy_process_beside_a_damaged_one(tmp_path: Path) -> None:
    bad = start(damaged(tmp_path, "allocsplit", "unterminated names"), "-duration", "30s")
    good = start(gobuild.build("cpusplit", "go1.26", "stripped").path, "-duration", "30s")
    out = tmp_path / "out"
    out.mkdir()
    try:
        agent = Agent("--pid", str(bad.pid), "--pid", str(good.pid), "--mem", "--output-dir",
                      str(out), "--duration", "5")
        code = agent.wait()
    finally:
        for p in (bad, good):
            p.kill()
            p.wait()
    assert code == 0, "".join(agent.raw)
    assert not any("Traceback" in line for line in agent.raw), "".join(agent.raw)
    by_pid: dict[int, list[Path]] = {}
    for f in out.rglob("*.pb.gz"):
        for pid in (bad.pid, good.pid):
            if f"-{pid}-" in f.name:
                by_pid.setdefault(pid, []).append(f)
    assert by_pid.get(good.pid) and by_pid.get(bad.pid), sorted(out.rglob("*"))
    good_names = set().union(*(names(f) for f in by_pid[good.pid] if ".cpu." in f.name))
    assert set(MAIN) <= good_names
    for f in by_pid[bad.pid]:
        assert all(printable(n) for n in names(f))
    summary = agent.summary()
    assert summary["unnamed_frames"] > 0, summary  # the damaged one's frames, counted
