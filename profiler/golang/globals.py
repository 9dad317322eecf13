"""Runtime variables (runtime.MemProfileRate, runtime.mbuckets, runtime.mProfCycle,
runtime.allgs, runtime.allglen):
from .symtab, else (stripped binaries) found through the RIP-relative operands of the
runtime functions that use them, and validated (their section, their static value,
the other functions that use them). Addresses are ELF virtual addresses."""

from __future__ import annotations

from goprof.golang.functions import BinaryLike, as_binary, function_code, function_entries
from goprof.golang.x86 import RipRef, rip_refs
from goprof.symbolizer.binary import BinarySymbols
from goprof.symbolizer.elffile import SHT_NOBITS, ElfImage
from goprof.symbolizer.elfsyms import read_symbols
from goprof.symbolizer.errors import guarded

DEFAULT_MEM_PROFILE_RATE = 512 * 1024
# Go sections of package variables: initialised (in the file) and zero-filled.
DATA_SECTIONS = (".noptrdata", ".data")
BSS_SECTIONS = (".bss", ".noptrbss")
MOVL_IMM_TO_REG = range(0xB8, 0xC0)  # MOVL $imm32, reg (B8+r)
INIT_STORE_WINDOW = 24  # bytes between "MOVL $0x80000, AX" and the store in Go 1.19
MAX_FUNCTION_BYTES = 1 << 20  # runtime.init, the largest read, is a few KiB


class _Code:
    """The binary's functions and data sections, for the global-variable heuristics."""

    def __init__(self, img: ElfImage, b: BinarySymbols) -> None:
        self.img = img
        self.b = b
        self.entries = function_entries(b)
        self._refs: dict[str, list[RipRef] | None] = {}
        self._sections = [s for s in img.sections if s.name in DATA_SECTIONS + BSS_SECTIONS]

    def code(self, function: str) -> tuple[int, bytes] | None:
        """(entry, bytes) of a function; None when it is absent."""
        entry = self.entries.get(function)
        if entry is None:
            return None
        return entry, function_code(self.img, self.b, entry, MAX_FUNCTION_BYTES)

    def refs(self, function: str) -> list[RipRef] | None:
        """The RIP-relative operands of a function; None when it is absent."""
        if function not in self._refs:
            got = self.code(function)
            self._refs[function] = rip_refs(got[1], got[0]) if got is not None else None
        return self._refs[function]

    def region(self, vaddr: int, size: int) -> str | None:
        """"data" (initialised, in the file) or "bss" (zero-filled) when [vaddr, vaddr+size)
        lies inside one of Go's variable sections (or, without section headers, inside
        the file-backed or zero-filled part of a writable segment); else None."""
        if self._sections:
            for s in self._sections:
                if s.addr <= vaddr and vaddr + size <= s.addr + s.size:
                    return "bss" if s.type == SHT_NOBITS else "data"
            return None
        for seg in self.img.segments:
            if not seg.writable:
                continue
            if seg.vaddr <= vaddr and vaddr + size <= seg.vaddr + seg.filesz:
                return "data"
            if seg.vaddr + seg.filesz <= vaddr and vaddr + size <= seg.vaddr + seg.memsz:
                return "bss"
        return None

    def static_word(self, vaddr: int) -> int | None:
        """The 8 bytes at vaddr as the file holds them (0 for zero-filled memory)."""
        kind = self.region(vaddr, 8)
        if kind == "bss":
            return 0
        raw = self.img.read_vaddr(vaddr, 8) if kind == "data" else b""
        return int.from_bytes(raw, "little") if len(raw) == 8 else None


@guarded
def global_address(binary: BinaryLike, name: str, *, path: str | None = None,
                   symbols: bool = True) -> int | None:
    """The vaddr of a runtime variable: from .symtab, else (stripped binaries) found in
    the code for runtime.MemProfileRate, runtime.mbuckets and runtime.mProfCycle. None
    when it cannot be found with certainty. symbols=False skips .symtab (to check the
    code heuristics against it)."""
    b = as_binary(binary)
    with ElfImage(path or b.path) as img:
        if symbols:
            _, found = read_symbols(img, keep=lambda _v: False, wanted=(name,))
            if found.get(name):
                return found[name]
        find = GLOBAL_HEURISTICS.get(name)
        if find is None or b.pclntab is None:
            return None
        return find(_Code(img, b))


def _targets(refs: list[RipRef] | None, ops: tuple[str, ...], size: int | None) -> set[int]:
    return {r.target for r in refs or () if r.op in ops and (size is None or r.size == size)}


def _unique_variable(code: _Code, candidates: set[int], kind: str, size: int) -> int | None:
    """The one candidate that is an aligned variable of the given region; None when there
    are none or several."""
    good = [a for a in candidates if a % size == 0 and code.region(a, size) == kind]
    return good[0] if len(good) == 1 else None


def _find_mem_profile_rate(code: _Code) -> int | None:
    """runtime.MemProfileRate: an int that profilealloc loads (it and mcache0 are all it
    reads) and allocmcache too (through the inlined nextSample; mcache0 it does not),
    whose static value is the default rate: in the file's data from Go 1.20 on; in Go
    1.19 (`= defaultMemProfileRate(512 * 1024)`) a zero-filled variable that runtime.init
    sets right after loading the constant."""
    loads = ("load", "cmp")
    candidates = {t for t in _targets(code.refs("runtime.profilealloc"), loads, 8)
                  if t % 8 == 0 and code.region(t, 8) is not None}
    also = code.refs("runtime.allocmcache")
    if also is not None:  # a second, independent witness when the function is there
        candidates &= _targets(also, loads, 8)
    valid = [t for t in candidates if _holds_default_rate(code, t)]
    return valid[0] if len(valid) == 1 else None


def _holds_default_rate(code: _Code, addr: int) -> bool:
    value = code.static_word(addr)
    if value == DEFAULT_MEM_PROFILE_RATE:
        return True
    return value == 0 and _set_at_init(code, addr, DEFAULT_MEM_PROFILE_RATE)


def _set_at_init(code: _Code, addr: int, value: int) -> bool:
    """True when runtime.init stores a register into addr shortly after a MOVL of value
    into a register (how Go 1.19 compiles `MemProfileRate = defaultMemProfileRate(v)`)."""
    init, refs = code.code("runtime.init"), code.refs("runtime.init")
    if init is None or not refs:
        return False
    entry, body = init
    imm = value.to_bytes(4, "little")
    for r in refs:
        if r.op != "store" or r.target != addr or r.size != 8:
            continue
        at = r.at - entry
        window = body[max(0, at - INIT_STORE_WINDOW):at]
        i = window.find(imm)
        if i >= 1 and window[i - 1] in MOVL_IMM_TO_REG:
            return True
    return False


MBUCKETS_READERS = ("runtime.mProf_FlushLocked", "runtime.mProf_Flush", "runtime.mProf_PostSweep",
                    "runtime.memProfileInternal", "runtime.MemProfile")


def _find_mbuckets(code: _Code) -> int | None:
    """runtime.mbuckets: the pointer that stkbucket links new buckets into (it also links
    bbuckets and xbuckets, and reads buckhash) and that the heap profile's readers load
    (mProf_FlushLocked, or the functions it is inlined into; memProfileInternal or
    MemProfile when the program writes heap profiles). A zero-filled, aligned pointer."""
    stk = code.refs("runtime.stkbucket")
    if stk is None:
        return None
    linked = _targets(stk, ("lea", "load", "store", "xchg"), None)
    read: set[int] = set()
    for name in MBUCKETS_READERS:
        read |= _targets(code.refs(name), ("load", "lea"), None)
    return _unique_variable(code, linked & read, "bss", 8)


def _find_mprof_cycle(code: _Code) -> int | None:
    """runtime.mProfCycle: the uint32 (mProfCycleHolder) that mProf_Malloc, mProf_Free and
    mProf_Flush all load with a 32-bit MOV (profMemFutureLock, which they share too, is
    only ever taken by address)."""
    sets = [_targets(code.refs(f), ("load",), 4)
            for f in ("runtime.mProf_Malloc", "runtime.mProf_Free", "runtime.mProf_Flush")]
    common = set.intersection(*sets)
    return _unique_variable(code, common, "bss", 4)


def _find_allgs(code: _Code) -> int | None:
    """runtime.allgs ([]*g): the slice header (ptr, len, cap: three words) that allgadd
    appends to (loads and stores all three words) and forEachG ranges over (loads ptr
    and len). Zero-filled, aligned, a pointer slice (.bss)."""
    add = code.refs("runtime.allgadd")
    each = code.refs("runtime.forEachG")
    if add is None or each is None:
        return None
    both = _targets(add, ("load",), 8) & _targets(add, ("store",), 8)
    ranged = _targets(each, ("load",), 8)
    heads = {a for a in both & ranged if a + 8 in both & ranged and a + 16 in both}
    return _unique_variable(code, heads, "bss", 8)


def _find_allglen(code: _Code) -> int | None:
    """runtime.allglen (uintptr): allgadd stores it atomically (LEA, then XCHG through the
    register) and forEachGRace loads it; allgptr, the other word both use, is the one
    allgadd compares (`&allgs[0] != allgptr`)."""
    add = code.refs("runtime.allgadd")
    race = code.refs("runtime.forEachGRace")
    if add is None or race is None:
        return None
    candidates = (_targets(add, ("lea",), None) & _targets(race, ("load",), 8)) \
        - _targets(add, ("cmp",), 8)
    return _unique_variable(code, candidates, "bss", 8)


GLOBAL_HEURISTICS = {
    "runtime.MemProfileRate": _find_mem_profile_rate,
    "runtime.mbuckets": _find_mbuckets,
    "runtime.mProfCycle": _find_mprof_cycle,
    "runtime.allgs": _find_allgs,
    "runtime.allglen": _find_allglen,
}
