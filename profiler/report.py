"""What a run prints: the progress line while recording, the summary at the end."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from goprof.model import Profile
from rich.console import Console
from rich.table import Table


@dataclass(frozen=True)
class FunctionShare:
    name: str
    flat: int
    cum: int


def top_functions(profile: Profile, value_index: int = 0, limit: int = 10
                  ) -> tuple[list[FunctionShare], int]:
    """Functions by flat weight (the innermost frame), with cumulative weight."""
    flat: Counter[str] = Counter()
    cum: Counter[str] = Counter()
    total = 0
    for sample in profile.samples:
        weight = sample.values[value_index]
        total += weight
        names = [f.function for loc in sample.locations for f in loc.frames]
        if sample.locations:
            leaf = sample.locations[0]
            flat[leaf.frames[0].function if leaf.frames else f"0x{leaf.address:x}"] += weight
        for name in set(names):
            cum[name] += weight
    ranked = sorted(flat.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
    return [FunctionShare(name, w, cum.get(name, w)) for name, w in ranked], total


def print_top(console: Console, profile: Profile, value_index: int = 0, limit: int = 10,
              empty: str = "no samples: the targets used no CPU while recording") -> None:
    shares, total = top_functions(profile, value_index, limit)
    if not total:
        console.print(empty)
        return
    title = f"top functions by {profile.sample_types[value_index].type}"
    table = Table(title=title, title_justify="left", box=None, pad_edge=False)
    table.add_column("flat %", justify="right")
    table.add_column("cum %", justify="right")
    table.add_column("function", overflow="fold")
    for s in shares:
        table.add_row(f"{100 * s.flat / total:5.1f}", f"{100 * s.cum / total:5.1f}", s.name)
    console.print(table)


def print_counters(console: Console, rows: list[tuple[str, str]]) -> None:
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
