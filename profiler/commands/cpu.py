"""`goprof cpu`: sample every thread of Go programs and write one profile."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from goprof.durations import parse_duration
from goprof.errors import UsageError
from goprof.exporters import FORMATS, Exporter, exporter_for_path, get_exporter
from goprof.session import CpuOptions, CpuSession
from rich.console import Console

DEFAULT_SUFFIX = {"pprof": ".pb.gz", "folded": ".folded", "speedscope": ".speedscope.json"}


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
    p.add_argument("-p", "--pid", type=int, action="append", default=[], metavar="PID",
                   help="process to profile (repeat for several)")
    p.add_argument("-d", "--duration", default=None, metavar="D",
                   help="how long to record: 30s, 2m, 500ms, 1h (default: until Ctrl-C "
                        "or every target exits)")
    p.add_argument("-F", "--frequency", type=int, default=99, metavar="HZ",
                   help="samples per second per CPU (default 99)")
    p.add_argument("-o", "--output", action="append", default=[], metavar="FILE",
                   help="where to write; the format follows the suffix (.pb.gz, .folded, "
                        ".speedscope.json) unless --format is given; repeat to write the "
                        "same profile in several formats (default: goprof-cpu-PID-TIME.pb.gz)")
    p.add_argument("--format", choices=FORMATS, default=None, help="output format")
    p.add_argument("--no-kernel", action="store_true",
                   help="leave out kernel frames (user stacks only)")
    p.add_argument("--stats", default=None, metavar="FILE",
                   help="also write the run's statistics as JSON (samples, lost, BPF time, "
                        "goprof's CPU and memory)")
    p.set_defaults(run=run)


def options_from_args(args: argparse.Namespace) -> CpuOptions:
    command = args.exec_command
    if not args.pid and not command:
        raise UsageError("nothing to profile: give --pid PID, or a command after --")
    if not 1 <= args.frequency <= 10000:
        raise UsageError(f"--frequency {args.frequency}: give 1 to 10000 samples a second")
    duration = parse_duration(args.duration) if args.duration is not None else None
    outputs = [output_for(path, args.format) for path in args.output]
    if not outputs:
        exporter = get_exporter(args.format or "pprof")
        who = "-".join(str(p) for p in args.pid) or Path(command[0]).name
        stamp = time.strftime("%Y%m%d-%H%M%S")
        outputs = [(Path(f"goprof-cpu-{who}-{stamp}{DEFAULT_SUFFIX[exporter.name]}"), exporter)]
    return CpuOptions(pids=list(dict.fromkeys(args.pid)), command=command, duration=duration,
                      frequency=args.frequency, kernel=not args.no_kernel, outputs=outputs,
                      stats_path=Path(args.stats) if args.stats else None)


def output_for(path: str, format_name: str | None) -> tuple[Path, Exporter]:
    """The file and its exporter: --format wins, else the file's suffix."""
    output = Path(path)
    if not output.parent.is_dir():
        raise UsageError(f"-o {path}: folder {output.parent} does not exist")
    if format_name:
        return output, get_exporter(format_name)
    found = exporter_for_path(path)
    if found is None:
        raise UsageError(f"cannot tell the format from {path!r}: use a suffix (.pb.gz, "
                         f".folded, .speedscope.json) or --format {'|'.join(FORMATS)}")
    return output, found


def run(args: argparse.Namespace, console: Console) -> int:
    session = CpuSession(options_from_args(args), console)
    return session.run().exit_code
