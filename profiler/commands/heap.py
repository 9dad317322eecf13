"""`goprof heap`: the in-use heap profile of a running Go program, read from its
runtime's own buckets (where Go's heap sampler is on)."""

from __future__ import annotations

import argparse

from goprof.commands._options import outputs_from_args
from goprof.exporters import FORMATS
from goprof.kinds.heap.session import HeapSession
from rich.console import Console

WEIGHTS = {"inuse-bytes": "inuse_space", "inuse-objects": "inuse_objects",
           "alloc-bytes": "alloc_space", "alloc-objects": "alloc_objects"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "heap", help="write the in-use heap profile of a Go program",
        description="Read the in-use heap of a running Go program from its runtime's own "
                    "memory-profile buckets (no probe, no pause) and write it as "
                    "runtime/pprof's heap profile would: inuse_objects, inuse_space and the "
                    "alloc pair, as of the last garbage collection. Needs Go's heap sampler "
                    "on in the program (it is in programs that import runtime/pprof or "
                    "net/http/pprof; `goprof mem --go-sampler` turns it on for a while).",
        epilog="examples:\n"
               "  sudo goprof heap --pid 4242\n"
               "  sudo goprof heap --pid 4242 -o heap.speedscope.json --weight inuse-objects",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-p", "--pid", type=int, required=True, metavar="PID",
                   help="Go process to read")
    p.add_argument("-o", "--output", action="append", default=[], metavar="FILE",
                   help="where to write (format from the suffix unless --format; repeatable; "
                        "default goprof-heap-PID-TIME.pb.gz)")
    p.add_argument("--format", choices=FORMATS, default=None, help="output format")
    p.add_argument("--weight", choices=WEIGHTS, default="inuse-bytes",
                   help="what folded and speedscope weigh by, and pprof shows first")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, console: Console) -> int:
    outputs = outputs_from_args(args, "heap", who=str(args.pid))
    return HeapSession(args.pid, outputs, WEIGHTS[args.weight], console).run().exit_code
