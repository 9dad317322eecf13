"""What `goprof goroutines` costs on a big program, in one run (root):
`sudo .venv/bin/python bench/goroutines_read.py [--goroutines 100000] [--runs 3]`.

The target is tests/fixtures/goparked -many N -work: N goroutines parked on channel
receives at stack depths 1..8, plus one busy worker printing its progress ("ops N")
every 100 ms. For each run of `goprof goroutines --pid P`:
- time to the answer (wall, from the command to its exit) and goprof's CPU time;
- goprof's peak RSS;
- the time its read of the target's memory took (--stats read_s);
- the worker's throughput while goprof reads vs in the second before (ops/s): the target
  is never stopped; and, as a control, the same ratio while a plain busy loop burns as
  much CPU as goprof did (what sharing the CPUs alone costs the target).
The machine is shared: the load average is printed with each run; only ratios within
one run mean much.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests import gobuild  # noqa: E402
from tests.helpers import goprof_command  # noqa: E402


class Progress:
    """The worker's "ops N" lines, timestamped as they arrive."""

    def __init__(self, p: subprocess.Popen) -> None:
        self.points: list[tuple[float, int]] = []
        self.ready = threading.Event()
        self._t = threading.Thread(target=self._read, args=(p,), daemon=True)
        self._t.start()

    def _read(self, p: subprocess.Popen) -> None:
        assert p.stdout is not None
        for line in p.stdout:
            if line.strip() == "ready":
                self.ready.set()
            elif line.startswith("ops "):
                self.points.append((time.monotonic(), int(line.split()[1])))

    def rate(self, start: float, end: float) -> float:
        pts = [(t, n) for t, n in self.points if start <= t <= end]
        if len(pts) < 2:
            return float("nan")
        (t0, n0), (t1, n1) = pts[0], pts[-1]
        return (n1 - n0) / (t1 - t0)


def one_run(pid: int, progress: Progress, tmp: Path) -> dict:
    time.sleep(1.2)
    before_start = time.monotonic() - 1.0
    stats = tmp / "stats.json"
    started = time.monotonic()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    res = subprocess.run([*goprof_command(), "goroutines", "--pid", str(pid), "-o",
                          str(tmp / "g.pb.gz"), "--stats", str(stats)],
                         capture_output=True, text=True)
    ended = time.monotonic()
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if res.returncode != 0:
        raise SystemExit(f"goprof failed: {res.stderr}")
    doc = json.loads(stats.read_text())
    time.sleep(0.3)  # the worker's line after the read
    read_end = started + (doc["total_s"])
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    control = busy_loop_ratio(progress, cpu)
    return {
        "control_during_before": control,
        "wall_s": ended - started,
        "goprof_cpu_s": (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime),
        "peak_rss_mb": ru1.ru_maxrss / 1024,
        "read_s": doc["read_s"],
        "read_cpu_s": doc["read_cpu_s"],
        "goroutines": doc["goroutines"],
        "changed": doc["changed"],
        "retried": doc["retried"],
        "ops_per_s_before": progress.rate(before_start, started),
        "ops_per_s_during": progress.rate(started - 0.15, read_end + 0.15),
        "loadavg": os.getloadavg()[0],
    }


def busy_loop_ratio(progress: Progress, cpu_s: float) -> float:
    """The target's throughput while a busy loop burns cpu_s of CPU, over the second
    before."""
    time.sleep(1.2)
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", "import time\nend = time.process_time() + "
                    f"{cpu_s}\nwhile time.process_time() < end: pass"], check=True)
    ended = time.monotonic()
    time.sleep(0.3)
    return progress.rate(started - 0.15, ended + 0.15) / progress.rate(started - 1.0, started)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--goroutines", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--toolchain", default="go1.26")
    ap.add_argument("--variant", default="stripped")
    args = ap.parse_args()
    binary = gobuild.build("goparked", args.toolchain, args.variant).path
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        p = subprocess.Popen([str(binary), "-many", str(args.goroutines), "-work",
                              str(tmp / "dump")], stdout=subprocess.PIPE, text=True)
        try:
            progress = Progress(p)
            if not progress.ready.wait(60):
                raise SystemExit("goparked never got ready")
            runs = [one_run(p.pid, progress, tmp) for _ in range(args.runs)]
        finally:
            p.kill()
            p.wait()
    for i, r in enumerate(runs):
        ratio = r["ops_per_s_during"] / r["ops_per_s_before"]
        print(f"run {i}: {r['goroutines']} goroutines, answer in {r['wall_s']:.2f} s "
              f"(read {r['read_s']:.2f} s, {r['read_cpu_s']:.2f} s of CPU), "
              f"goprof CPU {r['goprof_cpu_s']:.2f} s, peak RSS "
              f"{r['peak_rss_mb']:.0f} MB, changed {r['changed']} (retried {r['retried']}), "
              f"target throughput during/before {ratio:.2f} (busy-loop control "
              f"{r['control_during_before']:.2f}), load {r['loadavg']:.1f}")
    print(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
