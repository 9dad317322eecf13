"""The Pyroscope sink against an in-test `/ingest` server on 127.0.0.1: what arrives
(series name, labels, time range, the pprof itself), auth and tenancy headers, and how
each failure is classified (retry later vs drop)."""

from __future__ import annotations

import gzip
import io
import socket

import pytest
from goprof.exporters import get_exporter
from goprof.exporters.pyroscope import PyroscopeSink, series_name
from goprof.exporters.sink import Sink, SinkError, SinkRejected, WindowProfile
from goprof.model import Frame, Location, Mapping, Profile, Sample, ValueType
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.pyroscope_server import PyroscopeServer, parse_name

EXE = Mapping(0x400000, 0x500000, 0, "/usr/local/bin/cpusplit", "b1d0")
L_ALPHA = Location(0x401000, EXE, (Frame("main.alpha", "/src/main.go", 11, 9),))
L_MAIN = Location(0x402000, EXE, (Frame("main.main", "/src/main.go", 31, 29),))
START_NS = 1_764_584_100_250_000_000  # 2025-12-01T10:15:00.25Z
END_NS = START_NS + 10_000_000_000


def pprof_bytes(kind: str) -> bytes:
    if kind == "cpu":
        profile = Profile(
            sample_types=[ValueType("samples", "count"), ValueType("cpu", "nanoseconds")],
            period_type=ValueType("cpu", "nanoseconds"), period=10_000_000,
            samples=[Sample((L_ALPHA, L_MAIN), (7, 70_000_000), {"pid": "42"}),
                     Sample((L_MAIN,), (2, 20_000_000), {"pid": "42"})],
            time_nanos=START_NS, duration_nanos=END_NS - START_NS)
    else:
        profile = Profile(
            sample_types=[ValueType("alloc_objects", "count"), ValueType("alloc_space", "bytes")],
            period_type=ValueType("space", "bytes"), period=512 * 1024,
            samples=[Sample((L_ALPHA, L_MAIN), (4, 4096), {"pid": "42"})],
            time_nanos=START_NS, duration_nanos=END_NS - START_NS,
            default_sample_type="alloc_space")
    buf = io.BytesIO()
    get_exporter("pprof").write(profile, buf)
    return buf.getvalue()


LABELS = {"service_name": "checkout", "pid": "42", "comm": "cpusplit",
          "executable": "/usr/local/bin/cpusplit", "build_id": "b1d0", "go_version": "go1.26.0"}


def window(kind: str = "cpu", labels: dict[str, str] | None = None, **extra: str
           ) -> WindowProfile:
    return WindowProfile(kind=kind, labels=dict(LABELS if labels is None else labels),
                         start_ns=START_NS, end_ns=END_NS, pprof=pprof_bytes(kind),
                         extra=dict(extra))


@pytest.fixture
def server():
    s = PyroscopeServer().start()
    yield s
    s.stop()


def test_cpu_window_arrives_whole(server: PyroscopeServer) -> None:
    w = window("cpu", sample_rate="100")
    sink = PyroscopeSink(server.url)
    sink.send(w)
    sink.close()
    assert len(server.received) == 1
    r = server.received[0]
    assert r.service == "checkout"
    assert r.labels == {"pid": "42", "comm": "cpusplit", "executable": "/usr/local/bin/cpusplit",
                        "build_id": "b1d0", "go_version": "go1.26.0"}
    # sorted, service_name outside the braces
    assert r.params["name"] == ("checkout{build_id=b1d0,comm=cpusplit,executable=/usr/local/"
                                "bin/cpusplit,go_version=go1.26.0,pid=42}")
    assert (r.from_, r.until) == (1_764_584_100, 1_764_584_110)
    assert r.params["spyName"] == "goprof"
    assert r.params["sampleRate"] == "100"
    assert "format" not in r.params
    assert r.filename == "profile.pprof" and r.content_type == "application/octet-stream"
    assert r.pprof == w.pprof
    strings = r.profile.string_table
    assert [strings[t.type] for t in r.profile.sample_type] == ["samples", "cpu"]
    assert sorted(s.value[0] for s in r.profile.sample) == [2, 7]
    assert r.profile.time_nanos == START_NS


def test_mem_window_is_marked_as_a_delta(server: PyroscopeServer) -> None:
    sink = PyroscopeSink(server.url)
    sink.send(window("mem"))
    sink.send(window("cpu"))
    mem, cpu = server.received
    assert mem.labels["__delta__"] == "false"
    assert "__delta__" not in cpu.labels
    assert "sampleRate" not in mem.params
    strings = mem.profile.string_table
    assert [strings[t.type] for t in mem.profile.sample_type] == ["alloc_objects",
                                                                  "alloc_space"]


def test_send_many_is_not_all_or_nothing_so_delivery_sends_one_by_one() -> None:
    assert issubclass(PyroscopeSink, Sink) and not PyroscopeSink.atomic_send_many

def test_url_prefix_and_trailing_slash(server: PyroscopeServer) -> None:
    sink = PyroscopeSink(server.url + "/")
    assert sink.ingest_url == server.url + "/ingest"
    sink.send(window())
    assert len(server.received) == 1
    # a wrong prefix reaches a 404: the sink is misconfigured, not the server down
    with pytest.raises(SinkRejected, match="404"):
        PyroscopeSink(server.url + "/pyroscope").send(window())


def test_basic_auth() -> None:
    with PyroscopeServer(basic_auth=("12345", "s3cret")) as server:
        with pytest.raises(SinkError, match="401") as e:
            PyroscopeSink(server.url).send(window())
        assert not isinstance(e.value, SinkRejected)  # credentials can be fixed or rotated
        with pytest.raises(SinkError, match="401"):
            PyroscopeSink(server.url, user="12345", password="wrong").send(window())
        PyroscopeSink(server.url, user="12345", password="s3cret").send(window())
        assert len(server.received) == 1
        assert server.received[0].headers["Authorization"].startswith("Basic ")


def test_bearer_token_and_tenant() -> None:
    with PyroscopeServer(token="tok-1") as server:
        with pytest.raises(SinkError, match="401"):
            PyroscopeSink(server.url, token="tok-2").send(window())
        PyroscopeSink(server.url, token="tok-1", tenant_id="team-a").send(window())
        (r,) = server.received
        assert r.headers["Authorization"] == "Bearer tok-1"
        assert r.headers["X-Scope-OrgID"] == "team-a"


def test_no_tenant_header_unless_asked(server: PyroscopeServer) -> None:
    PyroscopeSink(server.url).send(window())
    assert "X-Scope-OrgID" not in server.received[0].headers
    assert "Authorization" not in server.received[0].headers


def test_server_down_then_restarted_on_the_same_port() -> None:
    server = PyroscopeServer().start()
    sink = PyroscopeSink(server.url, timeout_s=2)
    try:
        sink.send(window())
        server.stop()
        with pytest.raises(SinkError) as e:
            sink.send(window())
        assert not isinstance(e.value, SinkRejected)
        assert server.url in str(e.value) and "\n" not in str(e.value)
        server.start()
        sink.send(window())
        assert len(server.received) == 2
    finally:
        sink.close()
        server.stop()


def test_no_answer_is_a_timeout() -> None:
    with socket.socket() as listener:  # accepts connections (backlog), never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        with pytest.raises(SinkError, match="no answer within 0.3s") as e:
            PyroscopeSink(url, timeout_s=0.3).send(window())
        assert not isinstance(e.value, SinkRejected)


@pytest.mark.parametrize("status", [400, 404, 413, 415, 422])
def test_refusals_are_final(server: PyroscopeServer, status: int) -> None:
    server.fail_with = status
    with pytest.raises(SinkRejected) as e:
        PyroscopeSink(server.url).send(window())
    message = str(e.value)
    assert f"HTTP {status}" in message and server.url + "/ingest" in message
    assert "\n" not in message


@pytest.mark.parametrize("status", [401, 403, 408, 429, 500, 502, 503])
def test_transient_failures_are_retryable(server: PyroscopeServer, status: int) -> None:
    server.fail_with = status
    with pytest.raises(SinkError, match=f"HTTP {status}") as e:
        PyroscopeSink(server.url).send(window())
    assert not isinstance(e.value, SinkRejected)
    server.fail_with = None
    PyroscopeSink(server.url).send(window())
    assert len(server.received) == 1


def test_an_invalid_profile_is_rejected_by_validation(server: PyroscopeServer) -> None:
    bad = WindowProfile(kind="cpu", labels=dict(LABELS), start_ns=START_NS, end_ns=END_NS,
                        pprof=gzip.compress(b"\xff\xff\xff not protobuf"))
    with pytest.raises(SinkRejected, match="HTTP 400"):
        PyroscopeSink(server.url).send(bad)
    assert server.received == [] and server.attempts == 1


def test_labels_are_sanitized(server: PyroscopeServer) -> None:
    labels = {"service_name": "my shop/api:v2", "k8s.pod": " web-1,zone=a}b ",
              "1st": "x", "empty": "   ", "comm": "a{b}", "pid": "7",
              "__name__": "evil", "with space": "v"}
    PyroscopeSink(server.url).send(window("mem", labels))
    (r,) = server.received
    assert r.service == "my_shop/api_v2"
    assert r.labels == {"k8s_pod": "web-1_zone_a_b", "_1st": "x", "comm": "a_b_", "pid": "7",
                        "with_space": "v", "__delta__": "false"}


def test_missing_service_name_falls_back_to_comm(server: PyroscopeServer) -> None:
    PyroscopeSink(server.url).send(window(labels={"comm": "worker", "pid": "9"}))
    assert server.received[0].service == "worker"


@pytest.mark.parametrize("url", ["localhost:4040", "ftp://h/", "http://", "http://h:port",
                                 "http://h/?x=1", ""])
def test_malformed_url(url: str) -> None:
    with pytest.raises(ValueError):
        PyroscopeSink(url)


def test_user_and_token_together_are_refused() -> None:
    with pytest.raises(ValueError, match="not both"):
        PyroscopeSink("http://127.0.0.1:4040", user="u", password="p", token="t")


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=12), st.text(max_size=20), max_size=6),
       st.text(max_size=20), st.sampled_from(["cpu", "mem"]))
def test_any_labels_make_a_name_pyroscope_parses(labels: dict[str, str], service: str,
                                                 kind: str) -> None:
    w = WindowProfile(kind=kind, labels={**labels, "service_name": service},
                      start_ns=START_NS, end_ns=END_NS, pprof=b"")
    name = series_name(w)
    app, parsed = parse_name(name)  # raises on anything Pyroscope would refuse
    assert app
    assert all(v and v == v.strip() for v in parsed.values())
    assert ("__delta__" in parsed) == (kind == "mem")
    assert name.count("{") == 1 and name.endswith("}")
