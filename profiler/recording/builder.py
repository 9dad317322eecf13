"""Counted samples -> the symbolized profile model.

Each distinct address is resolved once. Two corrections make the stacks match
what runtime/pprof shows:
- return addresses (every user frame but the leaf) are looked up at address - 1,
  the call instruction, as Go's own traceback does;
- when the sampled function had not set up its frame (a frameless Go leaf, or a
  prologue), the frame-pointer walk skipped its caller; the word the BPF program
  read at the stack pointer is that caller's return address and is put back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from goprof.model import Location
from goprof.symbolizer import KernelSymbolizer, ProcessSymbolizer

# What symbol tables, comms and methods are keyed by: a process's first image by its
# pid, the image it runs after its Nth exec by (pid, N) (see bpf/cpu.c's on_exec).
ImageKey = int | tuple[int, int]


def image_key(pid: int, generation: int) -> ImageKey:
    return pid if generation == 0 else (pid, generation)


@dataclass
class SymbolStats:
    user_frames: int = 0  # sample-weighted user frame occurrences
    unnamed_user_frames: int = 0
    kernel_frames: int = 0
    unnamed_kernel_frames: int = 0
    unnamed_addresses: set[int] = field(default_factory=set)
    cut_stacks: int = 0  # samples whose user stack was cut at a return address in no mapping

    # The processes named: their symbolizers know what was damaged in their binaries.
    symbolizers: dict[ImageKey, ProcessSymbolizer] = field(default_factory=dict, repr=False)

    def _distinct(self) -> list[ProcessSymbolizer]:
        """Each symbolizer once (an image read before an exec was seen has two keys)."""
        return list({id(s): s for s in self.symbolizers.values()}.values())

    @property
    def unnamed_frames(self) -> int:
        return self.unnamed_user_frames + self.unnamed_kernel_frames

    @property
    def damaged_functions(self) -> int:
        """Functions, among those the profile's addresses fell in, whose pclntab or
        symbol entries were damaged: unnamed, or named without inlined frames or
        file:line (a bad binary must not stop the rest from being named)."""
        return sum(len(s.damaged) for s in self._distinct())

    @property
    def unreadable_binaries(self) -> int:
        """Mapped executables that could not be read at all: their frames are unnamed."""
        return sum(len(s.unreadable) for s in self._distinct())

    @property
    def damaged_build_info(self) -> int:
        """Binaries whose build info is damaged (their Go version is unknown)."""
        return sum(len(s.bad_build_info) for s in self._distinct())

    def damage_text(self) -> str:
        """", damaged functions N, unreadable binaries M" (the non-zero ones), for the
        end-of-run summary and the profile's comments."""
        parts = [f"{what} {n}" for what, n in (("damaged functions", self.damaged_functions),
                                               ("unreadable binaries", self.unreadable_binaries),
                                               ("damaged build info", self.damaged_build_info))
                 if n]
        return "".join(f", {p}" for p in parts)

    def damage_json(self) -> dict[str, int]:
        return {"damaged_functions": self.damaged_functions,
                "unreadable_binaries": self.unreadable_binaries,
                "damaged_build_info": self.damaged_build_info}


class ProfileBuilder:
    def __init__(self, symbolizers: dict[ImageKey, ProcessSymbolizer],
                 kernel: KernelSymbolizer | None, comms: dict[ImageKey, str]) -> None:
        self.symbolizers = symbolizers
        self.kernel = kernel
        self.comms = comms
        self.stats = SymbolStats(symbolizers=symbolizers)

    def user_locations(self, pid: int, user: tuple[int, ...], leaf_ret: int,
                       weight: int, generation: int = 0) -> list[Location]:
        """Locations of a user stack (leaf first), named from the image the process ran
        then (`generation`); `weight` counts cut stacks. An image whose tables could not
        be read keeps its addresses, unnamed."""
        sym = self.symbolizers.get(image_key(pid, generation))
        if sym is None and user:
            return [Location(address=pc) for pc in user]
        if sym is None or not user:
            return []
        pcs = list(user)
        lookups = [pcs[0]] + [pc - 1 for pc in pcs[1:]]
        if leaf_ret and sym.frameless(pcs[0]):
            lookups.insert(1, leaf_ret - 1)
        locations = []
        for pc in lookups:
            loc = sym.locate(pc)
            if loc.mapping is None and locations:
                # A return address outside every mapped file: the frame-pointer walk
                # went through a frame that does not keep one (assembly using BP).
                # What follows is garbage: the stack ends here, counted as cut.
                self.stats.cut_stacks += weight
                break
            locations.append(loc)
        return locations

    def kernel_locations(self, kernel: tuple[int, ...]) -> list[Location]:
        if self.kernel is None:
            return []
        # The leaf is the interrupted pc; the others are return addresses.
        return [self.kernel.locate(pc if i == 0 else pc - 1) for i, pc in enumerate(kernel)]

    def count_frames(self, locs: list[Location], count: int, kernel: bool) -> None:
        unnamed = [loc for loc in locs if not loc.frames]
        for loc in unnamed:
            self.stats.unnamed_addresses.add(loc.address)
        if kernel:
            self.stats.kernel_frames += len(locs) * count
            self.stats.unnamed_kernel_frames += len(unnamed) * count
        else:
            self.stats.user_frames += len(locs) * count
            self.stats.unnamed_user_frames += len(unnamed) * count
