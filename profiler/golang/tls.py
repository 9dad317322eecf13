"""Where a Go thread's current g lives: at `fsbase + g_tls_offset(binary)` (linux/amd64).

A BPF program at a CPU sample reads the thread's FS base (task_struct->thread.fsbase,
see goprof.bpf.btf) and then the g at this offset, whatever code the thread runs (R14
holds g only inside Go's ABIInternal code). The offset is a property of the binary:

- internally linked without cgo (normal, stripped, PIE): -8. The runtime sets the FS
  base itself (settls: 8 bytes past m.tls[0]) and the binary has no PT_TLS segment, or
  (PIE) an 8-byte one;
- externally linked: wherever the system linker placed runtime.tlsg in the executable's
  TLS block, which ends at the FS base (x86-64 TLS variant II): -8 when Go's 8 bytes are
  the block, lower when C code brings its own thread-locals (-0x58 for a static glibc
  link, measured).

It is read from the code of the runtime's assembly functions that load g, never
assumed. The forms the Go assembler and the linkers (Go's, GNU ld, gold) write:

    MOVQ FS:disp32, reg                 64 REX 8b ModRM(mod 00, rm 100) SIB 25 disp32
    MOVQ $imm32, r1; MOVQ FS:0(r1), reg  REX c7 ModRM(mod 11, /0, r1) imm32; 64 REX 8b ...

The second is the initial-exec access of a PIE or shared object after the linker turned
its GOT load into an immediate, as it does for an executable. A shared object (c-shared,
c-archive) keeps `MOVQ tlsg@GOTTPOFF(RIP), r1`, whose offset ld.so decides at load time:
not in the file, so not recognised here (None).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from goprof.golang.functions import BinaryLike, as_binary, function_code, function_entries
from goprof.symbolizer.elffile import ElfImage
from goprof.symbolizer.errors import guarded

# The assembly functions that load g from TLS first thing: stackcheck is in every Go
# binary since 1.4; load_g and save_g exist where cgo or the race detector needs them.
G_LOADERS = ("runtime.stackcheck", "runtime.load_g", "runtime.save_g")
CODE_BYTES = 32  # the two-instruction form is 7 + 4..5 bytes; it starts each function
FS = 0x64
MOV_LOAD = 0x8B  # MOV r64, r/m64
MOV_STORE = 0x89  # MOV r/m64, r64 (save_g stores g)
MOV_IMM = 0xC7  # MOV r/m64, imm32 (sign-extended)
PT_TLS = 7
# The TLS block below the FS base holds the executable's thread-locals; an offset outside
# it (or, without a TLS segment, other than Go's own -8) is not believed.
GO_SETTLS_OFFSET = -8
MAX_TLS_BLOCK = 1 << 20


@dataclass(frozen=True)
class GLoad:
    """One instruction that reads or writes g at FS:offset."""

    function: str
    vaddr: int  # of the FS-prefixed instruction
    offset: int  # FS-relative, signed
    form: str  # "absolute" (FS:disp32) or "immediate" (offset in a register)


@guarded
def g_tls_offset(binary: BinaryLike, *, path: str | None = None) -> int | None:
    """The FS-relative offset of the current g for a linux/amd64 Go binary; None when no
    g-loading function has a recognised form, when they disagree, or when the offset
    lies outside the binary's TLS block (then labels cannot be read: never guess)."""
    loads = g_loads(binary, path=path)
    offsets = {g.offset for g in loads}
    if len(offsets) != 1:
        return None
    offset = offsets.pop()
    b = as_binary(binary)
    with ElfImage(path or b.path) as img:
        block = tls_block_size(img)
    if block is None:
        return offset if offset == GO_SETTLS_OFFSET else None
    return offset if -block <= offset <= -8 and offset % 8 == 0 else None


@guarded
def g_loads(binary: BinaryLike, *, path: str | None = None) -> list[GLoad]:
    """The recognised g accesses at the start of the runtime's g-loading functions."""
    b = as_binary(binary)
    entries = function_entries(b, path=path)
    out = []
    with ElfImage(path or b.path) as img:
        for name in G_LOADERS:
            entry = entries.get(name)
            if entry is None:
                continue
            found = tls_access(function_code(img, b, entry, CODE_BYTES))
            if found is not None:
                at, offset, form = found
                out.append(GLoad(name, entry + at, offset, form))
    return out


def tls_access(code: bytes) -> tuple[int, int, str] | None:
    """(position, FS offset, form) of the g access that code (a function's first bytes)
    starts with, in one of the two forms of the module docstring; None otherwise."""
    direct = _fs_mov(code, 0)
    if direct is not None and direct[0] is None:
        return 0, direct[1], "absolute"
    imm = _mov_imm_to_reg(code)
    if imm is None:
        return None
    reg, value, length = imm
    indirect = _fs_mov(code, length)
    if indirect is not None and indirect[0] == reg:
        return length, value + indirect[1], "immediate"
    return None


def _mov_imm_to_reg(code: bytes) -> tuple[int, int, int] | None:
    """(register, value, length) of a leading `MOVQ $imm32, reg` (REX.W C7 /0, mod 11)."""
    if len(code) < 7 or code[0] & 0xFA != 0x48 or code[1] != MOV_IMM:
        return None  # REX.W, optionally REX.B (0x49); no REX.R or REX.X with mod 11
    modrm = code[2]
    if modrm >> 6 != 3 or (modrm >> 3) & 7 != 0:
        return None
    reg = (modrm & 7) | (8 if code[0] & 1 else 0)
    return reg, int.from_bytes(code[3:7], "little", signed=True), 7


def _fs_mov(code: bytes, at: int) -> tuple[int | None, int] | None:
    """(base register or None, displacement) of a 64-bit MOV between a register and an
    FS-relative memory operand at code[at:]; None when the bytes are not one."""
    if len(code) < at + 4 or code[at] != FS:
        return None
    rex = code[at + 1]
    if rex & 0xF8 != 0x48 or code[at + 2] not in (MOV_LOAD, MOV_STORE):
        return None  # 64-bit operand size (REX.W) only: g is a pointer
    return _memory_operand(code, at + 3, rex)


def _memory_operand(code: bytes, m: int, rex: int) -> tuple[int | None, int] | None:
    """Decode ModRM (+SIB, +displacement) at code[m] for a memory operand: (base
    register or None, displacement). Index registers and RIP-relative operands are not
    forms of a TLS access: None."""
    modrm = code[m]
    mod, rm = modrm >> 6, modrm & 7
    if mod == 3:
        return None
    pos = m + 1
    if rm == 4:  # SIB follows
        if len(code) <= pos:
            return None
        sib = code[pos]
        pos += 1
        if (sib >> 3) & 7 != 4 or rex & 2:  # an index register
            return None
        base: int | None = (sib & 7) | (8 if rex & 1 else 0)
        if sib & 7 == 5 and mod == 0:  # no base: disp32 alone
            base = None
            mod = 2
    elif rm == 5 and mod == 0:
        return None  # [RIP + disp32]
    else:
        base = rm | (8 if rex & 1 else 0)
    size = {0: 0, 1: 1, 2: 4}[mod]
    if len(code) < pos + size:
        return None
    disp = int.from_bytes(code[pos:pos + size], "little", signed=True) if size else 0
    return base, disp


def tls_block_size(img: ElfImage) -> int | None:
    """The size of the executable's TLS block (PT_TLS memsz rounded up to its alignment,
    as the dynamic linker and static-PIE start code place it below the FS base); None
    when the file has no PT_TLS segment."""
    header = img.read(0, 64)
    phoff, = struct.unpack_from("<Q", header, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", header, 0x36)
    if phentsize < 56:
        return None
    for i in range(phnum):
        ph = img.read(phoff + i * phentsize, 56)
        if len(ph) < 56:
            return None
        p_type, = struct.unpack_from("<I", ph, 0)
        if p_type != PT_TLS:
            continue
        memsz, align = struct.unpack_from("<QQ", ph, 40)
        align = max(align, 1)
        size = -(-memsz // align) * align
        return size if 0 < size <= MAX_TLS_BLOCK else None
    return None
