"""Goroutines grouped by stack and labels, as the program's own
`pprof.Lookup("goroutine").WriteTo(w, 1)` (or ?debug=1) prints them:

    goroutine profile: total 14
    3 @ 0x48490e 0x41816e 0x417cb2 0x5200d1 0x48b9e1
    # labels: {"role":"chan", "team":"a"}
    #	0x5200d0	main.chanWaiter+0x30	/src/main.go:34

The `@` line lists runtime/pprof's return addresses: one per call, inlined calls
included (each at its inline mark); the `#` lines name each frame at the call
(address - 1), the runtime's frames at the top hidden, aligned as Go's tabwriter
aligns them."""

from __future__ import annotations

import json
from typing import BinaryIO

from goprof.exporters._goroutines import goroutines_of, hidden_runtime
from goprof.model import Profile

TAB = 8


def grouped_text(profile: Profile) -> str:
    goroutines = goroutines_of(profile)
    groups: dict[tuple, list] = {}
    for g in goroutines:
        groups.setdefault((g.pcs, tuple(sorted(g.labels.items()))), []).append(g)
    # runtime/pprof: by count, largest first; ties in the order of their text.
    records = [(len(gs), _record(gs[0])) for gs in groups.values()]
    records.sort(key=lambda r: (-r[0], r[1]))
    out = [f"goroutine profile: total {len(goroutines)}\n"]
    for count, text in records:
        out.append(f"{count} {text}\n")
    return "".join(out)


def _record(g) -> str:
    lines = ["@" + "".join(f" {pc:#x}" for pcs in g.inline_pcs for pc in pcs)]
    if g.labels:
        pairs = ", ".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in g.labels.items())
        lines.append(f"# labels: {{{pairs}}}")
    rows = []
    show = False
    for loc, entry, pcs in zip(g.locations, g.entries, g.inline_pcs, strict=True):
        if not loc.frames:
            show = True
            rows.append(["#", f"{loc.address:#x}"])
            continue
        for k, f in enumerate(loc.frames):
            if f.function == "runtime.goexit" or not (show or not hidden_runtime(f.function)):
                continue
            show = True
            pc = pcs[k] - 1 if len(pcs) == len(loc.frames) else loc.address
            off = f"+{pc - entry:#x}" if entry is not None else ""
            rows.append(["#", f"{pc:#x}", f"{f.function}{off}", f"{f.file}:{f.line}"])
    if g.note:
        rows.append([f"# {g.note}"])
    lines += _tabwrite(rows)
    return "\n".join(lines) + "\n"


def _tabwrite(rows: list[list[str]]) -> list[str]:
    """text/tabwriter with minwidth 1, tabwidth 8, padding 1, padchar '\\t': every cell
    but a line's last is padded with tabs to its column's width (the widest cell + 1,
    rounded up to a tab stop)."""
    width: dict[int, int] = {}
    for r in rows:
        for i, cell in enumerate(r[:-1]):
            width[i] = max(width.get(i, 0), len(cell))
    out = []
    for r in rows:
        parts = []
        for i, cell in enumerate(r[:-1]):
            w = -(-(width[i] + 1) // TAB) * TAB
            parts.append(cell + "\t" * -(-(w - len(cell)) // TAB))
        parts.append(r[-1])
        out.append("".join(parts))
    return out


class GoroutineGroupedExporter:
    name = "grouped"
    suffix = ".grouped.txt"
    suffixes: tuple[str, ...] = ()  # chosen by `goprof goroutines` only (see its command)

    def write(self, profile: Profile, out: BinaryIO, *, sample_type: str | None = None) -> None:
        out.write(grouped_text(profile).encode("utf-8"))


EXPORTER = GoroutineGroupedExporter()
