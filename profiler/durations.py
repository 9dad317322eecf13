"""Durations as users type them: 30s, 2m, 1h30m, 500ms, or plain seconds."""

from __future__ import annotations

import re

from goprof.errors import UsageError

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")


def parse_duration(text: str) -> float:
    """Seconds in `text`; UsageError when it is not a positive duration."""
    t = text.strip().lower()
    try:
        value = float(t)
    except ValueError:
        value = None
    if value is None:
        pos, total = 0, 0.0
        for m in _PART.finditer(t):
            if m.start() != pos:
                break
            total += float(m.group(1)) * _UNITS[m.group(2)]
            pos = m.end()
        if pos != len(t) or not t:
            raise UsageError(f"--duration {text!r}: use a number with a unit, like 30s, 2m, "
                             "500ms or 1h")
        value = total
    if value <= 0:
        raise UsageError(f"--duration {text!r}: must be more than zero")
    return value
