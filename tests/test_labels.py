"""pprof labels and goroutine ids on goprof's samples, read in BPF from the goroutine
each sample ran on (g.m.curg.labels, g.goid), checked against splits known by
construction (tests/fixtures/labelsplit, alloclabels), against the program's own
runtime/pprof CPU profile of the same run, and on the awkward cases (labeledges: no
labels, an empty value, more labels than the cap, strings longer than it, labels that
change; nopprof: a program without runtime/pprof)."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from tests import gobuild
from tests.conftest import ALL_BUILDS, requires_root
from tests.helpers import (
    go_tool_pprof,
    goprof_command,
    read_pprof,
    run_goprof,
    sample_functions,
    sample_labels,
    share_tolerance,
)

pytestmark = requires_root

CPU_BASE = {"pid", "tid", "comm"}   # what every CPU sample carried before labels
MEM_BASE = {"pid", "comm"}         # and a numeric "bytes" where Go's sampler sized it
# labelsplit and alloclabels, by construction: route=/a 1 unit, /b 3, unlabelled (None) 1.
ROUTES: dict[str | None, float] = {"/a": 20.0, "/b": 60.0, None: 20.0}
WORKER_RE = re.compile(r"^worker route=(\S*) goroutine=(\d+)$", re.M)
# goprof's caps (the interface of the label-reading BPF side).
MAX_LABELS, KEY_MAX, VALUE_MAX = 10, 64, 128
# labeledges' long label (tests/fixtures/labeledges/main.go: prefix, then 0123456789...).
LONG_KEY = "longkey-" + "".join(str(i % 10) for i in range(100 - len("longkey-")))
LONG_VALUE = "longvalue-" + "".join(str(i % 10) for i in range(200 - len("longvalue-")))


@pytest.fixture(scope="module", params=ALL_BUILDS, ids=lambda p: f"{p[0]}-{p[1]}")
def build_id(request) -> tuple[str, str]:
    return request.param


# -- reading profiles -----------------------------------------------------------------
def by_function(prof, func: str, index: int = 0, anywhere: bool = False
                ) -> list[tuple[dict[str, str | int], int]]:
    """(labels, value) of the samples whose innermost frame (or, with anywhere, any
    frame) is function `func`."""
    out = []
    for sample, names in zip(prof.sample, sample_functions(prof), strict=True):
        if names and (func in names if anywhere else names[0] == func):
            out.append((sample_labels(prof, sample), sample.value[index]))
    return out


def split(samples: list[tuple[dict, int]], key: str) -> tuple[dict[str | int | None, float], int]:
    """Each value of label `key` (None: no such label) as a percentage of the samples'
    total value; and that total."""
    totals: Counter = Counter()
    for labels, value in samples:
        totals[labels.get(key)] += value
    whole = sum(totals.values())
    assert whole > 0, "no samples"
    return {k: 100.0 * v / whole for k, v in totals.items()}, whole


def diff_tolerance(truth: float, n1: int, n2: int, floor: float) -> float:
    """How far (points) two independent sampled estimates of a `truth` percent may be
    apart: `floor`, or five standard deviations of their difference with fewer samples."""
    p = truth / 100
    return max(floor, 5 * 100 * math.sqrt(p * (1 - p) * (1 / max(n1, 1) + 1 / max(n2, 1))))


def summary_row(stderr: str, name: str) -> str:
    """The value column of the end-of-run summary row `name`."""
    m = re.search(rf"^{re.escape(name)}\s{{2,}}(.*)$", stderr, re.M)
    assert m, f"no {name!r} row in the summary:\n{stderr}"
    return m.group(1).strip()


def label_stats(stats_path: Path) -> dict:
    stats = json.loads(stats_path.read_text())
    assert "labels" in stats, sorted(stats)
    assert set(stats["labels"]) >= {"sets", "capped", "unreadable"}, stats["labels"]
    assert stats["stack_collisions"] == 0, stats
    return stats


# -- CPU under labels -----------------------------------------------------------------
def test_cpu_split_by_label(build_id, tmp_path):
    """labelsplit under goprof cpu --goroutine-ids at 997 Hz, runtime/pprof at 1000 Hz in
    the same run: main.work's CPU splits by route as built, in both profiles, and every
    labelled sample carries the id of the worker goroutine that ran it."""
    binary = gobuild.build("labelsplit", *build_id)
    ours, theirs, stats = tmp_path / "goprof.pb.gz", tmp_path / "own.pprof", tmp_path / "s.json"
    res = run_goprof("cpu", "-F", "997", "--goroutine-ids", "--stats", str(stats),
                     "-o", str(ours), "--", str(binary.path), "-duration", "5s",
                     "-cpuprofile", str(theirs), "-cpurate", "1000", check=True)
    assert "every target exited" in res.stderr, res.stderr
    workers = {route or None: int(goid) for route, goid in WORKER_RE.findall(res.stdout)}
    assert set(workers) == set(ROUTES), res.stdout
    prof, go_prof = read_pprof(ours), read_pprof(theirs)

    for sample in prof.sample:
        keys = set(sample_labels(prof, sample))
        assert CPU_BASE <= keys <= CPU_BASE | {"route", "goroutine"}, keys
    work = by_function(prof, "main.work")
    mine, n = split(work, "route")
    go, go_n = split(by_function(go_prof, "main.work"), "route")
    go_off = max(abs(go.get(r, 0.0) - t) for r, t in ROUTES.items())
    for route, truth in ROUTES.items():
        assert abs(mine.get(route, 0.0) - truth) <= share_tolerance(truth, n, 3.0), \
            (route, mine, n, go)
        assert abs(mine.get(route, 0.0) - go.get(route, 0.0)) <= \
            diff_tolerance(truth, n, go_n, 5.0), (route, mine, n, go, go_n, go_off)

    # The goroutine ids: main.work's samples are the workers' (each route its own
    # goroutine), and any sample labelled with a route ran on that route's worker.
    for labels, _ in work:
        assert labels.get("goroutine") == workers[labels.get("route")], (labels, workers)
    for sample in prof.sample:
        labels = sample_labels(prof, sample)
        if "route" in labels:
            assert labels.get("goroutine") == workers[labels["route"]], (labels, workers)

    # go tool pprof filters goprof's file by the label: -tagfocus route=/b keeps /b's
    # main.work, whose flat % (of the whole profile) is the share computed here.
    total = sum(s.value[0] for s in prof.sample)
    b_work = 100.0 * sum(v for labels, v in work if labels.get("route") == "/b") / total
    top = go_tool_pprof("-tagfocus", "route=/b", "-top", str(ours))
    m = re.search(r"^\s*\S+\s+([\d.]+)%\s+[\d.]+%\s+\S+\s+[\d.]+%\s+main\.work$", top, re.M)
    assert m and abs(float(m.group(1)) - b_work) < 0.1, (b_work, top)
    tags = go_tool_pprof("-tags", str(ours))
    assert "/a" in tags and "/b" in tags, tags

    st = label_stats(stats)
    assert st["labels"]["capped"] == 0 and st["labels"]["unreadable"] == 0, st["labels"]
    assert st["labels"]["sets"] >= 2, st["labels"]
    assert summary_row(res.stderr, "stack collisions").startswith("0"), res.stderr
    summary_row(res.stderr, "labels")


# -- allocations under labels -----------------------------------------------------------
def profile_mem(binary: gobuild.GoBinary, goprof_args: list[str], target_args: list[str],
                out: Path) -> tuple[str, str]:
    """The target started with -wait, goprof mem attached to it, the target released
    once goprof records; (the target's stdout, goprof's stderr) when both have ended."""
    target = subprocess.Popen([str(binary.path), "-wait", *target_args],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    goprof = None
    try:
        assert target.stdout is not None
        before = []  # the worker lines come before "ready"
        while not before or not before[-1].startswith("ready"):
            before.append(target.stdout.readline())
            assert before[-1], f"{binary.path} exited early: {before}"
        goprof = subprocess.Popen([*goprof_command(), "mem", "--pid", str(target.pid),
                                   "-o", str(out), *goprof_args], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True,
                                  env={**os.environ, "COLUMNS": "200"})
        assert goprof.stderr is not None
        said = []
        deadline = time.monotonic() + 60
        while not said or "goprof: recording" not in said[-1]:
            said.append(goprof.stderr.readline())
            assert said[-1] or goprof.poll() is None, "".join(said)
            assert time.monotonic() < deadline, "goprof never recorded:\n" + "".join(said)
        target.send_signal(signal.SIGUSR1)
        stdout, _ = target.communicate(timeout=120)
        _, err = goprof.communicate(timeout=120)
        assert goprof.returncode == 0, "".join(said) + err
        return "".join(before) + stdout, "".join(said) + err
    finally:
        for p in (goprof, target):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()


MEM_METHODS = {
    "go-sampler": ["--go-sampler", "--rate", "65536", "--goroutine-ids"],
    "span": ["--method", "span", "--rate", "65536"],
}


@pytest.mark.parametrize("method", list(MEM_METHODS))
def test_mem_split_by_label(build_id, method, tmp_path):
    """alloclabels' bytes by route (1:3 and a fifth unlabelled, by construction), as
    goprof mem sees them with Go's sampler (turned up to 64 KiB) and with the span
    method; goroutine ids with the first."""
    binary = gobuild.build("alloclabels", *build_id)
    out, stats = tmp_path / "mem.pb.gz", tmp_path / "s.json"
    stdout, err = profile_mem(binary, [*MEM_METHODS[method], "--stats", str(stats)],
                              ["-duration", "2s"], out)
    assert f"method {method}" in err, err
    truth_line = next(ln for ln in stdout.splitlines() if ln.startswith("truth "))
    truth = {k or None: v["bytes"] for k, v in json.loads(truth_line[6:]).items()}
    workers = {route or None: int(goid) for route, goid in WORKER_RE.findall(stdout)}
    prof = read_pprof(out)
    index = [prof.string_table[t.type] for t in prof.sample_type].index("alloc_space")

    allocs = by_function(prof, "main.allocate", index, anywhere=True)
    got, _ = split(allocs, "route")
    want = {k: 100.0 * v / sum(truth.values()) for k, v in truth.items()}
    assert want == pytest.approx(ROUTES)
    for route, truth_share in want.items():
        assert abs(got.get(route, 0.0) - truth_share) <= 3.0, (method, route, got, want)
    extra = {"route", "goroutine"} if "--goroutine-ids" in MEM_METHODS[method] else {"route"}
    for sample in prof.sample:
        keys = set(sample_labels(prof, sample)) - {"bytes"}
        assert MEM_BASE <= keys <= MEM_BASE | extra, keys
    if "goroutine" in extra:
        for labels, _ in allocs:
            assert labels.get("goroutine") == workers[labels.get("route")], (labels, workers)
    st = label_stats(stats)
    assert st["labels"]["capped"] == 0 and st["labels"]["unreadable"] == 0, st["labels"]
    summary_row(err, "labels")


# -- the awkward cases ------------------------------------------------------------------
EDGE_BUILDS = [("go1.26", "stripped"), ("go1.27", "pie")]


@pytest.mark.parametrize("build", EDGE_BUILDS, ids=lambda p: f"{p[0]}-{p[1]}")
def test_label_edge_cases(build, tmp_path):
    binary = gobuild.build("labeledges", *build)
    ours, theirs, stats = tmp_path / "goprof.pb.gz", tmp_path / "own.pprof", tmp_path / "s.json"
    res = run_goprof("cpu", "-F", "997", "--stats", str(stats), "-o", str(ours), "--",
                     str(binary.path), "-duration", "5s", "-cpuprofile", str(theirs),
                     "-cpurate", "1000", check=True)
    prof, go_prof = read_pprof(ours), read_pprof(theirs)
    many = {f"k{i:02d}": f"v{i:02d}" for i in range(12)}
    # The fixture first: runtime/pprof saw on each function the labels it was built with.
    # (main.burn is inlined into each spin function: it is the leaf, the spin its caller.)
    expected_own = {"main.spinNone": {}, "main.spinEmpty": {"empty": ""},
                    "main.spinMany": many, "main.spinLong": {LONG_KEY: LONG_VALUE}}
    for func, labels in expected_own.items():
        own = by_function(go_prof, func, anywhere=True)
        assert own and all(got == labels for got, _ in own), (func, own[:3])
    own_change = by_function(go_prof, "main.spinChange", anywhere=True)
    assert {got["phase"] for got, _ in own_change} == {"x", "y"}

    # goprof: no labels, pid/tid/comm only; an empty value kept as ""; the first 10 of
    # 12 labels (sorted by key); a long key and value cut to 64 and 128 bytes.
    expected = {**expected_own,
                "main.spinMany": dict(list(many.items())[:MAX_LABELS]),
                "main.spinLong": {LONG_KEY[:KEY_MAX]: LONG_VALUE[:VALUE_MAX]}}
    capped: dict[str, int] = {}
    for func, labels in expected.items():
        samples = by_function(prof, func, anywhere=True)
        assert samples, (func, "no samples")
        for got, _ in samples:
            assert set(got) >= CPU_BASE, got
            assert {k: v for k, v in got.items() if k not in CPU_BASE} == labels, (func, got)
        if func in ("main.spinMany", "main.spinLong"):
            capped[func] = sum(v for _, v in samples)
    # Labels that change as it runs: phase=x for one unit of work, phase=y for three.
    change = by_function(prof, "main.spinChange", anywhere=True)
    for got, _ in change:
        assert set(got) == CPU_BASE | {"phase"}, got
    phases, n = split(change, "phase")
    assert set(phases) == {"x", "y"}, phases
    assert abs(phases["x"] - 25.0) <= share_tolerance(25.0, n, 3.0), (phases, n)

    # Every sample of both capped goroutines is counted: the one with 12 labels and the
    # one whose key and value were cut (each sample, not once per label set or window).
    st = label_stats(stats)["labels"]
    total = sum(s.value[0] for s in prof.sample)
    assert sum(capped.values()) <= st["capped"] <= total, (st, capped, total)
    assert st["unreadable"] == 0, st
    summary_row(res.stderr, "labels")


@pytest.mark.parametrize("toolchain", list(gobuild.TOOLCHAINS))
def test_program_without_pprof(toolchain, tmp_path):
    """nopprof never imports runtime/pprof: no labels anywhere, goroutine ids all the
    same, on goprof cpu and goprof mem (span: its heap sampler is off)."""
    binary = gobuild.build("nopprof", toolchain, "stripped")
    out, stats = tmp_path / "cpu.pb.gz", tmp_path / "s.json"
    res = run_goprof("cpu", "-F", "997", "--goroutine-ids", "--stats", str(stats), "-o",
                     str(out), "--", str(binary.path), "-duration", "3s", check=True)
    prof = read_pprof(out)
    for sample in prof.sample:
        assert CPU_BASE <= set(sample_labels(prof, sample)) <= CPU_BASE | {"goroutine"}
    spin = by_function(prof, "main.spin")
    assert spin, res.stderr
    goids = {labels.get("goroutine") for labels, _ in spin}
    assert len(goids) == 1 and isinstance(next(iter(goids)), int), goids
    st = label_stats(stats)["labels"]
    assert st["capped"] == 0 and st["unreadable"] == 0, st

    out = tmp_path / "mem.pb.gz"
    res = run_goprof("mem", "--goroutine-ids", "--stats", str(stats), "-o", str(out), "--",
                     str(binary.path), "-duration", "3s", check=True)
    assert "method span" in res.stderr, res.stderr
    prof = read_pprof(out)
    churn = by_function(prof, "main.churn", anywhere=True)
    assert churn, res.stderr
    for labels, _ in churn:
        assert set(labels) - {"bytes"} == MEM_BASE | {"goroutine"}, labels
    assert len({labels["goroutine"] for labels, _ in churn}) == 1, churn[:5]
    st = label_stats(stats)["labels"]
    assert st["capped"] == 0 and st["unreadable"] == 0, st
