"""The directory sink (file names, atomic writes, a folder it cannot write to), `prune`
(age, size, what it must never touch) and `goprof prune` on top of it."""

from __future__ import annotations

import argparse
import errno
import io
import os
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from goprof.commands import prune as prune_command
from goprof.errors import EnvironmentProblem, UsageError
from goprof.exporters import directory as directory_module
from goprof.exporters import get_exporter
from goprof.exporters.directory import DirectorySink, prune
from goprof.exporters.sink import Sink, SinkError, SinkRejected, WindowProfile
from goprof.model import Frame, Location, Mapping, Profile, Sample, ValueType
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console

from tests.helpers import read_pprof

EXE = Mapping(0x400000, 0x500000, 0, "/usr/local/bin/cpusplit", "b1d0")
L_ALPHA = Location(0x401000, EXE, (Frame("main.alpha", "/src/main.go", 11, 9),))
L_MAIN = Location(0x402000, EXE, (Frame("main.main", "/src/main.go", 31, 29),))
START_NS = 1_764_584_100_250_000_000  # 2025-12-01T10:15:00.250Z
STAMP = "20251201T101500.250Z"
DAY = 86400.0


def pprof_bytes(samples: int = 7) -> bytes:
    profile = Profile(
        sample_types=[ValueType("samples", "count"), ValueType("cpu", "nanoseconds")],
        period_type=ValueType("cpu", "nanoseconds"), period=10_000_000,
        samples=[Sample((L_ALPHA, L_MAIN), (samples, samples * 10_000_000), {"pid": "42"})],
        time_nanos=START_NS, duration_nanos=10_000_000_000)
    buf = io.BytesIO()
    get_exporter("pprof").write(profile, buf)
    return buf.getvalue()


def window(kind: str = "cpu", start_ns: int = START_NS, samples: int = 7) -> WindowProfile:
    return WindowProfile(kind=kind, labels={"service_name": "checkout", "pid": "42",
                                            "comm": "cpusplit",
                                            "executable": "/usr/local/bin/cpusplit"},
                         start_ns=start_ns, end_ns=start_ns + 10_000_000_000,
                         pprof=pprof_bytes(samples))


def all_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())


# -- the sink ---------------------------------------------------------------------------

def test_default_template_writes_a_pprof(tmp_path: Path) -> None:
    sink = DirectorySink(tmp_path / "out", host="node-1")
    w = window()
    sink.send(w)
    sink.close()
    name = f"cpusplit-42-{STAMP}.cpu.pb.gz"
    assert all_files(tmp_path / "out") == [name]
    path = tmp_path / "out" / name
    assert path.read_bytes() == w.pprof
    prof = read_pprof(path)
    assert [prof.string_table[t.type] for t in prof.sample_type] == ["samples", "cpu"]
    assert [s.value[0] for s in prof.sample] == [7]
    assert path.stat().st_mode & 0o777 == 0o644


def test_send_many_is_not_all_or_nothing_so_delivery_sends_one_by_one() -> None:
    assert issubclass(DirectorySink, Sink) and not DirectorySink.atomic_send_many

def test_template_with_subfolders(tmp_path: Path) -> None:
    sink = DirectorySink(tmp_path, "{host}/{kind}/{exe}.{pid}.{time}.pb.gz", host="node 1")
    sink.send(window("cpu"))
    sink.send(window("mem"))
    assert all_files(tmp_path) == [f"node_1/cpu/cpusplit.42.{STAMP}.pb.gz",
                                   f"node_1/mem/cpusplit.42.{STAMP}.pb.gz"]


def test_collisions_get_a_counter(tmp_path: Path) -> None:
    sink = DirectorySink(tmp_path, "{exe}.{kind}.pb.gz", host="h")
    for n in (1, 2, 3):
        sink.send(window(samples=n))
    assert all_files(tmp_path) == ["cpusplit.cpu-1.pb.gz", "cpusplit.cpu-2.pb.gz",
                                   "cpusplit.cpu.pb.gz"]
    samples = {name: read_pprof(tmp_path / name).sample[0].value[0]
               for name in all_files(tmp_path)}
    assert samples == {"cpusplit.cpu.pb.gz": 1, "cpusplit.cpu-1.pb.gz": 2,
                       "cpusplit.cpu-2.pb.gz": 3}


def test_a_failed_write_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    sink = DirectorySink(tmp_path, host="h")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(directory_module.os, "fsync", full)
    with pytest.raises(SinkError, match="No space left on device") as e:
        sink.send(window())
    assert not isinstance(e.value, SinkRejected)  # a full disk is transient
    monkeypatch.undo()
    assert all_files(tmp_path) == []  # no half file, no temp file
    sink.send(window())
    assert len(all_files(tmp_path)) == 1


@pytest.mark.parametrize("template, match", [
    ("{exe}-{user}.pb.gz", "unknown field"),
    ("../{exe}.pb.gz", "relative"),
    ("/tmp/{exe}.pb.gz", "relative"),
    ("{exe}/", "relative"),
])
def test_bad_templates(tmp_path: Path, template: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DirectorySink(tmp_path, template, host="h")


def test_a_directory_under_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("not a folder")
    with pytest.raises(OSError, match="plain/profiles: cannot create it"):
        DirectorySink(tmp_path / "plain" / "profiles", host="h")
    with pytest.raises(OSError, match="not a directory"):
        DirectorySink(tmp_path / "plain", host="h")


def _make_unwritable(path: Path) -> None:
    """A folder nobody can write to, root included (root ignores mode bits)."""
    if os.geteuid() != 0:
        path.chmod(0o555)
        return
    chattr = shutil.which("chattr")
    if chattr is None:
        pytest.skip("root ignores permissions and chattr is missing")
    res = subprocess.run([chattr, "+i", str(path)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"chattr +i is not supported here: {res.stderr.strip()}")


def _make_writable(path: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True)
    path.chmod(0o755)


def test_an_unwritable_directory_is_refused_clearly(tmp_path: Path) -> None:
    out = tmp_path / "ro"
    out.mkdir()
    _make_unwritable(out)
    try:
        with pytest.raises(OSError, match=r"ro: cannot write there: (Operation not "
                                          r"permitted|Permission denied)"):
            DirectorySink(out, host="h")
    finally:
        _make_writable(out)


def test_a_directory_that_turns_read_only_is_a_transient_error(tmp_path: Path) -> None:
    sink = DirectorySink(tmp_path / "out", host="h")
    _make_unwritable(tmp_path / "out")
    try:
        with pytest.raises(SinkError) as e:
            sink.send(window())
        assert not isinstance(e.value, SinkRejected)
        assert str(tmp_path / "out") in str(e.value)
    finally:
        _make_writable(tmp_path / "out")
    assert all_files(tmp_path / "out") == []
    sink.send(window())
    assert len(all_files(tmp_path / "out")) == 1


def test_sink_retention_by_age(tmp_path: Path) -> None:
    old = tmp_path / "old.cpu.pb.gz"
    old.write_bytes(b"x" * 10)
    os.utime(old, (time.time() - 8 * DAY, time.time() - 8 * DAY))
    sink = DirectorySink(tmp_path, "{exe}-{time}.{kind}.pb.gz", host="h", retain_age_s=7 * DAY)
    sink.send(window())
    assert not old.exists()
    assert sink.last_prune is not None and sink.last_prune.removed == [old]
    # within 10 s of the last prune, a write does not prune again...
    old.write_bytes(b"x" * 10)
    os.utime(old, (time.time() - 8 * DAY, time.time() - 8 * DAY))
    sink.send(window(start_ns=START_NS + 10**9))
    assert old.exists()
    # ... after 10 s it does
    sink._last_prune = time.monotonic() - 11
    sink.send(window(start_ns=START_NS + 2 * 10**9))
    assert not old.exists()
    assert len(all_files(tmp_path)) == 3


def test_sink_retention_by_size_runs_at_once(tmp_path: Path) -> None:
    size = len(pprof_bytes())
    sink = DirectorySink(tmp_path, "{exe}-{time}.{kind}.pb.gz", host="h",
                         retain_bytes=3 * size)
    for i in range(6):
        sink.send(window(start_ns=START_NS + i * 10**9))
        total = sum(p.stat().st_size for p in tmp_path.iterdir())
        assert total <= 3 * size
    # the newest three stay (same mtime to the ns is possible: names sort by time too)
    assert all_files(tmp_path) == [f"cpusplit-20251201T10150{s}.250Z.cpu.pb.gz"
                                   for s in (3, 4, 5)]


# -- prune ------------------------------------------------------------------------------

def put(root: Path, rel: str, size: int, age_s: float, now: float) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"p" * size)
    os.utime(path, (now - age_s, now - age_s))
    return path


FOREIGN = ["README.txt", "notes.pb.gz.bak", "data.json", "sub/keep.txt", "x.pprof"]


def test_prune_by_age_never_touches_foreign_files(tmp_path: Path) -> None:
    now = 1_800_000_000.0
    for rel in FOREIGN:
        put(tmp_path, rel, 100, 30 * DAY, now)
    old = [put(tmp_path, rel, 100, 8 * DAY, now) for rel in
           ["a.cpu.pb.gz", "a.folded", "a.speedscope.json", "a.pb", "sub/b.pb.gz",
            "gone/deep/c.pb.gz"]]
    new = [put(tmp_path, rel, 100, 6 * DAY, now) for rel in ["n.cpu.pb.gz", "sub/n.folded"]]
    stale_tmp = put(tmp_path, "sub/.goprof-tmp-abc123", 50, 2 * 3600, now)
    fresh_tmp = put(tmp_path, ".goprof-tmp-def456", 50, 60, now)
    (tmp_path / "link.pb.gz").symlink_to(tmp_path / "n.cpu.pb.gz")
    os.utime(tmp_path / "link.pb.gz", (now - 30 * DAY, now - 30 * DAY), follow_symlinks=False)

    result = prune(tmp_path, max_age_s=7 * DAY, max_bytes=None, now=now)

    assert sorted(result.removed) == sorted([*old, stale_tmp])
    assert result.freed_bytes == 6 * 100 + 50
    assert (result.kept_files, result.kept_bytes) == (2, 200)
    for path in [*new, fresh_tmp] + [tmp_path / rel for rel in FOREIGN]:
        assert path.exists(), path
    assert (tmp_path / "link.pb.gz").is_symlink()
    assert not (tmp_path / "gone").exists()  # emptied by prune
    assert (tmp_path / "sub").is_dir()  # still holds files
    assert tmp_path.is_dir()


def test_prune_by_size_removes_the_oldest(tmp_path: Path) -> None:
    now = 1_800_000_000.0
    files = {age: put(tmp_path, f"p{age}.cpu.pb.gz", 1000, age * 60, now)
             for age in (5, 1, 4, 2, 3)}
    put(tmp_path, "big.bin", 10_000, 100 * DAY, now)
    result = prune(tmp_path, max_age_s=None, max_bytes=2500, now=now)
    assert result.removed == [files[5], files[4], files[3]]
    assert (result.freed_bytes, result.kept_files, result.kept_bytes) == (3000, 2, 2000)
    assert sorted(all_files(tmp_path)) == ["big.bin", "p1.cpu.pb.gz", "p2.cpu.pb.gz"]


def test_prune_dry_run_removes_nothing(tmp_path: Path) -> None:
    now = 1_800_000_000.0
    put(tmp_path, "a/old.cpu.pb.gz", 10, 9 * DAY, now)
    put(tmp_path, "new.cpu.pb.gz", 10, 1, now)
    before = all_files(tmp_path)
    result = prune(tmp_path, max_age_s=7 * DAY, max_bytes=None, now=now, dry_run=True)
    assert result.removed == [tmp_path / "a" / "old.cpu.pb.gz"]
    assert result.freed_bytes == 10 and result.kept_files == 1
    assert all_files(tmp_path) == before


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(files=st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 10_000),
                                 st.sampled_from(["", "x/", "x/y/"])),
                      max_size=25),
       foreign=st.lists(st.integers(0, 5000), max_size=4),
       max_bytes=st.integers(1, 60_000))
def test_prune_keeps_the_newest_within_the_bound(files, foreign, max_bytes) -> None:
    now = 1_800_000_000.0
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        made = {}
        for i, (size, age, folder) in enumerate(files):
            path = put(root, f"{folder}f{i}.pb.gz", size, age, now)
            made[path] = (size, now - age)
        for i, size in enumerate(foreign):
            put(root, f"x/other{i}.dat", size, 50_000, now)
        result = prune(root, max_age_s=None, max_bytes=max_bytes, now=now)
        kept = [p for p in made if p.exists()]
        assert sorted(kept + result.removed) == sorted(made)
        total = sum(made[p][0] for p in kept)
        assert total <= max_bytes
        assert (result.kept_files, result.kept_bytes) == (len(kept), total)
        if kept and result.removed:
            assert min(made[p][1] for p in kept) >= max(made[p][1] for p in result.removed)
        if result.removed:  # no more than needed: putting back the last one breaks the bound
            assert total + made[result.removed[-1]][0] > max_bytes
        for i in range(len(foreign)):
            assert (root / "x" / f"other{i}.dat").exists()


# -- goprof prune -----------------------------------------------------------------------

def run_prune(*argv: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="goprof")
    prune_command.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["prune", *argv])
    out = io.StringIO()
    code = args.run(args, Console(file=out, width=300, color_system=None))
    return code, out.getvalue()


def test_cli_prune(tmp_path: Path) -> None:
    now = time.time()
    old = put(tmp_path, "old.cpu.pb.gz", 2048, 8 * DAY, now)
    put(tmp_path, "new.cpu.pb.gz", 1024, 60, now)
    put(tmp_path, "notes.txt", 10, 30 * DAY, now)

    code, out = run_prune(str(tmp_path), "--max-age", "7d", "--dry-run")
    assert code == 0
    assert str(old) in out and "would remove 1 file (2.0 KiB)" in out
    assert "kept 1 file (1.0 KiB)" in out
    assert old.exists()

    code, out = run_prune(str(tmp_path), "--max-age", "7d")
    assert code == 0 and "removed 1 file (2.0 KiB)" in out and str(old) not in out
    assert all_files(tmp_path) == ["new.cpu.pb.gz", "notes.txt"]

    code, out = run_prune(str(tmp_path), "--max-size", "512")
    assert code == 0 and "removed 1 file (1.0 KiB); kept 0 files (0 B)" in out
    assert all_files(tmp_path) == ["notes.txt"]


def test_cli_prune_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--max-age, --max-size"):
        run_prune(str(tmp_path))
    with pytest.raises(UsageError, match="--max-age"):
        run_prune(str(tmp_path), "--max-age", "a week")
    with pytest.raises(UsageError, match="--max-size"):
        run_prune(str(tmp_path), "--max-size", "lots")
    with pytest.raises(EnvironmentProblem, match="no such directory"):
        run_prune(str(tmp_path / "missing"), "--max-age", "1d")
    (tmp_path / "f").write_text("x")
    with pytest.raises(EnvironmentProblem, match="not a directory"):
        run_prune(str(tmp_path / "f"), "--max-age", "1d")


def test_cli_main_prune(tmp_path: Path, capsys) -> None:
    from goprof import cli

    put(tmp_path, "old.cpu.pb.gz", 10, 8 * DAY, time.time())
    assert cli.main(["prune", str(tmp_path), "--max-age", "7d"]) == 0
    assert all_files(tmp_path) == []
    assert cli.main(["prune", str(tmp_path)]) == 2
    assert cli.main(["prune", str(tmp_path / "missing"), "--max-age", "1d"]) == 2
    err = " ".join(capsys.readouterr().err.split())  # rich wraps at the terminal width
    assert "no such directory" in err


# -- names that are not goprof's files (issue 14) ---------------------------------------

def test_the_sink_never_replaces_a_link_fifo_or_device(tmp_path: Path, caplog) -> None:
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious").write_text("keep me\n")
    sink = DirectorySink(out, "{exe}.{kind}.pb.gz", host="h")
    (out / "cpusplit.cpu.pb.gz").symlink_to(elsewhere / "precious")
    os.mkfifo(out / "cpusplit.cpu-1.pb.gz")
    (out / "cpusplit.cpu-2.pb.gz").symlink_to(elsewhere / "missing")  # dangling
    in_the_way = ["cpusplit.cpu.pb.gz", "cpusplit.cpu-1.pb.gz", "cpusplit.cpu-2.pb.gz"]
    if os.geteuid() == 0:
        os.mknod(out / "cpusplit.cpu-3.pb.gz", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        in_the_way.append("cpusplit.cpu-3.pb.gz")
    with caplog.at_level("WARNING", logger=directory_module.__name__):
        sink.send(window(samples=5))
    written = f"cpusplit.cpu-{len(in_the_way)}.pb.gz"
    assert read_pprof(out / written).sample[0].value[0] == 5
    assert (elsewhere / "precious").read_text() == "keep me\n"
    assert not (elsewhere / "missing").exists()
    assert os.readlink(out / "cpusplit.cpu.pb.gz") == str(elsewhere / "precious")
    assert stat.S_ISFIFO(os.lstat(out / "cpusplit.cpu-1.pb.gz").st_mode)
    if os.geteuid() == 0:
        assert stat.S_ISCHR(os.lstat(out / "cpusplit.cpu-3.pb.gz").st_mode)
    assert sink.names_in_the_way == len(in_the_way)
    logged = [r.getMessage() for r in caplog.records]
    assert f"profile directory {out}: cpusplit.cpu.pb.gz is a symbolic link: left alone" \
        in logged
    assert f"profile directory {out}: cpusplit.cpu-1.pb.gz is a FIFO: left alone" in logged


def test_the_sink_does_not_write_through_a_symlinked_subfolder(tmp_path: Path) -> None:
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    elsewhere.mkdir()
    sink = DirectorySink(out, "{kind}/{exe}.pb.gz", host="h")
    (out / "cpu").symlink_to(elsewhere)
    with pytest.raises(SinkRejected, match=r"cpu is a symbolic link, not a folder: not "
                                           "written through"):
        sink.send(window())
    assert os.listdir(elsewhere) == []  # prune would never have found it there
    assert sink.names_in_the_way == 1
    sink.send(window("mem"))  # other subfolders still work
    assert all_files(out) == ["mem/cpusplit.pb.gz"] and (out / "cpu").is_symlink()


def test_prune_leaves_whatever_is_not_a_profile_file(tmp_path: Path) -> None:
    """Regression guard: these already held before issue 14 (os.walk does not follow
    links, lstat is checked); kept so they keep holding."""
    now = 1_800_000_000.0
    top, outside = tmp_path / "profiles", tmp_path / "outside"
    old = 30 * DAY
    victim = put(outside, "victim.cpu.pb.gz", 100, old, now)
    (top / "sub").mkdir(parents=True)
    os.mkfifo(top / "fifo.cpu.pb.gz")
    (top / "link.cpu.pb.gz").symlink_to(victim)
    (top / "linked").symlink_to(outside)  # a symlinked folder: never entered
    put(top, "folder.pb.gz/inside.txt", 10, old, now)  # a folder named like a profile
    if os.geteuid() == 0:
        os.mknod(top / "dev.pb.gz", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    mine = put(top, "sub/mine.cpu.pb.gz", 100, old, now)
    for path in top.iterdir():
        os.utime(path, (now - old, now - old), follow_symlinks=False)
    result = prune(top, max_age_s=DAY, max_bytes=0, now=now)
    assert result.removed == [mine] and result.errors == []
    assert victim.exists() and (top / "link.cpu.pb.gz").is_symlink()
    assert stat.S_ISFIFO(os.lstat(top / "fifo.cpu.pb.gz").st_mode)
    assert (top / "folder.pb.gz" / "inside.txt").exists() and (top / "linked").is_symlink()
    if os.geteuid() == 0:
        assert stat.S_ISCHR(os.lstat(top / "dev.pb.gz").st_mode)


def test_prune_does_not_follow_a_folder_swapped_for_a_link(tmp_path: Path) -> None:
    """Between the scan and the unlink a folder becomes a symlink to another folder
    holding a file of the same name: the file there is not removed (an unlink by path
    name, as prune did, would have followed the link and removed it)."""
    now = 1_800_000_000.0
    top, outside = tmp_path / "profiles", tmp_path / "outside"
    put(top, "app/old.cpu.pb.gz", 100, 30 * DAY, now)
    victim = put(outside, "old.cpu.pb.gz", 100, 30 * DAY, now)
    same = put(top, "same/also.cpu.pb.gz", 100, 30 * DAY, now)
    plan = directory_module.plan_prune(top, max_age_s=DAY, max_bytes=None, now=now)
    assert len(plan.doomed) == 2
    shutil.rmtree(top / "app")
    (top / "app").symlink_to(outside)
    same.unlink()
    same.write_bytes(b"another file, same name")  # replaced since the scan: not judged
    result = directory_module.remove_planned(plan)
    assert victim.exists() and same.exists()
    assert result.removed == []
    assert [e.split(": ", 1)[1] for e in result.errors] == [
        "folder app became a symbolic link or a file since the scan: not followed",
        "replaced by another file or link since the scan: left alone"]
