"""Where a profile goes and how it is written (`goprof cpu|mem|heap -o`).

What `-o` names decides how the bytes get there:
  - a new name or a regular file: written whole or not at all (a temporary file beside it,
    fsync'd, then renamed over it; a replaced file keeps its mode and owner);
  - a symbolic link: followed to its final target, which is then treated by these rules
    (so the file the link points to is replaced atomically, the link itself stays). A link
    in a sticky world-writable folder (/tmp) owned by neither us nor the folder's owner is
    refused, as the kernel's fs.protected_symlinks would refuse to open it: resolving the
    link ourselves must not turn a planted /tmp link into a way to replace any file;
  - a character device or a FIFO (and /dev/fd/N, /proc/PID/fd/N): written in place, never
    replaced (a FIFO with no reader yet is waited for, saying so);
  - `-`, /dev/stdout: standard output, in place; nothing else goes there;
  - a folder, a block device, a socket: refused.
Write errors (ENOSPC, EPIPE, EIO) become one line: "cannot write PATH: reason".
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import os
import re
import secrets
import select
import socket
import stat
import sys
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

from goprof.errors import EnvironmentProblem, UsageError
from goprof.exporters import Exporter
from goprof.exporters.directory import file_kind, sync_folder
from goprof.exporters.sink import render_template
from goprof.model import Profile
from goprof.targets import Target

STDOUT_NAMES = frozenset({"-", "/dev/stdout", "/dev/fd/1", "/proc/self/fd/1"})
# Magic links to an open file: the name only makes sense opened, so it is written in place.
_FD_LINK = re.compile(r"^/(dev/fd|proc/(self|thread-self|\d+)/fd)/\d+$|^/dev/std(err|in)$")
_MAX_LINKS = 40  # as the kernel's MAXSYMLINKS


@dataclass(frozen=True)
class Destination:
    shown: str  # what -o said: the summary and error lines use it
    path: Path | None  # where the bytes go (a link's final target); None: standard output
    replace: bool  # True: temporary file + rename at `path`; False: written in place


def is_stdout(path: str | Path) -> bool:
    return str(path) in STDOUT_NAMES


def check_stdout(exporter: Exporter, fd: int = 1) -> None:
    """pprof is gzipped binary: to a terminal it is garbage, and likely a mistake."""
    if exporter.name == "pprof" and os.isatty(fd):
        raise UsageError("-o -: pprof is binary and standard output is a terminal: redirect "
                         "it (> cpu.pb.gz, | ...) or give --format folded or speedscope")


def resolve(given: Path) -> Destination:
    """How `given` will be written; EnvironmentProblem when it cannot be."""
    shown = str(given)
    if is_stdout(shown):
        return Destination("standard output" if shown == "-" else f"{shown} (standard output)",
                           None, False)
    if _FD_LINK.match(os.path.abspath(shown)):
        return Destination(shown, given, False)
    final = _follow_links(Path(os.path.abspath(given)), shown)
    try:
        st = os.lstat(final)
    except FileNotFoundError:
        if not final.parent.is_dir():
            raise EnvironmentProblem(f"cannot write {shown}: folder {final.parent} does not "
                                     "exist") from None
        return Destination(shown, final, True)
    except OSError as e:
        raise EnvironmentProblem(f"cannot write {shown}: {e.strerror or e}") from None
    mode = st.st_mode
    if stat.S_ISREG(mode):
        return Destination(shown, final, True)
    if stat.S_ISCHR(mode) or stat.S_ISFIFO(mode):
        return Destination(shown, final, False)
    raise EnvironmentProblem(f"cannot write {shown}: it is {file_kind(st)}: give a file name, "
                             "a FIFO, a character device or - (standard output)")


def _follow_links(path: Path, shown: str) -> Path:
    for _ in range(_MAX_LINKS):
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return path  # a new name (or where a dangling link points: created there)
        except OSError as e:
            raise EnvironmentProblem(f"cannot write {shown}: {e.strerror or e}") from None
        if not stat.S_ISLNK(st.st_mode):
            return path
        _check_link_owner(path, st, shown)
        folder = os.path.realpath(path.parent)
        path = Path(os.path.normpath(os.path.join(folder, os.readlink(path))))
    raise EnvironmentProblem(f"cannot write {shown}: too many levels of symbolic links")


def _check_link_owner(link: Path, st: os.stat_result, shown: str) -> None:
    """The kernel's fs.protected_symlinks rule, applied whatever the sysctl says."""
    folder = os.stat(link.parent)
    sticky_shared = folder.st_mode & stat.S_ISVTX and folder.st_mode & stat.S_IWOTH
    if sticky_shared and st.st_uid not in (os.geteuid(), folder.st_uid):
        raise EnvironmentProblem(
            f"cannot write {shown}: it is a symbolic link in the shared folder {link.parent}, "
            f"owned by uid {st.st_uid}: not followed (someone else's link could point at "
            "any file); give its target's path")


def render(profile: Profile, exporter: Exporter) -> bytes:
    # Whole in memory first: a failing exporter never leaves half a profile in a FIFO
    # or on standard output, and every write error comes from one place.
    buf = io.BytesIO()
    exporter.write(profile, buf)
    return buf.getvalue()


def write_profile(profile: Profile, given: Path, exporter: Exporter) -> Destination:
    dest = resolve(given)
    data = render(profile, exporter)
    try:
        if dest.path is None:
            _write_all(1, data)
        elif dest.replace:
            _replace(dest.path, data)
        else:
            _write_in_place(dest.path, data)
    except OSError as e:
        raise EnvironmentProblem(f"cannot write {dest.shown}: {e.strerror or e}") from None
    return dest


def write_all(jobs: list[tuple[Path, Profile, Exporter]]) -> list[tuple[Path, Exporter]]:
    """Every output tried, so one that fails (a full disk, a closed pipe) does not cost
    the others the run's samples; then one line for what failed. Returns what was written."""
    written: list[tuple[Path, Exporter]] = []
    failed: list[str] = []
    for path, profile, exporter in jobs:
        try:
            write_profile(profile, path, exporter)
        except EnvironmentProblem as e:
            failed.append(str(e))
            continue
        written.append((path, exporter))
    if failed:
        done = f" (written: {', '.join(str(p) for p, _ in written)})" if written else ""
        raise EnvironmentProblem("; ".join(failed) + done)
    return written


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:  # an inherited non-blocking pipe: wait until it drains
            select.select([], [fd], [])
            continue
        view = view[n:]


def _write_in_place(path: Path, data: bytes) -> None:
    flags = os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(path, flags | os.O_NONBLOCK)
    except OSError as e:
        if e.errno != errno.ENXIO:
            raise
        # A FIFO nobody reads yet: wait for a reader as a shell's > would, but say so.
        print(f"goprof: waiting for a reader on the FIFO {path} (Ctrl-C gives up)",
              file=sys.stderr, flush=True)
        fd = os.open(path, flags)
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        if stat.S_ISREG(os.fstat(fd).st_mode):
            os.ftruncate(fd, 0)  # a regular file behind /dev/fd/N: no old bytes after ours
        _write_all(fd, data)
    finally:
        os.close(fd)


def _replace(path: Path, data: bytes) -> None:
    folder = path.parent
    try:
        old: os.stat_result | None = os.lstat(path)
    except FileNotFoundError:
        old = None
    fd, tmp = _create_temp(folder, path.name)
    try:
        try:
            _write_all(fd, data)
            if old is not None and stat.S_ISREG(old.st_mode):
                # A replaced file keeps its owner and mode (not setuid/setgid bits).
                with contextlib.suppress(OSError):
                    os.fchown(fd, old.st_uid, old.st_gid)
                os.fchmod(fd, stat.S_IMODE(old.st_mode) & 0o777)
            os.fsync(fd)  # the data is on disk before the name points at it
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    sync_folder(folder)


def _create_temp(folder: Path, name: str) -> tuple[int, Path]:
    """A new hidden file beside the output. O_EXCL|O_NOFOLLOW: a file or link someone put
    at a guessable temporary name is never opened (the old name used only our pid)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(100):
        tmp = folder / f".{name}.tmp-{secrets.token_hex(4)}"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise OSError(errno.EEXIST, "no free temporary file name")


def check_output(path: str) -> Destination:
    """Up front, before a run records for minutes: a destination that resolve() would
    refuse is a usage error now; else how it will be written."""
    try:
        return resolve(Path(path))
    except EnvironmentProblem as e:
        raise UsageError(str(e)) from None


def uses_stdout(outputs: list[tuple[Path, Exporter]]) -> bool:
    return any(is_stdout(p) for p, _ in outputs)


def write_outputs(profile: Profile, outputs: list[tuple[Path, Exporter]], kind: str = "",
                  targets: list[Target] | None = None) -> list[tuple[Path, Exporter]]:
    """Each output written as above (files whole or not at all, devices, FIFOs and stdout
    in place, never replaced); -o templates are filled in, one file per process when they
    name {pid}. Returns the files written."""
    jobs = [(path, part, exporter) for out, exporter in outputs
            for path, part in _expand(out, profile, kind, targets or [])]
    return write_all(jobs)


def _expand(out: Path, profile: Profile, kind: str, targets: list[Target]
            ) -> list[tuple[Path, Profile]]:
    template = str(out)
    if "{" not in template:
        return [(out, profile)]
    host = socket.gethostname()
    fill = partial(render_template, template, host=host, kind=kind, when_ns=profile.time_nanos)
    if "{pid}" not in template or len(targets) < 2:
        first = targets[0] if targets else Target(0, "", "")
        return [(Path(fill(exe=first.exe, pid=first.pid)), profile)]
    parts = []
    for t in targets:
        samples = [s for s in profile.samples if s.labels.get("pid") == str(t.pid)]
        parts.append((Path(fill(exe=t.exe, pid=t.pid)), replace(profile, samples=samples)))
    return parts
