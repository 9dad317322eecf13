"""`goprof cpu`: sample every thread of Go programs and write one profile."""

from __future__ import annotations

import argparse
from pathlib import Path

from goprof.commands._options import (
    add_recording_arguments,
    outputs_from_args,
    require_targets,
    target_pids,
)
from goprof.durations import parse_duration
from goprof.errors import UsageError
from goprof.kinds.cpu.session import CpuOptions, CpuSession
from rich.console import Console


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "cpu", help="sample CPU stacks of running or new processes",
        description="Sample every thread of the target processes at a fixed frequency "
                    "(perf_event cpu-clock, stacks counted in the kernel) and write a "
                    "profile: pprof (default), folded stacks or speedscope.",
        epilog="examples:\n"
               "  sudo goprof cpu --pid 4242 --duration 30s\n"
               "  sudo goprof cpu --pid 4242 -d 30s -o cpu.speedscope.json\n"
               "  sudo goprof cpu --pid 4242 --pid 4243 -F 49 --format folded -o cpu.folded\n"
               "  sudo goprof cpu -d 10s -o api.pb.gz -- ./api --port 8080\n"
               "The run ends at --duration, at Ctrl-C, or when every target has exited; "
               "each writes what was sampled. A command started after -- is stopped "
               "(SIGTERM) when the run ends before it does.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_recording_arguments(p, "cpu")
    p.add_argument("-F", "--frequency", type=int, default=99, metavar="HZ",
                   help="samples per second per CPU (default 99)")
    p.add_argument("--no-kernel", action="store_true",
                   help="leave out kernel frames (user stacks only)")
    p.set_defaults(run=run)


def options_from_args(args: argparse.Namespace) -> CpuOptions:
    require_targets(args)
    if not 1 <= args.frequency <= 10000:
        raise UsageError(f"--frequency {args.frequency}: give 1 to 10000 samples a second")
    duration = parse_duration(args.duration) if args.duration is not None else None
    return CpuOptions(pids=target_pids(args), command=args.exec_command,
                      duration=duration, frequency=args.frequency, kernel=not args.no_kernel,
                      outputs=outputs_from_args(args, "cpu"),
                      goroutine_ids=args.goroutine_ids,
                      stats_path=Path(args.stats) if args.stats else None)


def run(args: argparse.Namespace, console: Console) -> int:
    session = CpuSession(options_from_args(args), console)
    return session.run().exit_code
