"""The command line before argparse reads it: negative values given as their own item.

argparse takes an item that starts with "-" for an option unless it is a plain
negative number, so `goprof cpu -d -5s` (or `--window -1s`, `--mem-rate -512K`) ended
in argparse's "expected one argument" instead of goprof's own message about the value
(which `--duration=-5s` got). Such an item, after an option that takes a value, is
joined to it as `-d=-5s`: argparse then hands the value over and goprof refuses it
with its own line.
"""

from __future__ import annotations

import argparse
import re

# A value that starts like a negative number: -5, -5s, -1.5, -.5, -512K, -inf.
_NEGATIVE = re.compile(r"-(\.?\d|inf|nan)", re.IGNORECASE)


def attach_negative_values(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """argv with each negative-looking value joined to the option before it, for the
    options of the subcommand argv names (and the top level's) that take a value."""
    takes_value = _value_options(parser, argv)
    out: list[str] = []
    i = 0
    while i < len(argv):
        item = argv[i]
        if item in takes_value and i + 1 < len(argv) and _NEGATIVE.match(argv[i + 1]):
            out.append(f"{item}={argv[i + 1]}")
            i += 2
        else:
            out.append(item)
            i += 1
    return out


def _value_options(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    parsers = [parser]
    command = next((item for item in argv if not item.startswith("-")), None)
    for action in parser._actions:  # argparse keeps subparsers nowhere public
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            parsers.append(action.choices[command])
    return {option for p in parsers for action in p._actions if action.nargs != 0
            for option in action.option_strings}
