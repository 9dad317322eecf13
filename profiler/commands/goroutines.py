"""`goprof goroutines`: every goroutine of a running Go program, read from its memory
(no probe, no pause), as runtime/pprof's goroutine profile or its text dumps."""

from __future__ import annotations

import argparse
from pathlib import Path

from goprof.commands._options import outputs_from_args
from goprof.errors import UsageError
from goprof.exporters import GOROUTINE_FORMATS, Exporter, get_exporter
from goprof.kinds.goroutines.session import GoroutineSession
from rich.console import Console

# File endings that select the text formats (other endings: as every command).
TEXT_SUFFIXES = {".goroutines.txt": "text", ".debug2.txt": "text", ".grouped.txt": "grouped",
                 ".debug1.txt": "grouped"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "goroutines", help="list every goroutine of a Go program, and what it waits for",
        description="Read every goroutine of a running Go program through /proc/PID/mem "
                    "(no probe, the program is not stopped): its state and wait reason, "
                    "its stack, labels and creator, as the program's own "
                    "pprof.Lookup(\"goroutine\") would write it. Prints goroutines by state "
                    "and the biggest groups by stack; writes the goroutine profile (pprof), "
                    "or --format text (like ?debug=2) / grouped (like ?debug=1).",
        epilog="examples:\n"
               "  sudo goprof goroutines --pid 4242\n"
               "  sudo goprof goroutines --pid 4242 --format text | less\n"
               "  sudo goprof goroutines --pid 4242 --format grouped -o g.txt\n"
               "  sudo goprof goroutines --pid 4242 -o g.pb.gz -o g.folded",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-p", "--pid", type=int, required=True, metavar="PID",
                   help="Go process to read")
    p.add_argument("-o", "--output", action="append", default=[], metavar="FILE",
                   help="where to write (format from the suffix unless --format: .pb.gz, "
                        ".folded, .speedscope.json, .goroutines.txt (text), .grouped.txt; "
                        "repeatable; - is standard output; default "
                        "goprof-goroutines-PID-TIME.pb.gz, or standard output for text and "
                        "grouped)")
    p.add_argument("--format", choices=GOROUTINE_FORMATS, default=None,
                   help="output format: text is ?debug=2 (one block per goroutine), grouped "
                        "is ?debug=1 (by stack and labels, with counts)")
    p.add_argument("--system", action="store_true",
                   help="include the goroutines the runtime starts for itself (GC workers, "
                        "the finalizer...), which runtime/pprof leaves out")
    p.add_argument("--top", type=int, default=10, metavar="N",
                   help="groups shown in the summary (default 10)")
    p.add_argument("--stats", default=None, metavar="FILE",
                   help="also write the read's statistics as JSON")
    p.set_defaults(run=run)


def outputs(args: argparse.Namespace) -> list[tuple[Path, Exporter]]:
    fmt = args.format
    if not args.output and fmt in ("text", "grouped"):
        return [(Path("-"), get_exporter(fmt))]
    if fmt is None and args.output:
        out = []
        for path in args.output:
            suffix = next((s for s in TEXT_SUFFIXES if path.lower().endswith(s)), None)
            sub = argparse.Namespace(**{**vars(args), "output": [path],
                                        "format": TEXT_SUFFIXES[suffix] if suffix else None})
            out += outputs_from_args(sub, "goroutines", who=str(args.pid))
        return out
    return outputs_from_args(args, "goroutines", who=str(args.pid))


def run(args: argparse.Namespace, console: Console) -> int:
    if args.top < 0:
        raise UsageError("--top must be 0 or more")
    session = GoroutineSession(args.pid, outputs(args), console,
                               Path(args.stats) if args.stats else None,
                               include_system=args.system, top=args.top)
    return session.run().exit_code
