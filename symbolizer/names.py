"""Which bytes read from a binary may be shown as a name.

A damaged table still yields bytes up to some NUL: text that is not UTF-8 or holds
control characters is not a name the compiler wrote, and printed as one it would
corrupt a terminal, a folded file or a flame graph. Such a name is refused (the frame
stays unnamed, its address kept) rather than repaired into plausible garbage.
"""

from __future__ import annotations

import re
import unicodedata

_ASCII_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")
# Unicode categories no Go (or C) symbol holds: controls, surrogates, private use.
_BAD_CATEGORIES = frozenset(("Cc", "Cs", "Co"))


def valid_name(raw: bytes) -> str | None:
    """raw decoded when it is a printable name, else None."""
    if not raw or _ASCII_CONTROL.search(raw):
        return None
    if raw.isascii():
        return raw.decode("ascii")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if "\ufffd" in text or any(unicodedata.category(c) in _BAD_CATEGORIES
                               for c in text if ord(c) >= 0x80):
        return None
    return text
