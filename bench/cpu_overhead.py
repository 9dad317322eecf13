"""What `goprof cpu` costs, in one run (root): `sudo .venv/bin/python bench/cpu_overhead.py`.

- target slowdown: a fixed CPU-bound workload (tests/fixtures/cpusplit -rounds N, which
  times its own loop), alternately alone and under `goprof cpu -F 99`, as ratios;
- BPF time per sample (kernel.bpf_stats_enabled, turned on for the run and restored);
- goprof's own CPU while recording, its peak RSS;
- time from the command to the first sample (a running target, the BPF cache warm;
  and once with an empty cache, which compiles);
Only ratios inside one run mean anything on a shared VM.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests import gobuild  # noqa: E402
from tests.helpers import goprof_command, wait_ready  # noqa: E402

STATS_SYSCTL = Path("/proc/sys/kernel/bpf_stats_enabled")


def run_workload(binary: Path, rounds: int, profiled: bool, tmp: Path, freq: int
                 ) -> tuple[float, dict | None]:
    cmd = [str(binary), "-rounds", str(rounds)]
    if not profiled:
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        return _elapsed(out), None
    stats = tmp / "stats.json"
    res = subprocess.run([*goprof_command(), "cpu", "-F", str(freq), "-o", str(tmp / "w.pb.gz"),
                          "--stats", str(stats), "--", *cmd], capture_output=True, text=True,
                         check=True)
    return _elapsed(res.stdout), json.loads(stats.read_text())


def _elapsed(out: str) -> float:
    for line in out.splitlines():
        if line.startswith("elapsed "):
            return float(line.split()[1])
    raise RuntimeError(f"no elapsed line in {out!r}")


def first_sample(binary: Path, tmp: Path, cache_dir: str | None) -> dict:
    target = subprocess.Popen([str(binary), "-duration", "30s"], stdout=subprocess.PIPE,
                              text=True)
    try:
        wait_ready(target)
        stats = tmp / "first.json"
        env = dict(os.environ)
        if cache_dir:
            env["GOPROF_CACHE_DIR"] = cache_dir
        t0 = time.time()
        subprocess.run([*goprof_command(), "cpu", "--pid", str(target.pid), "-d", "1s",
                        "-o", str(tmp / "f.pb.gz"), "--stats", str(stats)], env=env,
                       capture_output=True, check=True)
        doc = json.loads(stats.read_text())
        doc["first_sample_s"] = doc["first_sample_at"] - t0
        return doc
    finally:
        target.kill()
        target.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pairs", type=int, default=6, help="alternating pairs of runs")
    ap.add_argument("--rounds", type=int, default=6000, help="workload size (~3 s)")
    ap.add_argument("-F", "--frequency", type=int, default=99)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root", file=sys.stderr)
        return 2
    binary = gobuild.build("cpusplit", "go1.26", "normal").path
    before = STATS_SYSCTL.read_text().strip()
    STATS_SYSCTL.write_text("1")
    try:
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            base, prof, ratios, runs = [], [], [], []
            for _ in range(args.pairs):
                b, _ = run_workload(binary, args.rounds, False, tmp, args.frequency)
                p, st = run_workload(binary, args.rounds, True, tmp, args.frequency)
                base.append(b)
                prof.append(p)
                ratios.append(b / p)
                runs.append(st)
            firsts = [first_sample(binary, tmp, None) for _ in range(3)]
            cold = first_sample(binary, tmp, str(tmp / "empty-cache"))
    finally:
        STATS_SYSCTL.write_text(before)

    bpf_ns_run = sum(r["bpf_run_time_ns"] for r in runs) / sum(r["bpf_run_cnt"] for r in runs)
    bpf_ns_sample = sum(r["bpf_run_time_ns"] for r in runs) / sum(r["seen"] for r in runs)
    cpu_pct = [100 * r["recording_cpu_s"] / r["recording_s"] for r in runs]
    result = {
        "workload_s_alone_median": statistics.median(base),
        "workload_s_profiled_median": statistics.median(prof),
        "throughput_ratio_median": statistics.median(ratios),
        "throughput_ratios": [round(r, 4) for r in ratios],
        "slowdown_pct_median": 100 * (1 - statistics.median(ratios)),
        "frequency_hz": args.frequency,
        "bpf_ns_per_run": round(bpf_ns_run),
        "bpf_ns_per_target_sample": round(bpf_ns_sample),
        "goprof_cpu_pct_of_a_core_while_recording": round(statistics.median(cpu_pct), 3),
        "goprof_peak_rss_mb": round(max(r["peak_rss_kb"] for r in runs) / 1024, 1),
        "first_sample_s_warm_cache": [round(f["first_sample_s"], 3) for f in firsts],
        "first_sample_s_cold_cache": round(cold["first_sample_s"], 3),
        "peak_rss_mb_warm": round(max(f["peak_rss_kb"] for f in firsts) / 1024, 1),
        "compile_helper_peak_rss_mb_cold": round(cold["children_peak_rss_kb"] / 1024, 1),
        "symbolize_s": round(statistics.median(r["symbolize_s"] for r in runs), 4),
        "lost_samples": sum(r["lost"] for r in runs),
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
