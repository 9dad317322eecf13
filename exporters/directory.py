"""A sink that writes each window to a file in a directory, and the retention that keeps
that directory bounded (`prune`, also behind `goprof prune`).

Files appear whole or not at all: a window is written to a hidden temporary file in the
destination folder, flushed to disk, then linked (or renamed) to its name, so a crash or
a full disk never leaves half a profile under a profile's name. Temporary files that a
crash did leave behind are removed by `prune` once they are an hour old.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from goprof.exporters import get_exporter, profile_suffixes
from goprof.exporters.sink import (
    Sink,
    SinkError,
    SinkRejected,
    WindowProfile,
    check_template,
    render_template,
)

log = logging.getLogger(__name__)

# What goprof writes (see profile_suffixes); prune never looks at anything else.
PROFILE_SUFFIXES = profile_suffixes()
TEMP_PREFIX = ".goprof-tmp-"
STALE_TEMP_S = 3600.0
PRUNE_INTERVAL_S = 10.0
# The sink writes the agent's windows as they come: gzipped pprof.
DEFAULT_TEMPLATE = "{exe}-{pid}-{time}.{kind}" + get_exporter("pprof").suffix


def sync_folder(folder: str | os.PathLike) -> None:
    """fsync of a folder, so a name just renamed into it survives a crash (best effort:
    some filesystems refuse to sync a folder)."""
    with contextlib.suppress(OSError):
        dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def is_profile_name(name: str) -> bool:
    return not name.startswith(TEMP_PREFIX) and name.endswith(PROFILE_SUFFIXES)


def file_kind(st: os.stat_result) -> str:
    """"a FIFO", "a symbolic link", ...: what a name holds, for messages."""
    mode = st.st_mode
    for test, what in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"),
                       (stat.S_ISREG, "a file")):
        if test(mode):
            return what
    return "not a file"


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


@dataclass(frozen=True)
class _Doomed:
    path: str
    size: int
    dev: int  # which file was judged: a name that points elsewhere by the time it
    ino: int  # is removed is left alone


@dataclass
class PrunePlan:
    directory: Path
    doomed: list[_Doomed] = field(default_factory=list)
    kept_files: int = 0
    kept_bytes: int = 0


def plan_prune(directory: Path, *, max_age_s: float | None, max_bytes: int | None,
               now: float | None = None) -> PrunePlan:
    """What `prune` would remove: goprof's profile files (regular files with a profile
    suffix) under `directory` older than `max_age_s`, then the oldest until the rest
    total at most `max_bytes`; goprof's temporary files older than an hour. Symbolic
    links, FIFOs, devices and folders named like profiles are never candidates, and
    symlinked folders are not entered (os.walk's default: they may point anywhere)."""
    directory = Path(directory)
    now = time.time() if now is None else now
    plan = PrunePlan(directory)
    profiles: list[tuple[float, str, os.stat_result]] = []
    for root, dirs, files in os.walk(directory, followlinks=False):
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
                    plan.doomed.append(_Doomed(path, st.st_size, st.st_dev, st.st_ino))
            elif max_age_s is not None and now - st.st_mtime > max_age_s:
                plan.doomed.append(_Doomed(path, st.st_size, st.st_dev, st.st_ino))
            else:
                profiles.append((st.st_mtime, path, st))
    total = sum(st.st_size for _, _, st in profiles)
    profiles.sort(key=lambda p: (p[0], p[1]))
    keep_from = 0
    if max_bytes is not None:
        while keep_from < len(profiles) and total > max_bytes:
            _, path, st = profiles[keep_from]
            plan.doomed.append(_Doomed(path, st.st_size, st.st_dev, st.st_ino))
            total -= st.st_size
            keep_from += 1
    kept = profiles[keep_from:]
    plan.kept_files, plan.kept_bytes = len(kept), sum(st.st_size for _, _, st in kept)
    return plan


def prune(directory: Path, *, max_age_s: float | None, max_bytes: int | None,
          now: float | None = None, dry_run: bool = False) -> PruneResult:
    """Removes what plan_prune(...) picks (see there); other files are never touched;
    folders emptied by the removals go too (never `directory` itself). With `dry_run`
    nothing is removed and the result says what would be."""
    return remove_planned(plan_prune(directory, max_age_s=max_age_s, max_bytes=max_bytes,
                                     now=now), dry_run=dry_run)


def remove_planned(plan: PrunePlan, *, dry_run: bool = False) -> PruneResult:
    result = PruneResult(kept_files=plan.kept_files, kept_bytes=plan.kept_bytes)
    touched: set[str] = set()
    for doomed in plan.doomed:
        if not dry_run:
            try:
                gone = _unlink_judged(plan.directory, doomed)
            except OSError as e:
                result.errors.append(f"{doomed.path}: {e.strerror or e}")
                result.kept_files += 1
                result.kept_bytes += doomed.size
                continue
            if not gone:
                continue  # removed or renamed by someone else meanwhile
            touched.add(os.path.dirname(doomed.path))
        result.removed.append(Path(doomed.path))
        result.freed_bytes += doomed.size
    _remove_empty_folders(plan.directory, touched)
    return result


def _unlink_judged(top: Path, doomed: _Doomed) -> bool:
    """Unlinks the very file plan_prune judged, walking down from `top` one folder at a
    time without following links (a folder swapped for a symlink since the walk fails
    here instead of leading the unlink elsewhere, as a plain unlink(path) would); False
    when the name is gone. OSError when the name now holds something else."""
    parts = os.path.relpath(doomed.path, top).split(os.sep)
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            try:
                sub = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                              dir_fd=fd)
            except FileNotFoundError:
                return False
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise OSError(errno.ELOOP, f"folder {part} became a symbolic link or a "
                                  "file since the scan: not followed") from None
                raise
            os.close(fd)
            fd = sub
        try:
            st = os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (doomed.dev, doomed.ino):
            raise OSError(errno.EEXIST, "replaced by another file or link since the scan: "
                          "left alone")
        os.unlink(parts[-1], dir_fd=fd)
        return True
    finally:
        os.close(fd)


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


class DirectorySink(Sink):
    """One file per window: send_many is the default loop (not all or nothing)."""

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
        # Names in the way that are not regular files (symlinks, FIFOs, devices, folders):
        # never replaced or written through; each one met is counted and logged.
        self.names_in_the_way = 0
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
        self._make_folders(folder)
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
        sync_folder(folder)
        return final

    def _make_folders(self, folder: Path) -> None:
        """The template's subfolders, created one by one; one that exists as a symbolic
        link (or anything but a folder) is refused: written through, the profiles would
        land outside the directory, where retention (which does not follow links) would
        never remove them."""
        self.path.mkdir(parents=True, exist_ok=True)  # removed since the start: made again
        here = self.path
        for part in folder.relative_to(self.path).parts:
            here = here / part
            with contextlib.suppress(FileExistsError):
                os.mkdir(here)
            st = os.lstat(here)
            if not stat.S_ISDIR(st.st_mode):
                self._in_the_way(here, st)
                raise SinkRejected(f"profile directory {self.path}: {here.relative_to(self.path)}"
                                   f" is {file_kind(st)}, not a folder: not written through")

    def _in_the_way(self, path: Path, st: os.stat_result) -> None:
        self.names_in_the_way += 1
        log.warning("profile directory %s: %s is %s: left alone", self.path,
                    path.relative_to(self.path), file_kind(st))

    def _place(self, tmp: str, target: Path) -> Path:
        """Gives the written file its name: `target`, or target-1, -2... when taken.
        A hard link never replaces an existing name (file, symlink, FIFO, device), so two
        writers cannot overwrite each other and nothing else is clobbered; where links
        are not supported, the name is claimed with O_EXCL first, then renamed over."""
        stem, suffix = _split_suffix(target.name)
        for n in range(100_000):
            candidate = target if n == 0 else target.with_name(f"{stem}-{n}{suffix}")
            try:
                os.link(tmp, candidate)
            except FileExistsError:
                self._taken(candidate)
                continue
            except OSError:
                try:  # O_EXCL|O_NOFOLLOW: fails on any existing name, a dangling link too
                    os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                                     | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644))
                except FileExistsError:
                    self._taken(candidate)
                    continue
                os.replace(tmp, candidate)  # over our own claim only
                return candidate
            os.unlink(tmp)
            return candidate
        raise OSError(f"{target}: 100000 files of that name already")

    def _taken(self, candidate: Path) -> None:
        """A taken name is expected (collisions get a counter); one taken by something
        that is not a regular file is worth a line."""
        with contextlib.suppress(OSError):
            st = os.lstat(candidate)
            if not stat.S_ISREG(st.st_mode):
                self._in_the_way(candidate, st)

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
