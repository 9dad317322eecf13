"""pprof labels of a goroutine, read from outside through /proc/PID/mem.

`g.labels` (unsafe.Pointer) is what pprof.Do / SetGoroutineLabels set, inherited by
the goroutines started under it:
- Go >= 1.24: a *labelMap, i.e. LabelSet{list []label}: a slice header (ptr, len, cap)
  of label{key, value string} (32 bytes each, sorted by key);
- Go <= 1.23: a *labelMap where labelMap is a map[string]string, i.e. a pointer to the
  map's *hmap (hmap: count at 0, B at 9, buckets at 16, oldbuckets at 24; a bucket is
  tophash[8], keys[8]string, values[8]string, overflow *bucket). Checked against a
  Go 1.19.8 build (Debian's golang-1.19).

Caps (each counted in LabelStats, never silent): MAX_LABELS pairs a goroutine, MAX_STRING
bytes a key or value (cut, with "..." appended), MAX_BUCKETS buckets walked.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

MAX_LABELS = 64
MAX_STRING = 4096
MAX_BUCKETS = 1024
SLICE = struct.Struct("<QQQ")
STRING = struct.Struct("<QQ")
LABEL = struct.Struct("<QQQQ")  # key ptr, key len, value ptr, value len
HMAP_BUCKET_SLOTS = 8
HMAP_BUCKET_SIZE = 8 + 8 * 16 * 2 + 8  # tophash, keys, values, overflow
MIN_TOP_HASH = 5  # tophash values below it mark empty or evacuated slots

Reader = Callable[[int, int], bytes | None]  # (address, size) -> bytes, None if unreadable


@dataclass
class LabelStats:
    goroutines_with_labels: int = 0
    cut_sets: int = 0  # more than MAX_LABELS pairs: the first MAX_LABELS kept
    cut_strings: int = 0  # a key or value longer than MAX_STRING: cut
    unreadable: int = 0  # the pointer led to memory that could not be read or made no sense


def read_labels(read: Reader, ptr: int, go_minor: int, stats: LabelStats) -> dict[str, str]:
    """The labels g.labels points to ({} for a nil pointer or unreadable memory, counted)."""
    if not ptr:
        return {}
    try:
        pairs = _slice_labels(read, ptr, stats) if go_minor >= 24 else \
            _map_labels(read, ptr, stats)
    except _Bad:
        stats.unreadable += 1
        return {}
    if pairs:
        stats.goroutines_with_labels += 1
    return dict(sorted(pairs))


class _Bad(Exception):
    pass


def _read(read: Reader, addr: int, size: int) -> bytes:
    if size == 0:
        return b""
    data = read(addr, size)
    if data is None or len(data) != size:
        raise _Bad
    return data


def _string(read: Reader, ptr: int, n: int, stats: LabelStats) -> str:
    if n < 0 or n > 1 << 40:
        raise _Bad
    cut = n > MAX_STRING
    if cut:
        stats.cut_strings += 1
    text = _read(read, ptr, min(n, MAX_STRING)).decode("utf-8", "replace")
    return text + "..." if cut else text


def _slice_labels(read: Reader, ptr: int, stats: LabelStats) -> list[tuple[str, str]]:
    data, n, cap = SLICE.unpack(_read(read, ptr, SLICE.size))
    if n > cap or n > 1 << 20:
        raise _Bad
    if n > MAX_LABELS:
        stats.cut_sets += 1
        n = MAX_LABELS
    raw = _read(read, data, n * LABEL.size)
    out = []
    for i in range(n):
        kp, kn, vp, vn = LABEL.unpack_from(raw, i * LABEL.size)
        out.append((_string(read, kp, kn, stats), _string(read, vp, vn, stats)))
    return out


def _map_labels(read: Reader, ptr: int, stats: LabelStats) -> list[tuple[str, str]]:
    hmap = int.from_bytes(_read(read, ptr, 8), "little")  # *labelMap -> the map's *hmap
    if not hmap:
        return []
    head = _read(read, hmap, 32)
    count = int.from_bytes(head[0:8], "little")
    b = head[9]
    buckets = int.from_bytes(head[16:24], "little")
    old = int.from_bytes(head[24:32], "little")
    if b > 10 or count > 1 << 20:
        raise _Bad
    found: dict[str, str] = {}
    walked = 0
    # While the map grows, entries not yet moved are still in oldbuckets (half as many).
    for base, nb in ((buckets, 1 << b), (old, 1 << max(b - 1, 0))):
        if not base:
            continue
        for i in range(nb):
            at = base + i * HMAP_BUCKET_SIZE
            while at and walked < MAX_BUCKETS:
                walked += 1
                raw = _read(read, at, HMAP_BUCKET_SIZE)
                for slot in range(HMAP_BUCKET_SLOTS):
                    if raw[slot] < MIN_TOP_HASH:
                        continue
                    kp, kn = STRING.unpack_from(raw, 8 + slot * 16)
                    vp, vn = STRING.unpack_from(raw, 8 + 128 + slot * 16)
                    key = _string(read, kp, kn, stats)
                    found.setdefault(key, _string(read, vp, vn, stats))
                at = int.from_bytes(raw[-8:], "little")
    pairs = sorted(found.items())
    if len(pairs) > MAX_LABELS:
        stats.cut_sets += 1
        pairs = pairs[:MAX_LABELS]
    return pairs
