"""The Parca sink: one window's pprof, pushed to a Parca server over gRPC.

It calls `parca.profilestore.v1alpha1.ProfileStoreService/WriteRaw` rather than the
Arrow `Write` path. WriteRaw takes a pprof as it is, with a label set, and it is what
Parca's own scraper uses to store what it pulls from `/debug/pprof`: so a window
lands exactly as a scraped Go profile would, while the Arrow path would need the agent
to re-encode every sample into Parca's internal columns (and follow their changes).

Connection: TLS by default (system roots, or `ca_file`'s), `insecure=True` for
plaintext (a Parca inside the cluster, a test server); an optional bearer token goes
in the `authorization` metadata, Parca's convention when a proxy does the auth.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import grpc
from goprof.exporters.proto import parca_profilestore_pb2 as pb
from goprof.exporters.proto import parca_profilestore_pb2_grpc as pb_grpc
from goprof.exporters.sink import Sink, SinkError, SinkRejected, WindowProfile

DEFAULT_PORT = 7070  # Parca serves gRPC and HTTP on one port
MAX_MESSAGE = 64 * 1024 * 1024  # Parca's own limit: a bigger window could never land

# The metric names Parca's scraper gives Go's CPU, heap and goroutine profiles, so
# goprof's windows sit beside scraped ones in Parca's UI.
METRIC_NAMES = {"cpu": "process_cpu", "mem": "memory", "goroutines": "goroutine"}

# The server understood the request and refused it: the same bytes will be refused
# again. Everything else (down, timeout, auth, overload, a server bug) may pass later.
REJECTED_CODES = frozenset({
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.UNIMPLEMENTED,
})

_SCHEMES = {"grpc": None, "grpcs": True}  # None: TLS unless insecure=True
_HOST = re.compile(r"[A-Za-z0-9._-]+|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*")  # name, IPv4, IPv6
_VALID_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_INVALID_CHARS = re.compile(r"[^a-zA-Z0-9_]")

# Reconnection: grpc backs off up to 2 minutes after a failed connect, and fails
# RPCs at once meanwhile. A restarted Parca should be picked up by the next retry.
_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 5000),
]


def parse_url(url: str) -> tuple[str, bool | None]:
    """(target "host:port", wants_tls) for grpc://host[:port], grpcs://host[:port] or
    host[:port]; wants_tls is True for grpcs://, None when the scheme says nothing.
    ValueError naming the URL otherwise."""
    scheme, sep, _ = url.partition("://")
    if not sep:
        scheme = ""
    elif scheme not in _SCHEMES:
        raise ValueError(f"parca URL {url!r}: scheme must be grpc:// or grpcs://")
    try:
        parts = urlsplit(url if sep else "//" + url)
        port = parts.port  # ValueError when not a number in 0..65535
    except ValueError as e:
        raise ValueError(f"parca URL {url!r}: {e}") from None
    host = parts.hostname
    if (not host or not _HOST.fullmatch(host) or port == 0 or parts.username is not None
            or parts.path or parts.query or parts.fragment):
        raise ValueError(f"parca URL {url!r}: expected [grpc://|grpcs://]host[:port]")
    host = f"[{host}]" if ":" in host else host  # IPv6 keeps its brackets
    return f"{host}:{port or DEFAULT_PORT}", _SCHEMES.get(scheme)


def sanitize_label_name(name: str) -> str:
    """A valid Prometheus label name: invalid characters become "_", and a name that
    would start with a digit gets a "_" in front (so "9p" and "p" stay apart)."""
    out = _INVALID_CHARS.sub("_", name)
    return out if _VALID_NAME.fullmatch(out) else "_" + out


def series_labels(kind: str, labels: dict[str, str]) -> list[tuple[str, str]]:
    """`__name__` for the kind plus the window's labels, as Parca accepts them:
    valid names, none repeated, sorted by name."""
    out = {"__name__": METRIC_NAMES[kind]}
    # A name that was valid as given beats one that only became it by sanitizing
    # ("go_version" over "go.version"); then sorted order, so the outcome is stable.
    ordered = sorted(labels.items(), key=lambda kv: (not _VALID_NAME.fullmatch(kv[0]), kv[0]))
    for name, value in ordered:
        # Prometheus reads an empty value as "no such label": sending it would only
        # make two series that Parca's queries cannot tell apart.
        if value:
            out.setdefault(sanitize_label_name(name), _valid_utf8(value))
    return sorted(out.items())


def _valid_utf8(s: str) -> str:
    # Protobuf refuses to encode lone surrogates (from undecodable /proc bytes).
    return s.encode("utf-8", "replace").decode("utf-8")


def build_request(*windows: WindowProfile) -> pb.WriteRawRequest:
    """One series per window (each its process's labels and its pprof)."""
    series = []
    for window in windows:
        labels = pb.LabelSet(labels=[pb.Label(name=n, value=v)
                                     for n, v in series_labels(window.kind, window.labels)])
        series.append(pb.RawProfileSeries(
            labels=labels, samples=[pb.RawSample(raw_profile=window.pprof)]))
    # normalized=False: the pprof holds the process's own addresses and mappings.
    return pb.WriteRawRequest(series=series, normalized=False)


def _credentials(wants_tls: bool | None, insecure: bool, ca_file: str | None,
                 url: str) -> grpc.ChannelCredentials | None:
    """None for plaintext; ValueError for contradicting settings."""
    if insecure:
        if wants_tls:
            raise ValueError(f"parca URL {url!r} asks for TLS (grpcs://) but insecure=True "
                             "asks for plaintext: use grpc:// or drop insecure")
        if ca_file:
            raise ValueError(f"parca {url}: ca_file given with insecure=True (plaintext)")
        return None
    roots = None
    if ca_file:
        try:
            with open(ca_file, "rb") as f:
                roots = f.read()
        except OSError as e:
            raise ValueError(f"parca {url}: cannot read ca_file: {e}") from None
    return grpc.ssl_channel_credentials(root_certificates=roots)


class ParcaSink(Sink):
    name = "parca"
    atomic_send_many = True  # one WriteRaw for all the windows: it lands or fails whole

    def __init__(self, url: str, *, insecure: bool = False, token: str | None = None,
                 ca_file: str | None = None, timeout_s: float = 10.0) -> None:
        if timeout_s <= 0:
            raise ValueError(f"parca {url}: timeout_s must be > 0, not {timeout_s}")
        self.url = url
        self.target, wants_tls = parse_url(url)
        creds = _credentials(wants_tls, insecure, ca_file, url)
        self.tls = creds is not None
        self.timeout_s = timeout_s
        # Sent over plaintext too when the user asks for it: a sidecar proxy on
        # localhost may be what checks it.
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        # One channel for the sink's life: grpc reconnects it by itself, and keeping
        # it saves a TCP and TLS handshake per window.
        if creds is None:
            self._channel = grpc.insecure_channel(self.target, options=_CHANNEL_OPTIONS)
        else:
            self._channel = grpc.secure_channel(self.target, creds, options=_CHANNEL_OPTIONS)
        self._stub = pb_grpc.ProfileStoreServiceStub(self._channel)
        self._closed = False

    def send(self, window: WindowProfile) -> None:
        self.send_many([window])

    def send_many(self, windows: list[WindowProfile]) -> None:
        """All the windows in one WriteRaw: with hundreds of processes, a call per
        window cost more than building the profiles."""
        if self._closed:
            raise SinkError(f"parca {self.url}: sink is closed")
        for window in windows:
            if window.kind not in METRIC_NAMES:
                raise SinkRejected(f"parca {self.url}: unknown window kind {window.kind!r}")
        request = build_request(*windows)
        try:
            self._stub.WriteRaw(request, timeout=self.timeout_s, metadata=self._metadata)
        except grpc.RpcError as e:
            raise self._error(e) from None

    def _error(self, e: grpc.RpcError) -> SinkError:
        # A failed unary call is also a grpc.Call, which has code() and details().
        code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
        details = e.details() if hasattr(e, "details") else str(e)
        details = " ".join(str(details or "").split())  # one log line
        message = f"parca {self.url}: {code.name}: {details}"
        return SinkRejected(message) if code in REJECTED_CODES else SinkError(message)

    def close(self) -> None:
        self._closed = True
        self._channel.close()
