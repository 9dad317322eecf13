"""`goprof reset`: put back what goprof wrote into a process's Go runtime and left on (a
goprof killed with -9 cannot put runtime.MemProfileRate back itself)."""

from __future__ import annotations

import argparse
import os

from goprof.errors import EnvironmentProblem
from goprof.golang.writes import TargetWrites, state_dir
from goprof.targets import target_for_pid
from rich.console import Console
from rich.markup import escape


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reset", help="put back runtime settings goprof left on in a process",
        description="Put back the values goprof wrote into a Go process's runtime (e.g. "
                    "runtime.MemProfileRate, turned on by `goprof mem --go-sampler`) when the "
                    "goprof that wrote them is gone without putting them back (killed with "
                    f"-9). goprof records its writes in {state_dir()}; a value the program "
                    "has changed itself since is left as it is. Values that running goprof "
                    "processes still use are left on unless --force. Needs root.",
        epilog="examples:\n"
               "  sudo goprof reset --pid 4242\n"
               "  sudo goprof reset --pid 4242 --force",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-p", "--pid", type=int, required=True, metavar="PID",
                   help="the Go process to put back")
    p.add_argument("--force", action="store_true",
                   help="also put back values that running goprof processes are using (their "
                        "profiles then miss what follows)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, console: Console) -> int:
    if os.geteuid() != 0:
        raise EnvironmentProblem("goprof reset writes into the process's memory and reads "
                                 "goprof's records: run it as root (sudo goprof reset ...)")
    target = target_for_pid(args.pid)
    writes = TargetWrites(target.pid, target.label)
    notes, refused = writes.reset(force=args.force)
    for note in notes:
        console.print(f"goprof: {escape(note)}", highlight=False)
    if refused:
        held = "; ".join(f"{name} is in use by running goprof pid "
                         f"{', '.join(str(h.pid) for h in holders)}"
                         for name, holders in refused.items())
        raise EnvironmentProblem(f"{target.label}: {held}: not reset (put back when it "
                                 "ends); --force resets it anyway")
    if not notes:
        console.print(f"goprof: nothing to reset in {target.label}", highlight=False)
    return 0
