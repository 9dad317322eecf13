"""What the agent hands a sink (Parca, Pyroscope, a directory): one window's profile
of one process, already encoded as gzipped pprof, with the labels that name it.

Sinks get bytes, not the model, so a window can be spooled to disk and sent again
after a restart exactly as it would have been sent the first time.
"""

from __future__ import annotations

import json
import re
import struct
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

KINDS = ("cpu", "mem", "goroutines")
_HEADER = struct.Struct("<I")  # length of the JSON header that precedes the pprof bytes


class SinkError(Exception):
    """A delivery that failed and may succeed later (sink down, timeout, 5xx)."""


class SinkRejected(SinkError):
    """A delivery the sink refused for good (4xx, invalid profile): retrying cannot help,
    so the window is dropped and counted rather than retried forever."""


@dataclass(frozen=True)
class WindowProfile:
    kind: str  # "cpu" | "mem" | "goroutines"
    labels: dict[str, str]  # service_name, pid, comm, executable, build_id, go_version, ...
    start_ns: int  # wall clock (time.time_ns()) when the window opened
    end_ns: int  # ... and closed
    pprof: bytes  # gzipped pprof, as exporters.pprof writes it
    sequence: int = 0  # set by the agent: the order windows were made in
    extra: dict[str, str] = field(default_factory=dict)  # room for sink-specific hints

    def to_bytes(self) -> bytes:
        """One self-contained record (spool files): a JSON header, then the pprof."""
        header = json.dumps({"kind": self.kind, "labels": self.labels,
                             "start_ns": self.start_ns, "end_ns": self.end_ns,
                             "sequence": self.sequence, "extra": self.extra},
                            sort_keys=True).encode()
        return _HEADER.pack(len(header)) + header + self.pprof

    @classmethod
    def from_bytes(cls, data: bytes) -> WindowProfile:
        """The record to_bytes wrote; ValueError when it is not one (a torn file)."""
        if len(data) < _HEADER.size:
            raise ValueError("window record too short")
        (n,) = _HEADER.unpack_from(data)
        try:
            header = json.loads(data[_HEADER.size:_HEADER.size + n])
            return cls(kind=header["kind"], labels=dict(header["labels"]),
                       start_ns=int(header["start_ns"]), end_ns=int(header["end_ns"]),
                       pprof=data[_HEADER.size + n:], sequence=int(header["sequence"]),
                       extra=dict(header.get("extra", {})))
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"not a window record: {e}") from None


class Sink(ABC):
    """A destination, which every sink (Parca, Pyroscope, a directory, the agent's
    TimedSink wrapper) subclasses. send() raises SinkError (try again later) or
    SinkRejected (never).

    send_many() sends several windows, raising the same way. By default it is one
    send() each, which is not all or nothing: the first windows may land before a
    later one fails. A sink whose send_many is one request that lands or fails whole
    (Parca's WriteRaw) overrides it and sets `atomic_send_many`: delivery sends a
    round of windows in a few such requests only to those, because a failed batch is
    retried whole, which for a looping send_many would send its first windows twice."""

    name: str  # "parca", "pyroscope", "dir": metrics and logs use it
    atomic_send_many: bool = False  # send_many is one all-or-nothing request

    @abstractmethod
    def send(self, window: WindowProfile) -> None: ...

    def send_many(self, windows: list[WindowProfile]) -> None:
        for window in windows:
            self.send(window)

    @abstractmethod
    def close(self) -> None: ...


# -- file name templates (the directory sink, `goprof cpu|mem -o`) ----------------

TEMPLATE_FIELDS = ("exe", "pid", "time", "host", "kind")
_FIELD = re.compile(r"\{([^{}]*)\}")
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def check_template(template: str) -> None:
    """ValueError naming the field when the template uses one we do not fill."""
    for name in _FIELD.findall(template):
        if name not in TEMPLATE_FIELDS:
            raise ValueError(f"unknown field {{{name}}} in {template!r}; known: "
                             + ", ".join("{" + f + "}" for f in TEMPLATE_FIELDS))


def render_template(template: str, *, exe: str, pid: int, host: str, kind: str,
                    when_ns: int | None = None) -> str:
    """The template with its fields filled; values are made safe for a file name
    (an executable's base name only, no slashes). {time} is UTC, sortable, to the
    millisecond: 20261201T101500.123Z."""
    check_template(template)
    when_ns = time.time_ns() if when_ns is None else when_ns
    seconds, ns = divmod(when_ns, 1_000_000_000)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(seconds)) + f".{ns // 1_000_000:03d}Z"
    values = {"exe": exe.rsplit("/", 1)[-1], "pid": str(pid), "time": stamp, "host": host,
              "kind": kind}
    safe = {k: _UNSAFE.sub("_", v) or "_" for k, v in values.items()}
    return _FIELD.sub(lambda m: safe[m.group(1)], template)
