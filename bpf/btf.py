"""Struct member offsets of the running kernel, from its BTF (/sys/kernel/btf/vmlinux).

bcc compiles against whatever kernel headers the machine has (Debian's 6.1 here, on a
6.18 kernel), so a BPF program must not take the offset of a field that moves between
kernel versions or configurations (task_struct's are both) from headers: it takes it
from the running kernel's BTF, read here, and gets it as a -D constant.

Standard library only. The format is the kernel's Documentation/bpf/btf.rst: a header,
then a type section (variable-length records, type ids counted from 1) and a string
section. Only what a member lookup needs is decoded; the parse (one pass over ~5 MB,
about 130k types) is cached per file.
"""

from __future__ import annotations

import functools
import os
import struct
from dataclasses import dataclass

VMLINUX = "/sys/kernel/btf/vmlinux"
MAGIC = 0xEB9F

# Kinds (include/uapi/linux/btf.h) and the bytes each record carries after its 12-byte
# common part: a fixed size, and a size per vlen item.
INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT = range(1, 12)
FUNC, FUNC_PROTO, VAR, DATASEC, FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = range(12, 20)
TRAILER: dict[int, tuple[int, int]] = {
    INT: (4, 0), PTR: (0, 0), ARRAY: (12, 0), STRUCT: (0, 12), UNION: (0, 12),
    ENUM: (0, 8), FWD: (0, 0), TYPEDEF: (0, 0), VOLATILE: (0, 0), CONST: (0, 0),
    RESTRICT: (0, 0), FUNC: (0, 0), FUNC_PROTO: (0, 8), VAR: (4, 0), DATASEC: (0, 12),
    FLOAT: (0, 0), DECL_TAG: (4, 0), TYPE_TAG: (0, 0), ENUM64: (0, 12),
}
# Kinds that only qualify or rename another type: a member lookup looks through them.
MODIFIERS = frozenset((TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG))
MAX_NESTING = 64  # modifier chains and anonymous members; a loop means a corrupt file


class BTFError(Exception):
    """BTF is absent or unreadable, or it lacks the struct or member asked for."""


@dataclass(frozen=True)
class Member:
    """Where a member lies in its outermost struct."""

    bit_offset: int
    bitfield_size: int  # 0 for an ordinary member
    type_id: int

    @property
    def byte_offset(self) -> int:
        return self.bit_offset // 8


class BTF:
    """The types of one BTF file (no split BTF: vmlinux is a base)."""

    def __init__(self, data: bytes, where: str = "BTF") -> None:
        self.where = where
        if len(data) < 24:
            raise BTFError(f"{where}: too short for a BTF header ({len(data)} bytes)")
        for order in "<>":
            if struct.unpack_from(order + "H", data)[0] == MAGIC:
                break
        else:
            raise BTFError(f"{where}: not BTF (magic {data[:2].hex()})")
        self._o = order
        _m, version, _f, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from(
            order + "HBBIIIII", data)
        if version != 1 or hdr_len < 24:
            raise BTFError(f"{where}: unsupported BTF version {version} (header {hdr_len})")
        t0, s0 = hdr_len + type_off, hdr_len + str_off
        if t0 + type_len > len(data) or s0 + str_len > len(data):
            raise BTFError(f"{where}: sections run past the end of the file")
        self._data = data
        self._strings = data[s0:s0 + str_len]
        self._offsets = self._index(data, t0, t0 + type_len)  # type id -> record offset
        self._by_name: dict[str, list[int]] | None = None

    def _index(self, data: bytes, pos: int, end: int) -> list[int]:
        # The hot loop of the parse: one unpack per record, no objects made.
        unpack = struct.Struct(self._o + "I").unpack_from
        trailer = TRAILER
        offsets = [0]  # id 0 is void
        append = offsets.append
        while pos < end:
            append(pos)
            info = unpack(data, pos + 4)[0]
            kind = (info >> 24) & 0x1F
            t = trailer.get(kind)
            if t is None:
                raise BTFError(f"{self.where}: unknown BTF kind {kind} at type "
                               f"{len(offsets) - 1}")
            pos += 12 + t[0] + t[1] * (info & 0xFFFF)
        if pos != end:
            raise BTFError(f"{self.where}: the last type runs past the type section")
        return offsets

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def name(self, name_off: int) -> str:
        end = self._strings.find(b"\0", name_off)
        if name_off >= len(self._strings) or end < 0:
            raise BTFError(f"{self.where}: string offset {name_off} out of range")
        return self._strings[name_off:end].decode("utf-8", "replace")

    def type(self, type_id: int) -> tuple[int, int, bool, int, int, int]:
        """(kind, vlen, kind_flag, name_off, size_or_type, record offset) of a type."""
        if not 0 < type_id < len(self._offsets):
            raise BTFError(f"{self.where}: type id {type_id} out of range")
        pos = self._offsets[type_id]
        name_off, info, size_or_type = struct.unpack_from(self._o + "III", self._data, pos)
        return (info >> 24) & 0x1F, info & 0xFFFF, bool(info >> 31), name_off, size_or_type, pos

    def find(self, name: str, kinds: tuple[int, ...] = (STRUCT, UNION)) -> int:
        """The id of the named type of one of kinds (the first, when several)."""
        if self._by_name is None:
            self._by_name = self._names_of(frozenset((STRUCT, UNION, TYPEDEF)))
        for type_id in self._by_name.get(name, ()):
            if self.type(type_id)[0] in kinds:
                return type_id
        raise BTFError(f"{self.where}: no struct or union named {name!r}")

    def _names_of(self, kinds: frozenset[int]) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        unpack = struct.Struct(self._o + "II").unpack_from
        for type_id in range(1, len(self._offsets)):
            name_off, info = unpack(self._data, self._offsets[type_id])
            if name_off and (info >> 24) & 0x1F in kinds:
                out.setdefault(self.name(name_off), []).append(type_id)
        return out

    def resolve(self, type_id: int) -> int:
        """type_id with typedefs and qualifiers looked through."""
        for _ in range(MAX_NESTING):
            if type_id == 0 or self.type(type_id)[0] not in MODIFIERS:
                return type_id
            type_id = self.type(type_id)[4]
        raise BTFError(f"{self.where}: type {type_id}: modifier chain too long")

    def members(self, type_id: int) -> list[tuple[str, int, int, int]]:
        """(name, type id, bit offset, bitfield size) of a struct's or union's members."""
        kind, vlen, kind_flag, _n, _s, pos = self.type(type_id)
        if kind not in (STRUCT, UNION):
            raise BTFError(f"{self.where}: type {type_id} is not a struct or union")
        out = []
        for i in range(vlen):
            name_off, member_type, offset = struct.unpack_from(
                self._o + "III", self._data, pos + 12 + 12 * i)
            # With kind_flag set, the offset word packs the bitfield size in its top byte;
            # without it, a bitfield's bits are in the INT type's encoding (added below).
            if kind_flag:
                bits, offset = offset >> 24, offset & 0xFFFFFF
            else:
                bits, offset = self._int_bitfield(member_type, offset)
            out.append((self.name(name_off) if name_off else "", member_type, offset, bits))
        return out

    def _int_bitfield(self, member_type: int, offset: int) -> tuple[int, int]:
        target = self.resolve(member_type)
        if not target:
            return 0, offset
        kind, _v, _k, _n, size, pos = self.type(target)
        if kind != INT:
            return 0, offset
        encoding = struct.unpack_from(self._o + "I", self._data, pos + 12)[0]
        int_offset, nr_bits = (encoding >> 16) & 0xFF, encoding & 0xFF
        if int_offset == 0 and nr_bits == size * 8:
            return 0, offset
        return nr_bits, offset + int_offset

    def member(self, struct_name: str, path: str) -> Member:
        """The member at a dotted path ("thread.fsbase") of struct_name, looking through
        typedefs, qualifiers and anonymous structs and unions."""
        type_id = self.find(struct_name)
        bit_offset, bits, seen = 0, 0, struct_name
        for part in path.split("."):
            if bits:
                raise BTFError(f"{self.where}: {seen} is a bitfield, it has no members")
            container = self.resolve(type_id)
            if not container or self.type(container)[0] not in (STRUCT, UNION):
                raise BTFError(f"{self.where}: {seen} is not a struct or union")
            found = self._lookup(container, part, 0)
            if found is None:
                raise BTFError(f"{self.where}: {seen} has no member {part!r}")
            type_id, offset, bits = found
            bit_offset += offset
            seen = f"{seen}.{part}"
        return Member(bit_offset, bits, type_id)

    def _lookup(self, container: int, name: str, depth: int) -> tuple[int, int, int] | None:
        if depth > MAX_NESTING:
            raise BTFError(f"{self.where}: anonymous members nested too deep")
        for member_name, member_type, offset, bits in self.members(container):
            if member_name == name:
                return member_type, offset, bits
            if member_name:
                continue
            inner = self.resolve(member_type)  # an anonymous struct or union: look inside
            if inner and self.type(inner)[0] in (STRUCT, UNION):
                found = self._lookup(inner, name, depth + 1)
                if found is not None:
                    return found[0], offset + found[1], found[2]
        return None


def load(btf_path: str = VMLINUX) -> BTF:
    """The parsed BTF of a file, cached while the file is unchanged."""
    try:
        st = os.stat(btf_path)
    except FileNotFoundError:
        raise BTFError(f"{btf_path} is absent: the kernel has no BTF "
                       "(CONFIG_DEBUG_INFO_BTF is off)") from None
    except OSError as e:
        raise BTFError(f"{btf_path}: {e.strerror or e}") from e
    return _load(btf_path, st.st_ino, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _load(btf_path: str, _ino: int, _size: int, _mtime: int) -> BTF:
    try:
        with open(btf_path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise BTFError(f"{btf_path}: {e.strerror or e}") from e
    return BTF(data, btf_path)


def member_offset(struct_name: str, path: str, btf_path: str = VMLINUX) -> int:
    """offsetof(struct struct_name, path) in bytes; path is dotted ("thread.fsbase").
    BTFError when BTF is absent, or the member is missing or a bitfield."""
    m = load(btf_path).member(struct_name, path)
    if m.bitfield_size or m.bit_offset % 8:
        raise BTFError(f"struct {struct_name}.{path} is a bitfield "
                       f"(bit {m.bit_offset}, {m.bitfield_size} bits): it has no byte offset")
    return m.byte_offset


def task_fsbase_offset(btf_path: str = VMLINUX) -> int:
    """Where a thread's FS base (x86-64) lies in its task_struct: what a BPF program adds
    to bpf_get_current_task() to read it. The thread's TLS, and Go's g, hang off it."""
    return member_offset("task_struct", "thread.fsbase", btf_path)
