"""Addresses to frames, nothing else: Go's pclntab (stripped and PIE binaries
included, one frame per inlined call; runtime.firstmoduledata for its bases), ELF
symbols for other code, kallsyms for the kernel. What goprof knows of Go binaries
beyond naming addresses (probe sites, runtime variables, struct layouts, the Go
version) is goprof.golang's."""

from .binary import BinarySymbols, load_binary
from .cache import BinaryCache
from .errors import ProcessGone, SymbolizerError, UnsupportedGo
from .kernel import KERNEL_MAPPING, KernelSymbolizer, load_kernel_symbolizer
from .process import ProcessSymbolizer

__all__ = [
    "KERNEL_MAPPING",
    "BinaryCache",
    "BinarySymbols",
    "KernelSymbolizer",
    "load_kernel_symbolizer",
    "ProcessGone",
    "ProcessSymbolizer",
    "SymbolizerError",
    "UnsupportedGo",
    "load_binary",
]
