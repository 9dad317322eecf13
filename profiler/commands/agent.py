"""`goprof agent`: profile every Go process on the host (or those matching filters)
window after window, and deliver the profiles to Parca, Pyroscope or a directory."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from goprof.durations import parse_duration, parse_size
from goprof.errors import EnvironmentProblem, UsageError
from goprof.exporters.directory import DEFAULT_TEMPLATE
from goprof.exporters.sink import Sink, check_template
from goprof.targets import check_privileges
from rich.console import Console

# The agent's own modules (grpc, requests, prometheus_client, the Kubernetes client code)
# are imported when the agent runs: every other command would pay ~0.25 s of start-up.
if TYPE_CHECKING:
    from goprof.agent.delivery import Delivery
    from goprof.agent.metrics import AgentMetrics
    from goprof.agent.options import AgentOptions

TOKEN_VARIABLES = {"parca": "GOPROF_PARCA_TOKEN", "pyroscope": "GOPROF_PYROSCOPE_TOKEN",
                   "pyroscope_password": "GOPROF_PYROSCOPE_PASSWORD"}
CLOSE_TIMEOUT_S = 5.0  # at exit, sinks get this long; what is left is spooled


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "agent", help="profile every Go process on this host, continuously",
        description="Profile every Go process on this host (or those matching --pid, --exe, "
                    "--comm, --cgroup) window after window: CPU always, allocations with "
                    "--mem, goroutines with --goroutines; samples carry the goroutines' pprof "
                    "labels. Each window of each process becomes one pprof profile, sent to "
                    "Parca, Pyroscope and/or written to a directory. Settings can come from "
                    "--config FILE (YAML, keys are the long flag names); flags override it.",
        epilog="examples:\n"
               "  sudo goprof agent --parca grpc://parca.internal:7070 --insecure\n"
               "  sudo goprof agent --pyroscope http://pyroscope:4040 --exe /srv/api --mem\n"
               "  sudo goprof agent --output-dir /var/lib/goprof --retain 7d --retain-size 2G\n"
               "  sudo goprof agent --config /etc/goprof/agent.yaml\n"
               "Tokens and passwords come from files or the environment "
               "(GOPROF_PARCA_TOKEN, GOPROF_PYROSCOPE_TOKEN, GOPROF_PYROSCOPE_PASSWORD), "
               "never from the command line. SIGTERM or Ctrl-C closes the last window, "
               "sends what it can and spools the rest.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="FILE", help="settings file (YAML)")
    g = p.add_argument_group("targets (default: every Go process)")
    g.add_argument("-p", "--pid", type=int, action="append", metavar="PID")
    g.add_argument("--exe", action="append", metavar="PATH|NAME",
                   help="executable path, or base name")
    g.add_argument("--comm", action="append", metavar="NAME", help="process name (comm)")
    g.add_argument("--cgroup", action="append", metavar="TEXT",
                   help="part of the process's cgroup path (a container or slice)")
    g = p.add_argument_group("profiles")
    g.add_argument("--window", metavar="D", help="one profile per process per window "
                   "(default 10s)")
    g.add_argument("-F", "--frequency", type=int, metavar="HZ",
                   help="CPU samples per second per CPU (default 99)")
    g.add_argument("--kernel", action=argparse.BooleanOptionalAction, default=None,
                   help="include kernel frames (default: yes)")
    g.add_argument("--mem", action="store_true", default=None,
                   help="also profile allocations (goprof mem's go-sampler or span method)")
    g.add_argument("--mem-rate", metavar="BYTES", help="span method: bytes per sampled "
                   "stack (default 512K)")
    g.add_argument("--goroutines", action="store_true", default=None,
                   help="also a goroutine profile of every process every window (what "
                   "runtime/pprof's goroutine profile holds, read through /proc/PID/mem)")
    g.add_argument("--goroutine-ids", action="store_true", default=None,
                   help="the numeric label `goroutine` (the goroutine's id) on every CPU and "
                   "allocation sample: many more distinct samples, larger profiles")
    g = p.add_argument_group("labels")
    g.add_argument("--service-name", metavar="NAME", help="service_name of every profile "
                   "(default: the process's OTEL_SERVICE_NAME or GOPROF_SERVICE_NAME, else "
                   "its executable's name)")
    g.add_argument("--hostname", metavar="NAME", help="hostname label (default: this host's)")
    g = p.add_argument_group("Parca")
    g.add_argument("--parca", metavar="URL", help="grpc://HOST:7070 or grpcs://HOST:PORT "
                   "(TLS unless --insecure)")
    g.add_argument("--insecure", action="store_true", default=None,
                   help="plaintext gRPC to Parca")
    g.add_argument("--parca-ca", metavar="FILE", help="CA certificates for Parca's TLS")
    g.add_argument("--parca-token-file", metavar="FILE",
                   help="bearer token (else $GOPROF_PARCA_TOKEN)")
    g = p.add_argument_group("Pyroscope")
    g.add_argument("--pyroscope", metavar="URL", help="http(s)://HOST:4040")
    g.add_argument("--pyroscope-user", metavar="USER", help="basic auth user")
    g.add_argument("--pyroscope-password-file", metavar="FILE",
                   help="basic auth password (else $GOPROF_PYROSCOPE_PASSWORD)")
    g.add_argument("--pyroscope-token-file", metavar="FILE",
                   help="bearer token (else $GOPROF_PYROSCOPE_TOKEN)")
    g.add_argument("--tenant-id", metavar="ID", help="X-Scope-OrgID (multi-tenant)")
    g = p.add_argument_group("directory")
    g.add_argument("--output-dir", metavar="DIR", help="write every profile here")
    g.add_argument("--output-template", metavar="T", help="file names, from {exe} {pid} "
                   "{time} {host} {kind} (default " + DEFAULT_TEMPLATE + ")")
    g.add_argument("--retain", metavar="D", help="delete profiles older than this (7d)")
    g.add_argument("--retain-size", metavar="SIZE",
                   help="keep the directory under this size, oldest deleted first (2G)")
    g = p.add_argument_group("delivery")
    g.add_argument("--spool-dir", metavar="DIR", help="windows wait here while a sink is "
                   "down, and across restarts (default /var/lib/goprof/spool)")
    g.add_argument("--spool-size", metavar="SIZE", help="spool bound per sink (default 1G)")
    g.add_argument("--queue-size", metavar="SIZE", help="profiles held in memory per "
                   "sink before the spool (default 64M)")
    g = p.add_argument_group("operation")
    g.add_argument("--metrics-addr", metavar="HOST:PORT", help="Prometheus /metrics and "
                   "/healthz (default 127.0.0.1:7471; off disables)")
    g.add_argument("--log-format", choices=("text", "json"), help="log lines (default text)")
    g.add_argument("-d", "--duration", metavar="D", help="stop after this long (default: "
                   "until SIGTERM or Ctrl-C)")
    p.set_defaults(run=run)


def _secret(file: str | None, variable: str, flag: str) -> str | None:
    if file:
        try:
            return Path(file).read_text().strip() or None
        except OSError as e:
            raise UsageError(f"{flag} {file}: {e.strerror}") from None
    return os.environ.get(variable) or None


def build_sinks(s: argparse.Namespace, hostname: str) -> list[tuple[Sink, bool]]:
    """(sink, remote) for each destination asked for; UsageError when none is, or one
    cannot work (a bad URL, an unwritable directory)."""
    sinks: list[tuple[Sink, bool]] = []
    try:
        if s.parca:
            from goprof.exporters.parca import ParcaSink

            sinks.append((ParcaSink(s.parca, insecure=s.insecure, ca_file=s.parca_ca,
                                    token=_secret(s.parca_token_file, TOKEN_VARIABLES["parca"],
                                                  "--parca-token-file")), True))
        if s.pyroscope:
            from goprof.exporters.pyroscope import PyroscopeSink

            sinks.append((PyroscopeSink(
                s.pyroscope, user=s.pyroscope_user, tenant_id=s.tenant_id,
                password=_secret(s.pyroscope_password_file,
                                 TOKEN_VARIABLES["pyroscope_password"],
                                 "--pyroscope-password-file"),
                token=_secret(s.pyroscope_token_file, TOKEN_VARIABLES["pyroscope"],
                              "--pyroscope-token-file")), True))
        if s.output_dir:
            from goprof.exporters.directory import DirectorySink

            check_template(s.output_template)
            retain = parse_duration(s.retain, "--retain") if s.retain else None
            size = parse_size(s.retain_size, "--retain-size") if s.retain_size else None
            sinks.append((DirectorySink(Path(s.output_dir), s.output_template, host=hostname,
                                        retain_age_s=retain, retain_bytes=size), False))
    except ValueError as e:
        raise UsageError(str(e)) from None
    except OSError as e:
        raise EnvironmentProblem(f"--output-dir {s.output_dir}: {e}") from None
    if not sinks:
        raise UsageError("nowhere to send profiles: give --parca URL, --pyroscope URL and/or "
                         "--output-dir DIR (or set them in --config)")
    return sinks


def spool_root(path: str, log: logging.Logger) -> Path | None:
    """The spool folder, created; None (memory queues only, said) when it cannot be."""
    root = Path(path)
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".goprof-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        log.warning("spool directory unusable: windows wait in memory only while a sink is "
                    "down (and are lost at exit)",
                    extra={"fields": {"spool_dir": path, "error": e.strerror}})
        return None
    return root


def options_from(s: argparse.Namespace, hostname: str) -> AgentOptions:
    from goprof.agent.discovery import ProcessFilter
    from goprof.agent.options import AgentOptions

    if not 1 <= s.frequency <= 10000:
        raise UsageError(f"--frequency {s.frequency}: give 1 to 10000 samples a second")
    window = parse_duration(s.window, "--window")
    if window < 0.2:
        raise UsageError(f"--window {s.window}: at least 200ms")
    return AgentOptions(
        filter=ProcessFilter(pids=list(s.pid), exes=list(s.exe), comms=list(s.comm),
                             cgroups=list(s.cgroup)),
        hostname=hostname, window_s=window, frequency=s.frequency, kernel=s.kernel,
        mem=s.mem, mem_rate=parse_size(s.mem_rate, "--mem-rate"),
        goroutine_ids=s.goroutine_ids, goroutines=s.goroutines,
        service_name=s.service_name, node=os.environ.get("NODE_NAME") or None,
        duration=parse_duration(s.duration) if s.duration else None)


def run(args: argparse.Namespace, console: Console) -> int:
    from goprof.agent import config as agent_config
    from goprof.agent import logs
    from goprof.agent.delivery import Delivery
    from goprof.agent.kube import PodDirectory
    from goprof.agent.metrics import AgentMetrics, TimedSink, serve
    from goprof.agent.runner import Agent

    s = agent_config.merge(args)
    hostname = s.hostname or socket.gethostname()
    options = options_from(s, hostname)
    log = logs.setup(s.log_format)
    sinks = build_sinks(s, hostname)
    spool_bytes = parse_size(s.spool_size, "--spool-size")
    queue_bytes = parse_size(s.queue_size, "--queue-size")
    check_privileges()
    metrics = AgentMetrics()
    spool = spool_root(s.spool_dir, log) if any(remote for _, remote in sinks) else None
    deliveries = []
    for sink, remote in sinks:
        d = Delivery(TimedSink(sink, metrics.push_latency), spool_dir=spool if remote else None,
                     queue_bytes=queue_bytes, spool_bytes=spool_bytes,
                     log=logging.getLogger(f"goprof.agent.{sink.name}"))
        deliveries.append(d)
        metrics.deliveries[sink.name] = d
    agent = Agent(options, deliveries, metrics, log,
                  pods=PodDirectory.from_environment(options.node, log))
    stop = threading.Event()
    old = {sig: signal.signal(sig, lambda *_: stop.set())
           for sig in (signal.SIGINT, signal.SIGTERM)}
    server = None
    try:
        agent.open()
        if s.metrics_addr != "off":
            server, port = serve(metrics, s.metrics_addr, agent.healthy)
            log.info("metrics served", extra={"fields": {
                "url": f"http://{s.metrics_addr.rpartition(':')[0]}:{port}/metrics"}})
        for d in deliveries:
            d.start()
        ended = agent.run(stop)
    finally:
        agent.close()
        for d in deliveries:
            d.close(CLOSE_TIMEOUT_S)
        for sink, _ in sinks:
            sink.close()
        if server is not None:
            server.shutdown()
        for sig, handler in old.items():
            signal.signal(sig, handler)
    _log_summary(log, ended, metrics, deliveries)
    return 0


def _log_summary(log: logging.Logger, ended: str, metrics: AgentMetrics,
                 deliveries: list[Delivery]) -> None:
    """Nothing silent: what the run made, lost and could not deliver."""
    def total(counter) -> int:
        return int(sum(s.value for m in counter.collect() for s in m.samples
                       if s.name.endswith("_total")))

    fields = {"ended": ended, "windows": total(metrics.windows),
              "samples": total(metrics.samples), "lost_samples": total(metrics.lost),
              "stack_collisions": total(metrics.collisions),
              "truncated_stacks": total(metrics.truncated),
              "unnamed_frames": total(metrics.unnamed),
              "label_sets": total(metrics.label_sets),
              "labels_capped": total(metrics.labels_capped),
              "labels_unread": total(metrics.labels_unread),
              "processes": total(metrics.picked_up)}
    reads = [s for m in metrics.goroutine_read.collect() for s in m.samples]
    count = sum(s.value for s in reads if s.name.endswith("_count"))
    if count:
        seconds = sum(s.value for s in reads if s.name.endswith("_sum"))
        fields["goroutine_reads"] = int(count)
        fields["goroutine_read_ms_mean"] = round(1000 * seconds / count, 2)
    for d in deliveries:
        st = d.stats()
        fields[f"{d.name}_delivered"] = st.delivered
        fields[f"{d.name}_spooled"] = st.spooled_windows
        fields[f"{d.name}_dropped"] = st.dropped
        fields[f"{d.name}_rejected"] = st.rejected
    log.info("agent stopped", extra={"fields": fields})
