"""goprof mem and goprof heap against real Go programs whose allocation split is
known by construction (tests/fixtures/allocwork), and against runtime/pprof's own
allocs and heap profiles of the same run."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from goprof.golang.globals import global_address
from goprof.symbolizer import load_binary

from tests import gobuild
from tests.conftest import ALL_BUILDS, requires_root
from tests.helpers import go_tool_pprof, goprof_command, read_pprof, run_goprof, wait_ready

pytestmark = requires_root
SITES = ("Small", "Nodes", "Medium", "Big", "Large")
PKG = "goprof.test/fixtures/allocwork."


def build(program: str, build_id: tuple[str, str]) -> gobuild.GoBinary:
    return gobuild.build(program, *build_id)


@pytest.fixture(scope="module", params=ALL_BUILDS, ids=lambda p: f"{p[0]}-{p[1]}")
def any_build(request) -> tuple[str, str]:
    return request.param


# -- running ------------------------------------------------------------------
class Run:
    """A fixture started with -wait, goprof attached, then the fixture released."""

    def __init__(self, target_argv: list[str], goprof_args: list[str]) -> None:
        self.target = subprocess.Popen(target_argv, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)
        wait_ready(self.target)
        self.goprof = subprocess.Popen(
            [*goprof_command(), *goprof_args, "--pid", str(self.target.pid)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "COLUMNS": "200"})
        self.goprof_err: list[str] = []
        self._wait_recording()

    def _wait_recording(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        assert self.goprof.stderr is not None
        while time.monotonic() < deadline:
            line = self.goprof.stderr.readline()
            if not line and self.goprof.poll() is not None:
                raise AssertionError(f"goprof exited {self.goprof.returncode}:\n"
                                     + "".join(self.goprof_err))
            self.goprof_err.append(line)
            if "goprof: recording" in line:
                return
        raise AssertionError("goprof never started recording:\n" + "".join(self.goprof_err))

    def release(self) -> None:
        self.target.send_signal(signal.SIGUSR1)

    def target_output(self, timeout: float = 120) -> dict:
        out, err = self.target.communicate(timeout=timeout)
        truth = next((json.loads(line.split(" ", 1)[1]) for line in out.splitlines()
                      if line.startswith("truth ")), None)
        assert truth is not None, f"no truth line:\n{out}\n{err}"
        return {"truth": truth, "stdout": out, "returncode": self.target.returncode}

    def goprof_result(self, timeout: float = 120) -> tuple[int, str]:
        _, err = self.goprof.communicate(timeout=timeout)
        return self.goprof.returncode, "".join(self.goprof_err) + err

    def kill(self) -> None:
        for p in (self.goprof, self.target):
            if p.poll() is None:
                p.kill()
                p.wait()


def site_shares(prof, index: int, names: tuple[str, ...] = SITES) -> dict[str, float]:
    """Each site's share of the sites' total (flat: the site is the innermost frame)."""
    strings = prof.string_table
    funcs = {f.id: strings[f.name] for f in prof.function}
    locs = {loc.id: loc for loc in prof.location}
    totals = dict.fromkeys(names, 0)
    for s in prof.sample:
        if not s.location_id:
            continue
        leaf = locs[s.location_id[0]]
        name = funcs[leaf.line[0].function_id] if leaf.line else ""
        short = name.removeprefix(PKG)
        if short in totals:
            totals[short] += s.value[index]
    whole = sum(totals.values())
    assert whole > 0, "no sample at any site"
    return {k: 100.0 * v / whole for k, v in totals.items()}


def truth_shares(truth: dict, key: str = "bytes", names: tuple[str, ...] = SITES
                 ) -> dict[str, float]:
    vals = {n: truth[PKG + n][key] for n in names}
    whole = sum(vals.values())
    return {k: 100.0 * v / whole for k, v in vals.items()}


def value_index(prof, name: str) -> int:
    types = [prof.string_table[st.type] for st in prof.sample_type]
    return types.index(name)


def profile_alloc(tmp_path: Path, binary: gobuild.GoBinary, goprof_args: list[str],
                  target_args: tuple[str, ...] = ("-duration", "2s")) -> tuple[object, dict, str]:
    out = tmp_path / f"{binary.id}.pb.gz"
    run = Run([str(binary.path), "-wait", *target_args],
              ["mem", "-o", str(out), *goprof_args])
    try:
        run.release()
        target = run.target_output()
        code, err = run.goprof_result()
    finally:
        run.kill()
    assert code == 0, err
    assert "every target exited" in err, err
    return read_pprof(out), target, err


def assert_close(got: dict[str, float], want: dict[str, float], points: float, what: str):
    bad = {k: (round(got[k], 1), round(want[k], 1)) for k in want if abs(got[k] - want[k]) > points}
    assert not bad, f"{what}: (got, want) beyond {points} points: {bad}; all: {got} vs {want}"


# -- allocation profiles --------------------------------------------------------
def test_span_method_matches_the_truth(tmp_path, any_build):
    binary = build("allocsplit", any_build)
    prof, target, err = profile_alloc(tmp_path, binary, [])
    assert "method span" in err
    got = site_shares(prof, value_index(prof, "alloc_space"))
    assert_close(got, truth_shares(target["truth"]), 5, f"span {binary.id}")
    assert prof.string_table[prof.default_sample_type] == "alloc_space"
    assert prof.string_table[prof.period_type.type] == "space"
    assert re.search(r"unnamed frames\s+0\s", err), err


def test_go_sampler_turned_on_matches_the_truth(tmp_path, any_build):
    binary = build("allocsplit", any_build)
    prof, target, err = profile_alloc(tmp_path, binary, ["--go-sampler", "--rate", "65536"])
    assert "turned Go's heap sampler on" in err and "method go-sampler" in err
    got = site_shares(prof, value_index(prof, "alloc_space"))
    assert_close(got, truth_shares(target["truth"]), 5, f"go-sampler {binary.id}")


@pytest.mark.parametrize("build_id", [("go1.26", "stripped"), ("go1.27", "pie")],
                         ids=lambda p: f"{p[0]}-{p[1]}")
def test_exact_method_counts_every_allocation(tmp_path, build_id):
    binary = build("allocsplit", build_id)
    prof, target, err = profile_alloc(tmp_path, binary, ["--method", "exact"],
                                      ("-rounds", "20"))
    assert "warning" in err and "exact" in err
    truth = target["truth"]
    index = value_index(prof, "alloc_objects")
    got = site_shares(prof, index)
    assert_close(got, truth_shares(truth, "objects"), 1, f"exact {binary.id}")
    # Counted, not estimated: every site's objects within 1 % of what it allocated.
    strings = prof.string_table
    funcs = {f.id: strings[f.name] for f in prof.function}
    locs = {loc.id: loc for loc in prof.location}
    counted = dict.fromkeys(SITES, 0)
    for s in prof.sample:
        leaf = locs[s.location_id[0]] if s.location_id else None
        name = funcs[leaf.line[0].function_id].removeprefix(PKG) if leaf and leaf.line else ""
        if name in counted:
            counted[name] += s.value[index]
    for site in SITES:
        want = truth[PKG + site]["objects"]
        assert abs(counted[site] - want) <= want * 0.01, (site, counted[site], want)


def test_alternating_sites_go_sampler(tmp_path):
    binary = build("allocsplit", ("go1.26", "stripped"))
    names = ("SiteA", "SiteB")
    prof, target, err = profile_alloc(tmp_path, binary, ["--go-sampler", "--rate", "65536"],
                                      ("-mode", "alternate", "-duration", "2s"))
    got = site_shares(prof, value_index(prof, "alloc_space"), names)
    assert_close(got, truth_shares(target["truth"], names=names), 5, "alternate go-sampler")


@pytest.mark.parametrize("toolchain", list(gobuild.TOOLCHAINS))
def test_go_sampler_agrees_with_runtime_pprof(tmp_path, toolchain):
    """Where the program's own sampler is on, goprof takes the same samples: its
    allocs profile and the program's runtime/pprof allocs profile agree per site."""
    binary = build("allocpprof", (toolchain, "stripped"))
    own = tmp_path / "own-allocs.pb.gz"
    prof, target, err = profile_alloc(tmp_path, binary, [],
                                      ("-duration", "2s", "-allocs", str(own)))
    assert "method go-sampler" in err
    theirs = read_pprof(own)
    got = site_shares(prof, value_index(prof, "alloc_space"))
    want = site_shares(theirs, value_index(theirs, "alloc_space"))
    # The same sampled allocations: only the few taken before goprof attached differ.
    assert_close(got, want, 2, f"goprof vs runtime/pprof allocs ({toolchain})")
    assert_close(got, truth_shares(target["truth"]), 5, f"goprof vs truth ({toolchain})")
    text = go_tool_pprof("-sample_index=alloc_space", "-top", str(tmp_path / f"{binary.id}.pb.gz"))
    assert PKG + "Large" in text


@pytest.mark.parametrize("toolchain", list(gobuild.TOOLCHAINS))
def test_heap_matches_runtime_pprof(tmp_path, toolchain):
    binary = build("allocpprof", (toolchain, "pie"))
    own = tmp_path / "own-heap.pb.gz"
    target = subprocess.Popen([str(binary.path), "-rounds", "80", "-memprofilerate", "4096",
                               "-heap", str(own), "-linger", "60s"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_ready(target, "profiled", timeout=60)
        # The truth line follows at once. Read it through the same buffered reader:
        # communicate() reads the raw pipe and would miss lines already buffered here.
        assert target.stdout is not None
        line = target.stdout.readline()
        assert line.startswith("truth "), line
        truth = json.loads(line.split(" ", 1)[1])
        out = tmp_path / "heap.pb.gz"
        res = run_goprof("heap", "--pid", str(target.pid), "-o", str(out))
        assert res.returncode == 0, res.stderr
    finally:
        target.terminate()
        target.communicate(timeout=30)
    ours, theirs = read_pprof(out), read_pprof(own)
    for kind in ("inuse_space", "alloc_space", "inuse_objects"):
        got = site_shares(ours, value_index(ours, kind))
        want = site_shares(theirs, value_index(theirs, kind))
        assert_close(got, want, 0.5, f"heap {kind} vs runtime/pprof ({toolchain})")
    got = site_shares(ours, value_index(ours, "inuse_space"))
    assert_close(got, truth_shares(truth, "inuse_bytes"), 3, f"heap in-use vs truth ({toolchain})")
    assert ours.string_table[ours.default_sample_type] == "inuse_space"
    go_tool_pprof("-sample_index=inuse_space", "-top", str(out))


# -- --go-sampler is put back, the target is unharmed --------------------------------
def read_rate(pid: int, binary: gobuild.GoBinary) -> int:
    vaddr = global_address(load_binary(str(binary.path)), "runtime.MemProfileRate")
    assert vaddr is not None
    with open(f"/proc/{pid}/mem", "rb") as f:
        f.seek(vaddr)
        return int.from_bytes(f.read(8), "little", signed=True)


def test_go_sampler_rate_is_put_back(tmp_path):
    binary = build("allocsplit", ("go1.26", "normal"))  # not PIE: the vaddr is the address
    target = subprocess.Popen([str(binary.path), "-duration", "8s"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        wait_ready(target)
        assert read_rate(target.pid, binary) == 0
        out = tmp_path / "m.pb.gz"
        goprof = subprocess.Popen([*goprof_command(), "mem", "--pid", str(target.pid), "-d",
                                   "3s", "--go-sampler", "-o", str(out)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # The rate is written before recording starts (a compile of the BPF program on
        # a cold cache and a loaded machine can take seconds: no fixed sleep).
        assert goprof.stderr is not None
        seen: list[str] = []
        while not seen or ("recording" not in seen[-1] and seen[-1]):
            seen.append(goprof.stderr.readline())
        assert "recording" in seen[-1], seen
        during = read_rate(target.pid, binary)
        _, err = goprof.communicate(timeout=60)
        assert goprof.returncode == 0, err
        after = read_rate(target.pid, binary)
        assert target.poll() is None, "the target died"
        stdout, _ = target.communicate(timeout=60)
    finally:
        if target.poll() is None:
            target.kill()
    assert during == 512 * 1024
    assert after == 0
    assert target.returncode == 0 and "done" in stdout and "truth " in stdout
    assert read_pprof(out).sample


# -- errors and endings ---------------------------------------------------------------
def test_non_go_target_is_refused():
    p = subprocess.Popen(["sleep", "30"])
    try:
        res = run_goprof("mem", "--pid", str(p.pid), "-d", "1s")
    finally:
        p.kill()
        p.wait()
    assert res.returncode == 2
    assert "not a Go program" in res.stderr and "Traceback" not in res.stderr


def test_unknown_go_version_is_refused(tmp_path):
    binary = build("allocsplit", ("go1.26", "stripped"))
    data = bytearray(binary.path.read_bytes())
    version = gobuild.go_version_of(binary.path).encode()  # e.g. go1.26.8
    fake = b"go1.99" + version[len(b"go1.26"):]
    count = data.count(version)
    assert count >= 1
    data = data.replace(version, fake)
    patched = tmp_path / "allocsplit-go199"
    patched.write_bytes(bytes(data))
    patched.chmod(0o755)
    p = subprocess.Popen([str(patched), "-duration", "20s"], stdout=subprocess.PIPE, text=True)
    try:
        wait_ready(p)
        res = run_goprof("mem", "--pid", str(p.pid), "-d", "1s", "-o", str(tmp_path / "x.pb.gz"))
    finally:
        p.kill()
        p.wait()
    assert res.returncode == 2, res.stderr
    assert "go1.99" in res.stderr and "Traceback" not in res.stderr


def test_ctrl_c_writes_the_profile(tmp_path):
    binary = build("allocsplit", ("go1.27", "stripped"))
    out = tmp_path / "m.folded"
    run = Run([str(binary.path), "-wait", "-duration", "20s"], ["mem", "-o", str(out)])
    try:
        run.release()
        time.sleep(2)
        run.goprof.send_signal(signal.SIGINT)
        code, err = run.goprof_result()
    finally:
        run.kill()
    assert code == 0, err
    assert "interrupted" in err
    text = out.read_text()
    assert PKG + "Large" in text


def test_heap_refuses_a_program_without_the_sampler():
    binary = build("allocsplit", ("go1.26", "stripped"))
    p = subprocess.Popen([str(binary.path), "-duration", "20s"], stdout=subprocess.PIPE,
                         text=True)
    try:
        wait_ready(p)
        res = run_goprof("heap", "--pid", str(p.pid))
    finally:
        p.kill()
        p.wait()
    assert res.returncode == 2
    assert "sampler off" in res.stderr and "Traceback" not in res.stderr


def test_command_started_under_goprof_mem(tmp_path):
    binary = build("allocsplit", ("go1.27", "stripped"))
    out = tmp_path / "cmd.pb.gz"
    res = run_goprof("mem", "-o", str(out), "--", str(binary.path), "-duration", "1s")
    assert res.returncode == 0, res.stderr
    assert "every target exited" in res.stderr
    assert any(PKG + "Large" in s for s in read_pprof(out).string_table)


def test_non_go_command_is_refused_and_not_left_running(tmp_path):
    marker = tmp_path / "still-running"
    res = run_goprof("mem", "-d", "1s", "--", "sh", "-c", f"sleep 3; touch {marker}")
    assert res.returncode == 2
    assert "not a Go program" in res.stderr and "Traceback" not in res.stderr
    time.sleep(4)
    assert not marker.exists(), "the started command was left running"
