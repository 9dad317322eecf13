"""The RIP-relative operands of x86-64 code: how Go's compiled code addresses package
variables, which is how goprof.golang.globals finds runtime variables in stripped
binaries."""

from __future__ import annotations

from dataclasses import dataclass

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
