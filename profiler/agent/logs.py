"""The agent's log: one line per event that matters, text for people or JSON for
log pipelines (`--log-format json`). Fields passed as `extra={"fields": {...}}`
become JSON keys (pid, sink, windows, ...) and `key=value` pairs in text."""

from __future__ import annotations

import json
import logging
import sys
import time

LOGGER = "goprof.agent"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "msg": record.getMessage(),
            "logger": record.name,
        }
        doc.update(getattr(record, "fields", {}))
        if record.exc_info:
            doc["error"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
        fields = getattr(record, "fields", {})
        tail = "".join(f" {k}={v}" for k, v in fields.items())
        return f"{stamp} {record.levelname.lower():7} {record.getMessage()}{tail}"


def setup(log_format: str) -> logging.Logger:
    """The goprof.agent logger writing to stderr; delivery and kube log under it too."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger("goprof")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False
    return logging.getLogger(LOGGER)
