"""A Parca stand-in for tests: ProfileStoreService/WriteRaw served from goprof's own
generated code, on 127.0.0.1 only, applying the checks Parca documents
(/work/shared/FORMATS.md, "Parca") and keeping what it accepted.

    server = ParcaServer().start()
    ParcaSink(server.url, insecure=True).send(window)
    server.received[0].labels["__name__"]  # "process_cpu"
    server.stop(); server.start()          # same port: a Parca that went away and came back

With check_later=True the server answers OK at once and decodes and checks what it got
when `received` or `rejected` is read: a benchmark then measures the agent, not this
server's Python decoding (about 8 ms a profile, slower than any sink it stands for).
"""

from __future__ import annotations

import gzip
import re
import threading
import time
from concurrent import futures
from dataclasses import dataclass, replace

import grpc
from google.protobuf.message import DecodeError
from goprof.exporters.proto import parca_profilestore_pb2 as ppb
from goprof.exporters.proto import parca_profilestore_pb2_grpc as ppb_grpc
from goprof.exporters.proto import profile_pb2

_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
MAX_MESSAGE = 64 * 1024 * 1024


class Invalid(Exception):
    """Why a request breaks Parca's rules (the INVALID_ARGUMENT details)."""


@dataclass(frozen=True)
class Received:
    labels: dict[str, str]
    profile: profile_pb2.Profile
    at: float  # time.monotonic() on arrival
    gzipped: bool
    normalized: bool


def check_labels(labels: ppb.LabelSet) -> dict[str, str]:
    out: dict[str, str] = {}
    for label in labels.labels:
        if not _LABEL_NAME.fullmatch(label.name):
            raise Invalid(f"invalid label name {label.name!r}")
        if label.name in out:
            raise Invalid(f"duplicate label name {label.name!r}")
        out[label.name] = label.value
    if not out.get("__name__"):
        raise Invalid("missing __name__ label")
    return out


def decode_profile(raw: bytes) -> tuple[profile_pb2.Profile, bool]:
    """The profile in raw_profile (gzipped or not), and whether it was gzipped."""
    gzipped = raw[:2] == b"\x1f\x8b"
    try:
        data = gzip.decompress(raw) if gzipped else raw
        msg = profile_pb2.Profile()
        msg.ParseFromString(data)
    except (OSError, EOFError, DecodeError) as e:
        raise Invalid(f"raw_profile does not decode: {e}") from None
    return msg, gzipped


def _check_ids(what: str, ids: list[int]) -> None:
    if ids != list(range(1, len(ids) + 1)):
        raise Invalid(f"{what} ids must be 1..{len(ids)} in order, got {ids[:10]}")


def validate_profile(msg: profile_pb2.Profile) -> None:
    """Parca's rules (stricter than pprof's): Invalid naming the first one broken."""
    if not msg.string_table or msg.string_table[0] != "":
        raise Invalid('string_table[0] must be ""')
    n = len(msg.string_table)

    def string(where: str, i: int) -> None:
        if not 0 <= i < n:
            raise Invalid(f"{where}: string index {i} out of range (table has {n})")

    _check_ids("mapping", [m.id for m in msg.mapping])
    _check_ids("function", [f.id for f in msg.function])
    _check_ids("location", [loc.id for loc in msg.location])
    for vt in [*msg.sample_type, msg.period_type]:
        string("value type", vt.type)
        string("value type", vt.unit)
    for m in msg.mapping:
        string(f"mapping {m.id}", m.filename)
        string(f"mapping {m.id}", m.build_id)
    for f in msg.function:
        for i in (f.name, f.system_name, f.filename):
            string(f"function {f.id}", i)
    for loc in msg.location:
        if not 0 <= loc.mapping_id <= len(msg.mapping):
            raise Invalid(f"location {loc.id}: no mapping {loc.mapping_id}")
        for line in loc.line:
            if not 1 <= line.function_id <= len(msg.function):
                raise Invalid(f"location {loc.id}: no function {line.function_id}")
    for i, s in enumerate(msg.sample):
        if len(s.value) != len(msg.sample_type):
            raise Invalid(f"sample {i}: {len(s.value)} values for "
                          f"{len(msg.sample_type)} sample types")
        for loc_id in s.location_id:
            if not 1 <= loc_id <= len(msg.location):
                raise Invalid(f"sample {i}: no location {loc_id}")
        for label in s.label:
            string(f"sample {i} label", label.key)
            string(f"sample {i} label", label.str)
            string(f"sample {i} label", label.num_unit)
    for c in msg.comment:
        string("comment", c)
    string("drop_frames", msg.drop_frames)
    string("keep_frames", msg.keep_frames)
    string("default_sample_type", msg.default_sample_type)


def check_request(request: ppb.WriteRawRequest, normalized: bool) -> list[Received]:
    """Every profile of the request, or Invalid: nothing is kept from a bad request."""
    if not request.series:
        raise Invalid("no series")
    now = time.monotonic()
    out = []
    for series in request.series:
        labels = check_labels(series.labels)
        if not series.samples:
            raise Invalid("series without samples")
        for sample in series.samples:
            msg, gzipped = decode_profile(sample.raw_profile)
            validate_profile(msg)
            out.append(Received(labels, msg, now, gzipped, normalized))
    return out


class _Servicer(ppb_grpc.ProfileStoreServiceServicer):
    def __init__(self, owner: ParcaServer) -> None:
        self.owner = owner

    def WriteRaw(self, request: ppb.WriteRawRequest,  # named after the RPC
                 context: grpc.ServicerContext) -> ppb.WriteRawResponse:
        return self.owner._write_raw(request, context)


class ParcaServer:
    """tls: (certificate chain PEM, private key PEM) for a TLS server; None: plaintext."""

    def __init__(self, port: int = 0, token: str | None = None,
                 tls: tuple[bytes, bytes] | None = None, check_later: bool = False) -> None:
        self.port = port
        self.check_later = check_later
        self.token = token
        self.tls = tls
        # Set by a test to answer every call with this status (the sink's error mapping).
        self.force_status: tuple[grpc.StatusCode, str] | None = None
        self._lock = threading.Lock()
        self._received: list[Received] = []
        self._rejected: list[str] = []
        self._unchecked: list[tuple[ppb.WriteRawRequest, float]] = []  # check_later's
        self._server: grpc.Server | None = None

    @property
    def url(self) -> str:
        return f"grpc://127.0.0.1:{self.port}"

    @property
    def received(self) -> list[Received]:
        with self._lock:
            self._check_unchecked_locked()
            return list(self._received)

    @property
    def rejected(self) -> list[str]:
        with self._lock:
            self._check_unchecked_locked()
            return list(self._rejected)

    def clear(self) -> None:
        with self._lock:
            self._received.clear()
            self._rejected.clear()
            self._unchecked.clear()

    def _check_unchecked_locked(self) -> None:
        for request, at in self._unchecked:
            try:
                records = check_request(request, request.normalized)
            except Invalid as e:
                self._rejected.append(str(e))
                continue
            self._received.extend(replace(r, at=at) for r in records)
        self._unchecked.clear()

    def start(self) -> ParcaServer:
        if self._server is not None:
            raise RuntimeError("already started")
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=4),
            options=[("grpc.max_receive_message_length", MAX_MESSAGE),
                     # No SO_REUSEPORT: a second server on the port must fail, not share.
                     ("grpc.so_reuseport", 0)])
        ppb_grpc.add_ProfileStoreServiceServicer_to_server(_Servicer(self), server)
        address = f"127.0.0.1:{self.port}"
        try:
            if self.tls is None:
                port = server.add_insecure_port(address)
            else:
                chain, key = self.tls
                port = server.add_secure_port(address,
                                              grpc.ssl_server_credentials([(key, chain)]))
        except RuntimeError as e:  # grpc's way of saying the bind failed
            raise RuntimeError(f"cannot bind {address}: {e}") from None
        self.port = port  # stop()/start() comes back on the same one
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None).wait()
            self._server = None

    def wait_for(self, n: int, timeout_s: float = 5.0) -> list[Received]:
        deadline = time.monotonic() + timeout_s
        while len(got := self.received) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return got

    def _write_raw(self, request: ppb.WriteRawRequest,
                   context: grpc.ServicerContext) -> ppb.WriteRawResponse:
        if self.token is not None:
            metadata = dict(context.invocation_metadata())
            if metadata.get("authorization") != f"Bearer {self.token}":
                self._reject("bad or missing bearer token")
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad or missing bearer token")
        if self.force_status is not None:
            context.abort(*self.force_status)
        if self.check_later:
            with self._lock:
                self._unchecked.append((request, time.monotonic()))
            return ppb.WriteRawResponse()
        try:
            records = check_request(request, request.normalized)
        except Invalid as e:
            self._reject(str(e))
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        with self._lock:
            self._received.extend(records)
        return ppb.WriteRawResponse()

    def _reject(self, reason: str) -> None:
        with self._lock:
            self._rejected.append(reason)

    def __enter__(self) -> ParcaServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
