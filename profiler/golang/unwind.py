"""Unwinding a parked goroutine's stack from outside, as the runtime's own traceback does
on amd64: from a saved (pc, sp, bp), the frame's size at pc comes from the pclntab's
pcsp table; the return address is at sp + size, the caller's sp just above it. Frames
stop at runtime.goexit (the base of every goroutine) or at the stack's end. Where the
pcsp table is unreadable (no Go function, a damaged record) the frame-pointer chain is
followed instead (Go keeps frame pointers on amd64), and counted."""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from struct import Struct

from goprof.symbolizer.binary import BinarySymbols
from goprof.symbolizer.errors import DATA_ERRORS, SymbolizerError

MAX_INLINE_DEPTH = 256
MAX_SHAPES = 65536
MAX_FRAMES = 1024  # the runtime's own traceback prints at most 100; pprof keeps 128+
# abi.FuncIDWrapper per Go minor (internal/abi/symtab.go of 1.26.8, 1.27.3; 1.19.8): the
# runtime leaves wrappers (the `go` statement's gowrapN, method wrappers) out of
# tracebacks and profiles. Other versions: by the gowrap name alone.
FUNC_ID_WRAPPER = {19: 21, 26: 23, 27: 23}  # 1.19: runtime/symtab.go funcID_wrapper
TOP_FUNCTIONS = frozenset(("runtime.goexit", "runtime.mstart", "runtime.rt0_go",
                           "runtime.mcall", "runtime.morestack"))


@dataclass(frozen=True, slots=True)
class PcInfo:
    spdelta: int | None  # frame size at pc (without the return address); None: unknown
    entry: int | None  # runtime address of the function's entry
    top: bool  # a function where stacks end (runtime.goexit)
    wrapper: bool = False  # left out of stacks, as the runtime does


@dataclass(slots=True)
class Unwound:
    pcs: tuple[int, ...]  # resumption pc, then return addresses (runtime addresses)
    fp_frames: int  # frames found through the frame-pointer chain
    complete: bool  # ended at runtime.goexit (or another top function)


class Unwinder:
    """Per binary: pc -> frame facts, cached (stacks share most of their pcs)."""

    def __init__(self, binary: BinarySymbols, bias: int, go_minor: int | None) -> None:
        self.pclntab = binary.pclntab
        self.wrapper_id = FUNC_ID_WRAPPER.get(go_minor or 0)
        self.bias = bias  # runtime address - ELF vaddr
        self._info: dict[int, PcInfo] = {}
        # (pc, stack bytes) -> (where its return addresses are, what they were, the walk)
        self._shapes: dict[tuple[int, int], tuple[Struct, tuple[int, ...], Unwound]] = {}

    def info(self, pc: int) -> PcInfo:
        got = self._info.get(pc)
        if got is None:
            got = self._info[pc] = self._read_info(pc)
        return got

    def _read_info(self, pc: int) -> PcInfo:
        t = self.pclntab
        if t is None:
            return PcInfo(None, None, False)
        vaddr = pc - self.bias
        i = t.func_index(vaddr)
        if i is None:
            return PcInfo(None, None, False)
        entry = t.text + t.entries[i]
        try:
            name = t.name(t.func(i).name_off)
            wrapper = self._is_wrapper(i, name)
        except (SymbolizerError, *DATA_ERRORS):
            name, wrapper = "", False
        return PcInfo(t.spdelta(vaddr), entry + self.bias, name in TOP_FUNCTIONS, wrapper)

    def _is_wrapper(self, i: int, name: str) -> bool:
        t = self.pclntab
        assert t is not None
        if self.wrapper_id is None:
            return ".gowrap" in name.rsplit("/", 1)[-1]
        fields = t.func_struct.unpack_from(t.data, t.pcln_off + t.funcoffs[i])
        func_id = fields[10] if t.version == 120 else fields[9]
        return func_id == self.wrapper_id

    def unwind(self, stack: bytes, base: int, pc: int, sp: int, bp: int) -> Unwound:
        """stack: the goroutine's memory from `base` (its sp, 8-aligned) to the top of
        its stack. Goroutines parked at the same pc with as much stack usually have the
        same frames: the walk of the first is kept as the offsets of its return
        addresses, and a later stack whose words there are the same return addresses
        has the same frames (checked in one unpack, not frame by frame)."""
        memo = self._shapes.get((pc, len(stack)))
        if memo is not None and memo[0].unpack_from(stack) == memo[1]:
            return memo[2]
        got, offsets, rets = self._walk(stack, base, pc, sp, bp)
        if got.fp_frames == 0 and len(self._shapes) < MAX_SHAPES:
            fmt, at = "<", 0
            for off in offsets:
                fmt += f"{off - at}xQ" if off > at else "Q"
                at = off + 8
            self._shapes[(pc, len(stack))] = (Struct(fmt), tuple(rets), got)
        return got

    def _walk(self, stack: bytes, base: int, pc: int, sp: int, bp: int
              ) -> tuple[Unwound, list[int], list[int]]:
        """The frame by frame walk; also the offsets (from base) of the return addresses
        it read, and what it read there."""
        offsets: list[int] = []
        rets: list[int] = []
        words = array("Q")
        words.frombytes(stack if not len(stack) & 7 else stack[:len(stack) & ~7])
        n = len(words)
        pcs: list[int] = []
        fp_frames = 0
        complete = False
        infos = self._info
        for _ in range(MAX_FRAMES):
            info = infos.get(pc)
            if info is None:
                info = self.info(pc)
            if not info.wrapper:
                pcs.append(pc)
            if info.top:
                complete = True
                break
            delta = info.spdelta
            if delta is not None and delta >= 0:
                i = (sp - base + delta) >> 3  # the return address, at sp + frame size
                if not 0 <= i < n:
                    break
                ret = words[i]
                offsets.append(i * 8)
                rets.append(ret)
                if delta > 0:  # the function pushed the caller's BP just below it
                    bp = words[i - 1] if i >= 1 else 0
                sp += delta + 8
            else:
                i = (bp - base) >> 3
                if bp < sp or bp & 7 or not 0 <= i < n - 1:
                    break
                ret, sp, bp = words[i + 1], bp + 16, words[i]
                fp_frames += 1
            if not ret:
                break
            pc = ret
        return Unwound(tuple(pcs), fp_frames, complete), offsets, rets

    def inline_pcs(self, lookup: int) -> tuple[int, ...]:
        """What runtime/pprof records for one physical frame named at `lookup`: one
        "return address" per inlined call, innermost first: lookup + 1, then each
        enclosing call's inline mark (the inline tree's parentPc) + 1. As many as the
        frames the symbolizer gives for lookup; just (lookup + 1,) when unreadable."""
        t = self.pclntab
        out = [lookup + 1]
        vaddr = lookup - self.bias
        i = t.func_index(vaddr) if t is not None else None
        if t is None or i is None:
            return tuple(out)
        try:
            f = t.func(i)
            if f.inl_tree < 0:
                return tuple(out)
            ix = t.pcvalue(f, f.inl_table, vaddr - t.text - f.entry)
            while ix >= 0 and len(out) <= MAX_INLINE_DEPTH:
                _name, parent, _start = t._inline_call(f, ix)
                out.append(t.text + f.entry + parent + self.bias + 1)
                ix = t.pcvalue(f, f.inl_table, parent)
        except (SymbolizerError, *DATA_ERRORS):
            return tuple(out[:1])
        return tuple(out)

    def lookups(self, pcs: tuple[int, ...]) -> tuple[int, ...]:
        """Where to name each pc: at the call (pc - 1), or at pc itself where it is a
        function's entry (a goroutine that has not run yet), as the runtime does."""
        return tuple(pc if self.info(pc).entry == pc else pc - 1 for pc in pcs)
