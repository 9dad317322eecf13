"""The symbolizer's errors: callers catch one type, whatever went wrong in the input."""

from __future__ import annotations


class SymbolizerError(Exception):
    """Corrupt, truncated or unsupported input (ELF file, pclntab, /proc entry)."""


class ProcessGone(SymbolizerError):
    """The target's /proc/PID entry vanished (it exited) before we could read it."""


class UnsupportedGo(SymbolizerError):
    """A Go version this code has no built-in knowledge of, and no DWARF to learn it from."""
