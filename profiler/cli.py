"""The goprof command line: one module per subcommand under goprof.commands."""

from __future__ import annotations

import argparse
import sys

from goprof import __version__
from goprof.argv import attach_negative_values
from goprof.commands import agent, cpu, doctor, goroutines, heap, mem, prune, reset
from goprof.errors import GoprofError
from rich.console import Console

SUBCOMMANDS = (cpu, mem, heap, goroutines, agent, prune, doctor, reset)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="goprof",
        description="CPU and memory profiles of unmodified Go programs, from eBPF.",
    )
    p.add_argument("--version", action="version", version=f"goprof {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Everything after "--" is the command to profile, not goprof's flags.
    command: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, command = argv[:i], argv[i + 1:]
    p = parser()
    args = p.parse_args(attach_negative_values(p, argv))  # `-d -5s`: goprof's own message
    args.exec_command = command
    console = Console(stderr=True)
    try:
        return args.run(args, console)
    except GoprofError as e:
        console.print(f"[bold red]goprof:[/] {e}", highlight=False)
        return e.exit_code
    except KeyboardInterrupt:
        console.print("goprof: interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
