"""What `goprof mem` costs the program it watches, per method, in one run (root):
`sudo .venv/bin/python bench/mem_overhead.py`.

Workloads (tests/fixtures/allocbench, which times itself): `pure`, a tight loop of
small escaping allocations (the worst case per byte), and `json`, encoding/json
Marshal + Unmarshal (allocations mixed with real work). Each method runs in
alternating pairs, the workload alone then under `goprof mem --method M`, and the
ratio of their throughputs is taken; only ratios inside one run mean anything on a
shared VM. Modes:
  go-own-sampler        no goprof: Go's own heap sampler on (512 KiB) against off
  go-sampler            goprof on a program whose sampler is on (both runs have it on)
  go-sampler-turned-on  goprof --go-sampler on a program whose sampler is off
  span, exact           goprof --method span / exact
  refill-trap-only      a uprobe on (*mcache).refill whose program returns at once (the
                        target is not in its pid filter): what the trap alone costs
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests import gobuild  # noqa: E402
from tests.helpers import goprof_command, wait_ready  # noqa: E402

STATS_SYSCTL = Path("/proc/sys/kernel/bpf_stats_enabled")
SAMPLER_ON = ["-memprofilerate", str(512 * 1024)]
# name -> (target flags in both runs, goprof flags or None for a run without goprof
# whose target gets SAMPLER_ON instead: Go's own sampler's cost, for comparison).
MODES: dict[str, tuple[list[str], list[str] | None]] = {
    "go-own-sampler": ([], None),
    "go-sampler": (SAMPLER_ON, []),  # a program whose sampler is on (imports pprof)
    "go-sampler-turned-on": ([], ["--go-sampler"]),
    "span": ([], ["--method", "span"]),
    "exact": ([], ["--method", "exact"]),
    "refill-trap-only": ([], None),  # the span probe on refill, its program returning at once
}


def result_line(out: str) -> dict:
    for line in out.splitlines():
        if line.startswith("result "):
            return json.loads(line.split(" ", 1)[1])
    raise RuntimeError(f"no result line in {out!r}")


def alone(binary: Path, workload: str, seconds: str, flags: list[str]) -> float:
    out = subprocess.run([str(binary), "-workload", workload, "-duration", seconds, *flags],
                         capture_output=True, text=True, check=True).stdout
    return result_line(out)["ops_per_s"]


def profiled(binary: Path, workload: str, seconds: str, flags: list[str], goprof_flags: list[str],
             tmp: Path) -> tuple[float, dict]:
    """The target waits (-wait) until goprof says it records, so the whole timed
    loop runs under the probes."""
    target = subprocess.Popen([str(binary), "-workload", workload, "-duration", seconds,
                               "-wait", *flags], stdout=subprocess.PIPE, text=True)
    stats = tmp / "stats.json"
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
        target.send_signal(signal.SIGUSR1)
        out, _ = target.communicate(timeout=300)
        goprof.stderr.read()
        if goprof.wait(timeout=120) != 0:
            raise RuntimeError("goprof failed")
        return result_line(out)["ops_per_s"], json.loads(stats.read_text())
    finally:
        for p in (target, goprof):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()


def under_refill_trap(binary: Path, workload: str, seconds: str) -> float:
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pairs", type=int, default=3, help="alternating pairs per method")
    ap.add_argument("--seconds", default="2s", help="workload duration per run")
    ap.add_argument("--modes", default=",".join(MODES), help=f"of {', '.join(MODES)}")
    ap.add_argument("--toolchain", default="go1.26", choices=list(gobuild.TOOLCHAINS))
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root", file=sys.stderr)
        return 2
    binary = gobuild.build("allocbench", args.toolchain, "stripped").path
    before = STATS_SYSCTL.read_text().strip()
    STATS_SYSCTL.write_text("1")
    results: dict[str, dict] = {}
    try:
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            for workload in ("pure", "json"):
                for mode in args.modes.split(","):
                    flags, goprof_flags = MODES[mode]
                    ratios, hits, bpf_ns, runs = [], 0, 0, 0
                    for _ in range(args.pairs):
                        base = alone(binary, workload, args.seconds, flags)
                        if mode == "refill-trap-only":
                            ratios.append(under_refill_trap(binary, workload, args.seconds)
                                          / base)
                            continue
                        if goprof_flags is None:
                            ratios.append(alone(binary, workload, args.seconds, SAMPLER_ON)
                                          / base)
                            continue
                        ops, st = profiled(binary, workload, args.seconds, flags, goprof_flags,
                                           tmp)
                        ratios.append(ops / base)
                        hits += st["hits"]
                        bpf_ns += st["bpf_run_time_ns"]
                        runs += st["bpf_run_cnt"]
                    results[f"{workload}/{mode}"] = {
                        "throughput_ratio_median": round(statistics.median(ratios), 4),
                        "slowdown_pct_median": round(100 * (1 - statistics.median(ratios)), 2),
                        "ratios": [round(r, 4) for r in ratios],
                        "probe_hits_per_run": hits // args.pairs,
                        "bpf_ns_per_run": round(bpf_ns / runs) if runs else None,
                    }
                    print(workload, mode, results[f"{workload}/{mode}"], file=sys.stderr)
    finally:
        STATS_SYSCTL.write_text(before)
    print(json.dumps({"toolchain": args.toolchain, "seconds": args.seconds, **results},
                     indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
