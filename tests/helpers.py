"""Running goprof and its targets from the tests, and reading what it wrote."""

from __future__ import annotations

import gzip
import math
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from goprof.exporters.proto import profile_pb2

REPO = Path(__file__).resolve().parent.parent
LAUNCHER_WRITER = REPO / "deploy" / "launcher.sh"
NOBODY = 65534


def goprof_command() -> list[str]:
    exe = Path(sys.executable).parent / "goprof"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "goprof.cli"]


def write_launcher(goprof: Path, dest: Path) -> Path:
    """What `make setup` installs as /usr/local/bin/goprof (deploy/launcher.sh), at dest."""
    subprocess.run(["bash", str(LAUNCHER_WRITER), str(goprof), str(dest)], check=True,
                   capture_output=True, text=True, timeout=30)
    return dest


def as_nobody(*argv: str, read_code: bool = False) -> list[str]:
    """argv run as user nobody, without root's capabilities.

    read_code keeps one capability, CAP_DAC_READ_SEARCH (ambient, and the only one in
    the bounding set): goprof's Python then runs even from a checkout other users cannot
    read (a clone under /root, 0700), while the process is still not root to goprof (no
    CAP_BPF or CAP_PERFMON: tests/test_cli_errors.py checks that) and still has no ptrace
    access to other users' processes (/proc/PID/exe, maps: refused just the same)."""
    who = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    if read_code:
        keep = "-all,+dac_read_search"
        who += [f"--inh-caps={keep}", f"--ambient-caps={keep}", f"--bounding-set={keep}"]
    return [*who, *argv]


def run_goprof(*args: str, timeout: float = 120, env: dict | None = None,
               check: bool = False) -> subprocess.CompletedProcess:
    res = subprocess.run([*goprof_command(), *args], capture_output=True, text=True,
                         timeout=timeout, env={**os.environ, "COLUMNS": "200", **(env or {})})
    if check and res.returncode != 0:
        raise AssertionError(f"goprof {' '.join(args)} exited {res.returncode}:\n"
                             f"{res.stdout}\n{res.stderr}")
    return res


def start(argv: list[str]) -> subprocess.Popen:
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return p


def wait_ready(p: subprocess.Popen, word: str = "ready", timeout: float = 10) -> None:
    """Waits for the fixture's first line, so profiling starts once it runs."""
    deadline = time.monotonic() + timeout
    assert p.stdout is not None
    while time.monotonic() < deadline:
        line = p.stdout.readline()
        if word in line:
            return
        if p.poll() is not None:
            raise AssertionError(f"{p.args} exited early: {p.returncode}")
    raise AssertionError(f"{p.args} never printed {word!r}")


def read_pprof(path: Path) -> profile_pb2.Profile:
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    prof = profile_pb2.Profile()
    prof.ParseFromString(data)
    return prof


def flat_shares(prof: profile_pb2.Profile, value_index: int = 0,
                prefix: str = "main.") -> dict[str, float]:
    """Share of each function as the innermost frame (pprof's flat), over all samples."""
    strings = prof.string_table
    funcs = {f.id: strings[f.name] for f in prof.function}
    locs = {loc.id: loc for loc in prof.location}
    flat: Counter[str] = Counter()
    total = 0
    for s in prof.sample:
        v = s.value[value_index]
        total += v
        if not s.location_id:
            continue
        loc = locs[s.location_id[0]]
        name = funcs[loc.line[0].function_id] if loc.line else "?"
        flat[name] += v
    return {k: 100.0 * v / total for k, v in flat.items() if k.startswith(prefix)} if total else {}


def bpf_programs_of(pid: int) -> set[int]:
    """Ids of the BPF programs a process holds open (its fds' prog_id lines): what a
    leak test follows, rather than every program of a name on the host, which other
    goprof runs on the same machine load too."""
    ids: set[int] = set()
    fdinfo = Path(f"/proc/{pid}/fdinfo")
    for entry in fdinfo.iterdir():
        try:
            text = entry.read_text()
        except OSError:
            continue  # closed meanwhile
        ids.update(int(line.split()[1]) for line in text.splitlines()
                   if line.startswith("prog_id:"))
    return ids


def share_tolerance(truth: float, samples: int, floor: float) -> float:
    """How far (in points) a function's share measured from `samples` samples may be
    from its true `truth` percent: `floor`, or five standard deviations of the share
    when fewer samples make it noisier. A busy machine gives the target less CPU time,
    so fewer samples over the same wall-clock time (a 1 s profile at 99 Hz held 28 while
    a Go build ran beside it); five deviations are missed once in ~1.7 million checks."""
    p = truth / 100
    return max(floor, 5 * 100 * math.sqrt(p * (1 - p) / max(samples, 1)))


def stacks(prof: profile_pb2.Profile) -> list[tuple[list[str], int]]:
    """Every sample as (function names leaf first, inlined frames expanded; count)."""
    strings = prof.string_table
    funcs = {f.id: strings[f.name] for f in prof.function}
    locs = {loc.id: loc for loc in prof.location}
    out = []
    for s in prof.sample:
        names = [funcs[line.function_id] for lid in s.location_id for line in locs[lid].line]
        out.append((names, s.value[0]))
    return out


def go_tool_pprof(*args: str) -> str:
    go = shutil.which("go") or "/usr/local/go/bin/go"
    res = subprocess.run([go, "tool", "pprof", *args], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, f"go tool pprof {' '.join(args)} failed:\n{res.stderr}"
    return res.stdout


def sample_labels(prof: profile_pb2.Profile, sample) -> dict[str, str | int]:
    """A sample's labels, key -> value: a string label's text, a numeric label's number.
    A label with neither (str index 0, num 0) is a string label with an empty value: the
    way runtime/pprof writes pprof.Labels("k", "")."""
    strings = prof.string_table
    out: dict[str, str | int] = {}
    for lb in sample.label:
        out[strings[lb.key]] = strings[lb.str] if lb.str or not lb.num else lb.num
    return out


def sample_functions(prof: profile_pb2.Profile) -> list[list[str]]:
    """Every sample's function names, leaf first, inlined frames expanded, in
    prof.sample's order (stacks() without the counts, to zip with the samples)."""
    return [names for names, _ in stacks(prof)]
