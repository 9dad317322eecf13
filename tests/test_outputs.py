"""`-o` to what is not a plain file: character devices, a full device, FIFOs, symbolic
links, standard output (goprof/output_files.py). Real `goprof cpu` runs against the
cpusplit fixture; device nodes are made with mknod in a temporary folder."""

from __future__ import annotations

import gzip
import os
import stat
import subprocess
import threading
from pathlib import Path

import pytest
from goprof.exporters.proto import profile_pb2

from tests import gobuild
from tests.conftest import requires_root
from tests.helpers import goprof_command, read_pprof, run_goprof

RUN = ["-F", "199", "--"]  # then the fixture, run for about a second


@pytest.fixture(scope="module")
def target() -> list[str]:
    return [str(gobuild.build("cpusplit", "go1.26", "normal").path), "-duration", "1s"]


def decode(data: bytes) -> profile_pb2.Profile:
    assert data[:2] == b"\x1f\x8b", data[:20]
    prof = profile_pb2.Profile()
    prof.ParseFromString(gzip.decompress(data))
    return prof


def function_names(prof: profile_pb2.Profile) -> set[str]:
    return {prof.string_table[f.name] for f in prof.function}


def char_device(path: Path, major: int, minor: int) -> Path:
    os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
    return path


def assert_char_device(path: Path, major: int, minor: int) -> None:
    st = os.lstat(path)
    assert stat.S_ISCHR(st.st_mode), f"{path} is no longer a character device"
    assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == (major, minor)


def goprof_lines(stderr: str) -> list[str]:
    """goprof's error lines (an error ends the run: from the first one to the end), each
    joined back where the console wrapped it at COLUMNS."""
    found = [i for i in (stderr.find("goprof: cannot"), stderr.find("goprof: -o")) if i >= 0]
    if not found:
        return []
    text = " ".join(stderr[min(found):].split())
    return ["goprof: " + part.strip() for part in text.split("goprof: ") if part.strip()]


@requires_root
def test_a_character_device_is_written_not_replaced(tmp_path: Path, target) -> None:
    null = char_device(tmp_path / "null", 1, 3)
    # No suffix and no --format: a device names no format, and gets pprof.
    res = run_goprof("cpu", "-o", str(null), *RUN, *target, check=True)
    assert_char_device(null, 1, 3)
    assert f"wrote             {null} (pprof)" in res.stderr
    assert sorted(os.listdir(tmp_path)) == ["null"]  # no temporary file left beside it


@requires_root
def test_a_full_device_is_one_line_and_the_other_outputs_are_written(tmp_path: Path,
                                                                     target) -> None:
    full = char_device(tmp_path / "full", 1, 7)
    good = tmp_path / "good.pb.gz"
    res = run_goprof("cpu", "-o", str(full), "-o", str(good), "--format", "pprof",
                     *RUN, *target)
    assert res.returncode == 2, res.stderr
    assert goprof_lines(res.stderr) == [
        f"goprof: cannot write {full}: No space left on device (written: {good})"]
    assert "wrote" not in res.stderr and "Traceback" not in res.stderr
    assert_char_device(full, 1, 7)
    assert "main.alpha" in function_names(read_pprof(good))  # the samples were not lost


@requires_root
def test_a_fifo_reader_gets_the_whole_profile(tmp_path: Path, target) -> None:
    fifo = tmp_path / "profile.fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []

    def reader() -> None:
        with open(fifo, "rb") as f:  # blocks until goprof opens it for writing
            got.append(f.read())

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    res = run_goprof("cpu", "-o", str(fifo), "--format", "pprof", *RUN, *target)
    if thread.is_alive():  # goprof never opened the FIFO: let the reader go
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
    thread.join(10)
    assert res.returncode == 0, res.stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert got and got[0], "the FIFO's reader got 0 bytes"
    prof = decode(got[0])
    assert sum(s.value[0] for s in prof.sample) > 0
    assert "main.gamma" in function_names(prof)


@requires_root
def test_a_symlink_is_followed_and_its_target_replaced(tmp_path: Path, target) -> None:
    (tmp_path / "store").mkdir()
    real = tmp_path / "store" / "cpu.pb.gz"
    real.write_bytes(b"an older profile")
    os.chmod(real, 0o640)
    link = tmp_path / "latest.pb.gz"
    link.symlink_to("store/cpu.pb.gz")
    run_goprof("cpu", "-o", str(link), *RUN, *target, check=True)
    assert link.is_symlink() and os.readlink(link) == "store/cpu.pb.gz"
    assert "main.beta" in function_names(read_pprof(real))
    assert stat.S_IMODE(real.stat().st_mode) == 0o640  # the replaced file keeps its mode
    assert sorted(os.listdir(tmp_path / "store")) == ["cpu.pb.gz"]


@requires_root
def test_someone_elses_link_in_a_shared_folder_is_refused(tmp_path: Path, target) -> None:
    shared = tmp_path / "tmp"
    shared.mkdir()
    os.chmod(shared, 0o1777)  # like /tmp
    victim = tmp_path / "victim.conf"
    victim.write_text("keep me\n")
    planted = shared / "cpu.pb.gz"
    planted.symlink_to(victim)
    os.lchown(planted, 4242, 4242)  # another user's link
    res = run_goprof("cpu", "-o", str(planted), *RUN, *target)
    assert res.returncode == 2
    assert goprof_lines(res.stderr) == [
        f"goprof: cannot write {planted}: it is a symbolic link in the shared folder "
        f"{shared}, owned by uid 4242: not followed (someone else's link could point at "
        "any file); give its target's path"]
    assert victim.read_text() == "keep me\n" and planted.is_symlink()


def goprof_binary_stdout(args: list[str], stdout) -> subprocess.CompletedProcess:
    return subprocess.run([*goprof_command(), *args], stdout=stdout, stderr=subprocess.PIPE,
                          timeout=120, env={**os.environ, "COLUMNS": "200"})


@requires_root
def test_dash_writes_the_profile_alone_to_a_pipe(target) -> None:
    res = goprof_binary_stdout(["cpu", "-o", "-", *RUN, *target], subprocess.PIPE)
    stderr = res.stderr.decode()
    assert res.returncode == 0, stderr
    prof = decode(res.stdout)  # the whole of stdout is the profile: nothing before or after
    assert "main.alpha" in function_names(prof)
    assert "wrote             - (pprof)" in stderr
    assert "ready" in stderr  # the started command's stdout went to stderr


@requires_root
def test_a_closed_pipe_is_one_line(target) -> None:
    r, w = os.pipe()
    os.close(r)  # nobody will read: EPIPE
    try:
        res = goprof_binary_stdout(["cpu", "-o", "-", *RUN, *target], w)
    finally:
        os.close(w)
    stderr = res.stderr.decode()
    assert res.returncode == 2
    assert goprof_lines(stderr) == ["goprof: cannot write standard output: Broken pipe"]
    assert "wrote" not in stderr and "Traceback" not in stderr


def test_pprof_to_a_terminal_is_refused_before_recording() -> None:
    primary, secondary = os.openpty()
    try:
        res = goprof_binary_stdout(["cpu", "--pid", str(os.getpid()), "-d", "1s", "-o", "-"],
                                   secondary)
    finally:
        os.close(secondary)
        os.close(primary)
    assert res.returncode == 2
    assert goprof_lines(res.stderr.decode()) == [
        "goprof: -o -: pprof is binary and standard output is a terminal: redirect it (> "
        "cpu.pb.gz, | ...) or give --format folded or speedscope"]


@pytest.mark.parametrize("outputs, message", [
    (["-", "/dev/stdout"], "goprof: -o: only one output can go to standard output "
                           "(-, /dev/stdout)"),
    (["{tmp}"], "goprof: cannot write {tmp}: it is a folder: give a file name, a FIFO, a "
                "character device or - (standard output)"),
])
def test_bad_outputs_are_refused_before_recording(tmp_path: Path, outputs, message) -> None:
    args = ["cpu", "--pid", str(os.getpid()), "-d", "1s", "--format", "folded"]
    for out in outputs:
        args += ["-o", out.format(tmp=tmp_path)]
    res = run_goprof(*args)
    assert res.returncode == 2
    assert goprof_lines(res.stderr) == [message.format(tmp=tmp_path)]
