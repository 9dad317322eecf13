"""The agent's own metrics for Prometheus (every series goprof_*) and /healthz.

Counters the profiling loop updates live in prometheus_client objects; what the
delivery threads know (queues, spool, pushes) is read from their stats() at scrape
time by a collector, so delivery code needs no Prometheus import.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from goprof.agent.delivery import Delivery
from goprof.errors import UsageError
from goprof.exporters.sink import Sink, WindowProfile
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    make_wsgi_app,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

PUSH_LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
GOROUTINE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class AgentMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        # The agent's own CPU seconds and memory, as goprof_process_*.
        ProcessCollector(namespace="goprof", registry=r)
        self.processes = Gauge("goprof_processes_profiled", "Go processes being profiled",
                               registry=r)
        self.picked_up = Counter("goprof_processes_picked_up", "Go processes picked up",
                                 registry=r)
        self.let_go = Counter("goprof_processes_let_go", "Profiled processes that exited and "
                              "were released", registry=r)
        # An SRE's two questions: is the agent missing processes because they are gone
        # (normal where short-lived programs come and go: vanished), or because
        # something is wrong (failed: look at the log)?
        self.execs = Counter("goprof_processes_exec", "Profiled processes that exec'd "
                             "another program: from then on profiled as a new process (new "
                             "labels and symbol tables), when the new program is one to "
                             "profile", registry=r)
        self.vanished = Counter("goprof_processes_vanished", "Go processes that exited "
                                "while being picked up, before they could be profiled "
                                "(short-lived programs: normal, not an error)", registry=r)
        self.failed = Counter("goprof_processes_failed", "Running Go processes the agent "
                              "could not fully profile, counted once per process and kind: "
                              "cpu (not picked up, or a CPU window failed), mem (CPU only, or "
                              "an allocation window failed), goroutines (no goroutine "
                              "profile, or one failed), let_go (something it held could "
                              "not be released); the log says why, once", ["kind"], registry=r)
        self.windows_failed = Counter("goprof_windows_failed", "Process windows that could "
                                      "not be built and were dropped (the process had "
                                      "exited, or goprof_processes_failed says)", ["kind"],
                                      registry=r)
        self.windows = Counter("goprof_windows", "Profiles made (one per process per window)",
                               ["kind"], registry=r)
        self.empty_windows = Counter("goprof_windows_empty", "Process windows with no samples "
                                     "(not sent)", ["kind"], registry=r)
        self.samples = Counter("goprof_samples", "Samples (cpu), events with a stack (mem) "
                               "or goroutines (goroutines) in the profiles", ["kind"],
                               registry=r)
        # pprof labels, read in the kernel from the goroutine each sample ran on.
        self.label_sets = Counter("goprof_label_sets", "Distinct pprof label sets per window "
                                  "(summed over windows: a set seen in two windows counts "
                                  "twice)", ["kind"], registry=r)
        self.labels_capped = Counter("goprof_labels_capped", "Samples (cpu) or events (mem) "
                                     "whose pprof labels were cut to goprof's caps (10 labels, "
                                     "keys 64 B, values 128 B)", ["kind"], registry=r)
        self.labels_unread = Counter("goprof_labels_unread", "Samples (cpu) or events (mem) "
                                     "whose goroutine's pprof labels could not be read, or "
                                     "found the window's label map full: counted without "
                                     "labels", ["kind"], registry=r)
        # --goroutines: what reading every goroutine of every process costs, and how whole.
        self.goroutine_read = Histogram("goprof_goroutine_read_seconds", "Time to read one "
                                        "process's goroutines through /proc/PID/mem and build "
                                        "its goroutine profile", buckets=GOROUTINE_BUCKETS,
                                        registry=r)
        self.goroutine_stacks = Counter("goprof_goroutine_stacks_missing", "Goroutines in the "
                                        "goroutine profiles without a whole stack: running "
                                        "(no stack while it runs), unreadable, incomplete, or "
                                        "changed (still moving after 3 reads)", ["why"],
                                        registry=r)
        self.lost = Counter("goprof_lost_samples", "Samples the kernel side could not keep",
                            ["kind"], registry=r)
        self.collisions = Counter("goprof_stack_collisions", "Stacks lost in the stack map "
                                  "(full: stacks are hashed and never collide)", ["kind"],
                                  registry=r)
        self.truncated = Counter("goprof_truncated_stacks", "Stacks cut at the depth limit or "
                                 "at a frame outside mapped code", ["kind"], registry=r)
        self.unnamed = Counter("goprof_unnamed_frames", "Sample-weighted frames without a "
                               "name", ["kind"], registry=r)
        self.window_build = Histogram("goprof_window_build_seconds", "Time to symbolize and "
                                      "encode one window of every process", registry=r)
        self.push_latency = Histogram("goprof_push_latency_seconds", "From a window's end to "
                                      "its delivery", ["sink"], buckets=PUSH_LATENCY_BUCKETS,
                                      registry=r)
        self.binaries = Gauge("goprof_symbolizer_cache_binaries", "Binaries whose symbols "
                              "are loaded", registry=r)
        self.last_window = Gauge("goprof_last_window_timestamp_seconds", "When the last "
                                 "window closed (unix time)", registry=r)
        self.deliveries: dict[str, Delivery] = {}
        r.register(_DeliveryCollector(self.deliveries))


class _DeliveryCollector:
    """Per-sink delivery state, read when Prometheus scrapes."""

    def __init__(self, deliveries: dict[str, Delivery]) -> None:
        self.deliveries = deliveries

    def describe(self) -> list:
        return []  # collected on scrape only: the sinks are known after registration

    def collect(self):
        fams = {
            "pushes": CounterMetricFamily("goprof_pushes", "Windows delivered", labels=["sink"]),
            "failures": CounterMetricFamily("goprof_push_failures", "Delivery attempts that "
                                            "failed (retried later)", labels=["sink"]),
            "rejected": CounterMetricFamily("goprof_windows_rejected", "Windows the sink "
                                            "refused for good", labels=["sink"]),
            "dropped": CounterMetricFamily("goprof_windows_dropped", "Windows dropped: queue "
                                           "or spool full, or unreadable", labels=["sink"]),
            "queued": GaugeMetricFamily("goprof_queue_windows", "Windows waiting in memory",
                                        labels=["sink"]),
            "spooled": GaugeMetricFamily("goprof_spool_windows", "Windows waiting on disk",
                                         labels=["sink"]),
            "spool_bytes": GaugeMetricFamily("goprof_spool_bytes", "Bytes waiting on disk",
                                             labels=["sink"]),
            "up": GaugeMetricFamily("goprof_sink_up", "1 while the last delivery worked",
                                    labels=["sink"]),
        }
        for name, d in list(self.deliveries.items()):
            s = d.stats()
            fams["pushes"].add_metric([name], s.delivered)
            fams["failures"].add_metric([name], s.attempts_failed)
            fams["rejected"].add_metric([name], s.rejected)
            fams["dropped"].add_metric([name], s.dropped)
            fams["queued"].add_metric([name], s.queued)
            fams["spooled"].add_metric([name], s.spooled_windows)
            fams["spool_bytes"].add_metric([name], s.spooled_bytes)
            fams["up"].add_metric([name], 1 if s.up else 0)
        yield from fams.values()


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass  # a scrape every few seconds is not news


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise UsageError(f"--metrics-addr {text!r}: use HOST:PORT, like 127.0.0.1:7471, "
                         "or off")
    return host.strip("[]") or "127.0.0.1", int(port)


def serve(metrics: AgentMetrics, address: str, healthy: Callable[[], tuple[bool, str]]
          ) -> tuple[WSGIServer, int]:
    """Serves /metrics and /healthz on a daemon thread; returns the server and its port."""
    host, port = parse_address(address)
    prom = make_wsgi_app(metrics.registry)

    def app(environ, start_response):
        if environ.get("PATH_INFO") == "/healthz":
            ok, why = healthy()
            start_response("200 OK" if ok else "503 Service Unavailable",
                           [("Content-Type", "text/plain")])
            return [why.encode() + b"\n"]
        return prom(environ, start_response)

    try:
        server = make_server(host, port, app, server_class=_Server, handler_class=_QuietHandler)
    except OSError as e:
        raise UsageError(f"--metrics-addr {address}: cannot listen: {e.strerror}") from None
    threading.Thread(target=server.serve_forever, name="goprof-metrics", daemon=True).start()
    return server, server.server_address[1]


class TimedSink(Sink):
    """A sink that observes each delivered window's latency (window end -> delivered),
    sending through `sink` and batching exactly as it does."""

    def __init__(self, sink: Sink, histogram: Histogram) -> None:
        self.sink = sink
        self.name = sink.name
        self.atomic_send_many = sink.atomic_send_many
        self._observe = histogram.labels(sink.name).observe

    def send(self, window: WindowProfile) -> None:
        self.sink.send(window)
        self._observe(max(time.time_ns() - window.end_ns, 0) / 1e9)

    def send_many(self, windows: list[WindowProfile]) -> None:
        if not self.atomic_send_many:
            super().send_many(windows)  # one send() each, each observed as it lands
            return
        self.sink.send_many(windows)
        now = time.time_ns()
        for window in windows:
            self._observe(max(now - window.end_ns, 0) / 1e9)

    def close(self) -> None:
        self.sink.close()
