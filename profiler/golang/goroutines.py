"""Every goroutine of a running Go program, read through /proc/PID/mem: no probe, and
the program is never stopped.

runtime.allglen, then the []*g of runtime.allgs (one read), then the g structs in
batches (they live in spans: contiguous addresses are read in one go), then each
parked goroutine's stack from its saved sp to the stack's top (one read), unwound by
goprof.golang.unwind. A second batched read of every g then finds those that changed
meanwhile (status, goid or saved context differ): each is read again, up to RETRIES
times, and marked as changed when it never holds still. Dead gs (reused later by the
runtime) are skipped. A running goroutine's saved context is stale: it gets no stack
("stack unavailable while running") rather than a wrong one.
"""

from __future__ import annotations

import errno
import os
import struct
import time
from collections import namedtuple
from collections.abc import Iterator
from dataclasses import dataclass, field
from operator import attrgetter

from goprof.errors import EnvironmentProblem
from goprof.golang.buildinfo import go_minor
from goprof.golang.globals import global_address
from goprof.golang.gstatus import (
    G_COPYSTACK,
    G_DEAD,
    G_DEADEXTRA,
    G_IDLE,
    G_RUNNING,
    G_SYSCALL,
    G_WAITING,
    state_of,
    wait_reasons,
)
from goprof.golang.labels import LabelStats, read_labels
from goprof.golang.layouts import GoroutineLayout
from goprof.golang.unwind import Unwinder

RETRIES = 3
MAX_STACK_READ = 1 << 22  # bytes of one stack; deeper is cut (and counted)
MAX_GS = 50_000_000
BATCH_GAP = 4096  # g structs closer than this are read in one pread
BATCH_MAX = 1 << 20
ALIVE_SKIP = (G_DEAD, G_DEADEXTRA, G_IDLE)

# The fields read of each g, by their names in GoroutineLayout.
_FIELDS = (("goid", "Q"), ("atomicstatus", "I"), ("waitreason", "B"), ("waitsince", "q"),
           ("lockedm", "Q"), ("parent_goid", "Q"), ("gopc", "Q"), ("startpc", "Q"),
           ("labels", "Q"), ("stack_lo", "Q"), ("stack_hi", "Q"), ("sched_sp", "Q"),
           ("sched_pc", "Q"), ("sched_bp", "Q"), ("syscallsp", "Q"), ("syscallpc", "Q"),
           ("syscallbp", "Q"))


RAW_FIELDS = tuple(name for name, _ in _FIELDS)


# What must hold still between two reads of a g for its stack read to be its own.
_KEY_FIELDS = (("goid", "Q"), ("atomicstatus", "I"), ("sched_sp", "Q"), ("sched_pc", "Q"),
               ("syscallsp", "Q"), ("syscallpc", "Q"))


@dataclass(slots=True)
class GoroutineRead:
    address: int  # the g
    goid: int
    status: int  # atomicstatus as read (with the scan bit)
    state: str  # as Go prints it: "chan receive", "running", "syscall", ...
    wait_ns: int  # how long it has waited (waiting or in a syscall), 0 when unknown
    locked: bool  # locked to its thread (LockOSThread)
    parent_goid: int
    gopc: int  # where it was created (runtime address of the go statement's return)
    startpc: int
    labels: dict[str, str]
    pcs: tuple[int, ...] = ()  # leaf first: the resumption pc, then return addresses
    lookups: tuple[int, ...] = ()  # the addresses to name them at (pc - 1 but at entries)
    stack_note: str = ""  # why there is no stack, or why it is incomplete
    fp_frames: int = 0
    changed: bool = False  # never held still over RETRIES reads


@dataclass
class ReadStats:
    allglen: int = 0
    dead: int = 0
    running: int = 0  # no stack: running when read
    changed: int = 0  # still changing after RETRIES reads (marked)
    retried: int = 0  # changed between two reads, then read again
    unreadable: int = 0  # g structs or stacks that could not be read
    incomplete: int = 0  # stacks that did not reach runtime.goexit
    fp_frames: int = 0  # frames unwound through the frame-pointer chain (pcsp unreadable)
    cut_stacks: int = 0  # stacks larger than MAX_STACK_READ
    reads: int = 0  # preads of the target's memory
    bytes_read: int = 0
    read_s: float = 0.0
    read_cpu_s: float = 0.0  # goprof's own CPU time in the read (user + system)
    labels: LabelStats = field(default_factory=LabelStats)


class _Mem:
    """Positioned reads of /proc/PID/mem; None for unreadable memory, TargetGone when
    the process has exited."""

    def __init__(self, pid: int, label: str, stats: ReadStats) -> None:
        self.pid, self.label, self.stats = pid, label, stats
        try:
            self.fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
        except OSError as e:
            raise EnvironmentProblem(f"cannot open {label}'s memory: {e.strerror}") from None

    def close(self) -> None:
        os.close(self.fd)

    def read(self, addr: int, size: int) -> bytes | None:
        self.stats.reads += 1
        try:
            data = os.pread(self.fd, size, addr)
        except OSError as e:
            if e.errno == errno.ESRCH or not os.path.exists(f"/proc/{self.pid}"):
                raise TargetGone(self.label) from None
            return None
        if not data and not os.path.exists(f"/proc/{self.pid}/exe"):
            raise TargetGone(self.label)  # an exited process reads as empty
        self.stats.bytes_read += len(data)
        return data if len(data) == size else None


class TargetGone(EnvironmentProblem):
    def __init__(self, label: str) -> None:
        super().__init__(f"{label} exited while its goroutines were read")


@dataclass
class Snapshot:
    goroutines: list[GoroutineRead]
    stats: ReadStats
    time_ns: int  # wall clock when the read started


class GoroutineReader:
    def __init__(self, pid: int, label: str, binary, path: str, bias: int,
                 layout: GoroutineLayout) -> None:
        self.pid, self.label, self.layout = pid, label, layout
        self.minor = go_minor(binary.go_version)
        self.reasons = wait_reasons(self.minor)
        self.unwinder = Unwinder(binary, bias, self.minor)
        self.allgs = global_address(binary, "runtime.allgs", path=path)
        self.allglen = global_address(binary, "runtime.allglen", path=path)
        if self.allgs is None or self.allglen is None:
            missing = "runtime.allgs" if self.allgs is None else "runtime.allglen"
            raise EnvironmentProblem(f"{label}: {missing} not found in its binary: cannot "
                                     "list its goroutines")
        self.allgs += bias
        self.allglen += bias
        fields = [(getattr(layout, name), fmt, name) for name, fmt in _FIELDS
                  if name != "stack_hi" and getattr(layout, name) is not None]
        fields.append((layout.stack_lo + 8, "Q", "stack_hi"))
        fields.sort()
        fmt, at, self._names = "<", 0, []
        for off, f, name in fields:
            fmt += f"{off - at}x{f}" if off > at else f
            at = off + struct.calcsize("<" + f)
            self._names.append(name)
        self._g = struct.Struct(fmt)
        # A g as read: a named tuple of the fields, in the order of their offsets.
        # Fields this Go version lacks (syscallbp before 1.23, parentGoid before 1.21): 0.
        missing = [n for n in RAW_FIELDS if n not in self._names]
        self._zeros = (0,) * len(missing)
        # What must hold still (_key_of), by offset: unpacked on its own in the second pass.
        key_fields = sorted((getattr(layout, n), f, n) for n, f in _KEY_FIELDS)
        fmt, at = "<", 0
        for off, f, _n in key_fields:
            fmt += f"{off - at}x{f}" if off > at else f
            at = off + struct.calcsize("<" + f)
        self._key_struct = struct.Struct(fmt)
        self._key_get = attrgetter(*(n for _o, _f, n in key_fields))
        self._states: dict[tuple[int, int], str] = {}
        self._raw = namedtuple("RawG", self._names + missing)._make
        self._now_ns = 0
        self._stacks: dict[tuple[int, ...], tuple[int, ...]] = {}
        self._lookups: dict[tuple[int, ...], tuple[int, ...]] = {}
        self._labels: dict[int, dict[str, str]] = {}  # pointer -> labels (sets are shared)

    def read(self) -> Snapshot:
        stats = ReadStats()
        # Label sets are kept by address within one read (goroutines share them); across
        # reads a freed set's address may hold another one. The interned stacks go too
        # (a long-lived reader, the agent's, would keep every stack it ever saw).
        self._labels.clear()
        self._stacks.clear()
        self._lookups.clear()
        started, t0, cpu0 = time.time_ns(), time.monotonic(), time.process_time()
        self._now_ns = time.monotonic_ns()  # nanotime(): CLOCK_MONOTONIC, as waitsince
        mem = _Mem(self.pid, self.label, stats)
        try:
            out = self._read(mem, stats)
        finally:
            mem.close()
            stats.read_s = time.monotonic() - t0
            stats.read_cpu_s = time.process_time() - cpu0
        return Snapshot(out, stats, started)

    # -- the steps --------------------------------------------------------------------
    def _read(self, mem: _Mem, stats: ReadStats) -> list[GoroutineRead]:
        head = mem.read(self.allglen, 8)
        ptr = mem.read(self.allgs, 8)
        if head is None or ptr is None:
            raise EnvironmentProblem(f"{self.label}: runtime.allgs is not readable")
        n = int.from_bytes(head, "little")
        base = int.from_bytes(ptr, "little")
        if n > MAX_GS or (n and not base):
            raise EnvironmentProblem(f"{self.label}: runtime.allglen is {n}: not a list of "
                                     "goroutines (goprof's address for it is wrong?)")
        stats.allglen = n
        raw = mem.read(base, n * 8) if n else b""
        if raw is None:
            raise EnvironmentProblem(f"{self.label}: runtime.allgs is not readable")
        addrs = [a for a in struct.unpack(f"<{n}Q", raw) if a]
        # allgs[0] is the main goroutine (the runtime's first allgadd), alive while the
        # program is: anything else means goprof's address or g layout is wrong.
        first = self._one(mem, addrs[0]) if addrs else None
        if first is None or first.goid != 1:
            raise EnvironmentProblem(
                f"{self.label}: runtime.allgs[0] is not goroutine 1 "
                f"({'unreadable' if first is None else f'goid {first.goid}'}): goprof's "
                "address of runtime.allgs or its layout of runtime.g is wrong for this binary")
        # One pass over the gs in address order (batched reads), each goroutine's stack
        # read and unwound as its g comes; only a digest of what must hold still is kept.
        out: dict[int, GoroutineRead | None] = {}
        keys: dict[int, int] = {}
        for addr, g in self._read_gs(mem, addrs):
            if g is None:
                stats.unreadable += 1
            elif g.atomicstatus & ~0x1000 in ALIVE_SKIP:
                stats.dead += 1
            else:
                out[addr] = self._goroutine(mem, addr, g, stats)
                keys[addr] = self._key_of(g)
        # Which changed while read: a second look at every g, in batches again.
        for addr, again in self._read_gs(mem, list(out), parse=self._key):
            if again is not None and again == keys[addr]:
                continue
            stats.retried += 1
            out[addr] = self._retry(mem, addr, stats)
        result = [g for g in out.values() if g is not None]
        for g in result:
            stats.changed += g.changed
            stats.fp_frames += g.fp_frames
            stats.running += g.stack_note.startswith("stack unavailable")
            stats.incomplete += g.stack_note == "stack incomplete"
        stats.dead += sum(1 for g in out.values() if g is None)
        return result

    def _retry(self, mem: _Mem, addr: int, stats: ReadStats) -> GoroutineRead | None:
        last = None
        for _ in range(RETRIES):
            g = self._one(mem, addr)
            if g is None:
                stats.unreadable += 1
                return None
            if g.atomicstatus & ~0x1000 in ALIVE_SKIP:
                return None  # it exited meanwhile: dead now
            last = self._goroutine(mem, addr, g, stats)
            again = self._one(mem, addr)
            if again is not None and self._key_of(again) == self._key_of(g):
                return last
        assert last is not None
        last.changed = True
        return last

    def _one(self, mem: _Mem, addr: int) -> tuple | None:
        data = mem.read(addr, self._g.size)
        return None if data is None else self._parse(data, 0)

    def _key_of(self, g) -> int:
        """What must hold still, as one hash (100,000 tuples would cost ~30 MB; a
        collision, 2**-64, would miss a change)."""
        return hash(self._key_get(g))

    def _key(self, data: bytes, at: int) -> int:
        """_key_of the g at data[at:], read without making the whole g."""
        return hash(self._key_struct.unpack_from(data, at))

    def _parse(self, data: bytes, at: int):
        return self._raw(self._g.unpack_from(data, at) + self._zeros)

    def _read_gs(self, mem: _Mem, addrs: list[int], parse=None
                 ) -> Iterator[tuple[int, tuple | None]]:
        """(address, g) of every g at addrs in address order (None: unreadable), the
        contiguous ones read in one go; parse(data, at) makes what is given of a g
        (default: the whole g)."""
        parse = parse or self._parse
        size = self.layout.g_size
        order = sorted(set(addrs))
        i = 0
        while i < len(order):
            j = i + 1
            while (j < len(order) and order[j] - order[j - 1] - size <= BATCH_GAP
                   and order[j] + size - order[i] <= BATCH_MAX):
                j += 1
            start = order[i]
            data = mem.read(start, order[j - 1] + size - start)
            for a in order[i:j]:
                # A hole in the range (data None): one by one.
                if data is None:
                    one = mem.read(a, self._g.size)
                    yield a, parse(one, 0) if one is not None else None
                else:
                    yield a, parse(data, a - start)
            i = j

    def _goroutine(self, mem: _Mem, addr: int, g, stats: ReadStats) -> GoroutineRead:
        base = g.atomicstatus & ~0x1000
        wait_ns = 0
        if base in (G_WAITING, G_SYSCALL) and g.waitsince:
            wait_ns = max(self._now_ns - g.waitsince, 0)
        labels = self._labels_of(mem, g.labels, stats)
        out = GoroutineRead(addr, g.goid, g.atomicstatus,
                            self._state(g.atomicstatus, g.waitreason), wait_ns,
                            bool(g.lockedm), g.parent_goid, g.gopc, g.startpc, labels)
        # As the runtime's traceback: a goroutine in a system call from its syscall
        # context (whatever its status says), else from g.sched unless it is running.
        if g.syscallsp:
            pc, sp, bp = g.syscallpc, g.syscallsp, getattr(g, "syscallbp", 0)
        elif base == G_RUNNING:
            out.stack_note = "stack unavailable while running"
            return out
        elif base == G_COPYSTACK:
            out.stack_note = "stack unavailable while its stack is moved"
            return out
        else:
            pc, sp, bp = g.sched_pc, g.sched_sp, g.sched_bp
        if not (g.stack_lo <= sp < g.stack_hi) or not pc:
            out.stack_note = "stack unreadable (saved context outside the stack)"
            stats.unreadable += 1
            return out
        size = g.stack_hi - sp
        if size > MAX_STACK_READ:
            size = MAX_STACK_READ
            stats.cut_stacks += 1
        stack = mem.read(sp, size)
        if stack is None:
            out.stack_note = "stack unreadable"
            stats.unreadable += 1
            return out
        u = self.unwinder.unwind(stack, sp, pc, sp, bp)
        # Goroutines share stacks: one tuple per distinct stack (memory), named once.
        pcs = self._stacks.get(u.pcs)
        if pcs is None:
            pcs = self._stacks[u.pcs] = u.pcs
            self._lookups[pcs] = self.unwinder.lookups(pcs)
        out.pcs, out.lookups, out.fp_frames = pcs, self._lookups[pcs], u.fp_frames
        if not u.complete:
            out.stack_note = "stack incomplete"
        return out

    def _state(self, status: int, reason: int) -> str:
        got = self._states.get((status, reason))
        if got is None:
            got = self._states[(status, reason)] = state_of(status, reason, self.reasons)
        return got

    def _labels_of(self, mem: _Mem, ptr: int, stats: ReadStats) -> dict[str, str]:
        if not ptr:
            return {}
        got = self._labels.get(ptr)
        if got is None:
            got = self._labels[ptr] = read_labels(mem.read, ptr, self.minor or 0, stats.labels)
        elif got:
            stats.labels.goroutines_with_labels += 1
        return got
