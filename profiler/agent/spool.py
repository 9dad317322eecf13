"""Delivery's spool: the windows of one sink waiting on disk, one file each,
`{spool_dir}/{sink.name}/{seq:020d}.window`, indexed in memory in seq order.

At most `limit` bytes: a window that does not fit is dropped (the new one, never the
old: the spool keeps its order and a gap-free prefix). A write that fails leaves the
spool alone for retry_s (memory holds windows meanwhile). Files are written
atomically (temp file, fsync, rename); an earlier run's files are picked up by the
next Delivery on the same folder, and temp files a crash left are removed.
"""

from __future__ import annotations

import bisect
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from goprof.agent.accounting import Accounting
from goprof.agent.memqueue import Queued
from goprof.exporters.sink import WindowProfile

_FILE = re.compile(r"^(\d{20})\.window$")
_TMP_SUFFIX = ".window.tmp"


@dataclass(frozen=True)
class Spooled:
    seq: int
    path: Path
    size: int
    since: float  # time.time() when written (file mtime for an earlier run's files)


class Spool:
    """One sink's spool; `dir` None for none (memory only: nothing is ever spooled).

    Not thread-safe: Delivery calls it holding its lock, except write_file,
    fsync_dir and read, which touch only the file system (a file's name is its
    window's own, so no one else writes it)."""

    def __init__(self, directory: Path | None, limit: int, retry_s: float, name: str,
                 log: logging.Logger, accounting: Accounting) -> None:
        self.dir = directory
        self.limit = limit
        self._retry_s = retry_s
        self._name = name
        self._log = log
        self._accounting = accounting
        self._entries: list[Spooled] = []  # sorted by seq
        self.total = 0  # bytes, of the files and of the writes reserved
        self._retry_at = 0.0  # after a failed write: memory only until then

    def __len__(self) -> int:
        return len(self._entries)

    def head(self) -> Spooled | None:
        """The oldest spooled window."""
        return self._entries[0] if self._entries else None

    def usable(self) -> bool:
        return self.dir is not None and time.monotonic() >= self._retry_at

    def load(self) -> int | None:
        """Index files an earlier run left (pending work, delivered first); the seq
        after the newest, None when there is none. Removes temp files of writes a crash
        cut short."""
        assert self.dir is not None
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            names = os.listdir(self.dir)
        except OSError as e:
            self._log.error("sink %s: spool directory %s unusable (%s): while the sink "
                            "is down, windows wait in memory and are dropped when it is "
                            "full", self._name, self.dir, e)
            return None
        for name in names:
            path = self.dir / name
            m = _FILE.match(name)
            try:
                if m:
                    st = path.stat()
                    self._entries.append(Spooled(int(m.group(1)), path, st.st_size,
                                                 st.st_mtime))
                elif name.startswith(".") and name.endswith(_TMP_SUFFIX):
                    path.unlink()
            except OSError as e:
                self._log.warning("sink %s: skipping spool file %s: %s", self._name, path, e)
        self._entries.sort(key=lambda e: e.seq)
        self.total = sum(e.size for e in self._entries)
        if not self._entries:
            return None
        self._log.info("sink %s: %d windows (%d bytes) pending in %s from an earlier "
                       "run", self._name, len(self._entries), self.total, self.dir)
        return self._entries[-1].seq + 1

    def write_all(self, items: list[Queued]) -> None:
        """Write windows holding the lock (submit's overflow, close): each is spooled,
        or dropped and counted."""
        for item in items:
            data = self.reserve(item)
            if data is not None:
                self.index(item, data, self.write_file(item.seq, data))
        if items:
            self.fsync_dir()

    def reserve(self, item: Queued) -> bytes | None:
        """The window's spool record, its bytes counted against the bound; None when
        it cannot be encoded or does not fit (dropped, counted)."""
        try:
            data = item.window.to_bytes()
        except Exception as e:  # labels that are not JSON: a bug upstream, not ours
            self._accounting.drop("encode", f"cannot encode window seq={item.seq}: {e}")
            return None
        if self.total + len(data) > self.limit:
            self._accounting.drop("full", f"spool {self.dir} full ({self.total} of "
                                          f"{self.limit} bytes)")
            return None
        self.total += len(data)
        return data

    def release(self, data: bytes) -> None:
        """A reserved record whose write failed: its bytes no longer counted, and the
        spool left alone for retry_s (memory holds windows meanwhile)."""
        self.total -= len(data)
        self._retry_at = time.monotonic() + self._retry_s

    def index(self, item: Queued, data: bytes, written: Path | OSError) -> None:
        """Record a reserved window as spooled, or as dropped when its write failed."""
        if isinstance(written, OSError):
            self.release(data)
            self._accounting.drop("write", f"cannot write to the spool {self.dir}: "
                                           f"{written.strerror or written}")
            return
        bisect.insort(self._entries, Spooled(item.seq, written, len(data), item.since),
                      key=lambda e: e.seq)

    def remove(self, seq: int) -> bool:
        """Forget the window seq, unlinking its file; False when it is not spooled."""
        i = bisect.bisect_left(self._entries, seq, key=lambda e: e.seq)
        if i >= len(self._entries) or self._entries[i].seq != seq:
            return False
        entry = self._entries.pop(i)
        self.total -= entry.size
        try:
            entry.path.unlink(missing_ok=True)
        except OSError as e:
            self._log.warning("sink %s: cannot delete spool file %s: %s",
                              self._name, entry.path, e)
        return True

    @staticmethod
    def read(entry: Spooled) -> WindowProfile:
        """The window in a spool file; OSError or ValueError (torn, corrupt) when it
        cannot be read back."""
        return WindowProfile.from_bytes(entry.path.read_bytes())

    def write_file(self, seq: int, data: bytes) -> Path | OSError:
        """Write one spool file atomically (temp file, fsync, rename); its path, or
        the error. Needs no lock: the name is the window's own."""
        assert self.dir is not None
        path = self.dir / f"{seq:020d}.window"
        tmp = self.dir / f".{seq:020d}{_TMP_SUFFIX}"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            return e
        return path

    def fsync_dir(self) -> None:
        """Make the renames durable; best effort (not every file system allows it)."""
        try:
            fd = os.open(self.dir, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)
