"""What goprof cpu's BPF program costs per sample, by workload (kernel.bpf_stats_enabled).

    sudo .venv/bin/python bench/bpf_cost.py [--runs 5] [--seconds 3] [--frequency 997]
    sudo .venv/bin/python bench/bpf_cost.py --goprof OLD --goprof NEW  # runs interleaved

Each run profiles one fixture for --seconds with `goprof cpu --stats`, with the kernel's
BPF statistics turned on (and put back after); the program's run time divided by its
runs and by the target samples it saw. Workloads, built with go1.26 (stripped):
- cpusplit: no pprof labels, few distinct stacks;
- labelsplit: the same kind of work, two thirds of it under pprof.Do labels;
- manystacks: thousands of distinct stacks (each new one is stored in the stack map).
Runs of the workloads alternate, so machine noise falls on all of them alike. The
program also runs at every tick of every other process (and of idle CPUs), where it
returns after one map lookup: that cost per run is measured first, with a sleeping
target that is never sampled, and taken out of the per-sample figure:
    ns/sample = (run time - (runs - target samples) x idle ns/run) / target samples.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests import gobuild  # noqa: E402

STATS_SYSCTL = Path("/proc/sys/kernel/bpf_stats_enabled")
WORKLOADS = ("cpusplit", "labelsplit", "manystacks")


def run_once(goprof: list[str], binary: Path | None, seconds: float, frequency: int) -> dict:
    """One run on a fixture (None: a sleeping process, never sampled)."""
    argv = [str(binary), "-duration", f"{seconds + 20}s"] if binary else \
        ["sh", "-c", "echo ready; exec sleep 600"]
    target = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert target.stdout is not None
        for line in target.stdout:  # "ready" once the work runs
            if line.startswith("ready"):
                break
        with tempfile.TemporaryDirectory() as tmp:
            stats = Path(tmp) / "stats.json"
            subprocess.run([*goprof, "cpu", "-p", str(target.pid), "-d", f"{seconds}s",
                            "-F", str(frequency), "-o", str(Path(tmp) / "p.pb.gz"),
                            "--stats", str(stats)],
                           check=True, capture_output=True, timeout=seconds + 60)
            return json.loads(stats.read_text())
    finally:
        target.kill()
        target.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--goprof", action="append", default=[],
                    help="a goprof command to measure (default: this checkout's); give two or "
                         "more to compare builds: their runs are interleaved")
    ap.add_argument("--runs", type=int, default=5, help="runs per workload")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--frequency", type=int, default=997)
    args = ap.parse_args()
    commands = args.goprof or [str(REPO / ".venv" / "bin" / "goprof")]
    binaries = {w: gobuild.build(w, "go1.26", "stripped").path for w in WORKLOADS}
    before = STATS_SYSCTL.read_text().strip()
    STATS_SYSCTL.write_text("1")
    per_sample = {(c, w): [] for c in commands for w in WORKLOADS}
    per_run = {(c, w): [] for c in commands for w in WORKLOADS}
    idle: dict[str, list[float]] = {c: [] for c in commands}
    try:
        for _ in range(args.runs):
            for c in commands:
                s = run_once(shlex.split(c), None, args.seconds, args.frequency)
                idle[c].append(s["bpf_run_time_ns"] / max(s["bpf_run_cnt"], 1))
        for _ in range(args.runs):
            for w in WORKLOADS:
                for c in commands:
                    s = run_once(shlex.split(c), binaries[w], args.seconds, args.frequency)
                    others = s["bpf_run_cnt"] - s["seen"]
                    per_sample[(c, w)].append(
                        (s["bpf_run_time_ns"] - others * statistics.median(idle[c]))
                        / max(s["seen"], 1))
                    per_run[(c, w)].append(s["bpf_run_time_ns"] / max(s["bpf_run_cnt"], 1))
                    time.sleep(0.2)
    finally:
        STATS_SYSCTL.write_text(before)
    print(f"{args.runs} runs of {args.seconds} s at {args.frequency} Hz per workload and build")
    for c in commands:
        print(f"\ngoprof: {c}; a run for another process: {statistics.median(idle[c]):.0f} ns "
              f"(median; {min(idle[c]):.0f}-{max(idle[c]):.0f})")
        print(f"{'workload':<12} {'ns/sample median':>17} {'(min-max)':>17} {'ns/run median':>14}")
        for w in WORKLOADS:
            v = per_sample[(c, w)]
            print(f"{w:<12} {statistics.median(v):>17.0f} {f'{min(v):.0f}-{max(v):.0f}':>17} "
                  f"{statistics.median(per_run[(c, w)]):>14.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
