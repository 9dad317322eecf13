"""A sink that pushes each window to Grafana Pyroscope through its `POST /ingest` API,
the way the official Go client (grafana/pyroscope-go) does: the series in the `name`
query parameter, the window's bounds in `from`/`until`, and the gzipped pprof as the
multipart field `profile`.

Label names and values are made acceptable to Pyroscope before they are sent, so a
label never turns a whole window into a 400:

  - the application name (service_name) keeps ASCII letters, digits and `_ . / -`
    (what Pyroscope's segment-key parser accepts in an app name); others become `_`;
  - label names keep `[A-Za-z_][A-Za-z0-9_]*`: the legacy parser allows `.` too, but
    Pyroscope v1 stores them as Prometheus-style label names, which do not;
  - label values cannot hold `,` or `}` (they end a value in the key syntax), nor `{`
    or `=` (ambiguous to other readers of the key), nor control characters: those
    become `_`. Values are trimmed, as the parser trims them; empty ones are dropped.

`from` and `until` are sent in whole unix seconds, as the Go client sends them: every
Pyroscope version reads 10 digits as seconds, whereas the 19-digit nanosecond form is
a newer addition. The exact window bounds are inside the pprof anyway (time_nanos and
duration_nanos), which is what Pyroscope keeps for a pprof upload.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import requests
from goprof.exporters.sink import Sink, SinkError, SinkRejected, WindowProfile

# Statuses that mean "this upload will never be accepted": drop the window.
REJECTED = frozenset({400, 404, 405, 413, 415, 422})
# Statuses worth retrying: auth may be fixed or rotated, the server may be busy.
RETRY = frozenset({401, 403, 408, 425, 429})

_APP_UNSAFE = re.compile(r"[^A-Za-z0-9_./-]")
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_]")
_VALUE_UNSAFE = re.compile(r"[,{}=\x00-\x1f\x7f]")


def sanitize_app_name(name: str) -> str:
    """An application name Pyroscope accepts (never empty)."""
    return _APP_UNSAFE.sub("_", name.strip()) or "unknown"


def sanitize_label_name(name: str) -> str:
    """A label name valid for both the legacy key parser and Prometheus-style storage."""
    key = _KEY_UNSAFE.sub("_", name.strip())
    if not key:
        return "_"
    return "_" + key if key[0].isdigit() else key


def sanitize_label_value(value: str) -> str:
    """A label value the key parser reads back unchanged ('' when nothing is left)."""
    return _VALUE_UNSAFE.sub("_", str(value)).strip()


def series_name(window: WindowProfile) -> str:
    """`service{k=v,...}` for the `name` parameter: labels sorted, service_name out of
    the braces; `__delta__=false` for memory windows, which are already deltas."""
    labels = dict(window.labels)
    app = sanitize_app_name(labels.pop("service_name", "") or labels.get("comm", ""))
    pairs: dict[str, str] = {}
    for key, value in labels.items():
        k, v = sanitize_label_name(key), sanitize_label_value(value)
        if not v or k in ("__name__", "__delta__", "service_name"):
            continue
        pairs.setdefault(k, v)  # two names that sanitize alike: the first (sorted) wins
    if window.kind == "mem":
        pairs["__delta__"] = "false"
    body = ",".join(f"{k}={v}" for k, v in sorted(pairs.items()))
    return f"{app}{{{body}}}"


def _one_line(text: str, limit: int = 200) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[:limit - 3] + "..."


class PyroscopeSink(Sink):
    """One POST per window: send_many is the default loop (not all or nothing)."""

    name = "pyroscope"

    def __init__(self, url: str, *, user: str | None = None, password: str | None = None,
                 token: str | None = None, tenant_id: str | None = None,
                 timeout_s: float = 10.0) -> None:
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"Pyroscope URL {url!r}: use http(s)://host[:port][/prefix]")
        try:
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError as e:
            raise ValueError(f"Pyroscope URL {url!r}: {e}") from None
        if parts.query or parts.fragment:
            raise ValueError(f"Pyroscope URL {url!r}: takes no query or fragment")
        if user is not None and token is not None:
            raise ValueError("Pyroscope: give a user (basic auth) or a token, not both")
        if timeout_s <= 0:
            raise ValueError(f"Pyroscope timeout {timeout_s}: must be more than zero")
        self.url = url.strip().rstrip("/")
        self.ingest_url = self.url + "/ingest"
        self.timeout_s = timeout_s
        self.session = requests.Session()
        self.session.headers["User-Agent"] = "goprof"
        if user is not None:
            self.session.auth = (user, password or "")
        elif token is not None:
            self.session.headers["Authorization"] = f"Bearer {token}"
        if tenant_id:
            self.session.headers["X-Scope-OrgID"] = tenant_id

    def params(self, window: WindowProfile) -> dict[str, str]:
        start_s = window.start_ns // 1_000_000_000
        end_s = max(start_s, window.end_ns // 1_000_000_000)
        params = {"name": series_name(window), "from": str(start_s), "until": str(end_s),
                  "spyName": "goprof"}
        rate = window.extra.get("sample_rate")
        if rate not in (None, ""):
            params["sampleRate"] = str(rate)
        return params

    def send(self, window: WindowProfile) -> None:
        files = {"profile": ("profile.pprof", window.pprof, "application/octet-stream")}
        try:
            resp = self.session.post(self.ingest_url, params=self.params(window), files=files,
                                     timeout=self.timeout_s, allow_redirects=False)
        except requests.Timeout:
            raise SinkError(f"Pyroscope {self.ingest_url}: no answer within "
                            f"{self.timeout_s:g}s") from None
        except requests.RequestException as e:
            raise SinkError(f"Pyroscope {self.ingest_url}: {_one_line(str(e))}") from None
        status = resp.status_code
        if 200 <= status < 300:
            return
        detail = _one_line(resp.text) if resp.content else resp.reason or ""
        message = f"Pyroscope {self.ingest_url}: HTTP {status}" + (f": {detail}" if detail
                                                                    else "")
        if 300 <= status < 400:
            where = resp.headers.get("Location", "?")
            raise SinkRejected(f"Pyroscope {self.ingest_url}: HTTP {status}, redirected to "
                               f"{where}: give that URL instead")
        if status in RETRY or status >= 500:
            raise SinkError(message)
        if status in REJECTED or 400 <= status < 500:
            raise SinkRejected(message)
        raise SinkError(message)

    def close(self) -> None:
        self.session.close()
