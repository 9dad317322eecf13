"""Names for one process's user-space addresses, from a snapshot of its mappings.

The snapshot is taken when the symbolizer is made: a profiled process may exit (and
its /proc entry vanish) before its samples are named, so each executable mapping's
file is loaded right away, through /proc/PID/map_files (which reaches the mapped
inode even when the file was deleted or replaced, or lives in another mount
namespace), else through /proc/PID/root.
"""

from __future__ import annotations

import os
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass

from goprof.model import Location, Mapping

from .binary import BinarySymbols
from .cache import BinaryCache
from .errors import ProcessGone, SymbolizerError

LOCATION_CACHE_LIMIT = 1 << 17
ERRORS_LIMIT = 64  # notes kept: a long-lived agent must not grow a list per bad address
# A vDSO is a few pages; a mapping far larger is not one.
VDSO_MAX_BYTES = 1 << 20


@dataclass(frozen=True)
class MapsEntry:
    start: int
    end: int
    perms: str
    offset: int
    inode: int
    path: str

    @property
    def key(self) -> tuple[int, int, int, int, str]:
        return (self.start, self.end, self.offset, self.inode, self.path)


def parse_maps(text: str) -> list[MapsEntry]:
    """/proc/PID/maps lines: "start-end perms offset dev inode [path]"."""
    out = []
    for line in text.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 5:
            continue
        try:
            lo, hi = (int(x, 16) for x in parts[0].split("-", 1))
            offset, inode = int(parts[2], 16), int(parts[4])
        except ValueError:
            continue
        out.append(MapsEntry(lo, hi, parts[1], offset, inode,
                             parts[5] if len(parts) > 5 else ""))
    return out


@dataclass(frozen=True)
class _Mapped:
    mapping: Mapping
    binary: BinarySymbols | None


class ProcessSymbolizer:
    def __init__(self, pid: int, cache: BinaryCache, root: str = "/proc") -> None:
        self.pid = pid
        self.cache = cache
        self.root = root
        self.errors: list[str] = []
        # Files mapped executable that could not be read at all: their frames stay
        # unnamed, addresses kept. Path -> why.
        self.unreadable: dict[str, str] = {}
        # (file, function key) -> what is wrong, for the functions this process's
        # addresses fell in that were found damaged (unnamed, or partly named).
        self.damaged: dict[tuple[str, int], str] = {}
        self.bad_build_info: dict[str, str] = {}  # path -> what is wrong
        self.mappings: list[Mapping] = []
        self._known: dict[tuple[int, int, int, int, str], _Mapped] = {}
        self._starts: list[int] = []
        self._mapped: list[_Mapped] = []
        self._locations: dict[int, Location] = {}
        self.refresh()

    @property
    def binaries(self) -> list[BinarySymbols]:
        """The loaded binaries this process maps (what a cache must keep for it)."""
        return [m.binary for m in self._known.values() if m.binary is not None]

    def _proc(self, *parts: str) -> str:
        return os.path.join(self.root, str(self.pid), *parts)

    def refresh(self) -> None:
        """Re-reads the maps (libraries loaded since); what is loaded stays loaded."""
        try:
            with open(self._proc("maps"), encoding="utf-8", errors="surrogateescape") as f:
                text = f.read()
        except (FileNotFoundError, ProcessLookupError) as e:
            raise ProcessGone(f"process {self.pid} is gone") from e
        except OSError as e:
            raise SymbolizerError(f"{self._proc('maps')}: {e.strerror}") from e
        mapped: list[_Mapped] = []
        for entry in parse_maps(text):
            # Only code: executable mappings of files and the vDSO (Go's clocks run
            # there); anonymous JIT code is excluded.
            if "x" not in entry.perms or not (entry.path.startswith("/")
                                              or entry.path == "[vdso]"):
                continue
            known = self._known.get(entry.key)
            if known is None:
                known = self._load(entry)
                self._known[entry.key] = known
            mapped.append(known)
        if not mapped and self._mapped:
            # An exiting process (or a zombie) has released its memory: its maps read
            # empty. Its code did not go away: keep what it had mapped.
            return
        mapped.sort(key=lambda m: m.mapping.start)
        if [id(m) for m in mapped] == [id(m) for m in self._mapped]:
            return  # nothing mapped or unmapped: the named addresses stay valid
        self._mapped = mapped
        self._starts = [m.mapping.start for m in mapped]
        self.mappings = [m.mapping for m in mapped]
        self._locations.clear()

    def _load_vdso(self, entry: MapsEntry) -> _Mapped:
        """The vDSO is an ELF image the kernel maps into every process: read it from memory."""
        binary = None
        try:
            with open(self._proc("mem"), "rb") as mem:
                mem.seek(entry.start)
                image = mem.read(min(entry.end - entry.start, VDSO_MAX_BYTES))
            binary = self.cache.get_image(image, "goprof-vdso-")
        except (OSError, SymbolizerError) as e:
            self._note(f"[vdso] at {entry.start:#x}: {e}")
        mapping = Mapping(entry.start, entry.end, entry.offset, "[vdso]",
                          build_id=binary.build_id if binary else "",
                          symbolized=binary is not None)
        return _Mapped(mapping, binary)

    def _load(self, entry: MapsEntry) -> _Mapped:
        if entry.path == "[vdso]":
            return self._load_vdso(entry)
        path = entry.path.removesuffix(" (deleted)")
        binary = None
        errs = []
        for candidate in (self._proc("map_files", f"{entry.start:x}-{entry.end:x}"),
                          self._proc("root", path.lstrip("/"))):
            try:
                binary = self.cache.get(candidate)
                break
            except SymbolizerError as e:
                errs.append(str(e))
        if binary is None:
            self._note(f"{entry.path} at {entry.start:#x}: " + "; ".join(errs))
            self.unreadable.setdefault(path, "; ".join(errs))
        if binary is not None and binary.build_info_error is not None:
            self.bad_build_info.setdefault(path, binary.build_info_error)
        if binary is not None and binary.go_error is not None and path not in self.unreadable:
            self._note(f"{path}: its Go function table cannot be read ({binary.go_error}): "
                       "only its ELF symbols name it")
            self.unreadable[path] = binary.go_error
        mapping = Mapping(entry.start, entry.end, entry.offset, path,
                          build_id=binary.build_id if binary else "",
                          symbolized=binary is not None)
        return _Mapped(mapping, binary)

    def _note(self, text: str) -> None:
        if len(self.errors) < ERRORS_LIMIT:
            self.errors.append(text)

    def covers(self, addresses: Iterable[int]) -> bool:
        """Whether every address lies in a mapping the last refresh read: when one
        does not, something was mapped since (a library loaded) and a refresh is due."""
        for addr in addresses:
            if addr not in self._locations and self._find(addr) is None:
                return False
        return True

    def _find(self, addr: int) -> tuple[_Mapped, int | None] | None:
        """The mapping holding addr and the ELF virtual address it stands for."""
        i = bisect_right(self._starts, addr) - 1
        if i < 0:
            return None
        m = self._mapped[i]
        if addr >= m.mapping.limit:
            return None
        if m.binary is None:
            return m, None
        return m, m.binary.vaddr_of_offset(addr - m.mapping.start + m.mapping.offset)

    def locate(self, addr: int) -> Location:
        loc = self._locations.get(addr)
        if loc is not None:
            return loc
        found = self._find(addr)
        if found is None:
            loc = Location(addr)
        else:
            m, vaddr = found
            frames = ()
            if m.binary is not None and vaddr is not None:
                try:
                    frames = m.binary.frames(vaddr)
                    damage = m.binary.damage(vaddr)
                except SymbolizerError as e:
                    damage = (vaddr, str(e))
                if damage is not None and len(self.damaged) < LOCATION_CACHE_LIMIT:
                    self.damaged.setdefault((m.mapping.path, damage[0]), damage[1])
            loc = Location(addr, m.mapping, frames)
        if len(self._locations) >= LOCATION_CACHE_LIMIT:
            self._locations.clear()
        self._locations[addr] = loc
        return loc

    def frameless(self, addr: int) -> bool:
        found = self._find(addr)
        if found is None or found[1] is None or found[0].binary is None:
            return False
        try:
            return found[0].binary.frameless(found[1])
        except SymbolizerError:
            return False
