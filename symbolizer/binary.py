"""One ELF file's names: Go's pclntab when it has one, else its ELF symbols."""

from __future__ import annotations

from dataclasses import dataclass, field

# The module, not its names: goprof.golang.buildinfo imports this package in turn (see
# its docstring), and a module bound while partially initialised still works here.
from goprof.golang import buildinfo
from goprof.model import Frame

from .elffile import SHT_NOBITS, ElfImage, Segment
from .elfsyms import SymbolTable, read_symbols
from .errors import DATA_ERRORS, SymbolizerError
from .gopclntab import MAGIC_GO118, MAGIC_GO120, Pclntab
from .moduledata import ModuleData, find_moduledata
from .notes import build_ids

PCLNTAB_SECTIONS = (".gopclntab", ".data.rel.ro.gopclntab")  # the latter: PIE, Go < 1.26
WANTED_SYMBOLS = ("runtime.pclntab", "runtime.text", "runtime.firstmoduledata", "go:func.*",
                  "go.func.*")
FRAME_CACHE_LIMIT = 1 << 16


@dataclass
class BinarySymbols:
    path: str
    build_id: str = ""
    gnu_build_id: str = ""
    go_build_id: str = ""
    go_version: str | None = None
    pclntab: Pclntab | None = None
    symbols: SymbolTable | None = None
    # PT_LOAD headers: a mapping's file offset -> ELF virtual address.
    segments: list[Segment] = field(default_factory=list)
    # Go metadata, kept for tests and diagnostics.
    pclntab_addr: int | None = None
    text: int | None = None
    gofunc: int | None = None
    # Why the Go function table could not be read (then names come from ELF symbols
    # alone, and the binary does not count as Go): None when it was read, or is absent.
    go_error: str | None = None
    build_info_error: str | None = None  # damaged build info: the Go version is unknown
    _frames: dict[int, tuple[Frame, ...]] = field(default_factory=dict, repr=False)

    @property
    def is_go(self) -> bool:
        return self.pclntab is not None

    def vaddr_of_offset(self, offset: int) -> int | None:
        """The virtual address the byte at a file offset is loaded at (PT_LOAD headers)."""
        for seg in self.segments:
            if seg.offset <= offset < seg.offset + seg.filesz:
                return offset - seg.offset + seg.vaddr
        return None

    def frames(self, vaddr: int) -> tuple[Frame, ...]:
        """Frames at an ELF virtual address, innermost first; () when nothing names it
        (also when its function is damaged: see damage())."""
        got = self._frames.get(vaddr)
        if got is not None:
            return got
        got = ()
        if self.pclntab is not None:
            try:
                got = self.pclntab.frames(vaddr)
            except (SymbolizerError, *DATA_ERRORS) as e:  # the pclntab confines its own
                i = self.pclntab.func_index(vaddr)
                self.pclntab._damage(-1 if i is None else i, e)
        if not got and self.symbols is not None:
            name = self.symbols.lookup(vaddr)
            if name is not None:
                got = (Frame(name),)
        if len(self._frames) >= FRAME_CACHE_LIMIT:
            self._frames.clear()
        self._frames[vaddr] = got
        return got

    def frameless(self, vaddr: int) -> bool:
        """True where the Go function at vaddr has not pushed its frame (SP delta 0): its
        return address is then at [rsp], and a frame-pointer walk misses its caller."""
        if self.pclntab is None:
            return False
        return self.pclntab.spdelta(vaddr) == 0

    def damage(self, vaddr: int) -> tuple[int, str] | None:
        """(function key, what is wrong) when the function holding vaddr was found damaged
        while naming it (call after frames()); None when it is sound, or not yet read."""
        if self.pclntab is not None:
            i = self.pclntab.func_index(vaddr)
            if i is not None and i in self.pclntab.damaged:
                return self.text_key(i), self.pclntab.damaged[i]
        if self.symbols is not None:
            return self.symbols.damage(vaddr)
        return None

    def text_key(self, i: int) -> int:
        assert self.pclntab is not None
        return self.pclntab.text + self.pclntab.entries[i]

    @property
    def damaged_functions(self) -> int:
        """Functions found damaged so far (names are read lazily: a lower bound)."""
        n = len(self.pclntab.damaged) if self.pclntab is not None else 0
        return n + (len(self.symbols.damaged) if self.symbols is not None else 0)


def load_binary(path: str) -> BinarySymbols:
    """Reads what naming needs from an ELF file; raises SymbolizerError only."""
    with ElfImage(path) as img:
        return load_image(img)


def binary_build_id(gnu: str, go: str) -> str:
    """The GNU build id (what pprof and debuginfod use), else the Go one, hex-encoded."""
    return gnu or go.encode().hex()


def load_image(img: ElfImage, ids: tuple[str, str] | None = None) -> BinarySymbols:
    """load_binary on an already open image (the cache reads the build id first)."""
    try:
        return _load(img, ids)
    except SymbolizerError:
        raise
    except MemoryError as e:
        raise SymbolizerError(f"{img.path}: out of memory while loading") from e
    except DATA_ERRORS as e:
        raise SymbolizerError(f"{img.path}: corrupt ELF file: {e!r}") from e


def _load(img: ElfImage, ids: tuple[str, str] | None = None) -> BinarySymbols:
    gnu, go = ids if ids is not None else build_ids(img)
    version, version_error = buildinfo.go_version_checked(img)
    b = BinarySymbols(img.path, gnu_build_id=gnu, go_build_id=go,
                      build_id=binary_build_id(gnu, go), go_version=version,
                      build_info_error=version_error, segments=list(img.segments))
    minor = buildinfo.go_minor(b.go_version)
    syms: dict[str, int] | None = None

    def symbol(name: str) -> int | None:
        nonlocal syms
        if syms is None:  # only when the cheap ways failed: a pass over .symtab
            _, syms = read_symbols(img, keep=lambda _v: False, wanted=WANTED_SYMBOLS)
        return syms.get(name)

    try:
        _load_go(img, b, symbol, minor)
    except (SymbolizerError, *DATA_ERRORS) as e:
        # A damaged Go table must not cost the binary its other names: .symtab, when
        # the binary has one, still names its functions (without inlined frames).
        b.pclntab = None
        b.go_error = str(e) if isinstance(e, SymbolizerError) else f"corrupt pclntab: {e!r}"
    if b.pclntab is not None:
        lo, hi = b.pclntab.text_range
        # cgo and assembly linked from C keep ELF symbols outside Go's text.
        b.symbols, _ = read_symbols(img, keep=lambda v: not lo <= v < hi)
    else:
        b.symbols, _ = read_symbols(img)
    if b.symbols is not None and not len(b.symbols):
        b.symbols = None
    return b


def _load_go(img: ElfImage, b: BinarySymbols, symbol, minor: int | None) -> None:
    """The pclntab and what locates it (text, gofunc) into b, when the binary has one."""
    found = _find_pclntab(img, symbol, minor)
    if found is None:
        return
    addr, data, md = found
    text = _text_start(img, addr, data, md, symbol)
    gofunc = md.gofunc if md is not None else None
    if gofunc is None:
        gofunc = symbol("go:func.*") or symbol("go.func.*")
    if gofunc is not None and addr <= gofunc < addr + len(data):
        godata, godata_off = data, gofunc - addr
    elif gofunc is not None:
        godata, godata_off = img.tail_from(gofunc), 0
    else:
        godata, godata_off = b"", None
    b.pclntab = Pclntab(data, text, godata, godata_off)
    b.pclntab_addr, b.text, b.gofunc = addr, text, gofunc


def _find_pclntab(img: ElfImage, symbol, minor: int | None
                  ) -> tuple[int, bytes, ModuleData | None] | None:
    """(address, data to the end of its section, moduledata) of the pclntab: its section,
    else the runtime.pclntab symbol, else a header that some moduledata points at."""
    for name in PCLNTAB_SECTIONS:
        s = img.section(name)
        if s is not None and s.type != SHT_NOBITS:
            return s.addr, img.section_data(s), _moduledata(img, s.addr, minor, symbol)
    addr = symbol("runtime.pclntab")
    if addr:
        return addr, img.tail_from(addr), _moduledata(img, addr, minor, symbol)
    # The header: magic, two zero bytes, pc quantum, pointer size; 8-aligned.
    magics = [m.to_bytes(4, "little") + b"\0\0" for m in (MAGIC_GO120, MAGIC_GO118)]
    for seg in img.segments:
        if seg.executable or seg.writable:
            continue
        data = img.read(seg.offset, seg.filesz)
        for magic in magics:
            i = data.find(magic)
            while i >= 0:
                if (i % 8 == 0 and i + 8 <= len(data) and data[i + 6] in (1, 2, 4)
                        and data[i + 7] == 8):
                    addr = seg.vaddr + i
                    md = find_moduledata(img, addr, minor)
                    if md is not None:  # believe a header only if a moduledata points at it
                        return addr, img.tail_from(addr), md
                i = data.find(magic, i + 1)
    return None


def _moduledata(img: ElfImage, addr: int, minor: int | None, symbol) -> ModuleData | None:
    md = find_moduledata(img, addr, minor)
    if md is None:
        sym = symbol("runtime.firstmoduledata")
        if sym:
            md = find_moduledata(img, addr, minor, md_symbol=sym)
    return md


def _text_start(img: ElfImage, addr: int, data: bytes, md: ModuleData | None, symbol) -> int:
    """runtime.text, the base of function entry offsets: moduledata.text (what the runtime
    uses), else the runtime.text symbol, else pcHeader.textStart (Go 1.18-1.25; zero in
    1.26+, relocated in PIE files)."""
    if md is not None:
        return md.text
    sym = symbol("runtime.text")
    if sym:
        return sym
    v = img.word(addr + 24)
    if v and img.in_exec(v):
        return v
    raise SymbolizerError(f"{img.path}: pclntab found but not the start of Go's text "
                          "(no moduledata, no runtime.text symbol, no pcHeader.textStart)")
