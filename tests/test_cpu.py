"""goprof cpu end to end: real BPF, real Go programs, checked against the truth
(the fixture's CPU split by construction) and against runtime/pprof's profile of
the same run."""

from __future__ import annotations

import json
import signal
import subprocess
import time

from goprof.bpf.syscalls import loaded_programs
from goprof.kinds.cpu.recorder import PROGRAM

from tests import gobuild
from tests.conftest import requires_root
from tests.helpers import (
    bpf_programs_of,
    flat_shares,
    go_tool_pprof,
    goprof_command,
    read_pprof,
    run_goprof,
    share_tolerance,
    stacks,
    start,
    wait_ready,
)

pytestmark = requires_root

# By construction (tests/fixtures/cpusplit): alpha 2, beta 3, gamma (with main.mix
# inlined into it) 5 units of the same work.
TRUTH = {"main.alpha": 20.0, "main.beta": 30.0, "gamma+mix": 50.0}


def _grouped(shares: dict[str, float]) -> dict[str, float]:
    return {
        "main.alpha": shares.get("main.alpha", 0.0),
        "main.beta": shares.get("main.beta", 0.0),
        "gamma+mix": shares.get("main.gamma", 0.0) + shares.get("main.mix", 0.0),
    }


def _among(shares: dict[str, float], names: tuple[str, ...]) -> dict[str, float]:
    """Each function's share of the samples in `names` alone."""
    total = sum(shares.get(n, 0.0) for n in names) or 1.0
    return {n: 100 * shares.get(n, 0.0) / total for n in names}


def test_cpu_split_matches_truth_and_runtime_pprof(cpusplit: gobuild.GoBinary, tmp_path):
    """Same run, both profilers at ~1 kHz (8 s: about 8000 samples each).

    goprof is held to the truth within 3 points. runtime/pprof is the noisier of
    the two here: over identical 8 s runs on this VM its per-function shares moved
    by up to 4.6 points (main.beta 26.7-31.3 %, at 500 and 1000 Hz), goprof's by
    0.8; so the comparison with it allows 5 points per function."""
    ours = tmp_path / "goprof.pb.gz"
    theirs = tmp_path / "runtime.pprof"
    res = run_goprof("cpu", "-F", "997", "-o", str(ours), "--",
                     str(cpusplit.path), "-duration", "8s", "-cpuprofile", str(theirs),
                     "-cpurate", "1000", check=True)
    assert "every target exited" in res.stderr

    prof = read_pprof(ours)
    go_prof = read_pprof(theirs)
    mine = flat_shares(prof)
    go = flat_shares(go_prof)
    # The truth is the split of the program's own work. Samples that land elsewhere
    # (the kernel switching its threads in, the runtime) grow when the host is busy:
    # a loaded CI machine put 8 % there, with the three still exactly 2:3:5 among
    # themselves. So: the three hold nearly all samples, and split as built.
    grouped = _grouped(mine)
    hot = sum(grouped.values())
    assert hot >= 85.0, (grouped, others(prof))
    # ~8000 samples when the host is idle; a busy host leaves the target less CPU time,
    # so fewer samples, and a wider (statistical) tolerance than 3 points.
    hot_samples = round(hot / 100 * sum(s.value[0] for s in prof.sample))
    for name, truth in TRUTH.items():
        share = 100 * grouped[name] / hot
        assert abs(share - truth) <= share_tolerance(truth, hot_samples, 3.0), \
            (name, share, hot_samples, grouped, others(prof))
    # Compared the same way: each profiler's split among the hot functions. On a busy
    # host runtime/pprof strays further from the truth (main.mix 7 points from goprof's
    # beside a Go build, goprof within 3 of the truth): the 5 points grow by how far
    # runtime/pprof's own split is from the truth in this run.
    hot_names = ("main.alpha", "main.beta", "main.gamma", "main.mix")
    mine_hot, go_hot = _among(mine, hot_names), _among(go, hot_names)
    go_grouped = _grouped(go)
    go_total = sum(go_grouped.values()) or 1.0
    go_off = max(abs(100 * go_grouped[n] / go_total - t) for n, t in TRUTH.items())
    for name in hot_names:
        assert abs(mine_hot[name] - go_hot[name]) <= 5.0 + go_off, (name, go_off, mine, go)

    # The inlined hot function is its own frame under its caller, as in runtime/pprof.
    assert any(names[:2] == ["main.mix", "main.gamma"] for names, _ in stacks(prof))
    # Frameless leaves keep their caller: main.main sits under every hot function.
    for names, count in stacks(prof):
        if names and names[0] in ("main.alpha", "main.beta") and count:
            assert names[1:3] == ["main.main", "runtime.main"], names

    # Every frame of the Go binary named, stripped and PIE included. (A PIE's dynamic
    # loader, sampled while it relocates the binary, is a stripped C library whose
    # internal functions no symbol table names.)
    strings = prof.string_table
    go_maps = {m.id for m in prof.mapping if strings[m.filename] == str(cpusplit.path)}
    assert go_maps, [strings[m.filename] for m in prof.mapping]
    unnamed = [loc for loc in prof.location if loc.mapping_id in go_maps and not loc.line]
    assert not unnamed, [hex(loc.address) for loc in unnamed]

    # go tool pprof reads it and shows the inlined frame.
    top = go_tool_pprof("-top", str(ours))
    assert "main.mix (inline)" in top
    traces = go_tool_pprof("-traces", str(ours))
    assert "main.mix (inline)" in traces and "main.gamma" in traces


def test_profile_fields_are_what_runtime_pprof_writes(cpusplit_plain, tmp_path):
    out = tmp_path / "cpu.pb.gz"
    run_goprof("cpu", "-F", "99", "-o", str(out), "--", str(cpusplit_plain.path),
               "-duration", "2s", check=True)
    assert out.read_bytes()[:2] == b"\x1f\x8b"
    prof = read_pprof(out)
    s = prof.string_table
    assert s[0] == ""
    assert [(s[t.type], s[t.unit]) for t in prof.sample_type] == [
        ("samples", "count"), ("cpu", "nanoseconds")]
    assert (s[prof.period_type.type], s[prof.period_type.unit]) == ("cpu", "nanoseconds")
    assert prof.period == 1_000_000_000 // 99
    assert prof.time_nanos > 0 and prof.duration_nanos > 1_500_000_000
    for kind in (prof.mapping, prof.location, prof.function):
        assert [x.id for x in kind] == list(range(1, len(kind) + 1))
    exe = [m for m in prof.mapping if s[m.filename].endswith("/cpusplit")]
    assert exe and s[exe[0].build_id]
    for sample in prof.sample:
        assert sample.value[1] == sample.value[0] * prof.period
        labels = {s[lb.key]: s[lb.str] for lb in sample.label}
        assert set(labels) == {"pid", "tid", "comm"} and labels["comm"] == "cpusplit"


def test_several_pids_and_formats(cpusplit_plain, tmp_path):
    procs = [start([str(cpusplit_plain.path), "-duration", "20s"]) for _ in range(2)]
    try:
        for p in procs:
            wait_ready(p)
        folded = tmp_path / "cpu.folded"
        scope = tmp_path / "cpu.speedscope.json"
        res = run_goprof("cpu", "--pid", str(procs[0].pid), "--pid", str(procs[1].pid),
                         "-F", "199", "-d", "2s", "-o", str(folded), "-o", str(scope),
                         check=True)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert "duration reached" in res.stderr
    lines = folded.read_text().splitlines()
    for p in procs:
        assert any(line.startswith(f"cpusplit (pid {p.pid});runtime.goexit;") for line in lines)
    doc = json.loads(scope.read_text())
    assert doc["$schema"] == "https://www.speedscope.app/file-format-schema.json"
    assert len(doc["profiles"]) == 2
    names = {f["name"] for f in doc["shared"]["frames"]}
    assert {"main.alpha", "main.beta", "main.mix", "main.gamma"} <= names


def test_ctrl_c_writes_the_profile(cpusplit_plain, tmp_path):
    target = start([str(cpusplit_plain.path), "-duration", "30s"])
    out = tmp_path / "cpu.pb.gz"
    try:
        wait_ready(target)
        prof_proc = subprocess.Popen(
            [*goprof_command(), "cpu", "--pid", str(target.pid), "-o", str(out)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # 3 s from when it records (a busy host may take seconds to get there)
        assert prof_proc.stderr is not None
        before = [prof_proc.stderr.readline() for _ in range(1)]
        while before[-1] and "recording" not in before[-1]:
            before.append(prof_proc.stderr.readline())
        assert "recording" in before[-1], before
        time.sleep(3)
        prof_proc.send_signal(signal.SIGINT)
        _, err = prof_proc.communicate(timeout=30)
    finally:
        target.kill()
        target.wait()
    assert prof_proc.returncode == 0, err
    assert "interrupted (Ctrl-C)" in err
    assert "Traceback" not in err
    assert flat_shares(read_pprof(out)).get("main.beta", 0) > 10


def test_target_exit_keeps_names(tmp_path):
    """The target exits long before the profile is symbolized: names still resolve."""
    binary = gobuild.build("cpusplit", "go1.26", "pie")
    # Long enough for goprof to start on a busy host (it once took over 2 s), short
    # enough that the target exits well before the run would end otherwise.
    target = start([str(binary.path), "-duration", "6s"])
    wait_ready(target)
    out = tmp_path / "cpu.pb.gz"
    # 997 Hz: samples enough to name both however little CPU a busy host leaves it
    res = run_goprof("cpu", "-F", "997", "--pid", str(target.pid), "-o", str(out),
                     timeout=30, check=True)
    target.wait()
    assert "every target exited" in res.stderr
    shares = flat_shares(read_pprof(out))
    assert shares.get("main.alpha", 0) > 5 and shares.get("main.mix", 0) > 10


def test_kill_9_leaves_nothing_attached(cpusplit_plain, tmp_path):
    target = start([str(cpusplit_plain.path), "-duration", "30s"])
    try:
        wait_ready(target)
        prof_proc = subprocess.Popen([*goprof_command(), "cpu", "--pid", str(target.pid),
                                      "-o", str(tmp_path / "x.pb.gz")],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        # goprof's own program, by id: other goprof runs on the host load one of that
        # name too.
        deadline = time.monotonic() + 20
        while not (ours := ours_loaded(bpf_programs_of(prof_proc.pid))):
            assert time.monotonic() < deadline, "goprof never loaded its program"
            assert prof_proc.poll() is None, prof_proc.communicate()
            time.sleep(0.1)
        time.sleep(0.5)
        prof_proc.send_signal(signal.SIGKILL)
        prof_proc.wait()
        deadline = time.monotonic() + 5
        while ours_loaded(ours):
            assert time.monotonic() < deadline, "the BPF program outlived goprof"
            time.sleep(0.1)
    finally:
        target.kill()
        target.wait()


def ours_loaded(ids: set[int]) -> set[int]:
    """Which of these program ids are goprof cpu's program, still loaded."""
    return {p.id for p in loaded_programs() if p.name == PROGRAM and p.id in ids}


def test_no_kernel_flag(cpusplit_plain, tmp_path):
    out = tmp_path / "cpu.folded"
    run_goprof("cpu", "--no-kernel", "-o", str(out), "--", str(cpusplit_plain.path),
               "-duration", "2s", check=True)
    text = out.read_text()
    assert "main.beta" in text and "_[k]" not in text


def test_non_go_target_named_from_elf_symbols(tmp_path):
    exe = tmp_path / "spin"
    subprocess.run(["gcc", "-O1", "-o", str(exe), str(gobuild.FIXTURES / "spin" / "spin.c")],
                   check=True)
    out = tmp_path / "spin.folded"
    run_goprof("cpu", "-o", str(out), "--", str(exe), "2", check=True)
    assert "spin_burn" in out.read_text()


def test_command_is_stopped_when_the_duration_ends(cpusplit_plain, tmp_path):
    """cpusplit without -duration never ends: goprof stops it after 1 s. At 997 Hz the
    profile holds the command's work even when a busy host leaves it little CPU (at 99
    Hz, beside a Go build, one held 28 samples and none in main.gamma)."""
    out = tmp_path / "cpu.pb.gz"
    started = time.monotonic()
    res = run_goprof("cpu", "-F", "997", "-d", "1s", "-o", str(out), "--",
                     str(cpusplit_plain.path), check=True, timeout=60)
    assert time.monotonic() - started < 30
    assert "duration reached" in res.stderr
    prof = read_pprof(out)
    assert prof.duration_nanos >= 900_000_000, prof.duration_nanos
    assert flat_shares(prof).get("main.gamma", 0) > 0, others(prof)


def others(prof) -> list[tuple[float, str]]:
    """The biggest functions outside main, to say where a missing share went."""
    shares = flat_shares(prof, prefix="")
    return sorted(((round(v, 1), k) for k, v in shares.items() if not k.startswith("main.")),
                  reverse=True)[:6]
