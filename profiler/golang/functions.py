"""Function entries of a Go binary (normal, stripped and PIE builds alike), and a
function's code.

Addresses are ELF virtual addresses (for PIE files: at load base 0). Every function
takes a path or an already loaded BinarySymbols (pass that to avoid loading the file
again), and reads the file's bytes from `path` when given, else from the
BinarySymbols' own path (a BinaryCache hands out one BinarySymbols for every file with
the same build id, so its path may be another, possibly vanished, file). The other
modules of goprof.golang that read binaries follow the same rule.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from types import MappingProxyType

from goprof.symbolizer.binary import BinarySymbols, load_binary
from goprof.symbolizer.elffile import SHT_DYNSYM, SHT_SYMTAB, ElfImage
from goprof.symbolizer.elfsyms import STT_FUNC, STT_GNU_IFUNC, SYM
from goprof.symbolizer.errors import guarded
from goprof.symbolizer.names import valid_name

BinaryLike = str | os.PathLike | BinarySymbols
MAX_SYMBOL_NAME = 1 << 16

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
    b = as_binary(binary)
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


def as_binary(binary: BinaryLike) -> BinarySymbols:
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


def function_code(img: ElfImage, b: BinarySymbols, entry: int, limit: int) -> bytes:
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
