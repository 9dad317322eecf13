"""`goprof goroutines`: every goroutine of a running program (tests/fixtures/goparked),
compared with the program's own pprof.Lookup("goroutine").WriteTo(w, 2) and (w, 1)
taken at the same moment, on go1.26 and go1.27, normal, stripped and PIE builds."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests import gobuild, gotruth
from tests.helpers import (
    go_tool_pprof,
    goprof_command,
    read_pprof,
    run_goprof,
    sample_labels,
    stacks,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="reads /proc/PID/mem: needs root")

# Go 1.19 (a map of labels, another g layout: from DWARF only) joins when its GOROOT is
# at $GOPROF_GO119_GOROOT (tests/gotruth.py says how to get it).
TOOLCHAINS = ("go1.26", "go1.27", *(("go1.19",) if gotruth.HAVE_GO119 else ()))
VARIANTS = ("normal", "stripped", "pie")
HEADER = re.compile(r"^goroutine (\d+)(?: gp=\S+ m=\S+(?: mp=\S+)?)? \[([^\]]*)\]:$")
CALL = re.compile(r"^(.*)\((.*)\)$")
# The goroutines that differ by construction: goroutine 1 wrote the program's own dump
# (running there, back in its select when goprof reads), and the spinner (runnable in
# the program's stopped-world dump, running or runnable when goprof reads).
MOVING = ("main.main", "main.spinner", "runtime/pprof.writeGoroutineStacks")
EXPECTED = {  # first frame outside the runtime -> (state, count, labels)
    "main.chanWaiter": ("chan receive", 3, {"role": "chan", "team": "a"}),
    "main.selectWaiter": ("select", 2, {"role": "select"}),
    "time.Sleep": ("sleep", 2, {}),
    "internal/sync.runtime_SemacquireMutex": ("sync.Mutex.Lock", 2, {}),
    "syscall.Syscall": ("syscall", 1, {}),
    "internal/poll.runtime_pollWait": ("IO wait", 1, {}),
}
# Go 1.19 parks a sync.Mutex waiter as "semacquire", in package sync.
EXPECTED_119 = {**{k: v for k, v in EXPECTED.items() if not k.startswith("internal/sync")},
                "sync.runtime_SemacquireMutex": ("semacquire", 2, {})}


def build_goparked(toolchain: str, variant: str) -> Path:
    if toolchain != "go1.19":
        return gobuild.build("goparked", toolchain, variant).path
    main = (gobuild.FIXTURES / "goparked" / "main.go").read_bytes()
    src = gobuild.CACHE / f"goparked-go119-{hashlib.sha256(main).hexdigest()[:16]}"
    src.mkdir(parents=True, exist_ok=True)
    (src / "main.go").write_bytes(main)
    (src / "go.mod").write_text("module goparked\n\ngo 1.19\n")
    return gotruth.go_build("go1.19", src, src / variant / "goparked",
                            *gobuild.VARIANTS[variant])


def parse_text(text: str) -> dict[int, tuple[str, list[str]]]:
    """debug=2 text -> goid: (state without the minutes, frame functions shown)."""
    out: dict[int, tuple[str, list[str]]] = {}
    goid = None
    for line in text.splitlines():
        m = HEADER.match(line)
        if m:
            goid = int(m.group(1))
            out[goid] = (m.group(2).split(",")[0], [])
            continue
        if goid is None or not line or line.startswith("\t") or line.startswith("created by"):
            if line.startswith("created by"):
                goid = None  # the frames of this goroutine are done
            continue
        call = CALL.match(line)
        if call:
            out[goid][1].append(call.group(1))
    return out


def text_blocks(text: str) -> dict[int, str]:
    """debug=2 text -> goid: its block."""
    out = {}
    for block in text.strip("\n").split("\n\n"):
        m = HEADER.match(block.split("\n", 1)[0])
        assert m, block
        out[int(m.group(1))] = block
    return out


def parse_grouped(text: str) -> dict[tuple, tuple[int, int]]:
    """debug=1 text -> (labels, functions of the # lines): (count, the pcs of the @ line,
    the # lines' addresses and offsets)."""
    out: dict[tuple, tuple] = {}
    for block in text.strip().split("\n\n"):
        lines = block.splitlines()
        if lines[0].startswith("goroutine profile:"):
            lines = lines[1:]
        m = re.match(r"^(\d+) @((?: 0x[0-9a-f]+)*)$", lines[0])
        assert m, lines[0]
        pcs = [int(x, 16) for x in m.group(2).split()]
        labels = next((ln for ln in lines if ln.startswith("# labels:")), "")
        funcs = tuple(ln.split("\t")[2].rsplit("+", 1)[0] for ln in lines
                      if ln.startswith("#\t") and len(ln.split("\t")) > 2)
        named = tuple((ln.split("\t")[1], ln.split("\t")[2]) for ln in lines
                      if ln.startswith("#\t") and len(ln.split("\t")) > 2)
        out[(labels, funcs)] = (int(m.group(1)), tuple(pcs), named)
    return out


class Parked:
    def __init__(self, binary: Path, dump: Path, *args: str) -> None:
        self.dump = dump
        self.p = subprocess.Popen([str(binary), *args, str(dump)], stdout=subprocess.PIPE,
                                  text=True)
        self.wait_for("ready", 30)

    def wait_for(self, word: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        assert self.p.stdout is not None
        while time.monotonic() < deadline:
            line = self.p.stdout.readline()
            if line.strip() == word:
                return
            if not line and self.p.poll() is not None:
                raise AssertionError(f"goparked exited: {self.p.returncode}")
        raise AssertionError(f"goparked never said {word}")

    def own_dump(self) -> tuple[str, str]:
        self.p.send_signal(signal.SIGUSR1)
        self.wait_for("dumped", 30)
        time.sleep(0.2)  # the signal loop back to its wait
        return self.dump.read_text(), Path(f"{self.dump}.1").read_text()

    def close(self) -> None:
        self.p.kill()
        self.p.wait()


@pytest.fixture
def parked(request, tmp_path):
    toolchain, variant = request.param
    binary = build_goparked(toolchain, variant)
    prog = Parked(binary, tmp_path / "dump")
    prog.toolchain, prog.variant = toolchain, variant
    yield prog
    prog.close()


CASES = [(t, v) for t in TOOLCHAINS for v in VARIANTS]


@pytest.mark.parametrize("parked", CASES, ids=[f"{t}-{v}" for t, v in CASES], indirect=True)
def test_goroutines_match_the_programs_own_dump(parked, tmp_path):
    pid = str(parked.p.pid)
    expected = EXPECTED_119 if parked.toolchain == "go1.19" else EXPECTED
    if parked.toolchain == "go1.19" and parked.variant != "normal":
        # No DWARF and no checked table row for 1.19: refused in one line.
        res = run_goprof("goroutines", "--pid", pid)
        assert res.returncode == 2 and "go1.19" in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr
        return
    theirs2, theirs1 = parked.own_dump()
    res = run_goprof("goroutines", "--pid", pid, "-o", str(tmp_path / "g.goroutines.txt"),
                     "-o", str(tmp_path / "g.grouped.txt"), "-o", str(tmp_path / "g.pb.gz"),
                     "--stats", str(tmp_path / "stats.json"), check=True)
    assert "Traceback" not in res.stderr
    ours2 = parse_text((tmp_path / "g.goroutines.txt").read_text())
    theirs = parse_text(theirs2)
    # The same goroutines (system goroutines left out by both).
    assert set(ours2) == set(theirs), (sorted(ours2), sorted(theirs))
    moving = [g for g, (_, frames) in theirs.items() if any(f in MOVING for f in frames)]
    assert len(moving) == 2, moving  # goroutine 1 and the spinner
    # A goroutine the scheduler ran between the program's dump and goprof's read (the
    # signal loop, woken by the dump's signal) may be running or runnable in one of them:
    # allowed, counted and said; any other difference fails.
    differ = [g for g in theirs if g not in moving and ours2[g] != theirs[g]]
    ran = [g for g in differ if {ours2[g][0], theirs[g][0]} & {"running", "runnable"}]
    assert differ == ran, [(g, ours2[g], theirs[g]) for g in differ]
    assert len(ran) <= 2, ran
    moving += ran
    print(f"{len(theirs)} goroutines, {len(moving) - len(ran)} moving by construction, "
          f"{len(ran)} ran in between")
    # And the text itself, block for block, once the program's argument values are
    # replaced by the "(...)" goprof prints (it does not read arguments).
    ours_blocks = text_blocks((tmp_path / "g.goroutines.txt").read_text())
    theirs_blocks = text_blocks(re.sub(r"^(\S.*)\(.*\)$", r"\1(...)", theirs2, flags=re.M))
    for goid, block in theirs_blocks.items():
        if goid not in moving:
            assert ours_blocks[goid] == block
    # The expected parks, in number and place.
    found: dict[str, int] = {}
    for state, frames in ours2.values():
        top = frames[0] if frames else ""
        if top in expected:
            assert state == expected[top][0], (top, state)
            found[top] = found.get(top, 0) + 1
    assert found == {top: n for top, (_, n, _) in expected.items()}

    # Grouped (debug=1): counts, labels, frames, the @ line's pcs (one per call, inlined
    # ones included) and each # line's address and offset, for every group that does not
    # hold a moving goroutine; and the text itself, byte for byte, tabs included.
    ours1 = parse_grouped((tmp_path / "g.grouped.txt").read_text())
    theirs1g = parse_grouped(theirs1)

    ran_frames = {f for g in ran for f in theirs[g][1]}

    def steady(groups):  # the spinner, if running, has no stack in goprof's
        return {k: v for k, v in groups.items()
                if k[1] and not set(k[1]) & (set(MOVING) | ran_frames)}

    assert steady(ours1) == steady(theirs1g)
    ours_text = (tmp_path / "g.grouped.txt").read_text()
    assert ours_text.splitlines()[0] == theirs1.splitlines()[0]  # "...: total 14"

    def blocks(text: str) -> list[str]:
        return text.split("\n", 1)[1].strip("\n").split("\n\n")

    compared = [b for b in blocks(theirs1) if not any(f in b for f in (*MOVING, *ran_frames))]
    assert len(compared) >= 7 and set(compared) <= set(blocks(ours_text)), compared

    # pprof: runtime/pprof's goroutine profile.
    prof = read_pprof(tmp_path / "g.pb.gz")
    st = prof.string_table
    assert [(st[t.type], st[t.unit]) for t in prof.sample_type] == [("goroutine", "count")]
    assert (st[prof.period_type.type], st[prof.period_type.unit], prof.period) == \
        ("goroutine", "count", 1)
    assert sum(s.value[0] for s in prof.sample) == len(theirs)
    for sample, (names, count) in zip(prof.sample, stacks(prof), strict=True):
        labels = sample_labels(prof, sample)
        user = [n for n in names if not n.startswith("runtime.")]
        if user and user[0] in expected:
            assert (count, labels) == expected[user[0]][1:], (names, labels)
        elif user:
            assert labels == {}, (names, labels)
    raw = go_tool_pprof("-raw", str(tmp_path / "g.pb.gz"))
    assert "main.chanWaiter" in raw and "role:[chan] team:[a]" in raw


@pytest.mark.parametrize("parked", [("go1.26", "stripped")], ids=["go1.26-stripped"],
                         indirect=True)
def test_folded_speedscope_and_the_summary(parked, tmp_path):
    res = run_goprof("goroutines", "--pid", str(parked.p.pid), "-o",
                     str(tmp_path / "g.folded"), "-o", str(tmp_path / "g.speedscope.json"),
                     check=True)
    folded = (tmp_path / "g.folded").read_text()
    assert "runtime.goexit;main.chanWaiter;runtime.chanrecv1;runtime.chanrecv;" \
           "runtime.gopark 3" in folded
    assert '"main.selectWaiter"' in (tmp_path / "g.speedscope.json").read_text()
    assert "goroutines by state" in res.stderr and "chan receive" in res.stderr
    assert "changed while read" in res.stderr
    text = run_goprof("goroutines", "--pid", str(parked.p.pid), "--format", "text", check=True)
    assert "[chan receive]:\nmain.chanWaiter(...)" in text.stdout
    assert "[force gc (idle)]" not in text.stdout  # the runtime's own, as runtime/pprof
    every = run_goprof("goroutines", "--pid", str(parked.p.pid), "--format", "text",
                       "--system", check=True)
    assert "[force gc (idle)]:\nruntime.gopark(...)" in every.stdout
    assert every.stdout.count("\ngoroutine ") > text.stdout.count("\ngoroutine ")


def test_not_go_is_one_line(tmp_path):
    p = subprocess.Popen(["sleep", "30"])
    try:
        res = run_goprof("goroutines", "--pid", str(p.pid))
    finally:
        p.kill()
        p.wait()
    assert res.returncode == 2
    assert "not a Go program" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_unknown_pid_is_one_line():
    res = run_goprof("goroutines", "--pid", "999999999")
    assert res.returncode == 2
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_target_exiting_mid_read(tmp_path):
    """A target killed while its 200,000 goroutines are read: the read stops with one
    line (exit 2), never a traceback; or it finished first and wrote everything."""
    binary = gobuild.build("goparked", "go1.26", "stripped").path
    prog = Parked(binary, tmp_path / "dump", "-many", "200000")
    goprof = subprocess.Popen([*goprof_command(), "goroutines", "--pid", str(prog.p.pid), "-o",
                               str(tmp_path / "g.pb.gz")], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    # Killed once goprof has the target's memory open: its goroutines are being read.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not reads_memory(goprof.pid, prog.p.pid):
        time.sleep(0.005)
    time.sleep(0.05)
    prog.close()
    _out, err = goprof.communicate(timeout=120)
    assert "Traceback" not in err
    if goprof.returncode == 2:
        assert len(err.strip().splitlines()) == 1, err
        assert "exited" in err or "not readable" in err or "cannot" in err, err
    else:
        assert goprof.returncode == 0 and (tmp_path / "g.pb.gz").exists()
    print(f"goprof exited {goprof.returncode}: {err.strip()[:200]}")


def reads_memory(reader: int, target: int) -> bool:
    try:
        fds = os.listdir(f"/proc/{reader}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{reader}/fd/{fd}") == f"/proc/{target}/mem":
                return True
        except OSError:
            continue
    return False


def test_header_says_minutes_and_locked_as_go_does():
    """goroutineheader: ", N minutes" once waiting (or in a syscall) >= 1 minute, ", locked
    to thread", " (scan)" with the scan bit; a running goroutine never has minutes."""
    from goprof.golang.goroutines import GoroutineRead
    from goprof.kinds.goroutines.build import header_of

    def g(status: int, state: str, wait_s: float, locked: bool = False) -> GoroutineRead:
        return GoroutineRead(0, 7, status, state, int(wait_s * 1e9), locked, 1, 0, 0, {})

    assert header_of(g(4, "chan receive", 59)) == "chan receive"
    assert header_of(g(4, "chan receive", 185)) == "chan receive, 3 minutes"
    assert header_of(g(3, "syscall", 120, locked=True)) == "syscall, 2 minutes, locked to thread"
    assert header_of(g(0x1004, "select", 60)) == "select (scan), 1 minutes"
    assert header_of(g(2, "running", 600)) == "running"


ALLG = ("runtime.allgs", "runtime.allglen")


@pytest.mark.parametrize("toolchain", gotruth.TOOLCHAINS)
def test_allgs_found_in_the_code_is_the_symbol(toolchain):
    """runtime.allgs and runtime.allglen from the code heuristics (what stripped builds
    get) are the addresses `go tool nm` gives; in stripped and PIE builds, the same
    position in the same section as in the build with symbols."""
    from goprof.golang.globals import global_address

    path = gotruth.build(toolchain, "normal")
    syms = gotruth.nm(path, toolchain)
    for name in ALLG:
        assert global_address(path, name, symbols=False) == syms[name][0], name
    for variant in gotruth.STRIPPED_VARIANTS:
        ref = gotruth.reference(toolchain, variant)
        stripped = gotruth.build(toolchain, variant)
        ref_syms = gotruth.nm(ref, toolchain)
        for name in ALLG:
            got = global_address(stripped, name)
            assert got is not None, (variant, name)
            assert gotruth.section_position(stripped, got) == \
                gotruth.section_position(ref, ref_syms[name][0]), (variant, name)
