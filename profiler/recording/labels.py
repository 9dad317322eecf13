"""pprof labels and goroutine ids on samples: what the BPF programs are given per target
(bpf/golabels.h's go_info) and what they leave per window (label sets).

The programs read the labels of the goroutine a sample ran on (g.m.curg.labels) and key
the sample by a fingerprint of the label set; the set's strings are kept once per window.
Here: the offsets a target's Go version needs, and the sets decoded.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass

from goprof.bpf import btf, objects
from goprof.golang.buildinfo import go_minor
from goprof.golang.layouts import runtime_layout
from goprof.golang.tls import g_tls_offset
from goprof.symbolizer import BinaryCache, BinarySymbols, SymbolizerError

# Keep in sync with bpf/golabels.h.
MAX_LABELS = 10
LABEL_KEY_MAX = 64
LABEL_VALUE_MAX = 128
LABELS_NONE, LABELS_MAP, LABELS_SLICE = 0, 1, 2
# tls_g, g_m, g_goid, g_labels, m_curg, labels_format, padding
GO_INFO = struct.Struct("<iHHHHB3s")
# count, capped, key lengths, value lengths, keys, values, padding
LABEL_SET = struct.Struct(f"<II{MAX_LABELS}s{MAX_LABELS}s{MAX_LABELS * LABEL_KEY_MAX}s"
                          f"{MAX_LABELS * LABEL_VALUE_MAX}s4s")
_NO_GO_INFO = (0, 0, 0, 0, 0, LABELS_NONE, b"")  # GO_INFO's fields: no labels

Labels = tuple[tuple[str, str], ...]  # (key, value), sorted by key


@dataclass(frozen=True)
class GoInfo:
    """Where a Go binary's runtime keeps what labels a sample."""

    tls_g: int  # g's offset from the FS base (0: unknown; the CPU program then reads none)
    g_m: int
    g_goid: int
    g_labels: int
    m_curg: int
    labels_format: int  # LABELS_MAP up to Go 1.23, LABELS_SLICE from 1.24

    def fields(self) -> tuple:
        """GO_INFO's fields, for a struct that embeds it (cpu.c's and mem.c's targets)."""
        return (self.tls_g, self.g_m, self.g_goid, self.g_labels, self.m_curg,
                self.labels_format, b"")


def go_info(binary: BinarySymbols, path: str, tls_g: int | None = None) -> GoInfo | None:
    """The label-reading offsets of a Go binary; None when it is not Go or its runtime's
    layout is unknown (its samples then carry no labels: never a wrong one)."""
    return explain_go_info(binary, path, tls_g)[0]


def go_info_fields(go: GoInfo | None) -> tuple:
    """GO_INFO's fields for a targets entry (cpu.c's and mem.c's embed it): the offsets,
    or all zero (LABELS_NONE) for a target whose labels are not read."""
    return go.fields() if go else _NO_GO_INFO


def explain_go_info(binary: BinarySymbols, path: str, tls_g: int | None = None
                    ) -> tuple[GoInfo | None, str | None]:
    """go_info, and why there is none for a Go program (None for a program that is not
    Go: it has no labels to miss)."""
    if not binary.is_go:
        return None, None
    minor = go_minor(binary.go_version)
    if minor is None:
        return None, "its Go version is unknown (damaged build info)"
    try:
        layout = runtime_layout(binary, path=path)
    except SymbolizerError as e:
        return None, str(e)
    return GoInfo(tls_g or 0, layout.g_m, layout.g_goid, layout.g_labels, layout.m_curg,
                  LABELS_MAP if minor <= 23 else LABELS_SLICE), None


def target_go_info(pid: int, cache: BinaryCache, *, from_tls: bool) -> GoInfo | None:
    """go_info of the program a process runs now (see target_labels)."""
    return target_labels(pid, cache, from_tls=from_tls)[0]


def target_labels(pid: int, cache: BinaryCache, *, from_tls: bool
                  ) -> tuple[GoInfo | None, str | None]:
    """go_info of the program a process runs now, and why there is none for a Go
    program. `from_tls`: the program finds g through thread-local storage (the CPU
    program; uprobes have it in R14), so a binary whose TLS offset goprof does not
    recognise gets no labels."""
    path = f"/proc/{pid}/exe"
    try:
        binary = cache.get(path)
        tls_g = g_tls_offset(binary) if from_tls and binary.is_go else None
    except (OSError, SymbolizerError) as e:
        return None, f"its executable cannot be read ({e})"
    if from_tls and binary.is_go and tls_g is None:
        return None, "goprof does not recognise how its runtime finds g in thread-local storage"
    return explain_go_info(binary, path, tls_g)


def fsbase_offset() -> tuple[int, str | None]:
    """offsetof(task_struct, thread.fsbase) in the running kernel, from its BTF; (0,
    why) when it cannot be known (CPU samples then carry no labels, said once).

    Parsing the kernel's BTF costs ~0.1 s and ~15 MB of memory that would stay in the
    profiler, for one number per kernel: it is kept in goprof's cache folder, keyed by
    the kernel and its BTF file."""
    try:
        st = os.stat(btf.VMLINUX)
        uname = os.uname()
        key = hashlib.sha256(f"{uname.release}\0{uname.version}\0{st.st_size}\0"
                             f"{st.st_mtime_ns}".encode()).hexdigest()[:16]
    except OSError:
        key = None
    cached = objects.cache_dir() / f"fsbase-{key}" if key else None
    if cached is not None:
        try:
            return int(cached.read_text()), None
        except (OSError, ValueError):
            pass
    try:
        offset = btf.task_fsbase_offset()
    except btf.BTFError as e:
        return 0, f"CPU samples carry no pprof labels: {e}"
    if cached is not None:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(str(offset))
            os.replace(tmp, cached)
        except OSError:
            pass  # an unwritable cache only costs the parse next time
    return offset, None


@dataclass(frozen=True)
class LabelSet:
    labels: Labels
    capped: bool  # the goroutine had more labels, or longer keys/values, than were kept


def decode_label_set(raw: bytes) -> LabelSet:
    count, capped, klens, vlens, keys, values, _ = LABEL_SET.unpack_from(raw)
    out = []
    for i in range(min(count, MAX_LABELS)):
        k = keys[i * LABEL_KEY_MAX:i * LABEL_KEY_MAX + klens[i]]
        v = values[i * LABEL_VALUE_MAX:i * LABEL_VALUE_MAX + vlens[i]]
        out.append((k.decode("utf-8", "replace"), v.decode("utf-8", "replace")))
    # Go <= 1.23 keeps labels in a map (any order); runtime/pprof sorts them.
    return LabelSet(tuple(sorted(out)), bool(capped))


@dataclass
class LabelCounts:
    """What label reading reports at the end of a run (nothing silent)."""

    # Distinct label sets (by content) per window, summed over windows. pprof.Do makes a
    # new set per call, so one content may have had many copies in the kernel's map.
    sets: int = 0
    capped: int = 0  # samples or events whose labels were cut to the caps
    unreadable: int = 0  # samples or events whose goroutine's labels could not be read
    full: int = 0  # samples or events whose new label set found the label map full

    def as_json(self) -> dict[str, int]:
        return {"sets": self.sets, "capped": self.capped,
                "unreadable": self.unreadable + self.full}

    def text(self) -> str:
        parts = [f"{self.sets} sets"]
        if self.capped:
            parts.append(f"{self.capped} samples capped at {MAX_LABELS} labels, keys "
                         f"{LABEL_KEY_MAX} B, values {LABEL_VALUE_MAX} B")
        if self.unreadable or self.full:
            parts.append(f"{self.unreadable + self.full} samples unread"
                         + (f" ({self.full} with the label map full)" if self.full else ""))
        return ", ".join(parts)


def distinct_sets(label_sets: dict[int, LabelSet]) -> int:
    """How many different label sets (by content) a window's fingerprints stand for."""
    return len({ls.labels for ls in label_sets.values()})


def sample_labels(base: dict[str, str], labels: Labels) -> dict[str, str]:
    """A sample's string labels: goprof's own (pid, tid, comm) and the goroutine's.
    A goroutine label named like one of goprof's keeps goprof's value (pprof keys are
    unique per sample here)."""
    out = dict(labels)
    out.update(base)
    return out


def goroutine_number(goid: int) -> dict[str, tuple[int, str]]:
    """The numeric label `goroutine` (pprof -tagfocus goroutine=18); none for 0 (ids
    start at 1; 0 means not asked, or no user goroutine)."""
    return {"goroutine": (goid, "")} if goid else {}
