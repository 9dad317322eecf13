"""Where to put uprobes in a Go binary, and where its runtime keeps the data goprof reads.

Three questions, each answered for normal, stripped (-ldflags='-s -w') and PIE builds:

- probe sites: the JBE that follows a function's stack-bound check. uprobes emulate a
  JBE but single-step the CMP before it (about 15 times dearer, KERNEL.md), and the
  argument registers are unchanged at the JBE;
- runtime globals (runtime.MemProfileRate, runtime.mbuckets, runtime.mProfCycle): from
  .symtab, else found through the RIP-relative operands of the runtime functions that
  use them, and validated;
- struct offsets (mcache, mspan, the memory-profile bucket): from DWARF, else a table
  per Go minor version.

Addresses are ELF virtual addresses (for PIE files: at load base 0); probe sites also
carry their file offset, which is what a uprobe is attached at.

Every function takes a path or an already loaded BinarySymbols (pass that to avoid
loading the file again), and reads the file's bytes from `path` when given, else from
the BinarySymbols' own path (a BinaryCache hands out one BinarySymbols for every file
with the same build id, so its path may be another, possibly vanished, file).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from elftools.elf.elffile import ELFFile
from goprof.symbolizer.binary import BinarySymbols, load_binary
from goprof.symbolizer.elffile import SHT_DYNSYM, SHT_NOBITS, SHT_SYMTAB, ElfImage
from goprof.symbolizer.elfsyms import STT_FUNC, STT_GNU_IFUNC, SYM, read_symbols
from goprof.symbolizer.errors import SymbolizerError, UnsupportedGo, guarded
from goprof.symbolizer.goruntime import go_minor
from goprof.symbolizer.names import valid_name

BinaryLike = str | os.PathLike | BinarySymbols
MAX_SYMBOL_NAME = 1 << 16

# -- functions -----------------------------------------------------------------------------

# Go 1.27's size-specialized allocators (malloc_generated.go), called directly by compiled
# code for small objects: mallocgcSmallNoScanSC2, mallocgcSmallScanNoHeaderSC1,
# mallocgcTinySC2... The slow paths and the generic mallocgcSmall* have no "SC<n>".
SIZE_SPECIALIZED_MALLOC = re.compile(r"runtime\.mallocgc\w*SC\d+")


@guarded
def function_entries(binary: BinaryLike, *, path: str | None = None) -> Mapping[str, int]:
    """Function name -> entry vaddr: the pclntab's (stripped binaries too), else the ELF
    symbol tables' function symbols.

    Names are the linker's (a few generated ones spell "·" where .symtab has "."). The
    pclntab names an assembly function and its ABIInternal wrapper, or a Go function
    and its ABI0 wrapper, alike: the lower address wins, which was the body in both
    cases in every build checked (.symtab calls an assembly body "name.abi0")."""
    b = _binary(binary)
    if b.pclntab is None:
        return MappingProxyType(_elf_functions(path or b.path))
    entries = b.pclntab.entries_by_name()
    if b.pclntab.damaged:
        # Damaged names hide functions: .symtab (when kept) names them still, believed
        # only where a pclntab function starts.
        extra = {}
        for name, entry in _elf_functions(path or b.path).items():
            bounds = b.pclntab.func_bounds(entry)
            if name not in entries and bounds is not None and bounds[0] == entry:
                extra[name] = entry
        entries = {**entries, **extra}
    return MappingProxyType(entries)


def function_entry(binary: BinaryLike, name: str) -> int | None:
    return function_entries(binary).get(name)


def functions_with_prefix(binary: BinaryLike, prefix: str) -> dict[str, int]:
    """Name -> entry of the functions whose name starts with prefix, sorted by name."""
    entries = function_entries(binary)
    return {n: entries[n] for n in sorted(entries) if n.startswith(prefix)}


@guarded
def size_specialized_mallocs(binary: BinaryLike) -> dict[str, int]:
    """Go 1.27's runtime.mallocgc*SC<n> functions present in the binary (none before 1.27,
    nor with GOEXPERIMENT=nosizespecializedmalloc)."""
    return {n: e for n, e in functions_with_prefix(binary, "runtime.mallocgc").items()
            if SIZE_SPECIALIZED_MALLOC.fullmatch(n)}


def _binary(binary: BinaryLike) -> BinarySymbols:
    if isinstance(binary, BinarySymbols):
        return binary
    return load_binary(os.fspath(binary))


def _elf_functions(path: str) -> dict[str, int]:
    """Defined function symbols of .symtab and .dynsym, name -> value (first one wins)."""
    out: dict[str, int] = {}
    with ElfImage(path) as img:
        for s in img.sections:
            if s.type not in (SHT_SYMTAB, SHT_DYNSYM) or not 0 < s.link < len(img.sections):
                continue
            strtab = img.section_data(img.sections[s.link])
            data = img.section_data(s)
            for name, info, _other, shndx, value, _size in SYM.iter_unpack(
                    data[: len(data) - len(data) % SYM.size]):
                if info & 0xF not in (STT_FUNC, STT_GNU_IFUNC) or not shndx or not value:
                    continue
                end = strtab.find(b"\0", name, name + MAX_SYMBOL_NAME)
                text = valid_name(strtab[name:end]) if end > name else None
                if text is not None:
                    out.setdefault(text, value)
    return out


def _function_code(img: ElfImage, b: BinarySymbols, entry: int, limit: int) -> bytes:
    """Up to limit bytes of the function at entry, never past its end (from the pclntab)."""
    if b.pclntab is not None:
        bounds = b.pclntab.func_bounds(entry)
        if bounds is None or bounds[0] != entry:
            return b""
        limit = min(limit, bounds[1] - entry)
    seg = img.segment_of(entry)
    if seg is None or not seg.executable:
        return b""
    return img.read_vaddr(entry, limit)


# -- probe sites ---------------------------------------------------------------------------

# The prologue the Go assembler writes (cmd/internal/obj/x86/obj6.go, stacksplit), with
# g in R14 (ABIInternal, Go 1.17+) and R12 as the scratch register (REGENTRYTMP0):
#   small frames:  CMPQ SP, 16(R14)                          49 3b 66 10
#   large frames:  LEAQ -N(SP), R12; CMPQ R12, 16(R14)       4c 8d 64 24 d8 | 4c 8d a4 24 d32
#                                                            then 4d 3b 66 10
#   huge frames:   MOVQ SP, R12; SUBQ $N, R12; JCS morestack; CMPQ R12, 16(R14)
#                                                            49 89 e4 | 4c 8b e4, 49 81 ec i32,
#                                                            72 r8 | 0f 82 r32, 4d 3b 66 10
# each then JBE to the morestack call at the function's end: 76 r8 | 0f 86 r32.
# Runtime functions that may run on the system stack compare with stackguard1 (24(R14)).
# Assembly (ABI0) functions first load g from thread-local storage:
#   MOVQ FS:disp32, R14                                      64 4c 8b 34 25 d32
GUARD_OFFSETS = (0x10, 0x18)  # g.stackguard0, g.stackguard1
CMP_SP_G = b"\x49\x3b\x66"  # CMPQ SP, disp8(R14)
CMP_R12_G = b"\x4d\x3b\x66"  # CMPQ R12, disp8(R14)
LEA_R12_SP8 = b"\x4c\x8d\x64\x24"  # LEAQ disp8(SP), R12
LEA_R12_SP32 = b"\x4c\x8d\xa4\x24"  # LEAQ disp32(SP), R12
MOV_R12_SP = (b"\x49\x89\xe4", b"\x4c\x8b\xe4")  # MOVQ SP, R12 (either direction bit)
SUB_R12_IMM32 = b"\x49\x81\xec"
LOAD_G_FROM_TLS = b"\x64\x4c\x8b\x34\x25"  # + disp32 (-8 on linux/amd64)
PROLOGUE_BYTES = 48  # the longest form above is 9 + 3 + 7 + 6 + 4 + 6 = 35 bytes


@dataclass(frozen=True)
class ProbeSite:
    """The JBE after a function's stack-bound check: the cheap place for a uprobe.

    Registers hold the function's arguments there, as at the entry. The jump is taken
    (to morestack, after which the function starts over and the probe fires again) when
    CF or ZF is set in the probed registers' flags."""

    function: str
    entry: int  # vaddr of the function
    vaddr: int  # vaddr of the JBE
    file_offset: int  # what a uprobe is attached at
    jump_length: int  # 2 (76 rel8) or 6 (0f 86 rel32)
    form: str  # "small", "large" or "huge": the prologue's form (frame size class)
    guard_offset: int  # 0x10 (g.stackguard0) or 0x18 (g.stackguard1)
    # g comes from TLS: an assembly (ABI0) function, whose arguments are on the stack.
    abi0: bool = False

    @property
    def offset(self) -> int:
        """Bytes from the entry: what a "symbol+offset" uprobe specification takes."""
        return self.vaddr - self.entry


@guarded
def probe_site(binary: BinaryLike, function: str, *, path: str | None = None
               ) -> ProbeSite | None:
    """The probe site of a function; None when the binary has no such function or its
    prologue is not a recognised stack check (then probe elsewhere, e.g. the entry)."""
    b = _binary(binary)
    entry = function_entries(b, path=path).get(function)
    if entry is None:
        return None
    with ElfImage(path or b.path) as img:
        code = _function_code(img, b, entry, PROLOGUE_BYTES)
    bounds = b.pclntab.func_bounds(entry) if b.pclntab is not None else None
    found = stack_check(code, bounds[1] - entry if bounds else None)
    if found is None:
        return None
    form, guard, at, length = found
    vaddr = entry + at
    offset = _file_offset(b, vaddr)
    if offset is None:
        return None
    abi0 = code.startswith(LOAD_G_FROM_TLS)
    return ProbeSite(function, entry, vaddr, offset, length, form, guard, abi0)


@guarded
def probe_sites(binary: BinaryLike, functions: Iterable[str], *, path: str | None = None
                ) -> dict[str, ProbeSite]:
    """probe_site for each function, leaving out those that have none."""
    b = _binary(binary)
    out = {}
    for name in functions:
        site = probe_site(b, name, path=path)
        if site is not None:
            out[name] = site
    return out


def stack_check(code: bytes, size: int | None = None) -> tuple[str, int, int, int] | None:
    """(form, guard offset, offset of the JBE, its length) when code (a function's first
    bytes) starts with a stack-bound check followed by a forward JBE, which must land
    inside the function when its size is given; None otherwise."""
    skip = len(LOAD_G_FROM_TLS) + 4 if code.startswith(LOAD_G_FROM_TLS) else 0
    form, cmp_at = _bound_compare(code[skip:])
    cmp_at += skip
    if form is None or len(code) < cmp_at + 4 or code[cmp_at + 3] not in GUARD_OFFSETS:
        return None
    at = cmp_at + 4
    jump = _jbe(code, at)
    if jump is None:
        return None
    length, target = jump
    if size is not None and target >= size:
        return None
    return form, code[cmp_at + 3], at, length


def _bound_compare(code: bytes) -> tuple[str | None, int]:
    """The prologue's form and the offset of its CMPQ against the stack guard."""
    if code[:3] == CMP_SP_G:
        return "small", 0
    if code[:4] == LEA_R12_SP8 and code[5:8] == CMP_R12_G:
        return "large", 5
    if code[:4] == LEA_R12_SP32 and code[8:11] == CMP_R12_G:
        return "large", 8
    if code[:3] in MOV_R12_SP and code[3:6] == SUB_R12_IMM32:
        jcs = 10  # MOVQ (3) + SUBQ (7)
        if code[jcs:jcs + 1] == b"\x72":
            cmp_at = jcs + 2
        elif code[jcs:jcs + 2] == b"\x0f\x82":
            cmp_at = jcs + 6
        else:
            return None, 0
        if code[cmp_at:cmp_at + 3] == CMP_R12_G:
            return "huge", cmp_at
    return None, 0


def _jbe(code: bytes, at: int) -> tuple[int, int] | None:
    """(length, target offset) of a JBE at code[at] that jumps forward: the compiler puts
    the morestack call after the function's body, so a backward or null jump is not
    the stack check's."""
    if code[at:at + 1] == b"\x76" and len(code) >= at + 2:
        length, rel = 2, int.from_bytes(code[at + 1:at + 2], "little", signed=True)
    elif code[at:at + 2] == b"\x0f\x86" and len(code) >= at + 6:
        length, rel = 6, int.from_bytes(code[at + 2:at + 6], "little", signed=True)
    else:
        return None
    return (length, at + length + rel) if rel > 0 else None


def _file_offset(b: BinarySymbols, vaddr: int) -> int | None:
    for seg in b.segments:
        if seg.vaddr <= vaddr < seg.vaddr + seg.filesz:
            return vaddr - seg.vaddr + seg.offset
    return None


# -- RIP-relative operands -------------------------------------------------------------------

# The instructions Go's compiler uses on package variables, with a ModRM byte whose mod=00
# and rm=101 (in 64-bit mode: [RIP + disp32], i.e. the variable's address):
# opcode -> (what it does, operand is a byte, immediate bytes for a 32-bit operand).
ONE_BYTE_OPS: dict[int, tuple[str, bool, int]] = {
    0x8B: ("load", False, 0), 0x8A: ("load", True, 0),
    0x89: ("store", False, 0), 0x88: ("store", True, 0),
    0x8D: ("lea", False, 0),
    0x87: ("xchg", False, 0), 0x86: ("xchg", True, 0),
    0x3B: ("cmp", False, 0), 0x39: ("cmp", False, 0), 0x3A: ("cmp", True, 0),
    0x38: ("cmp", True, 0), 0x85: ("cmp", False, 0), 0x84: ("cmp", True, 0),
    0x03: ("rmw", False, 0), 0x01: ("rmw", False, 0), 0x2B: ("rmw", False, 0),
    0x29: ("rmw", False, 0), 0x23: ("rmw", False, 0), 0x21: ("rmw", False, 0),
    0x0B: ("rmw", False, 0), 0x09: ("rmw", False, 0), 0x33: ("rmw", False, 0),
    0x31: ("rmw", False, 0),
    0x80: ("group1", True, 1), 0x81: ("group1", False, 4), 0x83: ("group1", False, 1),
    0xC6: ("movimm", True, 1), 0xC7: ("movimm", False, 4),
    0xF6: ("group3", True, 1), 0xF7: ("group3", False, 4),
    0xFF: ("group5", False, 0),
}
TWO_BYTE_OPS: dict[int, tuple[str, bool, int]] = {  # after 0F
    0xB6: ("load", True, 0), 0xB7: ("load", False, 0),  # MOVZX (byte, word source)
    0xBE: ("load", True, 0), 0xBF: ("load", False, 0),  # MOVSX
    0xB1: ("rmw", False, 0), 0xB0: ("rmw", True, 0),  # CMPXCHG
    0xC1: ("rmw", False, 0), 0xC0: ("rmw", True, 0),  # XADD
    0x10: ("load", False, 0), 0x11: ("store", False, 0),  # MOVUPS/MOVSD/MOVSS
    0x2E: ("cmp", False, 0), 0x2F: ("cmp", False, 0),  # UCOMISS/COMISS
}
LEGACY_PREFIXES = frozenset((0x66, 0xF0, 0xF2, 0xF3))


@dataclass(frozen=True)
class RipRef:
    """One instruction's [RIP + disp32] operand."""

    at: int  # vaddr of the instruction (its first byte as decoded)
    target: int  # the vaddr it addresses
    op: str  # load, store, lea, xchg, cmp, rmw, movimm, ...
    size: int  # operand size in bytes (1, 2, 4, 8)
    imm: int | None = None  # the immediate of an instruction that has one


def rip_refs(code: bytes, base: int) -> list[RipRef]:
    """The RIP-relative operands in code loaded at base.

    Not a disassembler: every byte that can be such a ModRM is tried, and the opcode (and
    REX and prefixes) are read backwards from it. Bytes inside another instruction's
    displacement or immediate can look like one, so a result is a candidate that callers
    validate (the target's section, its value, other functions that use it); a real
    instruction of the table above is never missed."""
    out = []
    for m in range(1, len(code) - 4):
        if code[m] & 0xC7 != 0x05:
            continue
        ref = _decode_before(code, m, base)
        if ref is not None:
            out.append(ref)
    return out


def _decode_before(code: bytes, m: int, base: int) -> RipRef | None:
    """The instruction whose ModRM (mod=00, rm=101) is code[m], if its opcode is known."""
    if m >= 2 and code[m - 2] == 0x0F and code[m - 1] in TWO_BYTE_OPS:
        op, byte_op, imm32 = TWO_BYTE_OPS[code[m - 1]]
        start = m - 2
    elif code[m - 1] in ONE_BYTE_OPS:
        op, byte_op, imm32 = ONE_BYTE_OPS[code[m - 1]]
        start = m - 1
    else:
        return None
    reg = (code[m] >> 3) & 7
    op = _group_op(op, reg)
    if op is None:
        return None
    rex = code[start - 1] if start >= 1 and 0x40 <= code[start - 1] <= 0x4F else 0
    if rex:
        start -= 1
    prefix16 = False
    for _ in range(2):  # LOCK, operand size, SSE's F2/F3: at most two in Go's code
        if start < 1 or code[start - 1] not in LEGACY_PREFIXES:
            break
        prefix16 |= code[start - 1] == 0x66
        start -= 1
    size = 1 if byte_op else 8 if rex & 8 else 2 if prefix16 else 4
    imm_len = 2 if imm32 == 4 and size == 2 else imm32  # imm32 is imm16 with 66
    end = m + 5 + imm_len
    if end > len(code):
        return None
    disp = int.from_bytes(code[m + 1:m + 5], "little", signed=True)
    imm = int.from_bytes(code[m + 5:end], "little", signed=True) if imm_len else None
    return RipRef(base + start, base + end + disp, op, size, imm)


def _group_op(op: str, reg: int) -> str | None:
    """Opcodes whose ModRM.reg picks the operation: keep the ones that read or write."""
    if op == "group1":
        return "cmp" if reg == 7 else "rmw"
    if op == "movimm":
        return "store" if reg == 0 else None
    if op == "group3":
        return "cmp" if reg == 0 else None  # TEST imm; the others take no immediate
    if op == "group5":
        return "rmw" if reg in (0, 1) else None  # INC/DEC; the rest are jumps and calls
    return op


# -- runtime globals -------------------------------------------------------------------------

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
        return entry, _function_code(self.img, self.b, entry, MAX_FUNCTION_BYTES)

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
    b = _binary(binary)
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


GLOBAL_HEURISTICS = {
    "runtime.MemProfileRate": _find_mem_profile_rate,
    "runtime.mbuckets": _find_mbuckets,
    "runtime.mProfCycle": _find_mprof_cycle,
}


# -- struct layout -------------------------------------------------------------------------

@dataclass(frozen=True)
class RuntimeLayout:
    """Offsets (bytes) of the runtime fields goprof reads, for one binary."""

    go_version: str | None
    mcache_alloc: int  # [numSpanClasses]*mspan, indexed by spanClass
    mspan_nelems: int
    mspan_nelems_size: int  # 8 (uintptr) up to Go 1.21, 2 (uint16) from 1.22
    mspan_alloc_count: int  # uint16
    mspan_alloc_count_before_cache: int  # uint16
    mspan_elemsize: int  # uintptr
    bucket_size: int  # the bucket header; the stack (nstk words) and the record follow
    mem_record_cycle_size: int
    mem_record_cycle_fields: tuple[str, ...]  # uintptr fields, in order
    source: str  # "dwarf" or "table"


@dataclass(frozen=True)
class _Offsets:
    """One column of the per-version table (GO-PROFILING-NOTES.md, from the DWARF of
    real builds)."""

    mcache_alloc: int
    nelems: int
    nelems_size: int
    alloc_count: int
    alloc_count_before_cache: int
    elemsize: int


_GO119 = _Offsets(40, 56, 8, 96, 102, 104)
_GO121 = _Offsets(40, 56, 8, 104, 110, 112)
_GO122 = _Offsets(40, 50, 2, 96, 102, 104)
_GO124 = _Offsets(48, 50, 2, 96, 102, 104)
OFFSETS_BY_MINOR = {19: _GO119, 20: _GO119, 21: _GO121, 22: _GO122, 23: _GO122,
                    24: _GO124, 25: _GO124, 26: _GO124, 27: _GO124}
BUCKET_SIZE = 48  # next, allnext, typ, hash, size, nstk: six words in every version
RECORD_FIELDS_OLD = ("allocs", "frees", "alloc_bytes", "free_bytes")
RECORD_FIELDS_127 = ("allocs", "frees")  # Go 1.27 dropped the byte counters


def supported_minors() -> tuple[int, int]:
    """The Go minor versions the built-in table covers (binaries without DWARF)."""
    return min(OFFSETS_BY_MINOR), max(OFFSETS_BY_MINOR)


@guarded
def runtime_layout(binary: BinaryLike, *, path: str | None = None) -> RuntimeLayout:
    """The runtime's struct offsets: from DWARF when the binary has it, else from the
    table of the binary's Go version. Raises UnsupportedGo for a binary without DWARF
    whose version the table does not cover, SymbolizerError for a non-Go file."""
    b = _binary(binary)
    path = path or b.path
    if b.pclntab is None and b.go_version is None:
        raise SymbolizerError(f"{path}: not a Go program (no pclntab, no Go build info)")
    got = _dwarf_layout(path, b.go_version)
    if got is not None:
        return got
    return table_layout(b.go_version, path)


def table_layout(go_version: str | None, path: str = "") -> RuntimeLayout:
    """The built-in layout of a Go version ("go1.26.3"); UnsupportedGo outside 1.19-1.27."""
    minor = go_minor(go_version)
    offsets = OFFSETS_BY_MINOR.get(minor) if minor is not None else None
    if offsets is None:
        lo, hi = supported_minors()
        where = f"{path}: " if path else ""
        raise UnsupportedGo(
            f"{where}Go version {go_version or 'unknown'} has no built-in runtime layout "
            f"(known: Go 1.{lo} to 1.{hi}) and the binary has no DWARF to read it from; "
            f"build it without -ldflags=-w, or use a supported Go version")
    fields = RECORD_FIELDS_127 if minor >= 27 else RECORD_FIELDS_OLD
    return RuntimeLayout(go_version, offsets.mcache_alloc, offsets.nelems, offsets.nelems_size,
                         offsets.alloc_count, offsets.alloc_count_before_cache, offsets.elemsize,
                         BUCKET_SIZE, 8 * len(fields), fields, "table")


# DWARF: the struct types and the members wanted from each, with the sizes goprof's
# readers assume (None: any). A member of another size means a runtime that changed in
# a way this code does not know: an error, never a silently wrong offset.
DWARF_TYPES = {
    "runtime.mcache": {"alloc": None},
    "runtime.mspan": {"nelems": None, "allocCount": 2, "allocCountBeforeCache": 2,
                      "elemsize": 8},
    "runtime.bucket": {},
    "runtime.memRecordCycle": {},
}


@dataclass(frozen=True)
class _Struct:
    size: int
    members: dict[str, tuple[int, int | None]]  # name -> (offset, size)
    order: tuple[str, ...]


def _dwarf_layout(path: str, go_version: str | None) -> RuntimeLayout | None:
    """The layout from .debug_info (compressed or not); None when the file has no DWARF or
    it lacks one of the types."""
    try:
        structs = _dwarf_structs(path, set(DWARF_TYPES))
    except SymbolizerError:
        raise
    except OSError as e:
        raise SymbolizerError(f"{path}: cannot read: {e.strerror or e}") from e
    except Exception as e:  # pyelftools raises many types on corrupt DWARF
        raise SymbolizerError(f"{path}: unreadable DWARF: {e!r}") from e
    if structs is None or set(structs) != set(DWARF_TYPES):
        return None
    for tname, wanted in DWARF_TYPES.items():
        for member, size in wanted.items():
            got = structs[tname].members.get(member)
            if got is None:
                raise SymbolizerError(f"{path}: DWARF {tname} has no member {member}")
            if size is not None and got[1] != size:
                raise SymbolizerError(f"{path}: DWARF {tname}.{member} is {got[1]} bytes, "
                                      f"goprof reads {size}")
    span, record = structs["runtime.mspan"], structs["runtime.memRecordCycle"]
    nelems_off, nelems_size = span.members["nelems"]
    if nelems_size not in (2, 8):
        raise SymbolizerError(f"{path}: DWARF runtime.mspan.nelems is {nelems_size} bytes")
    return RuntimeLayout(
        go_version, structs["runtime.mcache"].members["alloc"][0], nelems_off, nelems_size,
        span.members["allocCount"][0], span.members["allocCountBeforeCache"][0],
        span.members["elemsize"][0], structs["runtime.bucket"].size, record.size,
        record.order, "dwarf")


def _dwarf_structs(path: str, names: set[str]) -> dict[str, _Struct] | None:
    """The named struct types of the file's DWARF; None without DWARF."""
    with open(path, "rb") as f:
        elf = ELFFile(f)
        if not any(elf.get_section_by_name(n) is not None
                   for n in (".debug_info", ".zdebug_info")):
            return None
        dwarf = elf.get_dwarf_info()
        found = _structs_by_name_search(dwarf, names)
        if len(found) < len(names):
            found.update(_structs_by_walk(dwarf, names - set(found)))
        return found


DIE_SEARCH_LIMIT = 64  # occurrences of a name tried before walking the units


def _structs_by_name_search(dwarf, names: set[str]) -> dict[str, _Struct]:
    """The fast way: Go writes a type's name inline (DW_FORM_string) as its DIE's first
    attribute, right after a one-byte abbreviation code, so the DIE starts one byte
    before the name's bytes. Each guess is parsed and kept only if it is a struct of
    that very name; walking the units instead takes a second or more on a large binary
    (the runtime's types are not in the first "runtime" unit in every version)."""
    raw = dwarf.debug_info_sec.stream.getvalue()
    found: dict[str, _Struct] = {}
    for name in names:
        needle = name.encode() + b"\0"
        i = raw.find(needle)
        for _ in range(DIE_SEARCH_LIMIT):
            if i < 1:
                break
            die = _die_at(dwarf, i - 1)
            if die is not None and die.tag == "DW_TAG_structure_type" and _die_name(die) == name:
                found[name] = _struct(die)
                break
            i = raw.find(needle, i + 1)
    return found


def _die_at(dwarf, offset: int):
    try:
        return dwarf.get_DIE_from_refaddr(offset)
    except Exception:  # a guess inside another DIE's bytes: anything can go wrong
        return None


def _structs_by_walk(dwarf, names: set[str]) -> dict[str, _Struct]:
    """The slow way: every unit's top-level entries (the linker emits each type once)."""
    found: dict[str, _Struct] = {}
    for cu in dwarf.iter_CUs():
        for die in cu.get_top_DIE().iter_children():
            if die.tag != "DW_TAG_structure_type":
                continue
            name = _die_name(die)
            if name in names and name not in found:
                found[name] = _struct(die)
        if len(found) == len(names):
            break
    return found


def _die_name(die) -> str | None:
    attr = die.attributes.get("DW_AT_name")
    if attr is None:
        return None
    v = attr.value
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def _struct(die) -> _Struct:
    members: dict[str, tuple[int, int | None]] = {}
    order = []
    for child in die.iter_children():
        if child.tag != "DW_TAG_member":
            continue
        name = _die_name(child)
        loc = child.attributes.get("DW_AT_data_member_location")
        if name is None or loc is None:
            continue
        members[name] = (_member_offset(loc.value), _type_size(child))
        order.append(name)
    size = die.attributes.get("DW_AT_byte_size")
    return _Struct(size.value if size is not None else 0, members, tuple(order))


def _member_offset(value) -> int:
    """DW_AT_data_member_location: a constant (what Go writes), or DW_OP_plus_uconst."""
    if isinstance(value, int):
        return value
    if isinstance(value, list) and value and value[0] == 0x23:  # DW_OP_plus_uconst ULEB128
        v = shift = 0
        for byte in value[1:]:
            v |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return v
    raise SymbolizerError(f"DWARF member location {value!r} is not a constant")


def _type_size(die) -> int | None:
    """Byte size of a member's type, through typedefs (Go names its types directly)."""
    for _ in range(8):
        if "DW_AT_type" not in die.attributes:
            return None
        die = die.get_DIE_from_attribute("DW_AT_type")
        size = die.attributes.get("DW_AT_byte_size")
        if size is not None:
            return size.value
    return None
