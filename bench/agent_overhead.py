"""What `goprof agent` costs the host, and how fast it delivers.

For 1, 50 and 200 Go processes, idle (waiting on a signal) and busy (burning CPU),
runs the agent with a Parca sink (the in-test server on 127.0.0.1) and a directory
sink, then with Parca alone, for --seconds each, and reads from /proc: the agent's
CPU time over the steady part of the run (after its first window) as a share of one
core, and its peak RSS (VmHWM). Push latency (a window's end to its delivery to
Parca) comes from the agent's own goprof_push_latency_seconds histogram; the Parca
server acknowledges at once and checks every profile after the run (check_later), so
it is the agent's. Then the spool: windows written while a sink is down, and
replayed to Parca once it is back, per second.

    sudo .venv/bin/python bench/agent_overhead.py [--seconds 40] [--counts 1,50,200]
        [--states idle,busy] [--sinks parca+dir,parca] [--spool-windows 1000]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from goprof.agent.delivery import Delivery  # noqa: E402
from goprof.exporters import pprof  # noqa: E402
from goprof.exporters.parca import ParcaSink  # noqa: E402
from goprof.exporters.sink import WindowProfile  # noqa: E402
from goprof.model import Frame, Location, Mapping, Profile, Sample, ValueType  # noqa: E402
from goprof.targets import stat_fields  # noqa: E402

from tests import gobuild  # noqa: E402
from tests.helpers import goprof_command  # noqa: E402
from tests.parca_server import ParcaServer  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = stat_fields(pid)  # after the comm: utime and stime are the 12th and 13th
    if fields is None:
        raise SystemExit(f"the agent (pid {pid}) exited during the run")
    return (int(fields[11]) + int(fields[12])) / TICKS


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def start_targets(n: int, busy: bool) -> list[subprocess.Popen]:
    if busy:
        binary = gobuild.build("cpusplit", "go1.26", "stripped")
        argv = [str(binary.path)]
    else:  # allocsplit -wait: prints ready, then waits for SIGUSR1 (idle Go runtime)
        binary = gobuild.build("allocsplit", "go1.26", "stripped")
        argv = [str(binary.path), "-wait"]
    procs = [subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for _ in range(n)]
    time.sleep(1 + n / 100)
    return procs


def histogram(metrics: str, name: str, sink: str) -> tuple[float, float, float, float]:
    """One sink's (count, sum, smallest bucket bound holding every observation, share of
    the observations at most 1 s: the issue's push target)."""
    count = total = 0.0
    buckets = []
    for line in metrics.splitlines():
        if f'sink="{sink}"' not in line:
            continue
        if line.startswith(f"{name}_count"):
            count = float(line.rsplit(" ", 1)[1])
        elif line.startswith(f"{name}_sum"):
            total = float(line.rsplit(" ", 1)[1])
        elif line.startswith(f"{name}_bucket"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float("inf") if le == "+Inf" else float(le),
                            float(line.rsplit(" ", 1)[1])))
    bound = next((le for le, c in sorted(buckets) if count and c >= count), 0.0)
    within_1s = next((c for le, c in buckets if le == 1.0), 0.0) / count if count else 0.0
    return count, total, bound, within_1s


def run_agent(n: int, busy: bool, seconds: float, window: str,
              sinks: tuple[str, ...] = ("parca", "dir")) -> dict:
    targets = start_targets(n, busy)
    exe = "cpusplit" if busy else "allocsplit"
    agent: subprocess.Popen | None = None
    try:
        # The in-test Parca server (threads of this process, started below) runs at the
        # agent's priority too: starved by the targets, it answered slowly and the push
        # latency measured it, not the agent. (Nice is per thread; new threads inherit it.)
        os.setpriority(os.PRIO_PROCESS, 0, -10)
        # check_later: the server acknowledges at once and checks every profile after the
        # run; checking as they come (Python decoding, ~8 ms a profile) made the push
        # latency of 200 windows the server's 1.5 s, not the agent's.
        with tempfile.TemporaryDirectory() as tmp, ParcaServer(check_later=True) as parca:
            # At nice -10: with every core saturated by the targets, an agent at the default
            # priority gets only its fair share (2 cores / 51 runnable tasks = 3.9 %), and
            # would measure that share rather than what it needs.
            agent = subprocess.Popen(
                ["nice", "-n", "-10", *goprof_command(), "agent", "--exe", exe, "--window", window,
                 *(["--parca", parca.url, "--insecure"] if "parca" in sinks else []),
                 *(["--output-dir", f"{tmp}/out"] if "dir" in sinks else []),
                 "--spool-dir", f"{tmp}/spool", "--metrics-addr", "127.0.0.1:0",
                 "--log-format", "json", "--no-kernel"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            os.makedirs(f"{tmp}/out", exist_ok=True)
            url = ""
            assert agent.stderr is not None
            for line in agent.stderr:
                doc = json.loads(line)
                if doc.get("msg") == "metrics served":
                    url = doc["url"]
                if doc.get("msg") == "agent started":
                    break
            # Keep reading its log: a full pipe would block the agent on its next line.
            threading.Thread(target=agent.stderr.read, daemon=True).start()
            window_s = float(window.rstrip("s"))
            time.sleep(window_s + 1)  # picked up, first window closed: steady state from here
            cpu0, t0 = cpu_seconds(agent.pid), time.monotonic()
            time.sleep(seconds)
            cpu1, t1 = cpu_seconds(agent.pid), time.monotonic()
            metrics = requests.get(url, timeout=10).text
            rss = peak_rss_mb(agent.pid)
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=60)
            received = len(parca.received)
            rejected = parca.rejected
    finally:  # the targets go whatever happened: 200 of them would saturate the host
        if agent is not None and agent.poll() is None:
            agent.kill()  # a failed run: no agent left profiling the host
            agent.wait()
        os.setpriority(os.PRIO_PROCESS, 0, 0)
        for t in targets:
            t.kill()
            t.wait()
    if rejected:
        raise SystemExit(f"the Parca server refused {len(rejected)} profiles: {rejected[0]}")
    # The push target is about the collector: Parca's latency when it is a sink.
    count, total, bound, within_1s = histogram(metrics, "goprof_push_latency_seconds",
                                               "parca" if "parca" in sinks else "dir")
    profiled = next((float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                     if line.startswith("goprof_processes_profiled ")), 0)
    return {"processes": n, "state": "busy" if busy else "idle", "sinks": "+".join(sinks),
            "profiled": profiled,
            "agent_core_pct": 100 * (cpu1 - cpu0) / (t1 - t0), "peak_rss_mb": rss,
            "pushes": count, "push_latency_mean_s": total / count if count else None,
            "push_latency_max_bucket_s": bound, "pushed_within_1s": within_1s,
            "parca_received": received}


def sample_pprof() -> bytes:
    """A CPU window's pprof of typical size: 40 stacks 12 frames deep in one binary."""
    mapping = Mapping(0x400000, 0x800000, 0, "/srv/api", build_id="ab" * 20)
    samples = []
    for s in range(40):
        locs = tuple(Location(0x401000 + 16 * (s * 12 + d), mapping,
                              (Frame(f"main.function{s}_{d}", "/src/api/main.go", 10 + d),))
                     for d in range(12))
        samples.append(Sample(locs, (s + 1, (s + 1) * 10_101_010), {"pid": "1"}))
    profile = Profile([ValueType("samples", "count"), ValueType("cpu", "nanoseconds")],
                      ValueType("cpu", "nanoseconds"), 10_101_010, samples,
                      time.time_ns(), 10**10)
    buf = io.BytesIO()
    pprof.EXPORTER.write(profile, buf)
    return buf.getvalue()


def spool_rates(windows: int) -> dict:
    """Windows spooled per second while Parca is down; replayed per second once up."""
    data = sample_pprof()
    with tempfile.TemporaryDirectory() as tmp:
        parca = ParcaServer(check_later=True).start()
        url = parca.url
        parca.stop()
        sink = ParcaSink(url, insecure=True, timeout_s=1)
        d = Delivery(sink, spool_dir=Path(tmp), retry_initial_s=0.2, retry_max_s=0.5)
        d.start()
        sample = WindowProfile("cpu", {"service_name": "bench", "pid": "1"}, 0, 1, data)
        d.submit(sample)
        time.sleep(1.5)  # the sink is seen down: what follows goes to disk
        t0 = time.monotonic()
        for i in range(windows):
            d.submit(WindowProfile("cpu", {"service_name": "bench", "pid": "1"}, i, i + 1,
                                   data))
        submit_s = time.monotonic() - t0
        # The delivery thread writes them to disk (the profiling thread only queues).
        while d.stats().queued and time.monotonic() - t0 < 300:
            time.sleep(0.001)
        write_s = time.monotonic() - t0
        spooled = d.stats().spooled_windows
        parca.start()
        t0 = time.monotonic()
        d.wait_idle(300)
        replay_s = time.monotonic() - t0
        d.close()
        sink.close()
        parca.stop()
        got = len(parca.received)
        if parca.rejected:
            raise SystemExit(f"the Parca server refused {len(parca.rejected)} profiles")
    return {"windows": windows, "window_bytes": len(data), "spooled": spooled,
            "submit_per_s": windows / submit_s, "spool_write_per_s": windows / write_s,
            "replay_per_s": got / replay_s,
            "replayed": got}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=40)
    ap.add_argument("--window", default="10s")
    ap.add_argument("--counts", default="1,50,200")
    ap.add_argument("--states", default="idle,busy")
    ap.add_argument("--spool-windows", type=int, default=1000)
    ap.add_argument("--sinks", default="parca+dir,parca",
                    help="sink sets to run each count and state with, comma-separated; "
                         "a set is parca, dir or parca+dir")
    args = ap.parse_args()
    rows = []
    for n in [int(c) for c in args.counts.split(",")]:
        for busy in [state == "busy" for state in args.states.split(",")]:
            for sinks in args.sinks.split(","):
                row = run_agent(n, busy, args.seconds, args.window, tuple(sinks.split("+")))
                rows.append(row)
                print(json.dumps(row), flush=True)
    if args.spool_windows:
        print(json.dumps({"spool": spool_rates(args.spool_windows)}), flush=True)
    print("\n| processes | state | sinks | agent CPU (% of a core) | peak RSS (MB) | pushes | "
          "push latency mean / all within | pushed within 1 s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        mean = r["push_latency_mean_s"]
        print(f"| {r['processes']} | {r['state']} | {r['sinks']} | {r['agent_core_pct']:.2f} | "
              f"{r['peak_rss_mb']:.0f} | {r['pushes']:.0f} | "
              f"{mean if mean is None else f'{mean:.3f}'} s / {r['push_latency_max_bucket_s']} s | "
              f"{100 * r['pushed_within_1s']:.0f} % |")


if __name__ == "__main__":
    main()
