"""`goprof mem`: allocation profiles of running or new Go programs."""

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
from goprof.golang.process import DEFAULT_GO_RATE, METHODS
from goprof.kinds.mem.session import MemOptions, MemSession
from rich.console import Console

WEIGHTS = {"bytes": "alloc_space", "objects": "alloc_objects"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "mem", help="profile the allocations of Go programs",
        description="Count the allocations of Go programs by stack, without changing them, "
                    "and write an allocation profile (runtime/pprof's allocs: alloc_objects, "
                    "alloc_space): pprof (default), folded stacks or speedscope.",
        epilog="methods (chosen per process unless --method says):\n"
               "  go-sampler  the target's own heap sampler, when it is on (programs that\n"
               "              import runtime/pprof or net/http/pprof); cost: near nothing\n"
               "  span        default when the sampler is off: a uprobe per span refill and\n"
               "              large object; exact totals, approximate attribution\n"
               "  exact       a uprobe and stack on every allocation: costly\n"
               "examples:\n"
               "  sudo goprof mem --pid 4242 --duration 30s\n"
               "  sudo goprof mem --pid 4242 -d 30s --go-sampler\n"
               "  sudo goprof mem --pid 4242 -d 30s -o mem.speedscope.json --weight objects\n"
               "  sudo goprof mem -d 10s -o api-allocs.pb.gz -- ./api --port 8080",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_recording_arguments(p, "mem")
    p.add_argument("--method", choices=METHODS, default=None,
                   help="force a method instead of choosing per process")
    p.add_argument("--go-sampler", action="store_true",
                   help="turn Go's own heap sampler on where it is off (writes "
                        "runtime.MemProfileRate in the process, put back at the end)")
    p.add_argument("--rate", type=int, default=DEFAULT_GO_RATE, metavar="BYTES",
                   help="average bytes between samples for --go-sampler and the span "
                        f"method (default {DEFAULT_GO_RATE}, Go's own)")
    p.add_argument("--weight", choices=WEIGHTS, default="bytes",
                   help="what folded and speedscope weigh by, and pprof shows first "
                        "(default bytes)")
    p.set_defaults(run=run)


def options_from_args(args: argparse.Namespace) -> MemOptions:
    require_targets(args)
    if args.rate < 1:
        raise UsageError(f"--rate {args.rate}: give a positive number of bytes")
    duration = parse_duration(args.duration) if args.duration is not None else None
    return MemOptions(pids=target_pids(args), command=args.exec_command,
                      duration=duration, outputs=outputs_from_args(args, "mem"),
                      method=args.method, go_sampler=args.go_sampler, rate=args.rate,
                      weight=WEIGHTS[args.weight], goroutine_ids=args.goroutine_ids,
                      stats_path=Path(args.stats) if args.stats else None)


def run(args: argparse.Namespace, console: Console) -> int:
    return MemSession(options_from_args(args), console).run().exit_code
