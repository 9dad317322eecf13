"""Target processes: finding them, checking we may profile them, noticing they exit."""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

from goprof.errors import EnvironmentProblem, GoprofError, UsageError

CAP_PERFMON = 38
CAP_BPF = 39
PF_KTHREAD = 0x00200000  # include/linux/sched.h: /proc/PID/stat flags of a kernel thread


@dataclass(frozen=True)
class Target:
    pid: int
    comm: str
    exe: str

    @property
    def label(self) -> str:
        return f"{self.comm} (pid {self.pid})"


def read_comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def target_for_pid(pid: int) -> Target:
    if pid <= 0:
        raise UsageError(f"--pid {pid}: a process id is a positive number")
    if not os.path.exists(f"/proc/{pid}"):
        raise EnvironmentProblem(f"no process with pid {pid}: check the pid (`pgrep -a NAME`)")
    try:
        status = open(f"/proc/{pid}/status").read()
    except OSError as e:
        raise EnvironmentProblem(f"cannot read /proc/{pid}/status: {e.strerror}") from None
    tgid = next((int(line.split()[1]) for line in status.splitlines()
                 if line.startswith("Tgid:")), pid)
    if tgid != pid:
        raise UsageError(f"--pid {pid} is a thread of process {tgid}: give the process id "
                         f"(every thread of a process is profiled)")
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError as e:
        raise _no_program(pid, e) from None
    return Target(pid, read_comm(pid), exe)


def _no_program(pid: int, error: OSError) -> GoprofError:
    """Why /proc/PID/exe cannot be read. A kernel thread or a zombie has no executable
    (ENOENT); a live process whose exe is refused (EACCES: another user's, pid 1 in a
    container, a user namespace without ptrace rights over it) is said as refused."""
    state, flags = _state_and_flags(pid)
    if state is None:
        return EnvironmentProblem(f"pid {pid} exited: check the pid (`pgrep -a NAME`)")
    if flags & PF_KTHREAD:
        return EnvironmentProblem(f"pid {pid} ({read_comm(pid)}) is a kernel thread: there "
                                  "is no user program to profile")
    if state in ("Z", "X"):
        return EnvironmentProblem(f"pid {pid} ({read_comm(pid)}) is a zombie (it has exited "
                                  "and its parent has not reaped it): there is no user "
                                  "program to profile")
    why = f"cannot read /proc/{pid}/exe: {error.strerror}"
    if error.errno in (errno.EACCES, errno.EPERM):
        return EnvironmentProblem(
            f"{why}: pid {pid} ({read_comm(pid)}) is running, but goprof may not read its "
            "program; run goprof as root in the host's pid namespace (or with CAP_SYS_PTRACE "
            "over the process: not from inside a container or user namespace)")
    return EnvironmentProblem(f"{why} (pid {pid}, {read_comm(pid)})")


def _state_and_flags(pid: int) -> tuple[str | None, int]:
    """/proc/PID/stat's state (field 3) and flags (field 9); (None, 0) when it is gone."""
    fields = _stat_after_comm(pid)
    try:
        return fields[0], int(fields[6])
    except (TypeError, IndexError, ValueError):
        return None, 0


def stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields after the command name (state first), or None when the
    process is gone or a zombie."""
    fields = _stat_after_comm(pid)
    if not fields or fields[0] in ("Z", "X"):
        return None
    return fields


def _stat_after_comm(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields after the command name, zombies too; None when gone."""
    try:
        # os.open/os.read, not open(): the agent reads this for every profiled process
        # every second, and a text file object costs twice the syscalls' time.
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
        try:
            data = os.read(fd, 4096)
        finally:
            os.close(fd)
        return data.rsplit(b")", 1)[1].decode().split()
    except (OSError, IndexError, UnicodeDecodeError):
        return None


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    return stat_fields(pid) is not None


def _effective_caps() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def check_privileges() -> None:
    if os.geteuid() == 0:
        return
    caps = _effective_caps()
    if caps & (1 << CAP_BPF) and caps & (1 << CAP_PERFMON):
        return
    raise EnvironmentProblem("goprof loads eBPF programs: run it as root (sudo goprof ...) or "
                             "give it CAP_BPF and CAP_PERFMON")


class ExitWatch:
    """Which targets have exited, from their pidfds: a pidfd becomes readable when its
    process ends, so a loop can sleep in poll() until then, and a reused pid cannot fool
    it. Where pidfd_open is refused (kernels before 5.3), the pid is checked in /proc at
    each `check()` instead (the loop wakes at least every tick)."""

    def __init__(self, pids: list[int]) -> None:
        self.fds: dict[int, int] = {}  # pidfd -> pid
        self.polled: set[int] = set()  # pids without a pidfd
        self.live: set[int] = set()
        for pid in pids:
            self.add(pid)

    def add(self, pid: int) -> None:
        try:
            self.fds[os.pidfd_open(pid)] = pid
        except ProcessLookupError:
            return  # gone already
        except OSError:
            self.polled.add(pid)
        self.live.add(pid)

    def check(self, exited: set[int]) -> None:
        """Drops the targets that exited: those whose pidfd is in `exited` (poll() said
        so), and those without a pidfd that /proc says are gone or zombies."""
        for fd in exited & self.fds.keys():
            self.live.discard(self.fds.pop(fd))
            os.close(fd)
        for pid in [pid for pid in self.polled if not alive(pid)]:
            self.polled.discard(pid)
            self.live.discard(pid)

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()

