"""goprof agent, end to end: real BPF, real Go programs, in-test Parca and Pyroscope
servers that apply their documented validation, and the agent as users run it (a
process, stopped by SIGTERM or killed)."""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import requests
from goprof.bpf import syscalls

from tests import gobuild
from tests.conftest import requires_root
from tests.helpers import (
    bpf_programs_of,
    go_tool_pprof,
    goprof_command,
    read_pprof,
    share_tolerance,
    wait_ready,
)
from tests.parca_server import ParcaServer
from tests.pyroscope_server import PyroscopeServer

pytestmark = requires_root

WINDOW = "1s"
# cpusplit, by construction: gamma's loop is main.mix inlined into it.
TRUTH = {"main.alpha": 20.0, "main.beta": 30.0, "gamma+mix": 50.0}
LABELS = {"service_name", "pid", "comm", "executable", "build_id", "go_version", "hostname"}
AGENT_PROGRAMS = {"on_cpu_sample", "on_sampled_alloc", "on_malloc", "on_refill",
                  "on_alloc_large"}


class Agent:
    """`goprof agent` as a process; its JSON log lines collected as they come."""

    def __init__(self, *args: str, env: dict | None = None) -> None:
        self.proc = subprocess.Popen(
            [*goprof_command(), "agent", "--log-format", "json", "--window", WINDOW,
             "--metrics-addr", "127.0.0.1:0", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **(env or {})})
        self.lines: list[dict] = []
        self.raw: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.raw.append(line)
            try:
                self.lines.append(json.loads(line))
            except ValueError:
                pass

    def wait_log(self, msg: str, timeout: float = 20.0, prefix: bool = False,
                 **fields) -> dict:
        """The first log line whose msg is msg (starts with it, with prefix=True) and
        whose fields have these values."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for doc in list(self.lines):
                text = doc.get("msg", "")
                if ((text.startswith(msg) if prefix else text == msg)
                        and all(doc.get(k) == v for k, v in fields.items())):
                    return doc
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.05)
        raise AssertionError(f"no log line {msg!r} {fields} in:\n{''.join(self.raw)}")

    def logged(self, msg: str) -> list[dict]:
        return [d for d in self.lines if d.get("msg") == msg]

    @property
    def metrics_url(self) -> str:
        return self.wait_log("metrics served")["url"]

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, as systemd and Kubernetes stop it; its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float = 60.0) -> int:
        """Its exit code once it ends by itself (--duration)."""
        rc = self.proc.wait(timeout)
        self._reader.join(5)
        return rc

    def summary(self) -> dict:
        return self.wait_log("agent stopped", timeout=1)


def start_target(binary: gobuild.GoBinary, *args: str) -> subprocess.Popen:
    p = subprocess.Popen([str(binary.path), *args], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True)
    wait_ready(p)
    return p


def stop_target(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.terminate()
        p.wait(10)


def wait_for(get, done, agent: Agent, timeout: float = 30.0):
    """get() once done(get()) holds, polled while the agent runs (a condition, where a
    fixed sleep would assume an idle host)."""
    deadline = time.monotonic() + timeout
    while True:
        value = get()
        if done(value):
            return value
        assert time.monotonic() < deadline and agent.proc.poll() is None, \
            (value, "".join(agent.raw))
        time.sleep(0.1)


def metric_values(url: str) -> dict[str, float]:
    """name{labels} -> value of every sample on the page."""
    text = requests.get(url, timeout=5).text
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            values[key] = float(value)
    return values


def hot_split(profiles) -> tuple[dict[str, float], int, float]:
    """cpusplit's three functions' shares among themselves (TRUTH's keys), how many
    samples they hold, and their share of all samples. Among themselves, as in
    tests/test_cpu.py: samples elsewhere (the kernel switching threads in, the runtime)
    grow when the host is busy, while the three stay split as built."""
    flat: Counter[str] = Counter()
    for prof in profiles:
        strings = prof.string_table
        funcs = {f.id: strings[f.name] for f in prof.function}
        locs = {loc.id: loc for loc in prof.location}
        for s in prof.sample:
            if s.location_id and locs[s.location_id[0]].line:
                flat[funcs[locs[s.location_id[0]].line[0].function_id]] += s.value[0]
    flat["gamma+mix"] = flat["main.gamma"] + flat["main.mix"]
    hot = sum(flat[fn] for fn in TRUTH)
    total = sum(n for fn, n in flat.items() if fn != "gamma+mix")
    return ({fn: 100.0 * flat[fn] / (hot or 1) for fn in TRUTH}, hot,
            100.0 * hot / (total or 1))


def agent_programs(ids: set[int]) -> list[str]:
    """Names of the agent's programs still loaded among these ids."""
    return [p.name for p in syscalls.loaded_programs()
            if p.name in AGENT_PROGRAMS and p.id in ids]


# The name this module's cpusplit copies run under: `--exe SPLIT` then finds this test's
# processes only, not the cpusplit of another test run on the same host.
SPLIT = "split" + secrets.token_hex(4)  # 13 characters: comm keeps 15


def private_copy(binary: gobuild.GoBinary, folder: Path) -> gobuild.GoBinary:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SPLIT
    shutil.copy2(binary.path, path)
    return dataclasses.replace(binary, path=path)


@pytest.fixture(scope="module")
def cpusplit_stripped_pie(tmp_path_factory) -> gobuild.GoBinary:
    binary = gobuild.build("cpusplit", "go1.27", "pie")  # "pie" is stripped too
    return private_copy(binary, tmp_path_factory.mktemp("pie"))


@pytest.fixture(scope="module")
def cpusplit(tmp_path_factory) -> gobuild.GoBinary:
    binary = gobuild.build("cpusplit", "go1.26", "stripped")
    return private_copy(binary, tmp_path_factory.mktemp("stripped"))


def test_every_window_of_every_target_reaches_parca_pyroscope_and_a_directory(
        tmp_path: Path, cpusplit, cpusplit_stripped_pie) -> None:
    targets = [start_target(cpusplit), start_target(cpusplit_stripped_pie)]
    pids = {str(t.pid) for t in targets}
    out = tmp_path / "profiles"
    out.mkdir()
    try:
        with ParcaServer() as parca, PyroscopeServer() as pyro:
            agent = Agent("--exe", SPLIT, "--parca", parca.url, "--insecure",
                          "--pyroscope", pyro.url, "--output-dir", str(out),
                          "--spool-dir", str(tmp_path / "spool"), "--service-name", "split",
                          "--duration", "5s", "-F", "997")  # samples enough for the split
            for pid in pids:
                agent.wait_log("process picked up", pid=int(pid))
            metrics = metric_values(agent.metrics_url)
            health = requests.get(agent.metrics_url.replace("/metrics", "/healthz"), timeout=5)
            assert agent.wait() == 0, "".join(agent.raw)
            parca_got = parca.received
            pyro_got = pyro.received
    finally:
        for t in targets:
            stop_target(t)
    assert health.status_code == 200
    assert metrics and all(k.startswith("goprof_") for k in metrics), list(metrics)[:20]
    assert parca.rejected == []
    summary = agent.summary()
    windows = summary["windows"]
    assert windows >= 2 * 4, summary  # two targets, five 1 s windows (the first may be short)
    assert summary["parca_delivered"] == windows
    assert summary["pyroscope_delivered"] == windows
    assert summary["dir_delivered"] == windows
    assert len(parca_got) == len(pyro_got) == windows
    files = sorted(out.iterdir())
    assert len(files) == windows

    by_pid = defaultdict(list)
    for r in parca_got:
        assert r.labels["__name__"] == "process_cpu"
        assert LABELS <= set(r.labels), r.labels
        assert r.labels["service_name"] == "split"
        assert r.labels["go_version"].startswith("go1.2")
        by_pid[r.labels["pid"]].append(r.profile)
    assert set(by_pid) == pids
    for pid, profiles in by_pid.items():
        starts = [p.time_nanos for p in profiles]
        assert starts == sorted(starts) and len(set(starts)) == len(starts)  # in order, no gaps
        for a, b in zip(profiles, profiles[1:], strict=False):
            assert a.time_nanos + a.duration_nanos == b.time_nanos, "windows must touch"
        # Five 1 s windows at 997 Hz: ~5000 samples on an idle host, a third of that
        # when two cores are shared with a Go build (main.beta strayed 7 points at 99 Hz).
        split, samples, hot = hot_split(profiles)
        assert samples >= 200 and hot >= 80.0, (pid, samples, hot, split)
        for fn, want in TRUTH.items():
            assert abs(split[fn] - want) < share_tolerance(want, samples, 6.0), \
                (pid, samples, split)
    for r in pyro_got:
        assert r.service == "split" and r.labels["pid"] in pids
        assert r.from_ <= r.until
    # go tool pprof reads what the directory holds.
    assert "main.alpha" in go_tool_pprof("-top", str(files[-1]))


def test_allocations_arrive_as_memory_profiles(tmp_path: Path) -> None:
    binary = gobuild.build("allocsplit", "go1.26", "normal")
    target = subprocess.Popen([str(binary.path), "-duration", "30s"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    wait_ready(target)
    try:
        with ParcaServer() as parca, PyroscopeServer() as pyro:
            agent = Agent("--pid", str(target.pid), "--mem", "--parca", parca.url,
                          "--insecure", "--pyroscope", pyro.url,
                          "--spool-dir", str(tmp_path / "spool"), "--duration", "4s")
            picked = agent.wait_log("process picked up", pid=target.pid)
            assert agent.wait() == 0, "".join(agent.raw)
            parca_got, pyro_got = parca.received, pyro.received
    finally:
        stop_target(target)
    assert picked["mem_method"] == "span"
    mem = [r for r in parca_got if r.labels["__name__"] == "memory"]
    assert len(mem) >= 3, [r.labels["__name__"] for r in parca_got]
    types = [mem[0].profile.string_table[t.type] for t in mem[0].profile.sample_type]
    assert types == ["alloc_objects", "alloc_space"]
    names = {mem[0].profile.string_table[f.name] for p in mem for f in p.profile.function}
    assert any(n.startswith("main.") for n in names), names
    pyro_mem = [r for r in pyro_got if r.labels.get("__delta__") == "false"]
    assert len(pyro_mem) == len(mem)


def test_sink_down_at_start_then_up_gets_every_window_in_order(tmp_path: Path, cpusplit
                                                                ) -> None:
    parca = ParcaServer().start()
    url = parca.url
    parca.stop()  # the port is known, nothing listens: Parca is down
    target = start_target(cpusplit)
    try:
        agent = Agent("--pid", str(target.pid), "--parca", url, "--insecure",
                      "--spool-dir", str(tmp_path / "spool"))
        agent.wait_log("process picked up", pid=target.pid)
        # windows while Parca is down (waited for: a busy host delivers them late)
        spooled = wait_for(lambda: list((tmp_path / "spool" / "parca").glob("*.window")),
                           lambda found: len(found) >= 2, agent)
        parca.start()
        # The agent retries with backoff (1 s doubling, jittered) and grpc's reconnect
        # backoff adds up to 5 s more: wait for it to notice, not a fixed time.
        agent.wait_log("sink parca back", timeout=40, prefix=True)
        time.sleep(1.5)  # one more window delivered from memory, after the spooled ones
        assert agent.stop() == 0, "".join(agent.raw)
        got = parca.received
        parca.stop()
    finally:
        stop_target(target)
    assert len(spooled) >= 2, "windows must wait on disk while Parca is down"
    summary = agent.summary()
    assert summary["parca_dropped"] == 0
    assert len(got) == summary["windows"] == summary["parca_delivered"]
    starts = [r.profile.time_nanos for r in got]
    assert starts == sorted(starts)
    assert list((tmp_path / "spool" / "parca").glob("*.window")) == []
    assert any("down" in d.get("msg", "") for d in agent.lines), "the outage is logged"


def test_spooled_windows_survive_an_agent_restart_in_order(tmp_path: Path, cpusplit) -> None:
    parca = ParcaServer().start()
    url = parca.url
    parca.stop()
    spool = tmp_path / "spool"
    target = start_target(cpusplit)
    try:
        first = Agent("--pid", str(target.pid), "--parca", url, "--insecure",
                      "--spool-dir", str(spool), "--duration", "3s")
        assert first.wait() == 0, "".join(first.raw)
        left = sorted((spool / "parca").glob("*.window"))
        assert len(left) == first.summary()["windows"] >= 2
        parca.start()
        second = Agent("--pid", str(target.pid), "--parca", url, "--insecure",
                       "--spool-dir", str(spool), "--duration", "3s")
        assert second.wait() == 0, "".join(second.raw)
        got = parca.received
        parca.stop()
    finally:
        stop_target(target)
    total = first.summary()["windows"] + second.summary()["windows"]
    assert len(got) == total
    starts = [r.profile.time_nanos for r in got]
    assert starts == sorted(starts), "the first run's windows come first, in order"


def test_a_full_spool_drops_counted_and_the_agent_keeps_going(tmp_path: Path, cpusplit
                                                                ) -> None:
    parca = ParcaServer().start()
    url = parca.url
    parca.stop()
    target = start_target(cpusplit)
    try:
        agent = Agent("--pid", str(target.pid), "--parca", url, "--insecure",
                      "--spool-dir", str(tmp_path / "spool"), "--spool-size", "3K",
                      "--queue-size", "1", "--duration", "8s")
        agent.wait_log("process picked up", pid=target.pid)
        url = agent.metrics_url
        # the drops as they are counted (a busy host makes windows late: not a fixed time)
        metrics = wait_for(lambda: metric_values(url),
                           lambda m: m['goprof_windows_dropped_total{sink="parca"}'] > 0,
                           agent)
        assert agent.wait() == 0, "".join(agent.raw)
    finally:
        stop_target(target)
    summary = agent.summary()
    assert summary["parca_dropped"] > 0, summary
    assert metrics['goprof_windows_dropped_total{sink="parca"}'] > 0
    assert summary["windows"] >= 4, "profiling went on while the sink was down"


def test_thirty_short_lived_processes_are_profiled_and_let_go(tmp_path: Path, cpusplit
                                                             ) -> None:
    out = tmp_path / "profiles"
    out.mkdir()
    agent = Agent("--exe", SPLIT, "--output-dir", str(out), "--kernel")
    try:
        url = agent.metrics_url
        agent.wait_log("agent started")
        fds_before = len(os.listdir(f"/proc/{agent.proc.pid}/fd"))
        pids = []
        for _ in range(6):  # 6 batches of 5, each living 2.5 s
            batch = [subprocess.Popen([str(cpusplit.path), "-duration", "2.5s"],
                                      stdout=subprocess.DEVNULL) for _ in range(5)]
            pids += [p.pid for p in batch]
            for p in batch:
                p.wait(20)
        for pid in pids:
            agent.wait_log("process let go", pid=pid, timeout=10)
        time.sleep(1.5)
        metrics = metric_values(url)
        fds_after = len(os.listdir(f"/proc/{agent.proc.pid}/fd"))
        assert agent.stop() == 0, "".join(agent.raw)
    finally:
        if agent.proc.poll() is None:
            agent.proc.kill()
    profiled = {f.name.split("-")[1] for f in out.iterdir()}
    assert {str(p) for p in pids} <= profiled, "every process got at least one profile"
    assert metrics["goprof_processes_profiled"] == 0
    assert metrics["goprof_processes_let_go_total"] == 30
    assert metrics["goprof_symbolizer_cache_binaries"] <= 1  # only the vDSO may stay
    assert fds_after <= fds_before + 1, (fds_before, fds_after)


def test_kill_9_leaves_nothing_attached(tmp_path: Path, cpusplit) -> None:
    """The agent's own programs (by id: other goprof runs on the host load programs of
    the same names) are gone once it is killed."""
    target = start_target(cpusplit)
    try:
        agent = Agent("--pid", str(target.pid), "--mem", "--output-dir", str(tmp_path))
        agent.wait_log("process picked up", pid=target.pid)
        ours = bpf_programs_of(agent.proc.pid)
        assert "on_cpu_sample" in agent_programs(ours)
        agent.proc.kill()
        agent.proc.wait(10)
        deadline = time.monotonic() + 5
        while agent_programs(ours) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert agent_programs(ours) == []
        assert target.poll() is None, "the target keeps running"
    finally:
        stop_target(target)


@pytest.mark.parametrize(("args", "config", "says"), [
    ([], None, "nowhere to send profiles"),
    (["--config", "{cfg}"], "parca: [unclosed\n", "not valid YAML"),
    (["--config", "{cfg}"], "outptu-dir: /tmp\n", "unknown setting 'outptu-dir'"),
    (["--config", "{cfg}"], "window: [1, 2]\n", "window"),
    (["--output-dir", "{file}/sub"], None, "--output-dir"),
    (["--output-dir", "{tmp}", "--window", "soon"], None, "--window 'soon'"),
    (["--output-dir", "{tmp}", "--output-template", "{{nope}}.pb.gz"], None, "{nope}"),
    (["--parca", "http://[bad"], None, "parca"),
    (["--output-dir", "{tmp}", "--metrics-addr", "nowhere"], None, "--metrics-addr"),
])
def test_bad_settings_give_one_line_and_exit_2(tmp_path: Path, args, config, says) -> None:
    cfg = tmp_path / "agent.yaml"
    if config is not None:
        cfg.write_text(config)
    (tmp_path / "file").write_text("x")
    argv = [a.format(cfg=cfg, file=tmp_path / "file", tmp=tmp_path) for a in args]
    res = subprocess.run([*goprof_command(), "agent", *argv, "--duration", "1s",
                          "--spool-dir", str(tmp_path / "spool")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2, res.stderr
    assert says in " ".join(res.stderr.split()), res.stderr
    assert "Traceback" not in res.stderr


def test_config_file_settings_apply_and_flags_override_them(tmp_path: Path, cpusplit) -> None:
    out = tmp_path / "profiles"
    out.mkdir()
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(f"output-dir: {out}\nexe: [{SPLIT}]\nwindow: 5s\n"
                   "output-template: '{kind}-{pid}-{time}.pb.gz'\n")
    target = start_target(cpusplit)
    try:
        agent = Agent("--config", str(cfg), "--duration", "3s")  # --window 1s overrides 5s
        assert agent.wait() == 0, "".join(agent.raw)
    finally:
        stop_target(target)
    files = [f.name for f in out.iterdir()]
    assert len(files) >= 2 and all(f.startswith(f"cpu-{target.pid}-") for f in files), files
    # 1 s windows, not 5 s (a busy host may make one a little longer)
    assert read_pprof(out / files[0]).duration_nanos < 3e9


def test_cpu_exe_with_a_pid_template_writes_one_file_per_process(tmp_path: Path, cpusplit
                                                                  ) -> None:
    targets = [start_target(cpusplit), start_target(cpusplit)]
    try:
        res = subprocess.run([*goprof_command(), "cpu", "--exe", SPLIT, "-d", "1s",
                              "-o", str(tmp_path / "{exe}-{pid}-{time}.{kind}.pb.gz")],
                             capture_output=True, text=True, timeout=60)
    finally:
        for t in targets:
            stop_target(t)
    assert res.returncode == 0, res.stderr
    # by pid as a number: pids cross a power of ten ("10000" sorts before "9993" as text)
    files = sorted((f.name for f in tmp_path.iterdir()), key=lambda name: int(name.split("-")[1]))
    assert [f.split("-")[:2] for f in files] == [[SPLIT, str(t.pid)]
                                                 for t in sorted(targets, key=lambda t: t.pid)]
    for f in files:
        assert f.endswith(".cpu.pb.gz")
        prof = read_pprof(tmp_path / f)
        pid = f.split("-")[1]
        labels = {prof.string_table[lab.str] for s in prof.sample for lab in s.label
                  if prof.string_table[lab.key] == "pid"}
        assert labels == {pid}, "each file holds its own process only"


def test_exe_that_nothing_runs_is_a_clear_error(tmp_path: Path) -> None:
    res = subprocess.run([*goprof_command(), "cpu", "--exe", "no-such-program-xyz", "-d", "1s"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert "no running process runs that executable" in " ".join(res.stderr.split())


def test_a_non_go_process_is_skipped_unless_asked_for_by_pid(tmp_path: Path) -> None:
    exe = tmp_path / "spin"
    subprocess.run(["gcc", "-O1", "-o", str(exe), str(gobuild.FIXTURES / "spin" / "spin.c")],
                   check=True)
    out = tmp_path / "out"
    out.mkdir()
    spin = subprocess.Popen([str(exe), "30"])
    try:
        everything = Agent("--comm", "spin", "--output-dir", str(out), "--duration", "2s",
                           "--spool-dir", str(tmp_path / "spool"))
        assert everything.wait() == 0, "".join(everything.raw)
        assert not everything.logged("process picked up")
        asked = Agent("--pid", str(spin.pid), "--mem", "--output-dir", str(out),
                      "--duration", "3s")
        picked = asked.wait_log("process picked up", pid=spin.pid)
        assert asked.wait() == 0, "".join(asked.raw)
    finally:
        spin.kill()
        spin.wait()
    assert "go_version" not in picked or not picked["go_version"]
    assert asked.logged("no allocation profile for this process (CPU only)")
    files = list(out.iterdir())
    assert files, "the process asked for by pid is profiled for CPU"
    assert "spin_burn" in go_tool_pprof("-top", str(files[0]))


def test_a_wrapper_that_execs_a_go_program_is_picked_up(tmp_path: Path, cpusplit) -> None:
    # An entrypoint script that sets things up, then `exec`s the service: the agent sees
    # a shell at that pid first, and the Go program later at the same pid.
    out = tmp_path / "out"
    out.mkdir()
    agent = Agent("--output-dir", str(out), "--spool-dir", str(tmp_path / "spool"))
    try:
        agent.wait_log("agent started")
        wrapper = subprocess.Popen(["/bin/sh", "-c", f"sleep 2.5; exec {cpusplit.path}"],
                                   stdout=subprocess.PIPE, text=True)
        try:
            picked = agent.wait_log("process picked up", pid=wrapper.pid, timeout=15)
            wait_ready(wrapper)
            time.sleep(1.5)
        finally:
            stop_target(wrapper)
    finally:
        assert agent.stop() == 0, "".join(agent.raw)
    assert picked["exe"] == str(cpusplit.path)
    assert any(f.name.startswith(f"{SPLIT}-{wrapper.pid}-") for f in out.iterdir())
