"""`goprof prune`: keep a folder of goprof profiles within an age and a size, as the
directory sink does while it runs (for folders written by `goprof cpu|mem -o`, or by an
agent that is not running)."""

from __future__ import annotations

import argparse
from pathlib import Path

from goprof.durations import parse_duration, parse_size
from goprof.errors import EnvironmentProblem, UsageError
from goprof.exporters.directory import PROFILE_SUFFIXES, prune
from rich.console import Console
from rich.markup import escape


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prune", help="remove old goprof profiles from a folder",
        description="Remove goprof's profile files (" + ", ".join(PROFILE_SUFFIXES)
                    + ") under DIR, subfolders included: first those older than "
                    "--max-age, then the oldest until the rest fit in --max-size. Other "
                    "files are never touched. Leftover temporary files of goprof's that are "
                    "more than an hour old go too. No root needed.",
        epilog="examples:\n"
               "  goprof prune /var/lib/goprof/profiles --max-age 7d\n"
               "  goprof prune ./profiles --max-size 2G --dry-run",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("directory", metavar="DIR", help="folder of profiles")
    p.add_argument("--max-age", metavar="AGE", default=None,
                   help="remove profiles older than this (30m, 12h, 7d)")
    p.add_argument("--max-size", metavar="SIZE", default=None,
                   help="then remove the oldest until the rest fit in this (512M, 2G)")
    p.add_argument("--dry-run", action="store_true",
                   help="list what would be removed, remove nothing")
    p.set_defaults(run=run)


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover - the loop returns at GiB


def _files(n: int) -> str:
    return f"{n} file" if n == 1 else f"{n} files"


def run(args: argparse.Namespace, console: Console) -> int:
    if args.max_age is None and args.max_size is None:
        raise UsageError("prune: give --max-age, --max-size or both")
    max_age = parse_duration(args.max_age, "--max-age") if args.max_age is not None else None
    max_size = parse_size(args.max_size, "--max-size") if args.max_size is not None else None
    directory = Path(args.directory)
    if not directory.exists():
        raise EnvironmentProblem(f"{directory}: no such directory")
    if not directory.is_dir():
        raise EnvironmentProblem(f"{directory}: not a directory")
    try:
        result = prune(directory, max_age_s=max_age, max_bytes=max_size, dry_run=args.dry_run)
    except OSError as e:
        raise EnvironmentProblem(f"{directory}: cannot read it: {e.strerror or e}") from None
    verb = "would remove" if args.dry_run else "removed"
    if args.dry_run:
        for path in result.removed:
            console.print(f"  {escape(str(path))}", highlight=False)
    console.print(f"{verb} {_files(len(result.removed))} ({human_bytes(result.freed_bytes)}); "
                  f"kept {_files(result.kept_files)} ({human_bytes(result.kept_bytes)}) "
                  f"in {escape(str(directory))}", highlight=False)
    for error in result.errors:
        console.print(f"[bold red]goprof:[/] cannot remove {escape(error)}", highlight=False)
    return 1 if result.errors else 0
