"""Kernel addresses named from /proc/kallsyms."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable

from goprof.model import Frame, Location, Mapping

from .errors import SymbolizerError

KERNEL_MAPPING = Mapping(start=0, limit=0xFFFFFFFFFFFFFFFF, offset=0,
                         path="[kernel.kallsyms]")
# Code symbols: text (t/T) and weak ones (w/W, which kallsyms lists for some functions).
_CODE_TYPES = frozenset("tTwW")


class KernelSymbolizer:
    def __init__(self, path: str = "/proc/kallsyms") -> None:
        addrs: list[int] = []
        names: list[str] = []
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                rows = []
                for line in f:
                    parts = line.split(None, 3)
                    if len(parts) < 3 or parts[1] not in _CODE_TYPES:
                        continue
                    try:
                        addr = int(parts[0], 16)
                    except ValueError:
                        continue
                    rows.append((addr, parts[2]))
        except OSError as e:
            raise SymbolizerError(f"{path}: {e.strerror}") from e
        rows.sort()
        for addr, name in rows:
            if addr:
                addrs.append(addr)
                names.append(name)
        self._addrs = addrs
        self._names = names
        self._cache: dict[int, Location] = {}

    @property
    def available(self) -> bool:
        """False when kallsyms hides its addresses (not root, kptr_restrict)."""
        return bool(self._addrs)

    def __len__(self) -> int:
        return len(self._addrs)

    def locate(self, addr: int) -> Location:
        loc = self._cache.get(addr)
        if loc is None:
            i = bisect_right(self._addrs, addr) - 1
            frames = (Frame(function=self._names[i], kernel=True),) if i >= 0 else ()
            loc = Location(addr, KERNEL_MAPPING, frames)
            if len(self._cache) > 1 << 16:
                self._cache.clear()
            self._cache[addr] = loc
        return loc


def load_kernel_symbolizer(note: Callable[[str], None]) -> KernelSymbolizer | None:
    """kallsyms for a run that keeps kernel frames; when it cannot be read, the frames stay
    unnamed (their addresses kept) and `note` is told why, once."""
    try:
        return KernelSymbolizer()
    except SymbolizerError as e:
        note(f"kernel frames stay unnamed: {e}")
        return None
