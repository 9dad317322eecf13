"""Every goroutine as the program's own `pprof.Lookup("goroutine").WriteTo(w, 2)` (or
/debug/pprof/goroutine?debug=2) prints it: one block per goroutine, frames as the
runtime's traceback shows them, "created by" its creator. Arguments are not read: each
frame prints `(...)`, as the runtime does for inlined frames."""

from __future__ import annotations

from typing import BinaryIO

from goprof.exporters._goroutines import goroutines_of, shown
from goprof.model import Profile


def goroutine_block(g) -> str:
    lines = [f"goroutine {g.goid} [{g.header}]:"]
    frames = _frame_lines(g, runtime_too=False)
    if not frames and g.locations:  # nothing but runtime frames: show them all (as Go)
        frames = _frame_lines(g, runtime_too=True)
    lines += frames
    if g.note:
        lines.append(f"\t{g.note}" if not g.locations else f"\t...{g.note}")
    if g.changed:
        lines.append("\t(goprof: this goroutine changed while it was read)")
    c = g.created_by
    if c is not None:
        who = f" in goroutine {c.parent_goid}" if c.parent_goid else ""
        off = f" +{c.offset:#x}" if c.offset > 0 else ""
        lines += [f"created by {c.function}{who}", f"\t{c.file}:{c.line}{off}"]
    return "\n".join(lines) + "\n"


def _frame_lines(g, runtime_too: bool) -> list[str]:
    out = []
    for loc, pc, entry in zip(g.locations, g.pcs, g.entries, strict=True):
        if not loc.frames:
            out += [f"?{loc.address:#x}(...)", "\t?:0"]
            continue
        for f in loc.frames:
            if not runtime_too and not shown(f):
                continue
            out.append(f"{f.function}(...)")
            if f.inlined or entry is None or pc <= entry:
                out.append(f"\t{f.file}:{f.line}")
            else:
                out.append(f"\t{f.file}:{f.line} +{pc - entry:#x}")
    return out


class GoroutineTextExporter:
    name = "text"
    suffix = ".goroutines.txt"
    suffixes: tuple[str, ...] = ()  # chosen by `goprof goroutines` only (see its command)

    def write(self, profile: Profile, out: BinaryIO, *, sample_type: str | None = None) -> None:
        blocks = [goroutine_block(g) for g in goroutines_of(profile)]
        out.write("\n".join(blocks).encode("utf-8"))


EXPORTER = GoroutineTextExporter()
