"""Targets that exec another program mid-run (wrapper scripts, supervisors): samples
after the exec are named from the new binary, and the run says when it happened.

tests/fixtures/execer works in main.preExecWork, then execs the program it is given
under the same pid: cpusplit (a CPU split known by construction) or allocsplit (an
allocation split it prints), built stripped and not, with another Go version than
the execer's own, so that the old binary's tables could not name the new code.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests import gobuild
from tests.conftest import requires_root
from tests.helpers import (
    flat_shares,
    goprof_command,
    read_pprof,
    share_tolerance,
    stacks,
    wait_ready,
)
from tests.test_mem import PKG, assert_close, site_shares, truth_shares, value_index

pytestmark = requires_root

# tests/test_cpu.py: alpha 2, beta 3, gamma with main.mix inlined 5 units of work.
CPU_TRUTH = {"main.alpha": 20.0, "main.beta": 30.0, "gamma+mix": 50.0}


@pytest.fixture(scope="module")
def execer() -> gobuild.GoBinary:
    return gobuild.build("execer", "go1.26", "normal")


class ExecRun:
    """execer -wait, goprof attached to it, then released: it works `before`, execs
    `program`, which runs to its end; goprof ends when the target exits."""

    def __init__(self, execer: gobuild.GoBinary, program: list[str], goprof_args: list[str],
                 before: str = "1.5s") -> None:
        self.target = subprocess.Popen([str(execer.path), "-wait", "-before", before, "--",
                                        *program], stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)
        wait_ready(self.target)
        self.goprof = subprocess.Popen([*goprof_command(), *goprof_args, "--pid",
                                        str(self.target.pid)], stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True,
                                       env={**os.environ, "COLUMNS": "250"})
        self.err: list[str] = []
        assert self.goprof.stderr is not None
        for line in self.goprof.stderr:
            self.err.append(line)
            if "goprof: recording" in line:
                break
        else:
            raise AssertionError("goprof never started recording:\n" + "".join(self.err))
        self.target.send_signal(signal.SIGUSR1)

    def finish(self, timeout: float = 120) -> tuple[int, str, str]:
        """(goprof's exit code, its stderr, the target's stdout)."""
        try:
            target_out, _ = self.target.communicate(timeout=timeout)
            _, err = self.goprof.communicate(timeout=timeout)
        finally:
            for p in (self.goprof, self.target):
                if p.poll() is None:
                    p.kill()
                    p.wait()
        return self.goprof.returncode, "".join(self.err) + err, target_out


def comm_of_leaf(prof, name: str) -> set[str]:
    """The comm labels of the samples whose leaf function is `name`."""
    strings = prof.string_table
    funcs = {f.id: strings[f.name] for f in prof.function}
    locs = {loc.id: loc for loc in prof.location}
    out = set()
    for s in prof.sample:
        leaf = locs[s.location_id[0]] if s.location_id else None
        if leaf is not None and leaf.line and funcs[leaf.line[0].function_id] == name:
            out |= {strings[lb.str] for lb in s.label if strings[lb.key] == "comm"}
    return out


@pytest.mark.parametrize("variant", ["normal", "stripped", "pie"])
def test_cpu_names_samples_after_an_exec_from_the_new_binary(execer, variant, tmp_path):
    new = gobuild.build("cpusplit", "go1.27", variant)
    out, stats = tmp_path / "cpu.pb.gz", tmp_path / "stats.json"
    run = ExecRun(execer, [str(new.path), "-duration", "4s"],
                  ["cpu", "-F", "497", "-o", str(out), "--stats", str(stats)])
    code, err, _ = run.finish()
    assert code == 0, err
    assert "every target exited" in err, err
    assert f"exec'd {new.path}" in err, err  # said when it happens and in the summary

    prof = read_pprof(out)
    shares = flat_shares(prof)
    # Before the exec: the execer's own function, from the execer's tables.
    assert shares.get("main.preExecWork", 0) > 5.0, shares
    # After: the new program's functions, split as built (among themselves: the exec
    # and the runtime's start take a few samples), and nothing named from the old
    # binary's tables applied to the new code.
    grouped = {"main.alpha": shares.get("main.alpha", 0.0),
               "main.beta": shares.get("main.beta", 0.0),
               "gamma+mix": shares.get("main.gamma", 0.0) + shares.get("main.mix", 0.0)}
    hot = sum(grouped.values())
    assert hot > 40.0, shares
    # A busy host leaves the target fewer samples: the bound widens with their count.
    hot_samples = round(hot / 100 * sum(v for _, v in stacks(prof)))
    for name, truth in CPU_TRUTH.items():
        assert abs(100 * grouped[name] / hot - truth) <= \
            share_tolerance(truth, hot_samples, 5.0), (name, grouped, hot_samples)
    assert any(names[:2] == ["main.mix", "main.gamma"] for names, _ in stacks(prof))
    assert comm_of_leaf(prof, "main.alpha") == {"cpusplit"}
    assert comm_of_leaf(prof, "main.preExecWork") == {"execer"}
    doc = json.loads(stats.read_text())
    assert [(e["exe"], e["named"]) for e in doc["execs"]] == [(str(new.path), True)]
    assert doc["unnamed_user_frames"] <= 0.01 * doc["user_frames"], doc


@pytest.mark.parametrize("variant", ["normal", "stripped"])
def test_mem_profiles_allocations_after_an_exec_with_the_new_binary(execer, variant,
                                                                     tmp_path):
    new = gobuild.build("allocsplit", "go1.27", variant)
    out = tmp_path / "mem.pb.gz"
    run = ExecRun(execer, [str(new.path), "-duration", "3s"], ["mem", "-o", str(out)])
    code, err, target_out = run.finish()
    assert code == 0, err
    assert f"exec'd {new.path}" in err, err
    assert "after its exec: method span" in err, err
    truth = next(json.loads(line.split(" ", 1)[1]) for line in target_out.splitlines()
                 if line.startswith("truth "))
    prof = read_pprof(out)
    index = value_index(prof, "alloc_space")
    assert_close(site_shares(prof, index), truth_shares(truth), 5.0, "alloc_space after exec")
    assert comm_of_leaf(prof, PKG + "Large") == {"allocsplit"}


def test_exec_into_a_program_that_is_not_go(execer, tmp_path):
    """mem: the allocation profile of that target ends at the exec, said; cpu: the new
    image is named from its ELF symbols as any program is. Both write their profile."""
    sleep = Path("/bin/sleep").resolve()
    for kind in ("mem", "cpu"):
        out = tmp_path / f"{kind}.pb.gz"
        run = ExecRun(execer, [str(sleep), "1"], [kind, "-o", str(out)], before="1s")
        code, err, _ = run.finish()
        assert code == 0, err
        assert f"exec'd {sleep}" in err, err
        if kind == "mem":
            assert "allocations after its exec are not profiled" in err, err
            assert "not a Go program" in err, err
        prof = read_pprof(out)
        assert flat_shares(prof).get("main.preExecWork", 0) > 0 or kind == "mem"


def _leaves(prof) -> set[str]:
    strings = prof.string_table
    funcs = {f.id: strings[f.name] for f in prof.function}
    locs = {loc.id: loc for loc in prof.location}
    return {funcs[locs[s.location_id[0]].line[0].function_id] for s in prof.sample
            if s.location_id and locs[s.location_id[0]].line}


def test_agent_profiles_a_process_that_execs_as_a_new_process(execer, tmp_path):
    """The agent with --mem: the windows before the exec are the execer's (its labels,
    its functions), those after are the new program's, with its labels, names from its
    stripped binary, and allocation probes on it."""
    from tests.parca_server import ParcaServer
    from tests.test_agent import Agent

    new = gobuild.build("allocsplit", "go1.27", "stripped")
    target = subprocess.Popen([str(execer.path), "-wait", "-before", "2s", "--",
                               str(new.path), "-duration", "3s"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    wait_ready(target)
    try:
        with ParcaServer() as parca:
            agent = Agent("--pid", str(target.pid), "--mem", "--parca", parca.url,
                          "--insecure", "--spool-dir", str(tmp_path / "spool"))
            try:
                agent.wait_log("process picked up", pid=target.pid, exe=str(execer.path))
                target.send_signal(signal.SIGUSR1)
                agent.wait_log("process exec'd: profiled anew", pid=target.pid, timeout=30)
                picked = agent.wait_log("process picked up", pid=target.pid,
                                        exe=str(new.path), timeout=30)
                target.wait(30)
                agent.wait_log("process let go", pid=target.pid, exe=str(new.path),
                               timeout=30)
            finally:
                assert agent.stop() == 0, "".join(agent.raw)
            got = parca.received
    finally:
        if target.poll() is None:
            target.kill()
            target.wait()
    assert picked["mem_method"] == "span"
    by_image: dict[tuple[str, str], list] = {}
    for r in got:
        key = (r.labels["comm"], r.labels["__name__"])
        by_image.setdefault(key, []).append(r)
    before = by_image.get(("execer", "process_cpu"), [])
    after = by_image.get(("allocsplit", "process_cpu"), [])
    assert before and after, sorted(by_image)
    assert {r.labels["executable"] for r in after} == {str(new.path)}
    assert {r.labels["go_version"] for r in after} == {"go1.27.3"}
    assert {r.labels["pid"] for r in before + after} == {str(target.pid)}
    leaves_before = set().union(*(_leaves(r.profile) for r in before))
    leaves_after = set().union(*(_leaves(r.profile) for r in after))
    assert "main.preExecWork" in leaves_before, leaves_before
    assert not any(n.startswith(PKG) for n in leaves_before), leaves_before
    assert any(n.startswith(PKG) for n in leaves_after), leaves_after
    assert "main.preExecWork" not in leaves_after, leaves_after
    mem_after = by_image.get(("allocsplit", "memory"), [])
    assert mem_after, sorted(by_image)
    assert {PKG + s for s in ("Large", "Big")} <= set().union(
        *(_leaves(r.profile) for r in mem_after))
