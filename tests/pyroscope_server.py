"""A small Pyroscope `POST /ingest` server for the tests, on 127.0.0.1.

It checks an upload the way Pyroscope does before it stores anything (the `name`
parses as a segment key, `from` <= `until`, a multipart `profile` field holding a
pprof) and answers 400 otherwise; it keeps what it accepted in `.received`.
Label names are held to the stricter of Pyroscope's two rules (the legacy parser's
`[A-Za-z0-9_.]` and v1's Prometheus-style names), so a sink that passes here passes
there.
"""

from __future__ import annotations

import base64
import gzip
import re
import threading
import time
from dataclasses import dataclass, field
from email import policy
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from goprof.exporters.proto import profile_pb2

_APP = re.compile(r"[A-Za-z0-9_./-]+")
_LABEL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class BadName(ValueError):
    pass


def parse_name(name: str) -> tuple[str, dict[str, str]]:
    """`app{k=v,...}` → (app, labels), as Pyroscope's segment-key parser reads it:
    a value ends at `,` or `}`, names and values are trimmed."""
    app, brace, rest = name.partition("{")
    app = app.strip()
    if not _APP.fullmatch(app):
        raise BadName(f"invalid app name {app!r}")
    labels: dict[str, str] = {}
    if not brace:
        return app, labels
    if not rest.endswith("}"):
        raise BadName("labels do not end with '}'")
    body = rest[:-1]
    if "}" in body:
        raise BadName("'}' inside the labels")
    for pair in body.split(",") if body.strip() else []:
        key, eq, value = pair.partition("=")
        key = key.strip()
        if not eq:
            raise BadName(f"label {pair!r} has no '='")
        if not _LABEL.fullmatch(key) or key == "__name__":
            raise BadName(f"invalid label name {key!r}")
        labels[key] = value.strip()
    return app, labels


def parse_time(text: str) -> int:
    if not text.isdigit():
        raise ValueError(f"not a unix time: {text!r}")
    return int(text)


@dataclass
class Received:
    service: str
    labels: dict[str, str]
    from_: int
    until: int
    params: dict[str, str]
    headers: dict[str, str]
    pprof: bytes  # as uploaded (gzipped)
    profile: profile_pb2.Profile
    filename: str | None
    content_type: str | None
    arrived: float = field(default_factory=time.monotonic)


def _multipart_field(content_type: str, body: bytes, name: str
                     ) -> tuple[bytes, str | None, str | None] | None:
    """(data, filename, content type) of the form field `name`, or None."""
    msg = BytesParser(policy=policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body)
    if not msg.is_multipart():
        return None
    for part in msg.iter_parts():
        if part.get_param("name", header="content-disposition") == name:
            data = part.get_payload(decode=True)
            return data, part.get_filename(), part.get_content_type()
    return None


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - quiet tests
        pass

    def _answer(self, status: int, text: str = "") -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self) -> bool:
        owner = self.server.owner
        got = self.headers.get("Authorization", "")
        if owner.basic_auth is not None:
            user, password = owner.basic_auth
            want = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
            return got == want
        if owner.token is not None:
            return got == f"Bearer {owner.token}"
        return True

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        owner = self.server.owner
        length = int(self.headers.get("Content-Length", "0") or 0)
        body = self.rfile.read(length)
        with owner.lock:
            owner.attempts += 1
        url = urlsplit(self.path)
        if url.path != "/ingest":
            return self._answer(404, "404 page not found")
        if not self._authorized():
            return self._answer(401, "unauthorized")
        if owner.fail_with is not None:
            return self._answer(owner.fail_with, f"simulated failure {owner.fail_with}")
        params = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        try:
            service, labels = parse_name(params.get("name", ""))
            start, end = parse_time(params.get("from", "")), parse_time(params.get("until", ""))
            if start > end:
                raise ValueError(f"from {start} is after until {end}")
            field_ = _multipart_field(self.headers.get("Content-Type", ""), body, "profile")
            if field_ is None:
                raise ValueError("no multipart field 'profile'")
            data, filename, ctype = field_
            profile = profile_pb2.Profile()
            profile.ParseFromString(gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data)
            if not profile.sample_type:
                raise ValueError("profile has no sample types")
        except Exception as e:  # noqa: BLE001 - any bad upload is a 400, as in Pyroscope
            return self._answer(400, f"bad request: {e}")
        record = Received(service=service, labels=labels, from_=start, until=end,
                          params=params, headers=dict(self.headers.items()), pprof=data,
                          profile=profile, filename=filename, content_type=ctype)
        with owner.lock:
            owner.received.append(record)
        self._answer(200)


class _Server(ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True
    owner: PyroscopeServer


class PyroscopeServer:
    def __init__(self, port: int = 0, *, basic_auth: tuple[str, str] | None = None,
                 token: str | None = None, fail_with: int | None = None) -> None:
        self.port = port
        self.basic_auth = basic_auth
        self.token = token
        self.fail_with = fail_with
        self.received: list[Received] = []
        self.attempts = 0
        self.lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> PyroscopeServer:
        """Listens (again) on the same port as before, if it had one."""
        assert self._server is None, "already running"
        self._server = _Server(("127.0.0.1", self.port), _Handler)
        self._server.owner = self
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        assert self._thread is not None
        self._thread.join(5)
        self._server = self._thread = None

    def __enter__(self) -> PyroscopeServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
