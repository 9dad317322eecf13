"""Errors that end a command with one line and exit code 2 (no traceback)."""


class GoprofError(Exception):
    """A problem the user can fix; the message says what and what to do."""

    exit_code = 2


class UsageError(GoprofError):
    """A bad flag value or combination."""


class EnvironmentProblem(GoprofError):
    """Missing privileges, packages, headers, or a target that cannot be profiled."""
