"""The Parca sink against tests/parca_server.py (Parca's WriteRaw and its documented
validation, on 127.0.0.1): what lands, how labels are made acceptable, auth, TLS, and
which failures are worth retrying. No root and no BPF needed."""

from __future__ import annotations

import gzip
import io
import subprocess
import time
from pathlib import Path

import grpc
import pytest
from goprof.exporters.parca import (
    DEFAULT_PORT,
    ParcaSink,
    build_request,
    parse_url,
    sanitize_label_name,
)
from goprof.exporters.pprof import EXPORTER as PPROF
from goprof.exporters.pprof import to_proto
from goprof.exporters.proto import parca_profilestore_pb2 as ppb
from goprof.exporters.proto import parca_profilestore_pb2_grpc as ppb_grpc
from goprof.exporters.proto import profile_pb2 as pb
from goprof.exporters.sink import Sink, SinkError, SinkRejected, WindowProfile
from goprof.model import Frame, Location, Mapping, Profile, Sample, ValueType

from tests.parca_server import ParcaServer, validate_profile

EXE = Mapping(0x400000, 0x500000, 0, "/usr/local/bin/cpusplit", "b1d0")
L_ALPHA = Location(0x401000, EXE, (
    Frame("main.mix", "/src/main.go", 21, 19, inlined=True),
    Frame("main.alpha", "/src/main.go", 11, 9),
))
L_BETA = Location(0x403000, EXE, (Frame("main.beta", "/src/main.go", 41, 39),))
L_MAIN = Location(0x402000, EXE, (Frame("main.main", "/src/main.go", 31, 29),))
MS = 10_000_000
LABELS = {"service_name": "cpusplit", "pid": "42", "comm": "cpusplit",
          "executable": "/usr/local/bin/cpusplit", "build_id": "b1d0", "go_version": "go1.26"}


def cpu_profile() -> Profile:
    return Profile(
        sample_types=[ValueType("samples", "count"), ValueType("cpu", "nanoseconds")],
        period_type=ValueType("cpu", "nanoseconds"),
        period=MS,
        samples=[Sample((L_ALPHA, L_MAIN), (7, 7 * MS), {"pid": "42"}),
                 Sample((L_BETA, L_MAIN), (3, 3 * MS), {"pid": "42"})],
        time_nanos=1_700_000_000_000_000_000,
        duration_nanos=10_000_000_000,
    )


def alloc_profile() -> Profile:
    return Profile(
        sample_types=[ValueType("alloc_objects", "count"), ValueType("alloc_space", "bytes")],
        period_type=ValueType("space", "bytes"),
        period=512 * 1024,
        samples=[Sample((L_BETA, L_MAIN), (5, 4096), num_labels={"bytes": (819, "bytes")})],
        default_sample_type="alloc_space",
    )


def pprof_bytes(profile: Profile) -> bytes:
    buf = io.BytesIO()
    PPROF.write(profile, buf)
    return buf.getvalue()


def window(kind: str = "cpu", labels: dict[str, str] | None = None,
           pprof: bytes | None = None) -> WindowProfile:
    if pprof is None:
        pprof = pprof_bytes(cpu_profile() if kind == "cpu" else alloc_profile())
    return WindowProfile(kind=kind, labels=dict(LABELS if labels is None else labels),
                         start_ns=1_700_000_000_000_000_000, end_ns=1_700_000_010_000_000_000,
                         pprof=pprof)


@pytest.fixture
def server():
    with ParcaServer() as s:
        yield s


@pytest.fixture
def sink(server):
    s = ParcaSink(server.url, insecure=True, timeout_s=5)
    yield s
    s.close()


# -- what lands ---------------------------------------------------------------------

def test_cpu_window_lands_with_labels_and_intact_profile(server, sink):
    model = cpu_profile()
    sink.send(window("cpu"))
    [got] = server.wait_for(1)
    assert server.rejected == []
    assert got.labels == {"__name__": "process_cpu", **LABELS}
    assert got.gzipped and not got.normalized
    validate_profile(got.profile)  # raises on any rule Parca enforces
    # Byte for byte the message the pprof exporter built, values and all.
    assert got.profile == to_proto(model)
    strings = got.profile.string_table
    assert [(strings[t.type], strings[t.unit]) for t in got.profile.sample_type] == \
        [("samples", "count"), ("cpu", "nanoseconds")]
    assert [list(s.value) for s in got.profile.sample] == [[7, 7 * MS], [3, 3 * MS]]
    leafs = [strings[got.profile.function[
        got.profile.location[s.location_id[0] - 1].line[-1].function_id - 1].name]
        for s in got.profile.sample]
    assert leafs == ["main.alpha", "main.beta"]


def test_mem_window_is_named_memory(server, sink):
    sink.send(window("mem"))
    [got] = server.wait_for(1)
    assert got.labels["__name__"] == "memory"
    assert [list(s.value) for s in got.profile.sample] == [[5, 4096]]
    assert got.profile == to_proto(alloc_profile())


def test_each_send_is_one_record_in_order(server, sink):
    for pid in ("1", "2", "3"):
        sink.send(window("cpu", {"service_name": "x", "pid": pid}))
    got = server.wait_for(3)
    assert [r.labels["pid"] for r in got] == ["1", "2", "3"]
    assert got[0].at <= got[1].at <= got[2].at


def test_send_many_is_one_request_with_a_series_per_window(server, sink):
    windows = [window("cpu", {"service_name": "x", "pid": str(pid)}) for pid in range(1, 4)]
    sink.send_many([*windows, window("mem", {"service_name": "x", "pid": "9"})])
    got = server.wait_for(4)
    assert [(r.labels["__name__"], r.labels["pid"]) for r in got] == \
        [("process_cpu", "1"), ("process_cpu", "2"), ("process_cpu", "3"), ("memory", "9")]
    assert len({r.at for r in got}) == 1, "one WriteRaw call"
    assert all(r.profile == to_proto(cpu_profile()) for r in got[:3])


def test_send_many_is_refused_whole_for_one_bad_window(server, sink):
    bad = window("cpu", pprof=b"not a profile")
    with pytest.raises(SinkRejected):
        sink.send_many([window("cpu"), bad])
    assert server.received == []


def test_send_many_is_declared_all_or_nothing_so_delivery_batches() -> None:
    assert issubclass(ParcaSink, Sink) and ParcaSink.atomic_send_many

def test_uncompressed_pprof_is_accepted(server, sink):
    raw = to_proto(cpu_profile()).SerializeToString()
    sink.send(window("cpu", pprof=raw))
    [got] = server.wait_for(1)
    assert not got.gzipped
    assert got.profile == to_proto(cpu_profile())


def test_big_window_passes_grpc_default_4mib_limit(server, sink):
    msg = to_proto(cpu_profile())
    msg.string_table.append("x" * (6 * 1024 * 1024))
    msg.comment.append(len(msg.string_table) - 1)
    sink.send(window("cpu", pprof=msg.SerializeToString()))
    [got] = server.wait_for(1)
    assert len(got.profile.string_table[-1]) == 6 * 1024 * 1024


# -- labels -------------------------------------------------------------------------

def test_label_names_are_sanitized_deduplicated_and_sorted(server, sink):
    labels = {"service.name": "svc", "k8s-pod": "p1", "9lives": "cat", "go_version": "go1.26",
              "go.version": "ignored: go_version was valid as given", "__name__": "mine",
              "empty": "", "ünïcode": "välue"}
    request = build_request(window("cpu", labels))
    names = [label.name for label in request.series[0].labels.labels]
    assert names == sorted(names)
    assert len(names) == len(set(names))
    sink.send(window("cpu", labels))
    [got] = server.wait_for(1)
    assert got.labels == {"__name__": "process_cpu", "service_name": "svc", "k8s_pod": "p1",
                          "_9lives": "cat", "go_version": "go1.26", "_n_code": "välue"}


@pytest.mark.parametrize(("name", "want"), [
    ("pid", "pid"), ("a.b-c/d", "a_b_c_d"), ("1a", "_1a"), ("", "_"), ("_x", "_x"),
    ("Ab9", "Ab9"),
])
def test_sanitize_label_name(name, want):
    assert sanitize_label_name(name) == want


# -- auth ---------------------------------------------------------------------------

def test_bearer_token_accepted():
    with ParcaServer(token="s3cret") as server:
        sink = ParcaSink(server.url, insecure=True, token="s3cret", timeout_s=5)
        sink.send(window())
        assert len(server.wait_for(1)) == 1
        sink.close()


@pytest.mark.parametrize("token", [None, "wrong"])
def test_bearer_token_refused_is_retryable(token):
    with ParcaServer(token="s3cret") as server:
        sink = ParcaSink(server.url, insecure=True, token=token, timeout_s=5)
        with pytest.raises(SinkError) as err:
            sink.send(window())
        sink.close()
        assert not isinstance(err.value, SinkRejected)  # a fixed token may work next time
        assert "UNAUTHENTICATED" in str(err.value) and server.url in str(err.value)
        assert server.received == []
        assert server.rejected == ["bad or missing bearer token"]


# -- failures -----------------------------------------------------------------------

def test_server_down_fails_quickly_then_recovers_on_same_port():
    server = ParcaServer().start()
    port = server.port
    sink = ParcaSink(server.url, insecure=True, timeout_s=1)
    try:
        sink.send(window())
        server.stop()
        started = time.monotonic()
        with pytest.raises(SinkError) as err:
            sink.send(window())
        assert time.monotonic() - started < 3
        assert not isinstance(err.value, SinkRejected)
        assert "\n" not in str(err.value) and server.url in str(err.value)

        server.start()
        assert server.port == port
        # grpc reconnects the same channel on its own (backoff capped by the sink).
        deadline = time.monotonic() + 15
        while True:
            try:
                sink.send(window("cpu", {"pid": "after-restart"}))
                break
            except SinkError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        assert [r.labels.get("pid") for r in server.wait_for(2)] == ["42", "after-restart"]
    finally:
        sink.close()
        server.stop()


def bad_profile(kind: str) -> pb.Profile:
    msg = to_proto(cpu_profile())
    if kind == "location order":
        locs = list(msg.location)
        locs[0], locs[1] = locs[1], locs[0]
        del msg.location[:]
        msg.location.extend(locs)
    elif kind == "string index":
        msg.function[0].name = len(msg.string_table) + 5
    elif kind == "value count":
        msg.sample[0].value.append(1)
    elif kind == "string table":
        msg.string_table[0] = "not empty"
    return msg


@pytest.mark.parametrize(("kind", "reason"), [
    ("location order", "location ids must be 1..3 in order"),
    ("string index", "out of range"),
    ("value count", "3 values for 2 sample types"),
    ("string table", 'string_table[0] must be ""'),
])
def test_invalid_profile_is_rejected_for_good(server, sink, kind, reason):
    data = gzip.compress(bad_profile(kind).SerializeToString())
    with pytest.raises(SinkRejected) as err:
        sink.send(window("cpu", pprof=data))
    message = str(err.value)
    assert "INVALID_ARGUMENT" in message and server.url in message and reason in message
    assert "\n" not in message
    assert server.received == []
    assert len(server.rejected) == 1 and reason in server.rejected[0]


def test_a_server_that_checks_later_still_tells_good_from_bad():
    # The benchmark's server (check_later) acknowledges at once: its checks must still
    # run, when what it received is read.
    with ParcaServer(check_later=True) as server:
        sink = ParcaSink(server.url, insecure=True, timeout_s=5)
        try:
            sink.send(window("cpu"))
            sink.send(window("cpu", pprof=b"not a profile"))  # no error: checked later
            sink.send_many([window("mem"), window("cpu")])
        finally:
            sink.close()
        got = server.received
        assert [r.labels["__name__"] for r in got] == ["process_cpu", "memory", "process_cpu"]
        assert got[0].profile == to_proto(cpu_profile())
        assert len(server.rejected) == 1 and "does not decode" in server.rejected[0]


def test_garbage_pprof_is_rejected(server, sink):
    with pytest.raises(SinkRejected, match="does not decode"):
        sink.send(window("cpu", pprof=b"\x1f\x8bnot gzip at all"))


@pytest.mark.parametrize(("code", "rejected"), [
    (grpc.StatusCode.INVALID_ARGUMENT, True),
    (grpc.StatusCode.FAILED_PRECONDITION, True),
    (grpc.StatusCode.OUT_OF_RANGE, True),
    (grpc.StatusCode.UNIMPLEMENTED, True),
    (grpc.StatusCode.UNAVAILABLE, False),
    (grpc.StatusCode.DEADLINE_EXCEEDED, False),
    (grpc.StatusCode.UNAUTHENTICATED, False),
    (grpc.StatusCode.PERMISSION_DENIED, False),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, False),
    (grpc.StatusCode.INTERNAL, False),
    (grpc.StatusCode.UNKNOWN, False),
])
def test_status_codes_map_to_retry_or_drop(server, sink, code, rejected):
    server.force_status = (code, "line one\nline two")
    with pytest.raises(SinkError) as err:
        sink.send(window())
    assert isinstance(err.value, SinkRejected) is rejected
    assert str(err.value) == f"parca {server.url}: {code.name}: line one line two"


def test_closed_sink_refuses(server):
    sink = ParcaSink(server.url, insecure=True)
    sink.close()
    with pytest.raises(SinkError, match="closed"):
        sink.send(window())


def test_unknown_kind_is_rejected(server, sink):
    with pytest.raises(SinkRejected, match="'gpu'"):
        sink.send(WindowProfile(kind="gpu", labels={}, start_ns=0, end_ns=0,
                                pprof=pprof_bytes(cpu_profile())))


# -- the test server holds the sink to Parca's rules (so the tests above can fail) ------

def raw_request(labels: list[tuple[str, str]]) -> ppb.WriteRawRequest:
    data = pprof_bytes(cpu_profile())
    return ppb.WriteRawRequest(series=[ppb.RawProfileSeries(
        labels=ppb.LabelSet(labels=[ppb.Label(name=n, value=v) for n, v in labels]),
        samples=[ppb.RawSample(raw_profile=data)])])


@pytest.mark.parametrize(("labels", "reason"), [
    ([("pid", "1")], "missing __name__"),
    ([("__name__", "process_cpu"), ("a.b", "1")], "invalid label name"),
    ([("__name__", "process_cpu"), ("a", "1"), ("a", "2")], "duplicate label name"),
])
def test_server_enforces_label_rules(server, labels, reason):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = ppb_grpc.ProfileStoreServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.WriteRaw(raw_request(labels), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason in err.value.details()
    assert server.received == [] and reason in server.rejected[0]


def test_server_port_in_use_is_an_error(server):
    assert server.url == f"grpc://127.0.0.1:{server.port}" and server.port > 0
    with pytest.raises(RuntimeError, match="cannot bind"):
        ParcaServer(port=server.port).start()  # the port is taken: no silent sharing


# -- TLS ----------------------------------------------------------------------------

def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    """A throwaway CA and a server certificate for 127.0.0.1 it signed."""
    d = tmp_path_factory.mktemp("parca-tls")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=goprof test CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    _openssl("req", "-new", *ec, "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=127.0.0.1", cwd=d)
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                               "extendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf",
             cwd=d)
    return d


@pytest.fixture
def tls_server(certs):
    tls = ((certs / "server.pem").read_bytes(), (certs / "server.key").read_bytes())
    with ParcaServer(tls=tls, token="t0k") as s:
        yield s


@pytest.mark.parametrize("scheme", ["grpc://", "grpcs://", ""])
def test_tls_with_ca_file(tls_server, certs, scheme):
    url = f"{scheme}127.0.0.1:{tls_server.port}"
    sink = ParcaSink(url, ca_file=str(certs / "ca.pem"), token="t0k", timeout_s=5)
    assert sink.tls
    sink.send(window())
    sink.close()
    [got] = tls_server.wait_for(1)
    assert got.labels["__name__"] == "process_cpu"


def test_tls_without_our_ca_fails_retryably(tls_server):
    sink = ParcaSink(tls_server.url, token="t0k", timeout_s=2)
    with pytest.raises(SinkError) as err:
        sink.send(window())
    sink.close()
    assert not isinstance(err.value, SinkRejected)
    assert "UNAVAILABLE" in str(err.value)
    assert tls_server.received == []


def test_plaintext_client_cannot_talk_to_tls_server(tls_server):
    sink = ParcaSink(tls_server.url, insecure=True, token="t0k", timeout_s=2)
    with pytest.raises(SinkError):
        sink.send(window())
    sink.close()
    assert tls_server.received == []


# -- configuration --------------------------------------------------------------------

@pytest.mark.parametrize(("url", "target", "wants_tls"), [
    ("grpc://parca:7070", "parca:7070", None),
    ("grpcs://parca.example.com:443", "parca.example.com:443", True),
    ("parca.monitoring.svc:8080", "parca.monitoring.svc:8080", None),
    ("parca", f"parca:{DEFAULT_PORT}", None),
    ("grpc://10.0.0.1", f"10.0.0.1:{DEFAULT_PORT}", None),
    ("[::1]:7070", "[::1]:7070", None),
])
def test_parse_url(url, target, wants_tls):
    assert parse_url(url) == (target, wants_tls)


@pytest.mark.parametrize("url", [
    "", "http://parca:7070", "https://parca", "grpc://", "grpc://parca:port",
    "grpc://parca:99999", "parca:7070/path", "grpc://user@parca:7070", "grpc://parca:7070?x=1",
    "grpc://par ca:7070", "parca:0",
])
def test_malformed_url_is_a_value_error_naming_it(url):
    with pytest.raises(ValueError) as err:
        ParcaSink(url, insecure=True)
    assert repr(url) in str(err.value)


def test_grpcs_with_insecure_is_a_value_error():
    with pytest.raises(ValueError, match="grpcs://.*insecure"):
        ParcaSink("grpcs://parca:7070", insecure=True)


def test_insecure_with_ca_file_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="ca_file"):
        ParcaSink("parca:7070", insecure=True, ca_file=str(tmp_path / "ca.pem"))


def test_missing_ca_file_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="ca_file"):
        ParcaSink("parca:7070", ca_file=str(tmp_path / "nope.pem"))


def test_tls_is_the_default():
    sink = ParcaSink("parca:7070")
    assert sink.tls and sink.name == "parca"
    sink.close()
    sink = ParcaSink("grpc://parca:7070", insecure=True)
    assert not sink.tls
    sink.close()
