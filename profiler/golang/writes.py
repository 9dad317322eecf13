"""Values goprof writes into a target's Go runtime (runtime.MemProfileRate; later the block
and mutex profile rates), owned and shared across goprof processes, and always put back.

Why a record outside the process: two goprof sessions on one target must not turn each
other's sampler off (the first to end would silently starve the second), and a goprof
killed with -9 must not leave a rate on for good (the agent picks its method from the rate).
So each write is recorded in a state file per target under /run/goprof/writes (tmpfs:
gone at reboot, as the processes are), updated under an exclusive flock:
the address, the value before goprof wrote, the value goprof wrote, and the goprof
processes holding it. The last live holder puts the old value back; any later goprof
that finds a record whose holders are all dead puts it back (`goprof reset` too).
A value is only put back while it is still the one goprof wrote: a program that set the
variable itself keeps its setting.

Processes are told apart by pid and start time (/proc/PID/stat field 22), so a reused pid
is neither a live holder nor the same target. A target that exec'd keeps both, but its
variables are elsewhere: each record also names the image it was written in (executable
inode and load address), and a record of another image is dropped, never written.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from goprof.errors import EnvironmentProblem
from goprof.golang.process import ProcessMemory
from goprof.targets import stat_fields

STATE_DIR = Path("/run/goprof/writes")
# Another place for the records (tests; hosts whose /run is not writable).
STATE_DIR_ENV = "GOPROF_STATE_DIR"
_RECORD_NAME = re.compile(r"^(\d+)-(\d+)\.json$")


def state_dir() -> Path:
    return Path(os.environ.get(STATE_DIR_ENV) or STATE_DIR)


@dataclass(frozen=True)
class Proc:
    """A process as one instance: a pid alone may be reused once the process is gone."""

    pid: int
    start_ticks: int

    @staticmethod
    def of(pid: int) -> Proc | None:
        fields = stat_fields(pid)  # state is fields[0], so field 22 (starttime) is [19]
        if fields is None or len(fields) < 20 or not fields[19].isdigit():
            return None
        return Proc(pid, int(fields[19]))

    def alive(self) -> bool:
        return Proc.of(self.pid) == self


@dataclass(frozen=True)
class RuntimeVar:
    """A named int64 variable of a target's runtime, at its address in the process."""

    name: str
    address: int


def image_of(pid: int) -> str | None:
    """The program a process runs now: its executable's inode and where it is loaded
    (an exec, even of the same file, changes it unless it loads at the same address,
    where the variable then is too). None when the process is gone."""
    try:
        st = os.stat(f"/proc/{pid}/exe")
        with open(f"/proc/{pid}/maps") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 6 and parts[4] == str(st.st_ino):
                    return f"{st.st_dev}:{st.st_ino}@{parts[0].split('-')[0]}"
    except OSError:
        return None
    return None


@dataclass
class Record:
    address: int
    old: int  # the value before goprof wrote
    written: int  # the value goprof wrote
    image: str  # image_of() the target when written: the address means nothing in another
    holders: list[Proc] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"address": self.address, "old": self.old, "written": self.written,
                "image": self.image, "holders": [[h.pid, h.start_ticks] for h in self.holders]}

    @staticmethod
    def from_json(doc: object) -> Record:
        """Raises ValueError (or TypeError/KeyError) on anything but what to_json wrote."""
        if not isinstance(doc, dict):
            raise ValueError("a record is not an object")
        ints = [doc["address"], doc["old"], doc["written"]]
        holders = [Proc(*h) for h in doc["holders"]]
        if not all(type(v) is int for v in ints) or not all(
                type(h.pid) is int and type(h.start_ticks) is int for h in holders):
            raise ValueError("a record's numbers are not integers")
        if not isinstance(doc["image"], str):
            raise ValueError("a record's image is not a string")
        return Record(ints[0], ints[1], ints[2], doc["image"], holders)


@dataclass
class Hold:
    """What hold() found: the value in force, and whether release() must be called."""

    value: int
    held: bool
    wrote: bool
    notes: list[str] = field(default_factory=list)


class TargetWrites:
    """goprof's writes into one target process, as recorded in its state file."""

    def __init__(self, pid: int, label: str, directory: Path | None = None) -> None:
        self.pid = pid
        self.label = label
        self.dir = directory if directory is not None else state_dir()
        self.target = Proc.of(pid)
        me = Proc.of(os.getpid())
        assert me is not None  # this very process
        self.me = me
        # Writes recorded here only, when the state directory is unusable.
        self._local: dict[str, Record] = {}
        self.unusable: str | None = None  # why the state directory could not be used

    @property
    def path(self) -> Path:
        ticks = self.target.start_ticks if self.target else 0
        return self.dir / f"{self.pid}-{ticks}.json"

    # -- what sessions call -----------------------------------------------------
    def hold(self, var: RuntimeVar, value: int, write: bool = True) -> Hold:
        """Joins goprof's live write of var, else (when write and var is 0: off) writes
        value and holds it. A value the program set itself is used as it is, not held."""
        notes: list[str] = []
        with self._locked(notes, create=True) as records:
            if records is not None:
                notes += self._drop_dead(records)
                rec = records.get(var.name)
                if rec is not None:  # live holders remain: share their write
                    current = self._read(var.address)
                    rec.holders.append(self.me)
                    if current != value and write:
                        pids = ", ".join(str(h.pid) for h in rec.holders if h != self.me)
                        notes.append(f"{var.name} in {self.label} is {current}, set by the "
                                     f"goprof already running on it (pid {pids}): kept, not "
                                     f"{value}; samples are weighted with {current}")
                    return Hold(current, True, False, notes)
            current = self._read(var.address)
            if current != 0 or not write:
                return Hold(current, False, False, notes)
            self._write(var.address, value)
            image = image_of(self.pid)
            if image is None:
                raise EnvironmentProblem(f"{self.label} exited")
            rec = Record(var.address, current, value, image, [self.me])
            if records is None:
                self._local[var.name] = rec
                notes.append(f"cannot record goprof's write of {var.name} in {self.dir} "
                             f"({self.unusable}): it is put back when this goprof ends, but "
                             "another goprof on this process would not know it is goprof's, "
                             "and if this one is killed it stays on")
            else:
                records[var.name] = rec
            return Hold(value, True, True, notes)

    def release(self, var: RuntimeVar) -> list[str]:
        """This goprof is done with var: the last holder puts the old value back."""
        notes: list[str] = []
        local = self._local.pop(var.name, None)
        if local is not None:
            return self._put_back(var.name, local, stale=False)
        with self._locked(notes, create=False) as records:
            if records is None:
                return notes
            rec = records.get(var.name)
            if rec is not None and rec.address != var.address:
                return notes  # an earlier image's (dropped since): not this hold's
            if rec is None:
                if self._target_alive():
                    notes.append(f"goprof's record of {var.name} in {self.label} is gone "
                                 "(`goprof reset --force`?): left as it is")
                return notes
            rec.holders = [h for h in rec.holders if h != self.me and h.alive()]
            if not rec.holders:
                notes += self._put_back(var.name, rec, stale=False)
                del records[var.name]
        return notes

    def restore_stale(self) -> list[str]:
        """Puts back what goprof processes that are gone left on (before anything reads a
        rate to choose a method); says what it did."""
        return self.settle()[0]

    def settle(self) -> tuple[list[str], set[str]]:
        """restore_stale(), and the names live goprof processes still hold: a value in
        force because of one is a session's, gone when that session ends."""
        notes: list[str] = []
        with self._locked(notes, create=False) as records:
            if records is None:
                return notes, set()
            notes += self._drop_dead(records)
            return notes, set(records)

    def reset(self, force: bool) -> tuple[list[str], dict[str, list[Proc]]]:
        """`goprof reset`: puts back every value goprof left on; values live goprof
        processes hold are put back only when forced, else returned (name -> holders)."""
        notes: list[str] = []
        refused: dict[str, list[Proc]] = {}
        with self._locked(notes, create=False) as records:
            if records is None:
                return notes, refused
            notes += self._drop_dead(records)
            for name, rec in list(records.items()):
                if not force:
                    refused[name] = rec.holders
                    continue
                notes += self._put_back(name, rec, stale=False) or [
                    f"put back {name} = {rec.old} in {self.label} (was {rec.written}, held by "
                    f"running goprof pid {', '.join(str(h.pid) for h in rec.holders)})"]
                del records[name]
        return notes, refused

    # -- the records ---------------------------------------------------------------
    @contextmanager
    def _locked(self, notes: list[str], create: bool) -> Iterator[dict[str, Record] | None]:
        """The target's records under the lock, saved when the block ends (also when it
        raises: what was written by then is recorded). None: no usable state directory."""
        if not create and not self.dir.is_dir():
            yield None  # nothing was ever recorded
            return
        try:
            if create:
                self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            lock = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            lock = -1
            self.unusable = e.strerror or str(e)
        if lock < 0:
            yield None
            return
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._sweep()
            records = self._load(notes)
            try:
                yield records
            finally:
                self._save(records, notes)
        finally:
            os.close(lock)  # and with it the flock

    def _load(self, notes: list[str]) -> dict[str, Record]:
        if self.target is None:
            return {}
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {}
        except OSError as e:
            notes.append(f"cannot read goprof's records {self.path}: {e.strerror}; "
                         "treated as none")
            return {}
        try:
            doc = json.loads(text)
            return {str(name): Record.from_json(rec) for name, rec in doc["vars"].items()}
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            notes.append(f"goprof's records {self.path} are unreadable ({type(e).__name__}: "
                         f"{e}): treated as none and replaced")
            return {}

    def _save(self, records: dict[str, Record], notes: list[str]) -> None:
        if self.target is None:
            return
        try:
            if not records:
                self.path.unlink(missing_ok=True)
                return
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps({
                "pid": self.pid, "start_ticks": self.target.start_ticks,
                "vars": {name: rec.to_json() for name, rec in records.items()}}))
            os.replace(tmp, self.path)  # whole or not at all: a reader never sees half
        except OSError as e:
            notes.append(f"cannot update goprof's records {self.path}: {e.strerror}")

    def _sweep(self) -> None:
        """Records of targets that are gone: nothing left to put back."""
        try:
            names = os.listdir(self.dir)
        except OSError:
            return
        for name in names:
            m = _RECORD_NAME.match(name)
            if m and not Proc(int(m[1]), int(m[2])).alive():
                (self.dir / name).unlink(missing_ok=True)

    def _drop_dead(self, records: dict[str, Record]) -> list[str]:
        """Forgets holders that are gone; a record left without any is a goprof that
        ended without cleaning up (killed): its old value is put back."""
        notes = []
        image = image_of(self.pid)
        for name, rec in list(records.items()):
            if rec.image != image:  # it exec'd since (or exited): nothing of ours is left
                del records[name]
                continue
            live = [h for h in rec.holders if h.alive()]
            if live:
                rec.holders = live
                continue
            notes += self._put_back(name, rec, stale=True)
            del records[name]
        return notes

    def _put_back(self, name: str, rec: Record, stale: bool) -> list[str]:
        """Writes the old value back if the variable still holds goprof's; what happened,
        as notes (none for an ordinary release)."""
        if not self._target_alive() or image_of(self.pid) != rec.image:
            return []
        gone = ", ".join(str(h.pid) for h in rec.holders)
        who = f"a goprof that ended without putting it back (pid {gone}; killed?)"
        try:
            current = self._read(rec.address)
            if current != rec.written:
                return [f"{name} in {self.label} is {current}, not the {rec.written} goprof "
                        "wrote: the program changed it itself; left as it is"]
            self._write(rec.address, rec.old)
        except EnvironmentProblem as e:
            if not self._target_alive():
                return []
            return [f"could not put {name} back to {rec.old} in {self.label}: {e}"]
        if stale:
            return [f"{who} had left {name} = {rec.written} in {self.label}: put back to "
                    f"{rec.old}"]
        return []

    def _target_alive(self) -> bool:
        return self.target is not None and self.target.alive()

    # -- the target's memory -----------------------------------------------------------
    def _read(self, address: int) -> int:
        with ProcessMemory(self.pid, self.label) as mem:
            return int.from_bytes(mem.read(address, 8), "little", signed=True)

    def _write(self, address: int, value: int) -> None:
        with ProcessMemory(self.pid, self.label, writable=True) as mem:
            mem.write(address, value.to_bytes(8, "little", signed=True))


def settle_writes(pid: int, label: str) -> tuple[list[str], set[str]]:
    """TargetWrites.settle() for a process, before a rate is read to choose a method (the
    agent): what dead goprofs left on is put back, and the names running goprofs hold
    are returned. Never raises: a problem is a note."""
    try:
        return TargetWrites(pid, label).settle()
    except (EnvironmentProblem, OSError) as e:
        return [f"could not check goprof's earlier writes into {label}: {e}"], set()
