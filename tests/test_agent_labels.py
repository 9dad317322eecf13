"""goprof agent with pprof labels, goroutine ids and goroutine profiles, end to end: real
BPF, real Go programs (tests/fixtures/labelsplit, alloclabels, goparked) under private
names, the in-test Parca and Pyroscope servers and the directory sink, every pushed
profile decoded as its receiver decodes it."""

from __future__ import annotations

import re
import secrets
import shutil
import signal
import subprocess
from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path

from tests import gobuild
from tests.conftest import requires_root
from tests.helpers import read_pprof, sample_labels, share_tolerance, stacks
from tests.parca_server import ParcaServer
from tests.pyroscope_server import PyroscopeServer
from tests.test_agent import Agent, metric_values, stop_target, wait_for

pytestmark = requires_root

# labelsplit and alloclabels, by construction: route=/a 1 unit, /b 3, unlabelled (None) 1.
ROUTES: dict[str | None, float] = {"/a": 20.0, "/b": 60.0, None: 20.0}
WORKER_RE = re.compile(r"^worker route=(\S*) goroutine=(\d+)$")
# labelsplit's goroutines: main, its three workers, and os/signal's loop (signal.Notify).
LABELSPLIT_GOROUTINES = 5
DUMP_HEADER = re.compile(r"^goroutine \d+(?: gp=\S+ m=\S+(?: mp=\S+)?)? \[", re.M)


def private_copy(fixture: str, toolchain: str, variant: str, folder: Path) -> Path:
    """The fixture under a name of this run's own, so `--exe NAME` finds this test's
    processes only (comm keeps 15 characters: the names stay under)."""
    binary = gobuild.build(fixture, toolchain, variant)
    path = folder / (fixture[:5] + secrets.token_hex(4))
    shutil.copy2(binary.path, path)
    return path


def start(argv: list[str]) -> tuple[subprocess.Popen, dict]:
    """The program, once it says ready; its workers' goroutine ids by route."""
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    return p, read_workers(p)


def read_workers(p: subprocess.Popen) -> dict[str | None, int]:
    """The goroutine ids of the workers (None: the unlabelled one) a running program
    prints as "worker route=R goroutine=N" lines, up to its "ready"."""
    assert p.stdout is not None
    workers: dict[str | None, int] = {}
    for line in p.stdout:
        m = WORKER_RE.match(line.strip())
        if m:
            workers[m.group(1) or None] = int(m.group(2))
        if line.startswith("ready"):
            return workers
    raise AssertionError(f"{p.args[0]} exited before saying ready")


def function_samples(profiles, func: str, index: int = 0, anywhere: bool = False
                     ) -> list[tuple[dict, int]]:
    """(labels, value) of every sample, over these profiles, whose leaf (or, with
    anywhere, any frame) is `func`."""
    out = []
    for prof in profiles:
        for sample, (names, _) in zip(prof.sample, stacks(prof), strict=True):
            if names and (func in names if anywhere else names[0] == func):
                out.append((sample_labels(prof, sample), sample.value[index]))
    return out


def route_split(samples: list[tuple[dict, int]]) -> tuple[dict[str | None, float], int]:
    totals: Counter = Counter()
    for labels, value in samples:
        totals[labels.get("route")] += value
    whole = sum(totals.values())
    assert whole > 0, "no samples"
    return {k: 100.0 * v / whole for k, v in totals.items()}, whole


def goroutine_groups(prof) -> Counter:
    """(labels as sorted pairs) -> goroutines, over one goroutine profile."""
    out: Counter = Counter()
    for sample in prof.sample:
        out[tuple(sorted(sample_labels(prof, sample).items()))] += sample.value[0]
    return out


def sample_type(prof) -> list[tuple[str, str]]:
    st = prof.string_table
    return [(st[t.type], st[t.unit]) for t in prof.sample_type]


def test_labels_goroutine_ids_and_goroutine_profiles_reach_parca_and_pyroscope(
        tmp_path: Path) -> None:
    """labelsplit under the agent with --goroutine-ids --goroutines: main.work's CPU
    splits by route as built in what Parca and Pyroscope receive, each route's samples
    carry its worker's goroutine id, and every window brings a goroutine profile
    (Parca's `goroutine`) of the program's five goroutines, the workers' labels on."""
    path = private_copy("labelsplit", "go1.27", "pie", tmp_path)
    target, workers = start([str(path), "-duration", "60s"])
    assert set(workers) == set(ROUTES), workers
    try:
        with ParcaServer() as parca, PyroscopeServer() as pyro:
            agent = Agent("--exe", path.name, "--parca", parca.url, "--insecure",
                          "--pyroscope", pyro.url, "--spool-dir", str(tmp_path / "spool"),
                          "--goroutine-ids", "--goroutines", "-F", "497", "--duration", "5s")
            picked = agent.wait_log("process picked up", pid=target.pid)
            metrics = wait_for(
                lambda: metric_values(agent.metrics_url),
                lambda m: m.get('goprof_windows_total{kind="goroutines"}', 0) >= 2, agent)
            assert agent.wait() == 0, "".join(agent.raw)
            parca_got, pyro_got = parca.received, pyro.received
            rejected = parca.rejected
    finally:
        stop_target(target)
    assert picked["pprof_labels"] is True, picked
    assert rejected == []
    mine = [r for r in parca_got if r.labels["pid"] == str(target.pid)]
    by_name = defaultdict(list)
    for r in mine:
        by_name[r.labels["__name__"]].append(r.profile)
    assert set(by_name) == {"process_cpu", "goroutine"}, set(by_name)

    # CPU: the split by route, and the worker ids.
    cpu = by_name["process_cpu"]
    work = function_samples(cpu, "main.work")
    split, n = route_split(work)
    print(f"cpu split {split} of {n} samples")
    for route, truth in ROUTES.items():
        assert abs(split.get(route, 0.0) - truth) <= share_tolerance(truth, n, 4.0), \
            (route, split, n)
    for labels, _ in work:
        assert labels.get("goroutine") == workers[labels.get("route")], (labels, workers)
    for prof in cpu:
        for sample in prof.sample:
            labels = sample_labels(prof, sample)
            assert {"pid", "tid", "comm"} <= set(labels) <= \
                {"pid", "tid", "comm", "route", "goroutine"}, labels
            if "route" in labels:
                assert labels["goroutine"] == workers[labels["route"]], (labels, workers)

    # Goroutines: one profile per window the process ran in, each of all five.
    gor = by_name["goroutine"]
    assert len(gor) == len(cpu), (len(gor), len(cpu))
    for prof in gor:
        assert sample_type(prof) == [("goroutine", "count")]
        groups = goroutine_groups(prof)
        assert sum(groups.values()) == LABELSPLIT_GOROUTINES, groups
        assert groups[(("route", "/a"),)] == 1 and groups[(("route", "/b"),)] == 1, groups

    # Pyroscope got the same windows: CPU with the labels, the goroutine profiles whole
    # (Pyroscope names a pprof's type from its sample types: goroutine -> goroutines).
    pyro_mine = [r for r in pyro_got if r.labels.get("pid") == str(target.pid)]
    pyro_cpu = [r.profile for r in pyro_mine if sample_type(r.profile)[0][0] == "samples"]
    pyro_gor = [r.profile for r in pyro_mine if sample_type(r.profile)[0][0] == "goroutine"]
    assert len(pyro_cpu) == len(cpu) and len(pyro_gor) == len(gor), \
        (len(pyro_cpu), len(cpu), len(pyro_gor), len(gor))
    assert route_split(function_samples(pyro_cpu, "main.work")) == (split, n)
    assert all(sum(goroutine_groups(p).values()) == LABELSPLIT_GOROUTINES for p in pyro_gor)

    # The metrics: label sets counted, none capped or unread; the goroutine reads timed.
    assert metrics['goprof_label_sets_total{kind="cpu"}'] >= 2, metrics
    assert metrics['goprof_labels_capped_total{kind="cpu"}'] == 0
    assert metrics['goprof_labels_unread_total{kind="cpu"}'] == 0
    reads = metrics["goprof_goroutine_read_seconds_count"]
    assert reads >= 2 and metrics["goprof_goroutine_read_seconds_sum"] / reads < 0.5, metrics
    assert metrics['goprof_samples_total{kind="goroutines"}'] == \
        LABELSPLIT_GOROUTINES * metrics['goprof_windows_total{kind="goroutines"}']
    summary = agent.summary()
    assert summary["label_sets"] >= 2 and summary["labels_unread"] == 0, summary
    assert summary["goroutine_reads"] >= len(gor), summary


def test_allocation_labels_and_goroutine_counts_in_a_directory(tmp_path: Path) -> None:
    """alloclabels and goparked under the agent with --mem --goroutine-ids --goroutines
    writing to a directory: alloclabels' bytes split by route as built, each route's
    allocations carrying its worker's id; goparked's goroutine profiles (kind goroutines
    in the file name) hold as many goroutines as its own runtime/pprof dump, its labelled
    waiters under their labels."""
    alloc = private_copy("alloclabels", "go1.26", "stripped", tmp_path)
    parked = private_copy("goparked", "go1.26", "normal", tmp_path)
    out = tmp_path / "profiles"
    allocating, workers = start([str(alloc), "-duration", "60s"])
    assert set(workers) == set(ROUTES), workers
    dump = tmp_path / "dump"
    waiting, _ = start([str(parked), str(dump)])
    try:
        waiting.send_signal(signal.SIGUSR1)  # its own goroutine profile (debug=2)
        start_line = waiting.stdout.readline() if waiting.stdout else ""
        assert start_line.strip() == "dumped", start_line
        own = len(DUMP_HEADER.findall(dump.read_text()))
        agent = Agent("--exe", alloc.name, "--exe", parked.name, "--mem", "--goroutine-ids",
                      "--goroutines", "--output-dir", str(out), "--duration", "4s")
        picked = agent.wait_log("process picked up", pid=allocating.pid)
        assert agent.wait() == 0, "".join(agent.raw)
    finally:
        stop_target(allocating)
        stop_target(waiting)
    # Its heap sampler is off (runtime.MemProfileRate reads 0): the span method, whose
    # kernel side reads labels as go-sampler's does.
    assert picked["mem_method"] in ("span", "go-sampler"), picked

    def files(pid: int, kind: str) -> list:
        return [read_pprof(f) for f in sorted(out.glob(f"*-{pid}-*.{kind}.pb.gz"))]

    mem = files(allocating.pid, "mem")
    assert len(mem) >= 3, sorted(p.name for p in out.iterdir())
    index = [n for n, _ in sample_type(mem[0])].index("alloc_space")
    allocs = function_samples(mem, "main.allocate", index, anywhere=True)
    split, _ = route_split(allocs)
    for route, truth in ROUTES.items():
        assert abs(split.get(route, 0.0) - truth) <= 4.0, (route, split)
    for labels, _ in allocs:
        assert labels.get("goroutine") == workers[labels.get("route")], (labels, workers)

    # goparked sleeps (no CPU windows): its goroutines are read every window all the same.
    gor = files(waiting.pid, "goroutines")
    assert len(gor) >= 3, sorted(p.name for p in out.iterdir())
    for prof in gor:
        assert sample_type(prof) == [("goroutine", "count")]
        groups = goroutine_groups(prof)
        assert sum(groups.values()) == own, (groups, own)
        assert groups[(("role", "chan"), ("team", "a"))] == 3, groups
        assert groups[(("role", "select"),)] == 2, groups
    assert len(files(allocating.pid, "goroutines")) >= 3, "every process, every window"
    print(f"alloc split {split}; goparked: {own} goroutines, {len(gor)} windows")


def test_labels_and_goroutines_follow_an_exec(tmp_path: Path) -> None:
    """execer (Go, no labels) execs labelsplit in its place: the kernel drops the old
    program's label offsets at the exec and the agent gives it the new program's when
    it picks the pid up anew, so the windows from then on split main.work by route as
    built, with the workers' ids, and the goroutine profiles are the new program's."""
    execer = private_copy("execer", "go1.26", "normal", tmp_path)
    program = private_copy("labelsplit", "go1.26", "stripped", tmp_path)
    out = tmp_path / "profiles"
    target, _ = start([str(execer), "-wait", "-before", "1s", "--", str(program),
                       "-duration", "60s"])
    try:
        agent = Agent("--pid", str(target.pid), "--goroutine-ids", "--goroutines",
                      "--output-dir", str(out), "-F", "497", "--duration", "7s")
        agent.wait_log("process picked up", pid=target.pid, exe=str(execer))
        target.send_signal(signal.SIGUSR1)
        anew = agent.wait_log("process picked up", pid=target.pid, exe=str(program))
        workers = read_workers(target)  # the new program's, on the same stdout
        assert agent.wait() == 0, "".join(agent.raw)
    finally:
        stop_target(target)
    assert anew["pprof_labels"] is True, anew
    assert agent.logged("process exec'd: profiled anew"), "".join(agent.raw)
    assert set(workers) == set(ROUTES), workers
    since = int(datetime.fromisoformat(anew["time"].replace("Z", "+00:00")).timestamp() * 1e9)

    def windows(kind: str) -> list:
        profiles = [read_pprof(f) for f in sorted(out.glob(f"*-{target.pid}-*.{kind}.pb.gz"))]
        return [p for p in profiles if p.time_nanos >= since]  # the new program's, labelled

    cpu = windows("cpu")
    assert len(cpu) >= 3, sorted(p.name for p in out.iterdir())
    work = function_samples(cpu, "main.work")
    split, n = route_split(work)
    for route, truth in ROUTES.items():
        assert abs(split.get(route, 0.0) - truth) <= share_tolerance(truth, n, 4.0), \
            (route, split, n)
    for labels, _ in work:
        assert labels.get("goroutine") == workers[labels.get("route")], (labels, workers)
    gor = windows("goroutines")
    assert len(gor) >= 3
    for prof in gor:
        assert sum(goroutine_groups(prof).values()) == LABELSPLIT_GOROUTINES
    print(f"after the exec: cpu split {split} of {n} samples, {len(gor)} goroutine windows")
