"""Where to put a uprobe in a Go function: the JBE that follows its stack-bound check.

uprobes emulate a JBE but single-step the CMP before it (about 15 times dearer,
KERNEL.md), and the argument registers are unchanged at the JBE. Works on normal,
stripped (-ldflags='-s -w') and PIE builds; a probe site carries its vaddr and its file
offset, which is what a uprobe is attached at.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from goprof.golang.functions import BinaryLike, as_binary, function_code, function_entries
from goprof.symbolizer.binary import BinarySymbols
from goprof.symbolizer.elffile import ElfImage
from goprof.symbolizer.errors import guarded

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
    b = as_binary(binary)
    entry = function_entries(b, path=path).get(function)
    if entry is None:
        return None
    with ElfImage(path or b.path) as img:
        code = function_code(img, b, entry, PROLOGUE_BYTES)
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
    b = as_binary(binary)
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
