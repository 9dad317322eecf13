"""Function symbols from .symtab/.dynsym, for code the pclntab does not cover (C code,
shared libraries). Parsed with struct.iter_unpack; names stay in the string table
bytes until asked for."""

from __future__ import annotations

import struct
from bisect import bisect_right
from collections.abc import Callable, Iterable

from .elffile import SHT_DYNSYM, SHT_SYMTAB, ElfImage
from .names import valid_name

SYM = struct.Struct("<IBBHQQ")  # Elf64_Sym
STT_FUNC = 2
STT_GNU_IFUNC = 10
SHN_UNDEF = 0
MAX_NAME = 1 << 16
# Prefer GLOBAL (1), then WEAK (2), then LOCAL (0) when several names share an address.
_BIND_RANK = {1: 0, 2: 1, 0: 2}


class SymbolTable:
    def __init__(self, entries: list[tuple[int, int, int, int]], strtabs: list[bytes]):
        """entries: (address, size, name offset, string table index), sorted by address
        with the preferred name first where addresses repeat."""
        addrs: list[int] = []
        self._rest: list[tuple[int, int, int]] = []
        for addr, size, name, tab in entries:
            if addrs and addrs[-1] == addr:
                continue
            addrs.append(addr)
            self._rest.append((size, name, tab))
        self.addrs = addrs
        self._strtabs = strtabs
        # Symbol address -> why its name was refused (outside its string table,
        # unterminated, not text): that code stays unnamed.
        self.damaged: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self.addrs)

    def lookup(self, vaddr: int) -> str | None:
        i = bisect_right(self.addrs, vaddr) - 1
        if i < 0:
            return None
        size, name, tab = self._rest[i]
        # A sized symbol names only its own bytes; an unsized one (assembly labels)
        # everything up to the next symbol.
        if size and vaddr >= self.addrs[i] + size:
            return None
        data = self._strtabs[tab]
        end = data.find(b"\0", name, name + MAX_NAME)
        if name >= len(data) or end < 0:
            self._damage(self.addrs[i], "symbol name outside its string table or unterminated")
            return None
        if end == name:
            return None
        got = valid_name(data[name:end])
        if got is None:
            self._damage(self.addrs[i], "symbol name is not text (not UTF-8, or control "
                                        "characters)")
        return got

    def _damage(self, addr: int, why: str) -> None:
        if len(self.damaged) < 1 << 16:
            self.damaged.setdefault(addr, why)

    def damage(self, vaddr: int) -> tuple[int, str] | None:
        """(symbol address, what is wrong) when the symbol holding vaddr has a refused name."""
        i = bisect_right(self.addrs, vaddr) - 1
        if i < 0 or self.addrs[i] not in self.damaged:
            return None
        return self.addrs[i], self.damaged[self.addrs[i]]


def read_symbols(img: ElfImage, keep: Callable[[int], bool] | None = None,
                 wanted: Iterable[str] = ()) -> tuple[SymbolTable, dict[str, int]]:
    """Function symbols (those at addresses keep() accepts) and the values of the
    `wanted` symbols of any type. Names are matched by their string table offset, so
    no name is decoded while scanning."""
    entries: list[tuple[int, int, int, int]] = []
    strtabs: list[bytes] = []
    found: dict[str, int] = {}
    for s in img.sections:
        if s.type not in (SHT_SYMTAB, SHT_DYNSYM) or not 0 < s.link < len(img.sections):
            continue
        strtab = img.section_data(img.sections[s.link])
        data = img.section_data(s)
        data = data[: len(data) - len(data) % SYM.size]
        want_offs = {}
        for w in wanted:
            i = strtab.find(b"\0" + w.encode() + b"\0")
            if i >= 0:
                want_offs[i + 1] = w
        tab = len(strtabs)
        strtabs.append(strtab)
        before = len(entries)
        for name, info, _other, shndx, value, size in SYM.iter_unpack(data):
            if want_offs and name in want_offs:
                found.setdefault(want_offs[name], value)
            kind = info & 0xF
            if (kind != STT_FUNC and kind != STT_GNU_IFUNC) or shndx == SHN_UNDEF or not value:
                continue
            if keep is not None and not keep(value):
                continue
            entries.append((value, _BIND_RANK.get(info >> 4, 3), size, name, tab))
        if len(entries) == before:
            strtabs[tab] = b""  # nothing kept names anything in it: do not hold it
    # Sorting by (address, binding rank) puts the preferred name first at each address.
    entries.sort()
    return SymbolTable([(a, sz, n, t) for a, _r, sz, n, t in entries], strtabs), found
