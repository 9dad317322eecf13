"""A sink that writes each window to a file in a directory, and the retention that keeps
that directory bounded (`prune`, also behind `goprof prune`).

Files appear whole or not at all: a window is written to a hidden temporary file in the
destination folder, flushed to disk, then linked (or renamed) to its name, so a crash or
a full disk never leaves half a profile under a profile's name. Temporary files that a
crash did leave behind are removed by `prune` once they are an hour old.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from goprof.exporters.sink import SinkError, WindowProfile, check_template, render_template

log = logging.getLogger(__name__)

# What goprof writes; prune never looks at anything else.
PROFILE_SUFFIXES = (".speedscope.json", ".pb.gz", ".folded", ".pb")
TEMP_PREFIX = ".goprof-tmp-"
STALE_TEMP_S = 3600.0
PRUNE_INTERVAL_S = 10.0
DEFAULT_TEMPLATE = "{exe}-{pid}-{time}.{kind}.pb.gz"


def is_profile_name(name: str) -> bool:
    return not name.startswith(TEMP_PREFIX) and name.endswith(PROFILE_SUFFIXES)


def _split_suffix(name: str) -> tuple[str, str]:
    """("x.cpu", ".pb.gz") for "x.cpu.pb.gz": where a collision counter goes."""
    for suffix in PROFILE_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[:-len(suffix)], suffix
    stem, dot, ext = name.rpartition(".")
    return (stem, dot + ext) if stem else (name, "")


@dataclass
class PruneResult:
    removed: list[Path] = field(default_factory=list)
    freed_bytes: int = 0
    kept_files: int = 0
    kept_bytes: int = 0
    errors: list[str] = field(default_factory=list)  # "path: reason" for what could not go


def prune(directory: Path, *, max_age_s: float | None, max_bytes: int | None,
          now: float | None = None, dry_run: bool = False) -> PruneResult:
    """Removes goprof's profile files under `directory` (recursively) that are older than
    `max_age_s`, then the oldest (by mtime) until the rest total at most `max_bytes`;
    also goprof's own temporary files older than an hour. Other files are never touched;
    folders emptied by the removals go too (never `directory` itself). With `dry_run`
    nothing is removed and the result says what would be."""
    directory = Path(directory)
    now = time.time() if now is None else now
    result = PruneResult()
    profiles: list[tuple[float, str, int]] = []  # (mtime, path, size)
    doomed: list[tuple[str, int]] = []
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        for name in sorted(files):
            temp, profile = name.startswith(TEMP_PREFIX), is_profile_name(name)
            if not (temp or profile):
                continue
            path = os.path.join(root, name)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(st.st_mode):
                continue  # never follow or remove symlinks, sockets, ...
            if temp:
                if now - st.st_mtime > STALE_TEMP_S:
                    doomed.append((path, st.st_size))
            elif max_age_s is not None and now - st.st_mtime > max_age_s:
                doomed.append((path, st.st_size))
            else:
                profiles.append((st.st_mtime, path, st.st_size))
    total = sum(size for _, _, size in profiles)
    profiles.sort()
    keep_from = 0
    if max_bytes is not None:
        while keep_from < len(profiles) and total > max_bytes:
            _, path, size = profiles[keep_from]
            doomed.append((path, size))
            total -= size
            keep_from += 1
    kept = profiles[keep_from:]
    result.kept_files, result.kept_bytes = len(kept), sum(size for _, _, size in kept)
    touched: set[str] = set()
    for path, size in doomed:
        if not dry_run:
            try:
                os.unlink(path)
            except FileNotFoundError:
                continue  # someone else removed it first
            except OSError as e:
                result.errors.append(f"{path}: {e.strerror or e}")
                result.kept_files += 1
                result.kept_bytes += size
                continue
            touched.add(os.path.dirname(path))
        result.removed.append(Path(path))
        result.freed_bytes += size
    _remove_empty_folders(directory, touched)
    return result


def _remove_empty_folders(root: Path, folders: set[str]) -> None:
    top = os.path.abspath(root)
    for folder in sorted(folders, key=len, reverse=True):
        here = os.path.abspath(folder)
        while here != top and here.startswith(top + os.sep):
            try:
                os.rmdir(here)
            except OSError:
                break  # not empty (or gone): its parents are not empty either
            here = os.path.dirname(here)


class DirectorySink:
    name = "dir"

    def __init__(self, path: Path, template: str = DEFAULT_TEMPLATE, *, host: str,
                 retain_age_s: float | None = None, retain_bytes: int | None = None) -> None:
        check_template(template)
        parts = template.split("/")
        if template.startswith("/") or ".." in parts or not parts[-1]:
            raise ValueError(f"file name template {template!r}: must be a relative file "
                             "name (subfolders allowed, no '..', not ending in '/')")
        if retain_age_s is not None and retain_age_s <= 0:
            raise ValueError(f"retention age {retain_age_s}: must be more than zero")
        if retain_bytes is not None and retain_bytes <= 0:
            raise ValueError(f"retention size {retain_bytes}: must be more than zero")
        self.path = Path(path)
        self.template = template
        self.host = host
        self.retain_age_s = retain_age_s
        self.retain_bytes = retain_bytes
        self._last_prune: float | None = None  # time.monotonic() of the last prune
        self._bytes_estimate = 0  # kept bytes after the last prune, plus what came since
        self.last_prune: PruneResult | None = None
        if self.path.exists() and not self.path.is_dir():
            raise OSError(f"profile directory {self.path}: exists and is not a directory")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OSError(f"profile directory {self.path}: cannot create it: "
                          f"{e.strerror or e}") from None
        try:
            fd, probe = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=self.path)
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            raise OSError(f"profile directory {self.path}: cannot write there: "
                          f"{e.strerror or e}") from None

    def target_for(self, window: WindowProfile) -> Path:
        """The path the template names for `window` (before any collision counter)."""
        rel = render_template(self.template, exe=window.labels.get("executable", "")
                              or window.labels.get("comm", "unknown"),
                              pid=int(window.labels.get("pid", 0) or 0), host=self.host,
                              kind=window.kind, when_ns=window.start_ns)
        return self.path / rel

    def send(self, window: WindowProfile) -> None:
        target = self.target_for(window)
        try:
            written = self._write(target, window.pprof)
        except OSError as e:
            raise SinkError(f"profile directory {self.path}: cannot write {target.name}: "
                            f"{e.strerror or e}") from None
        log.debug("wrote %s", written)
        self._bytes_estimate += len(window.pprof)
        self._retain()

    def _write(self, target: Path, data: bytes) -> Path:
        folder = target.parent
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            final = self._place(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        with contextlib.suppress(OSError):
            dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        return final

    @staticmethod
    def _place(tmp: str, target: Path) -> Path:
        """Gives the written file its name: `target`, or target-1, -2... when taken.
        A hard link never replaces an existing file, so two writers cannot overwrite
        each other; where links are not supported, rename after a check."""
        stem, suffix = _split_suffix(target.name)
        for n in range(100_000):
            candidate = target if n == 0 else target.with_name(f"{stem}-{n}{suffix}")
            try:
                os.link(tmp, candidate)
            except FileExistsError:
                continue
            except OSError:
                if candidate.exists():
                    continue
                os.replace(tmp, candidate)
                return candidate
            os.unlink(tmp)
            return candidate
        raise OSError(f"{target}: 100000 files of that name already")

    def _retain(self) -> None:
        if self.retain_age_s is None and self.retain_bytes is None:
            return
        now = time.monotonic()
        over = self.retain_bytes is not None and self._bytes_estimate > self.retain_bytes
        if (not over and self._last_prune is not None
                and now - self._last_prune < PRUNE_INTERVAL_S):
            return
        self._last_prune = now
        try:
            result = prune(self.path, max_age_s=self.retain_age_s, max_bytes=self.retain_bytes)
        except OSError as e:  # the window is written; retention tries again next time
            log.warning("profile directory %s: retention failed: %s", self.path, e)
            return
        self.last_prune = result
        self._bytes_estimate = result.kept_bytes
        for error in result.errors:
            log.warning("profile directory %s: cannot remove %s", self.path, error)

    def close(self) -> None:
        pass
