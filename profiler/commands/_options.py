"""Flags and defaults the recording subcommands (cpu, mem) share."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from goprof import output_files
from goprof.agent.discovery import exe_matches
from goprof.errors import EnvironmentProblem, UsageError
from goprof.exporters import (
    FORMATS,
    Exporter,
    exporter_for_path,
    get_exporter,
    written_suffixes,
)
from goprof.exporters.sink import check_template

SUFFIXES = ", ".join(written_suffixes())  # ".pb.gz, .folded, .speedscope.json"


def add_recording_arguments(p: argparse.ArgumentParser, kind: str) -> None:
    """--pid, --duration, --output, --format, --stats."""
    p.add_argument("-p", "--pid", type=int, action="append", default=[], metavar="PID",
                   help="process to profile (repeat for several)")
    p.add_argument("--exe", action="append", default=[], metavar="PATH|NAME",
                   help="profile every process running this executable (a path, or a base "
                        "name), found when the run starts: for cron, which knows no pids")
    p.add_argument("-d", "--duration", default=None, metavar="D",
                   help="how long to record: 30s, 2m, 500ms, 1h (default: until Ctrl-C "
                        "or every target exits)")
    p.add_argument("-o", "--output", action="append", default=[], metavar="FILE",
                   help=f"where to write; the format follows the suffix ({SUFFIXES}) "
                        "unless --format is given; repeat to write the "
                        "same profile in several formats; {exe} {pid} {time} {host} {kind} "
                        "are filled in, and with {pid} each process gets its own file; - is "
                        "standard output (pprof unless --format); a FIFO or device is "
                        "written in place, a symbolic link at its target "
                        f"(default: goprof-{kind}-PID-TIME{get_exporter('pprof').suffix})")
    p.add_argument("--format", choices=FORMATS, default=None, help="output format")
    p.add_argument("--stats", default=None, metavar="FILE",
                   help="also write the run's statistics as JSON (samples, lost, BPF time, "
                        "goprof's own costs)")
    p.add_argument("--goroutine-ids", action="store_true",
                   help="also label each sample with the id of the goroutine it ran on "
                        "(numeric label `goroutine`; pprof labels are always kept). Off by "
                        "default: it multiplies the number of distinct samples")


def outputs_from_args(args: argparse.Namespace, kind: str, who: str = ""
                      ) -> list[tuple[Path, Exporter]]:
    """-o files with their exporters; without -o, goprof-KIND-WHO-TIME in this folder
    (WHO: the pids, else the command's name)."""
    outputs = [output_for(path, args.format) for path in args.output]
    if sum(output_files.is_stdout(p) for p, _ in outputs) > 1:
        raise UsageError("-o: only one output can go to standard output (-, /dev/stdout)")
    if outputs:
        return outputs
    exporter = get_exporter(args.format or "pprof")
    who = who or "-".join(str(p) for p in args.pid) or "-".join(args.exe) or \
        Path(args.exec_command[0]).name
    who = who.replace("/", "_")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return [(Path(f"goprof-{kind}-{who}-{stamp}{exporter.suffix}"), exporter)]


def output_for(path: str, format_name: str | None) -> tuple[Path, Exporter]:
    """The file and its exporter: --format wins, else the file's suffix; `-` (standard
    output, refused to a terminal), a FIFO or a character device without one is pprof.
    A FIFO, a character device or a symbolic link is checked now (goprof.output_files),
    not after the run."""
    output = Path(path)
    in_place = False  # a FIFO or a character device: written where it is
    if output_files.is_stdout(path):
        exporter = get_exporter(format_name or "pprof")
        output_files.check_stdout(exporter)
        return output, exporter
    if "{" in path:
        try:
            check_template(path)
        except ValueError as e:
            raise UsageError(f"-o {e}") from None
        if "{" not in str(output.parent) and not output.parent.is_dir():
            raise UsageError(f"-o {path}: folder {output.parent} does not exist")
    else:
        in_place = not output_files.check_output(path).replace
    if format_name:
        return output, get_exporter(format_name)
    found = exporter_for_path(path)
    if found is None and in_place:
        # A FIFO or a character device (/dev/null, a pipe to a collector) names no
        # format: pprof, as for standard output.
        return output, get_exporter("pprof")
    if found is None:
        raise UsageError(f"cannot tell the format from {path!r}: use a suffix ({SUFFIXES}) "
                         f"or --format {'|'.join(FORMATS)}")
    return output, found


def require_targets(args: argparse.Namespace) -> None:
    if not args.pid and not args.exe and not args.exec_command:
        raise UsageError("nothing to profile: give --pid PID, --exe NAME, or a command "
                         "after --")


def target_pids(args: argparse.Namespace) -> list[int]:
    """--pid, then the processes running each --exe now (an error when none does)."""
    pids = list(args.pid)
    for wanted in args.exe:
        found = pids_running(wanted)
        if not found:
            raise EnvironmentProblem(f"--exe {wanted}: no running process runs that "
                                     "executable (check with `pgrep -a`)")
        pids += found
    return list(dict.fromkeys(pids))


def pids_running(wanted: str) -> list[int]:
    me = os.getpid()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            exe = os.readlink(f"/proc/{entry}/exe")
        except OSError:
            continue  # kernel thread, gone, or not ours to read
        if exe_matches(exe, wanted):
            pids.append(int(entry))
    return sorted(pids)
