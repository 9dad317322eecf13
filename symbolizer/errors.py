"""The symbolizer's errors: callers catch one type, whatever went wrong in the input."""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable
from typing import ParamSpec, TypeVar


class SymbolizerError(Exception):
    """Corrupt, truncated or unsupported input (ELF file, pclntab, /proc entry)."""


class ProcessGone(SymbolizerError):
    """The target's /proc/PID entry vanished (it exited) before we could read it."""


class UnsupportedGo(SymbolizerError):
    """A Go version this code has no built-in knowledge of, and no DWARF to learn it from."""


# What a parser of hostile bytes can still raise past its own bounds checks (a length
# that overflows, a decode, a library's own parser): turned into SymbolizerError at the
# symbolizer's entry points, so a caller catches one type whatever the file holds.
DATA_ERRORS: tuple[type[BaseException], ...] = (
    IndexError, ValueError, KeyError, OverflowError, UnicodeError, RecursionError, MemoryError,
    AttributeError, TypeError, AssertionError, EOFError, struct.error)
P = ParamSpec("P")
R = TypeVar("R")


def guarded(fn: Callable[P, R]) -> Callable[P, R]:
    """An entry point that reads a binary: whatever its bytes make the code below raise
    comes out as SymbolizerError (the parsers check bounds; this is the backstop)."""
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except SymbolizerError:
            raise
        except DATA_ERRORS as e:
            raise SymbolizerError(f"{fn.__name__}: corrupt input: {e!r}") from e
    return wrapper
