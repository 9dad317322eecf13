"""`goprof heap`: the in-use heap profile of a running Go program, read from its
runtime's own buckets (where Go's heap sampler is on)."""

from __future__ import annotations

import argparse
import time

from goprof import __version__
from goprof.commands._options import outputs_from_args
from goprof.errors import EnvironmentProblem
from goprof.exporters import FORMATS
from goprof.golang.process import MethodUnavailable, inspect
from goprof.kinds.heap.read import build_heap, read_buckets
from goprof.recording.builder import ProfileBuilder
from goprof.recording.session import snapshot_symbols, write_outputs
from goprof.report import print_counters, print_top
from goprof.symbolizer import BinaryCache, SymbolizerError
from goprof.targets import check_privileges, target_for_pid
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
    check_privileges()
    target = target_for_pid(args.pid)
    cache = BinaryCache()
    proc = inspect(target, cache)
    rate = proc.read_rate()
    if rate is None:
        raise EnvironmentProblem(f"{target.label}: runtime.MemProfileRate not found in its "
                                 "binary: cannot tell how its heap is sampled")
    if rate <= 0:
        raise EnvironmentProblem(f"{target.label} has Go's heap sampler off "
                                 "(runtime.MemProfileRate is 0): it keeps no heap profile. "
                                 "Use `goprof mem` for its allocations, or `goprof mem "
                                 "--go-sampler` to turn the sampler on while it runs")
    try:
        layout = proc.layout()
        started = time.time_ns()
        records = read_buckets(proc, layout.bucket_size, layout.mem_record_cycle_size)
    except (MethodUnavailable, SymbolizerError) as e:
        raise EnvironmentProblem(f"{target.label}: cannot read its heap profile: {e}") from None
    symbolizer = snapshot_symbols(target, cache, console)
    builder = ProfileBuilder({target.pid: symbolizer}, None, {target.pid: target.comm})
    comments = [f"goprof {__version__} heap: {target.label} ({proc.go_version}), read from "
                f"runtime.mbuckets; MemProfileRate {rate}; as of the last garbage collection"]
    profile = build_heap(builder, target.pid, records, rate, started, comments)
    profile.default_sample_type = WEIGHTS[args.weight]
    outputs = write_outputs(profile, outputs, "heap", [target])
    print_top(console, profile, profile.value_index(profile.default_sample_type),
              empty="the heap profile is empty: no sampled allocation is recorded yet")
    print_counters(console, [
        ("buckets", f"{len(records)}"),
        ("sampling", f"Go's own heap sampler, one sample per {rate} bytes on average, "
                     "scaled as runtime/pprof scales it"),
        ("unnamed frames", f"{builder.stats.unnamed_frames}{builder.stats.damage_text()}"),
        *[("wrote", f"{path} ({exporter.name})") for path, exporter in outputs],
    ])
    return 0
