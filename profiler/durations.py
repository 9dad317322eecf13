"""Durations and sizes as users type them: 30s, 2m, 1h30m, 500ms, 7d or plain seconds;
512M, 2G, 1.5GiB or plain bytes."""

from __future__ import annotations

import math
import re

from goprof.errors import UsageError

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration(text: str, flag: str = "--duration") -> float:
    """Seconds in `text`; UsageError when it is not a positive duration."""
    t = text.strip().lower()
    value = _seconds(t)
    if value is None and t.startswith("-") and _seconds(t[1:].lstrip()) is not None:
        value = -1.0  # -5s: a duration, but negative (said as such, not as a bad unit)
    if value is None:
        raise UsageError(f"{flag} {text!r}: use a number with a unit, like 30s, 2m, "
                         "500ms, 1h or 7d")
    if value <= 0:
        raise UsageError(f"{flag} {text!r}: must be more than zero")
    return value


def _seconds(t: str) -> float | None:
    """Seconds in a lowercased duration, None when it is not one."""
    try:
        value = float(t)
        return value if math.isfinite(value) else None  # inf, nan: not a duration
    except ValueError:
        pass
    pos, total = 0, 0.0
    for m in _PART.finditer(t):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    return total if t and pos == len(t) else None


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)")
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str, flag: str) -> int:
    """Bytes in `text` (512M, 2G, 1.5GiB, 4096; binary units: disk quotas are); UsageError
    when it is not a positive size."""
    t = str(text).strip().lower()
    if t.startswith("-") and _SIZE.fullmatch(t[1:].lstrip()):
        raise UsageError(f"{flag} {text!r}: must be more than zero")  # -1G: negative
    m = _SIZE.fullmatch(t)
    if m is None or (m.group(3) == "i"):
        raise UsageError(f"{flag} {text!r}: use a number of bytes with an optional unit, like "
                         "512M, 2G or 1.5GiB")
    value = int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])
    if value <= 0:
        raise UsageError(f"{flag} {text!r}: must be more than zero")
    return value
