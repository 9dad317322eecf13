"""What `goprof mem` costs the program it watches, per method, in one run (root):
`sudo .venv/bin/python bench/mem_overhead.py`.

Workloads (tests/fixtures/allocbench, which times itself): `pure`, a tight loop of
small escaping allocations (the worst case per byte), and `json`, encoding/json
Marshal + Unmarshal (allocations mixed with real work). Each method runs in pairs,
the workload alone and under `goprof mem --method M`, and the ratio of their
throughputs is taken; only ratios inside one run mean anything on a shared VM. The
modes take turns round by round (round 1 of every mode, then round 2, ...), and the
order inside a pair alternates, so drift in the machine's load falls on every mode
alike. Modes:
  go-own-sampler        no goprof: Go's own heap sampler on (512 KiB) against off
  go-sampler            goprof on a program whose sampler is on (both runs have it on)
  go-sampler-turned-on  goprof --go-sampler on a program whose sampler is off
  span, exact           goprof --method span / exact
  span-goprof-stopped   goprof --method span, SIGSTOPped from "recording" until the
                        workload has exited (then SIGCONTed: it sees the exit and writes):
                        the uprobes and the BPF program run in the target as under
                        `span`, goprof's own process (record loop, drains) costs nothing
  refill-trap-only      a uprobe on (*mcache).refill whose program returns at once (the
                        target is not in its pid filter): what the trap alone costs
So span - span-goprof-stopped is goprof's process, span-goprof-stopped -
refill-trap-only the BPF program's work, refill-trap-only - 1 the trap.

Two ratios per pair: wall (ops per second, what the program sees) and cpu (ops per CPU
second of the workload's process, every thread, user + system). A uprobe's trap and its
BPF program run in the target's context, so they count in the cpu ratio, while a busy
run queue (other load on a shared VM) stretches wall time, not CPU time: the cpu
ratio measures the in-target cost (trap + program) through much of the noise that swamps the wall
ratio. goprof's own process is not in it: its share is goprof's CPU time while
recording (--stats recording_cpu_s over recording_s, drains at the end included) as %
of one core, the most it can take from a target on a machine with no idle core.
target_cpu_us_per_hit turns the cpu ratio into the workload's CPU time added per probe
hit (refill-trap-only, which counts none, takes the span modes' refills per iteration).

Per mode and ratio: the median, the quartiles and min-max of the per-pair ratios (the
spread: a difference inside it is noise) and the best-run ratio (the fastest run under
goprof over the fastest alone: the min-time estimate, least hit by other load); for
each two modes the per-round difference of their ratios with a bootstrap 90 %
interval. /proc/loadavg is kept at each round's start.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests import gobuild  # noqa: E402
from tests.helpers import goprof_command, wait_ready  # noqa: E402

STATS_SYSCTL = Path("/proc/sys/kernel/bpf_stats_enabled")
SAMPLER_ON = ["-memprofilerate", str(512 * 1024)]
WORKLOADS = ("pure", "json")


@dataclass(frozen=True)
class Mode:
    flags: list[str]  # the target's flags, in both runs of a pair
    # goprof mem's flags; None: no goprof (go-own-sampler: the target gets SAMPLER_ON
    # instead, Go's own sampler's cost for comparison; refill-trap-only: the bare trap)
    goprof: list[str] | None
    stop_goprof: bool = False  # goprof SIGSTOPped while the workload runs


MODES: dict[str, Mode] = {
    "go-own-sampler": Mode([], None),
    "go-sampler": Mode(SAMPLER_ON, []),  # a program whose sampler is on (imports pprof)
    "go-sampler-turned-on": Mode([], ["--go-sampler"]),
    "span": Mode([], ["--method", "span"]),
    "span-goprof-stopped": Mode([], ["--method", "span"], stop_goprof=True),
    "exact": Mode([], ["--method", "exact"]),
    "refill-trap-only": Mode([], None),  # the span probe on refill, its program returning at once
}


def result_line(out: str) -> dict:
    for line in out.splitlines():
        if line.startswith("result "):
            return json.loads(line.split(" ", 1)[1])
    raise RuntimeError(f"no result line in {out!r}")


@dataclass(frozen=True)
class Run:
    """One timed run of the workload: its own wall-clock throughput, and the CPU time
    its process used (every thread, user + system: a uprobe's trap and BPF program run
    in the target's context and count here). ops per CPU second is less moved by
    other load than ops per wall second (a busy run queue stretches wall time, not CPU
    time), so it measures what the probes cost inside the target; what goprof's own
    process takes is its own CPU time, reported apart."""

    ops_per_s: float
    ops_per_cpu_s: float
    iterations: int


def finish(p: subprocess.Popen) -> Run:
    """Reads the workload's output and reaps it with wait4, for its CPU time."""
    assert p.stdout is not None
    out = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    if p.returncode != 0:
        raise RuntimeError(f"{p.args} exited {p.returncode}")
    r = result_line(out)
    return Run(r["ops_per_s"], r["iterations"] / (usage.ru_utime + usage.ru_stime),
               r["iterations"])


def alone(binary: Path, workload: str, seconds: str, flags: list[str]) -> Run:
    return finish(subprocess.Popen([str(binary), "-workload", workload, "-duration", seconds,
                                    *flags], stdout=subprocess.PIPE, text=True))


def wait_stopped(pid: int, timeout: float = 5) -> None:
    """SIGSTOP is delivered asynchronously: wait until every thread of pid is stopped."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = [(Path(f"/proc/{pid}/task/{t}/stat").read_text().rsplit(")", 1)[1].split()[0])
                  for t in os.listdir(f"/proc/{pid}/task")]
        if all(s in "tT" for s in states):
            return
        time.sleep(0.005)
    raise RuntimeError(f"goprof (pid {pid}) did not stop")


def profiled(binary: Path, workload: str, seconds: str, flags: list[str], goprof_flags: list[str],
             tmp: Path, stop_goprof: bool = False) -> tuple[Run, dict]:
    """The target waits (-wait) until goprof says it records, so the whole timed
    loop runs under the probes. With stop_goprof, goprof is stopped from then until
    the target has exited; resumed, it finds the target gone and writes its profile."""
    target = subprocess.Popen([str(binary), "-workload", workload, "-duration", seconds,
                               "-wait", *flags], stdout=subprocess.PIPE, text=True)
    stats = tmp / "stats.json"
    stats.unlink(missing_ok=True)
    goprof = None
    try:
        wait_ready(target)
        goprof = subprocess.Popen([*goprof_command(), "mem", "--pid", str(target.pid),
                                   *goprof_flags, "-o", str(tmp / "m.pb.gz"),
                                   "--stats", str(stats)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert goprof.stderr is not None
        for line in goprof.stderr:
            if "goprof: recording" in line:
                break
        else:
            raise RuntimeError(f"goprof exited {goprof.wait()} before recording")
        if stop_goprof:
            goprof.send_signal(signal.SIGSTOP)
            wait_stopped(goprof.pid)
        target.send_signal(signal.SIGUSR1)
        run = finish(target)
        if stop_goprof:
            goprof.send_signal(signal.SIGCONT)
        err = goprof.stderr.read()
        if goprof.wait(timeout=120) != 0:
            raise RuntimeError(f"goprof failed: {err}")
        st = json.loads(stats.read_text())
        if st["hits"] == 0:
            raise RuntimeError(f"goprof saw no probe hits: {err}")
        return run, st
    finally:
        for p in (target, goprof):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGCONT)  # a stopped process dies of SIGKILL all the same
                p.kill()
                p.wait()


def under_refill_trap(binary: Path, workload: str, seconds: str) -> Run:
    """The workload with the span method's refill uprobe on its binary, for no target."""
    from goprof.golang.probes import probe_site
    from goprof.kinds.mem.recorder import MemRecorder, Probe

    site = probe_site(str(binary), "runtime.(*mcache).refill")
    assert site is not None
    rec = MemRecorder(512 * 1024)
    rec.open()
    try:
        rec.attach(Probe(str(binary), site.file_offset, "on_refill", site.function))
        rec.add_target(os.getpid())  # not the workload: every hit returns at the pid check
        rec.start()
        return alone(binary, workload, seconds, [])
    finally:
        rec.close()


@dataclass
class Series:
    """One workload x mode: every pair's figures, in round order."""

    wall: list[float] = field(default_factory=list)  # ops/s under over ops/s alone
    cpu: list[float] = field(default_factory=list)  # the same per CPU second of the workload
    alone: list[Run] = field(default_factory=list)
    under: list[Run] = field(default_factory=list)
    cpu_pct: list[float] = field(default_factory=list)  # goprof's CPU while recording, % of a core
    hits_per_op: list[float] = field(default_factory=list)  # probe hits per workload iteration
    hits: int = 0
    bpf_ns: int = 0
    runs: int = 0


def run_pair(binary: Path, workload: str, name: str, seconds: str, tmp: Path,
             under_first: bool, s: Series) -> None:
    mode = MODES[name]

    def under() -> Run:
        if name == "refill-trap-only":
            return under_refill_trap(binary, workload, seconds)
        if mode.goprof is None:
            return alone(binary, workload, seconds, SAMPLER_ON)
        run, st = profiled(binary, workload, seconds, mode.flags, mode.goprof, tmp,
                           mode.stop_goprof)
        s.hits += st["hits"]
        s.bpf_ns += st["bpf_run_time_ns"]
        s.runs += st["bpf_run_cnt"]
        s.hits_per_op.append(st["hits"] / run.iterations)
        if st.get("recording_s"):
            s.cpu_pct.append(100 * st["recording_cpu_s"] / st["recording_s"])
        return run

    if under_first:
        u = under()
        a = alone(binary, workload, seconds, mode.flags)
    else:
        a = alone(binary, workload, seconds, mode.flags)
        u = under()
    s.alone.append(a)
    s.under.append(u)
    s.wall.append(u.ops_per_s / a.ops_per_s)
    s.cpu.append(u.ops_per_cpu_s / a.ops_per_cpu_s)


def spread(xs: list[float], digits: int = 4) -> dict:
    q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else xs * 3
    return {"median": round(statistics.median(xs), digits),
            "iqr": [round(q1, digits), round(q3, digits)],
            "min_max": [round(min(xs), digits), round(max(xs), digits)]}


def ratios(xs: list[float], under: list[float], alone: list[float]) -> dict:
    """The per-pair ratios' spread, and the best-run ratio: the fastest run under goprof
    over the fastest alone (the min-time estimate, least hit by other load)."""
    best = max(under) / max(alone)
    return {**spread(xs), "slowdown_pct_median": round(100 * (1 - statistics.median(xs)), 2),
            "best_run": round(best, 4), "slowdown_pct_best_run": round(100 * (1 - best), 2),
            "pairs": [round(r, 3) for r in xs]}


def cost_per_hit(s: Series, hits_per_op: float) -> float:
    """The workload's CPU time added per probe hit, µs (median over pairs): what a
    hit costs inside the target (trap + program), the steadier figure on a busy VM."""
    return statistics.median((1 / u.ops_per_cpu_s - 1 / a.ops_per_cpu_s) / hits_per_op * 1e6
                             for u, a in zip(s.under, s.alone, strict=True))


def summary(s: Series, pairs: int, refills_per_op: float | None) -> dict:
    out = {
        "wall_ratio": ratios(s.wall, [r.ops_per_s for r in s.under],
                             [r.ops_per_s for r in s.alone]),
        "cpu_ratio": ratios(s.cpu, [r.ops_per_cpu_s for r in s.under],
                            [r.ops_per_cpu_s for r in s.alone]),
        "probe_hits_per_run": s.hits // pairs,
        "bpf_ns_per_hit": round(s.bpf_ns / s.runs) if s.runs else None,
    }
    # refill-trap-only counts no hits: it has the span modes' refills per iteration
    per_op = statistics.median(s.hits_per_op) if s.hits_per_op else refills_per_op
    if per_op:
        out["target_cpu_us_per_hit"] = round(cost_per_hit(s, per_op), 3)
    if s.cpu_pct:
        out["goprof_cpu_pct_of_core"] = spread(s.cpu_pct, 3)
    return out


def compare(a: list[float], b: list[float], draws: int = 4000) -> dict:
    """a - b round by round (the two pairs of a round ran within a minute): the median
    difference in points and a bootstrap 90 % interval of it. An interval across 0
    means this run does not tell the two modes apart."""
    d = [100 * (x - y) for x, y in zip(a, b, strict=True)]
    rng = random.Random(0)
    meds = sorted(statistics.median(rng.choices(d, k=len(d))) for _ in range(draws))
    return {"median_points": round(statistics.median(d), 2),
            "ci90_points": [round(meds[int(0.05 * draws)], 2), round(meds[int(0.95 * draws)], 2)]}


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=3, help="pairs (rounds) per mode")
    ap.add_argument("--seconds", default="2s", help="workload duration per run")
    ap.add_argument("--modes", default=",".join(MODES), help=f"of {', '.join(MODES)}")
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help="of pure, json")
    ap.add_argument("--toolchain", default="go1.26", choices=list(gobuild.TOOLCHAINS))
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root", file=sys.stderr)
        return 2
    modes = args.modes.split(",")
    workloads = args.workloads.split(",")
    for name in modes:
        if name not in MODES:
            ap.error(f"unknown mode {name!r}")
    binary = gobuild.build("allocbench", args.toolchain, "stripped").path
    before = STATS_SYSCTL.read_text().strip()
    STATS_SYSCTL.write_text("1")
    results: dict[str, dict] = {"loadavg_start": loadavg()}
    try:
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            for workload in workloads:
                series = {name: Series() for name in modes}
                loads = []
                for i in range(args.pairs):
                    loads.append(loadavg())
                    for name in modes:
                        run_pair(binary, workload, name, args.seconds, tmp, i % 2 == 1,
                                 series[name])
                    print(f"{workload} round {i + 1}/{args.pairs} (load {loads[-1]}): " +
                          ", ".join(f"{n} {series[n].wall[-1]:.3f} (cpu {series[n].cpu[-1]:.3f})"
                                    for n in modes), file=sys.stderr)
                spans = [x for n in modes if n.startswith("span") for x in series[n].hits_per_op]
                refills = statistics.median(spans) if spans else None
                for name in modes:
                    results[f"{workload}/{name}"] = summary(series[name], args.pairs, refills)
                    print(workload, name, results[f"{workload}/{name}"], file=sys.stderr)
                for i, a in enumerate(modes):
                    for b in modes[i + 1:]:
                        results[f"{workload}/{a} - {b}"] = {
                            "wall": compare(series[a].wall, series[b].wall),
                            "cpu": compare(series[a].cpu, series[b].cpu)}
                results[f"{workload}/loadavg_per_round"] = loads
    finally:
        STATS_SYSCTL.write_text(before)
    results["loadavg_end"] = loadavg()
    print(json.dumps({"toolchain": args.toolchain, "seconds": args.seconds, **results},
                     indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
