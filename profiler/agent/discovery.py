"""Which processes on the host the agent profiles.

A scan lists /proc, skips what it has already decided about (by pid and start time,
so a reused pid is looked at again), and keeps the Go programs that match the
filters. Whether an executable is a Go program is read once per file (its build
info: cheap, no pclntab parse) and cached by (device, inode, size, mtime), so a
host with hundreds of processes of a few binaries opens each binary once.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from goprof.agent.cgroups import CgroupInfo, cgroup_of
from goprof.golang.buildinfo import go_version
from goprof.symbolizer import SymbolizerError
from goprof.symbolizer.elffile import ElfImage
from goprof.symbolizer.notes import build_ids
from goprof.targets import Target, read_comm, stat_fields

FileKey = tuple[int, int, int, int]  # st_dev, st_ino, st_size, st_mtime_ns


@dataclass(frozen=True)
class GoBinaryInfo:
    go_version: str
    build_id: str  # GNU build id, else Go's ("" when neither)


NOT_GO = GoBinaryInfo(go_version="", build_id="")
SETTLE_S = 10.0  # a process this young is checked on every scan (see Discovery)
RECHECK_TURNS = 5  # older ones: one pid in this many per scan


@dataclass(frozen=True)
class Candidate:
    """A process the filters accept: a Go program, or one asked for by --pid."""

    target: Target
    start_ticks: int  # /proc/PID/stat starttime: tells a reused pid apart
    binary: GoBinaryInfo
    file_key: FileKey
    cgroup: CgroupInfo


@dataclass
class ProcessFilter:
    """Empty lists match everything; several lists must all match (an AND of ORs)."""

    pids: list[int] = field(default_factory=list)
    exes: list[str] = field(default_factory=list)  # a full path, or a base name
    comms: list[str] = field(default_factory=list)
    cgroups: list[str] = field(default_factory=list)  # substrings of the cgroup path

    def matches(self, target: Target, cgroup: str) -> bool:
        if self.pids and target.pid not in self.pids:
            return False
        if self.exes and not any(exe_matches(target.exe, e) for e in self.exes):
            return False
        if self.comms and target.comm not in self.comms:
            return False
        return not (self.cgroups and not any(c in cgroup for c in self.cgroups))


def exe_matches(exe: str, wanted: str) -> bool:
    """`--exe /srv/api` matches that file; `--exe api` any executable named api."""
    exe = exe.removesuffix(" (deleted)")  # an upgraded binary still running
    return exe == wanted if "/" in wanted else os.path.basename(exe) == wanted


def start_ticks(pid: int) -> int | None:
    fields = stat_fields(pid)
    return int(fields[19]) if fields else None  # field 22 of stat, counted after the comm


def gone(c: Candidate) -> bool:
    """Whether the process c was found as has exited (also a zombie not yet reaped, or
    its pid reused since). Asked after something failed: a read that failed because
    the process exited is the normal case on a busy host, not an error."""
    if start_ticks(c.target.pid) != c.start_ticks:
        return True
    try:
        # An exiting process drops its memory (and with it its exe link) before it
        # turns zombie: our reads fail from that moment, so this must say gone too.
        os.readlink(f"/proc/{c.target.pid}/exe")
    except OSError:
        return True
    return False


class GoBinaries:
    """Executable file -> Go build facts, or None for a non-Go program (cached too)."""

    def __init__(self) -> None:
        self._known: dict[FileKey, GoBinaryInfo | None] = {}

    def __len__(self) -> int:
        return len(self._known)

    def lookup(self, pid: int) -> tuple[FileKey, GoBinaryInfo | None] | None:
        """None when the executable cannot be read (exited, kernel thread)."""
        path = f"/proc/{pid}/exe"
        try:
            st = os.stat(path)
        except OSError:
            return None
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if key not in self._known:
            self._known[key] = self._read(path)
        return key, self._known[key]

    @staticmethod
    def _read(path: str) -> GoBinaryInfo | None:
        try:
            with ElfImage(path) as img:
                version = go_version(img)
                if version is None:
                    return None
                gnu, go = build_ids(img)
        except SymbolizerError:
            return None  # not ELF, or unreadable: not a program we can profile
        return GoBinaryInfo(version, gnu or go)

    def forget_except(self, keep: set[FileKey]) -> None:
        """Drops Go entries of files no live target uses (non-Go verdicts stay: cheap,
        and they spare re-reading every shell and daemon on each scan)."""
        for key in [k for k, v in self._known.items() if v is not None and k not in keep]:
            del self._known[key]


class Discovery:
    def __init__(self, flt: ProcessFilter, binaries: GoBinaries | None = None) -> None:
        self.filter = flt
        self.binaries = binaries or GoBinaries()
        self._decided: dict[int, int] = {}  # pid -> start ticks, of the processes running
        # pid -> (ctime of its /proc/PID directory, executable), for the processes seen:
        # a pid reused by a new process gets a new directory inode (a new ctime), and a
        # process that exec'd (a wrapper script's `exec app`) a new executable. Both
        # unchanged (two cheap syscalls, half of reading /proc/PID/stat) means the
        # same program, decided already.
        self._seen: dict[int, tuple[int, str]] = {}
        # pid -> time.monotonic() it was first seen. A process seen less than
        # SETTLE_S ago is checked on every scan: a wrapper script execs its program
        # within moments of starting. Older ones (most of a host, which scans would
        # otherwise cost two syscalls each on every scan) are checked
        # in turns, one in RECHECK_TURNS per scan: a reused pid or a late exec is
        # noticed within RECHECK_TURNS scans.
        self._first_seen: dict[int, float] = {}
        self._turn = 0
        self._self = os.getpid()
        # (pid, exe, error) of processes whose examination failed unexpectedly; the
        # caller takes them (take_failures) to count and log. They stay decided: looked
        # at again only if they exec (or the pid is reused), not on every scan.
        self._failures: list[tuple[int, str, Exception]] = []

    def scan(self, watched: frozenset[int] | set[int] = frozenset()) -> list[Candidate]:
        """Processes not seen before (or that exec'd since) that are Go programs
        matching the filter. The pids in `watched` (the profiled ones) get their stat
        read every time, so that running() notices one that exited or turned zombie."""
        found: list[Candidate] = []
        pids = self.filter.pids or [int(d) for d in os.listdir("/proc") if d.isdigit()]
        alive: set[int] = set()
        now = time.monotonic()
        self._turn = (self._turn + 1) % RECHECK_TURNS
        for pid in pids:
            if pid == self._self:
                continue
            first = self._first_seen.get(pid)
            if (first is not None and now - first > SETTLE_S and pid not in watched
                    and pid % RECHECK_TURNS != self._turn and pid in self._decided):
                alive.add(pid)  # listed, decided, settled, not its turn
                continue
            try:
                ctime = os.stat(f"/proc/{pid}").st_ctime_ns
            except OSError:
                continue  # gone
            try:
                exe = os.readlink(f"/proc/{pid}/exe")
            except OSError:
                exe = ""  # a kernel thread (or gone: the stat below says)
            seen = (ctime, exe)
            before = self._seen.get(pid)
            if pid not in watched and before == seen and pid in self._decided:
                alive.add(pid)
                continue
            ticks = start_ticks(pid)
            if ticks is None:
                continue
            alive.add(pid)
            self._seen[pid] = seen
            self._first_seen.setdefault(pid, now)
            if self._decided.get(pid) == ticks and (before is None or before[1] == exe):
                continue
            self._decided[pid] = ticks
            try:
                candidate = self._examine(pid, ticks, exe)
            except Exception as e:  # noqa: BLE001 - one process's trouble is its own
                if start_ticks(pid) == ticks:  # still there: not just gone meanwhile
                    self._failures.append((pid, exe, e))
                continue
            if candidate is not None:
                found.append(candidate)
        for pid in [p for p in self._decided if p not in alive]:
            del self._decided[pid]  # gone: a new process with its pid is looked at anew
            self._seen.pop(pid, None)
            self._first_seen.pop(pid, None)
        return found

    def take_failures(self) -> list[tuple[int, str, Exception]]:
        failures, self._failures = self._failures, []
        return failures

    def forget(self, pid: int) -> None:
        """The next scan looks at `pid` anew (a profiled process there was let go)."""
        self._decided.pop(pid, None)
        self._seen.pop(pid, None)
        self._first_seen.pop(pid, None)

    def running(self, pid: int, ticks: int) -> bool:
        """Whether the process the last scan saw at `pid` is still this one (a reused pid
        is another process): profiled processes need no /proc reads of their own."""
        return self._decided.get(pid) == ticks

    def _examine(self, pid: int, ticks: int, exe: str) -> Candidate | None:
        if not exe:
            return None  # kernel thread, or gone
        target = Target(pid, read_comm(pid), exe)
        cgroup = cgroup_of(pid)
        if cgroup is None or not self.filter.matches(target, cgroup.path):
            return None
        looked = self.binaries.lookup(pid)
        if looked is None:
            return None
        key, info = looked
        if info is None:
            if pid not in self.filter.pids:
                return None  # not a Go program: skipped unless asked for by pid
            info = NOT_GO  # asked for: CPU profiles work for any program
        return Candidate(target, ticks, info, key, cgroup)
