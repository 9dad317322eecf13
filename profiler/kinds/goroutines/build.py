"""A goroutine snapshot -> the profile model: runtime/pprof's goroutine profile (one
sample per distinct (stack, labels), counted) plus, for the text formats, every
goroutine with its state, creator and named stack (GoroutineProfile.goroutines)."""

from __future__ import annotations

from dataclasses import dataclass, field

from goprof.golang.goroutines import GoroutineRead, Snapshot
from goprof.golang.gstatus import G_SCAN, G_SYSCALL, G_WAITING, is_system
from goprof.model import Location, Profile, Sample, ValueType
from goprof.symbolizer import ProcessSymbolizer

GOROUTINE_TYPE = ValueType("goroutine", "count")
RUNNING_NOTE = "goroutine running on other thread; stack unavailable"  # as Go prints it


@dataclass(frozen=True)
class CreatedBy:
    function: str
    file: str
    line: int
    offset: int  # gopc - the function's entry
    parent_goid: int


@dataclass(slots=True)
class GoroutineEntry:
    goid: int
    state: str  # "chan receive", "running", ...
    header: str  # what follows the goid in "goroutine N [...]:"
    base_status: int  # atomicstatus without the scan bit
    labels: dict[str, str]
    pcs: tuple[int, ...]  # leaf first, as runtime/pprof records them (return addresses)
    locations: tuple[Location, ...]  # named at the call (pc - 1), leaf first
    entries: tuple[int | None, ...]  # each location's function entry (for +0x offsets)
    # Per location, runtime/pprof's "return addresses": one per inlined call (debug=1).
    inline_pcs: tuple[tuple[int, ...], ...]
    created_by: CreatedBy | None
    note: str  # why the stack is missing or incomplete ("" when whole)
    changed: bool
    system: bool  # started in the runtime: runtime/pprof leaves it out


@dataclass
class GoroutineProfile(Profile):
    goroutines: list[GoroutineEntry] = field(default_factory=list)


def header_of(g: GoroutineRead) -> str:
    """"chan receive, 3 minutes, locked to thread" as goroutineheader prints it."""
    base = g.status & ~G_SCAN
    out = g.state
    if base == 10:  # _Gleaked
        out += " (leaked)"
    if g.status & G_SCAN:
        out += " (scan)"
    minutes = g.wait_ns // 60_000_000_000 if base in (G_WAITING, G_SYSCALL) else 0
    if minutes >= 1:
        out += f", {minutes} minutes"
    if g.locked:
        out += ", locked to thread"
    return out


def build_entries(snapshot: Snapshot, sym: ProcessSymbolizer, entry_of,
                  inline_pcs=None) -> list[GoroutineEntry]:
    """The goroutines of a snapshot, named. entry_of(pc): the runtime address of pc's
    function entry (None: unknown). inline_pcs(lookup): runtime/pprof's addresses of one
    physical frame, one per inlined call (Unwinder.inline_pcs; without it, one each)."""
    inline_pcs = inline_pcs or (lambda lookup: (lookup + 1,))
    out = []
    named: dict[tuple[int, ...], tuple] = {}  # stacks repeat: each distinct one named once
    created: dict[tuple[int, int], CreatedBy | None] = {}
    starts: dict[int, str] = {}
    headers: dict[str, str] = {}  # the same few headers, shared (memory)
    system: dict[tuple[str, int], bool] = {}
    for g in sorted(snapshot.goroutines, key=lambda g: g.goid):
        stack = named.get(g.pcs)
        if stack is None:
            stack = named[g.pcs] = (tuple(sym.locate(a) for a in g.lookups),
                                    tuple(entry_of(pc) for pc in g.pcs),
                                    tuple(inline_pcs(a) for a in g.lookups))
        start_fn = starts.get(g.startpc)
        if start_fn is None:
            start = sym.locate(g.startpc).frames
            start_fn = starts[g.startpc] = start[-1].function if start else ""
        by = (g.gopc, g.parent_goid)
        if by not in created:
            created[by] = _created_by(g, sym, entry_of)
        base = g.status & ~G_SCAN
        note = g.stack_note
        if note.startswith("stack unavailable while running"):
            note = RUNNING_NOTE
        header = header_of(g)
        header = headers.setdefault(header, header)
        sys_key = (start_fn, base)
        if sys_key not in system:
            system[sys_key] = is_system(start_fn, base)
        out.append(GoroutineEntry(
            g.goid, g.state, header, base, g.labels, g.pcs, stack[0], stack[1], stack[2],
            created[by], note, g.changed, system[sys_key]))
    return out


def _created_by(g: GoroutineRead, sym: ProcessSymbolizer, entry_of) -> CreatedBy | None:
    """runtime.printcreatedby: the function of the go statement (not for goroutine 1, nor
    for goroutines the runtime starts), with file:line of the call."""
    if not g.gopc or g.goid == 1:
        return None
    entry = entry_of(g.gopc)
    loc = sym.locate(g.gopc - 1 if entry is not None and g.gopc > entry else g.gopc)
    if not loc.frames:
        return None
    fn = loc.frames[-1].function
    if fn.startswith("runtime.") and not fn[8:9].isupper():
        return None
    return CreatedBy(fn, loc.frames[0].file, loc.frames[0].line,
                     g.gopc - entry if entry is not None else 0, g.parent_goid)


def build_profile(entries: list[GoroutineEntry], time_ns: int, comments: list[str],
                  include_system: bool) -> GoroutineProfile:
    """runtime/pprof's goroutine profile: goroutine/count, period 1, one sample per
    (stack, labels). Goroutines without a stack count under an empty one."""
    profile = GoroutineProfile(sample_types=[GOROUTINE_TYPE], period_type=GOROUTINE_TYPE,
                               period=1, time_nanos=time_ns, comments=comments,
                               default_sample_type="goroutine")
    profile.goroutines = [e for e in entries if include_system or not e.system]
    groups: dict[tuple, Sample] = {}
    for e in profile.goroutines:
        key = (e.pcs, tuple(sorted(e.labels.items())))
        s = groups.get(key)
        if s is None:
            s = groups[key] = Sample(e.locations, (0,), dict(e.labels))
        s.values = (s.values[0] + 1,)
    profile.samples = list(groups.values())
    return profile
