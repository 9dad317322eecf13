"""Loaded binaries shared between processes: one load per file, whatever path reaches it."""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections.abc import Iterable

from .binary import BinarySymbols, binary_build_id, load_image
from .elffile import ElfImage
from .errors import SymbolizerError
from .notes import build_ids

StatKey = tuple[int, int, int, int]


class BinaryCache:
    """Keyed by build id (else by (st_dev, st_ino, size, mtime)). Two paths to one file,
    or two copies of one build, load once: hits and misses count get() calls."""

    def __init__(self) -> None:
        self._by_id: dict[str, BinarySymbols] = {}
        self._by_stat: dict[StatKey, BinarySymbols] = {}
        self._by_content: dict[str, BinarySymbols] = {}  # get_image(), by digest
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len({id(b) for b in (*self._by_id.values(), *self._by_stat.values(),
                                    *self._by_content.values())})

    def get(self, path: str) -> BinarySymbols:
        try:
            st = os.stat(path)
        except OSError as e:
            raise SymbolizerError(f"{path}: {e.strerror}") from e
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        with self._lock:
            got = self._by_stat.get(key)
            if got is not None:
                self.hits += 1
                return got
        with ElfImage(path) as img:
            gnu, go = build_ids(img)
            bid = binary_build_id(gnu, go)
            with self._lock:
                got = self._by_id.get(bid) if bid else None
                if got is not None:
                    self.hits += 1
                    self._by_stat[key] = got
                    return got
            got = load_image(img, (gnu, go))
        with self._lock:
            self.misses += 1
            if bid:
                got = self._by_id.setdefault(bid, got)
            self._by_stat[key] = got
        return got

    def get_image(self, image: bytes, prefix: str) -> BinarySymbols:
        """A binary read from memory (the vDSO, the same in every process of this kernel):
        parsed once per distinct content, not once per process."""
        digest = hashlib.blake2b(image, digest_size=16).hexdigest()
        with self._lock:
            got = self._by_content.get(digest)
        if got is not None:
            self.hits += 1
            return got
        with tempfile.NamedTemporaryFile(prefix=prefix, suffix=".so") as f:
            f.write(image)
            f.flush()
            with ElfImage(f.name) as img:
                gnu, go = build_ids(img)
                got = load_image(img, (gnu, go))
        with self._lock:
            self.misses += 1
            got = self._by_content.setdefault(digest, got)
        return got

    def retain(self, keep: Iterable[BinarySymbols]) -> int:
        """Forgets every binary not in `keep` (a long-running agent: the processes that
        used them exited); returns how many were forgotten."""
        kept = {id(b) for b in keep}
        with self._lock:
            before = len(self)
            self._by_id = {k: b for k, b in self._by_id.items() if id(b) in kept}
            self._by_stat = {k: b for k, b in self._by_stat.items() if id(b) in kept}
            self._by_content = {k: b for k, b in self._by_content.items() if id(b) in kept}
            after = len(self)
        return before - after
