"""The exporters, on small hand-built profiles (see test_exporters_property.py for random
ones): exact folded text, speedscope structure, and pprof checked three ways — decoded
with our generated classes, against Parca's stricter rules, and by `go tool pprof`."""

from __future__ import annotations

import gzip
import io
import json
import re
import subprocess
from pathlib import Path

import pytest
from goprof.exporters import (
    FORMATS,
    exporter_for_path,
    get_exporter,
    profile_suffixes,
    written_suffixes,
)
from goprof.exporters.proto import profile_pb2 as pb
from goprof.exporters.speedscope import SCHEMA
from goprof.model import Frame, Location, Mapping, Profile, Sample, ValueType

from tests import gobuild

EXE = Mapping(0x400000, 0x500000, 0, "/usr/local/bin/cpusplit", "b1d0")
KERNEL = Mapping(0xFFFFFFFF81000000, 0xFFFFFFFF82000000, 0, "[kernel.kallsyms]")
LIBC = Mapping(0x7F0000000000, 0x7F0000100000, 0x1000, "/lib/libc.so.6", symbolized=False)

# main.mix was inlined into main.alpha: one address, two frames, innermost first.
L_MIX = Location(0x401000, EXE, (
    Frame("main.mix", "/src/main.go", 21, 19, inlined=True),
    Frame("main.alpha", "/src/main.go", 11, 9),
))
L_MAIN = Location(0x402000, EXE, (Frame("main.main", "/src/main.go", 31, 29),))
L_BETA = Location(0x403000, EXE, (Frame("main.beta", "/src/main.go", 41, 39),))
L_KSYS = Location(0xFFFFFFFF81001000, KERNEL, (Frame("do_syscall_64", kernel=True),))
# A kernel frame the model left unmapped: the exporter puts it in [kernel.kallsyms].
L_KENTRY = Location(0xFFFFFFFF81002000, None, (Frame("entry_SYSCALL_64", kernel=True),))
L_LIBC = Location(0x7F0000002000, LIBC)  # unnamed, in a known mapping
L_BARE = Location(0xDEAD000, None)  # unnamed, no mapping at all

P42 = {"pid": "42", "tid": "43", "comm": "cpusplit"}
P42B = {"pid": "42", "tid": "44", "comm": "cpusplit"}
P7 = {"pid": "7", "tid": "7", "comm": "other"}
MS = 10_000_000


def cpu_profile() -> Profile:
    return Profile(
        sample_types=[ValueType("samples", "count"), ValueType("cpu", "nanoseconds")],
        period_type=ValueType("cpu", "nanoseconds"),
        period=MS,
        samples=[
            Sample((L_MIX, L_MAIN), (3, 3 * MS), P42),
            Sample((L_KSYS, L_KENTRY, L_LIBC, L_MAIN), (1, 1 * MS), P42B),
            Sample((L_MIX, L_MAIN), (2, 2 * MS), P42B),
            Sample((L_BETA, L_MAIN), (2, 2 * MS), P7),
            Sample((L_BARE,), (1, 1 * MS), P7),
        ],
        time_nanos=1_700_000_000_000_000_000,
        duration_nanos=5_000_000_000,
        comments=["goprof test"],
    )


def alloc_profile() -> Profile:
    return Profile(
        sample_types=[ValueType("alloc_objects", "count"), ValueType("alloc_space", "bytes")],
        period_type=ValueType("space", "bytes"),
        period=512 * 1024,
        samples=[
            Sample((L_MIX, L_MAIN), (4, 4096), P42),
            Sample((L_BETA, L_MAIN), (1, 64), P42),
        ],
        default_sample_type="alloc_space",
    )


def write(name: str, profile: Profile, **kw: str) -> bytes:
    buf = io.BytesIO()
    get_exporter(name).write(profile, buf, **kw)
    return buf.getvalue()


def decode(data: bytes) -> pb.Profile:
    msg = pb.Profile()
    msg.ParseFromString(gzip.decompress(data))
    return msg


def check_pprof(msg: pb.Profile) -> None:
    """The rules pprof and Parca's validator (pkg/normalizer/validate.go) enforce."""
    n_strings = len(msg.string_table)
    assert msg.string_table[0] == ""

    def in_range(i: int) -> None:
        assert 0 <= i < n_strings

    for items in (msg.mapping, msg.location, msg.function):
        assert [x.id for x in items] == list(range(1, len(items) + 1))
    for vt in [*msg.sample_type, msg.period_type]:
        in_range(vt.type)
        in_range(vt.unit)
    for m in msg.mapping:
        in_range(m.filename)
        in_range(m.build_id)
    for f in msg.function:
        for i in (f.name, f.system_name, f.filename):
            in_range(i)
    for loc in msg.location:
        assert 0 <= loc.mapping_id <= len(msg.mapping)
        for line in loc.line:
            assert 1 <= line.function_id <= len(msg.function)
    for s in msg.sample:
        assert len(s.value) == len(msg.sample_type)
        assert all(1 <= i <= len(msg.location) for i in s.location_id)
        for label in s.label:
            in_range(label.key)
            in_range(label.str)
    for c in msg.comment:
        in_range(c)
    in_range(msg.default_sample_type)


# --- registry -----------------------------------------------------------------------


def test_registry_names_and_suffixes() -> None:
    assert FORMATS == ("pprof", "folded", "speedscope")
    for name in FORMATS:
        assert get_exporter(name).name == name
    assert get_exporter(" PPROF ").name == "pprof"
    cases = {
        "out/cpu.pb.gz": "pprof", "cpu.pprof": "pprof", "cpu.pb": "pprof",
        "cpu.folded": "folded", "cpu.txt": "folded", "cpu.collapsed": "folded",
        "cpu.speedscope.json": "speedscope", "CPU.JSON": "speedscope",
    }
    for path, name in cases.items():
        exporter = exporter_for_path(path)
        assert exporter is not None and exporter.name == name, path
    assert exporter_for_path("cpu.svg") is None
    assert exporter_for_path("cpu.gz") is None


def test_each_format_names_the_suffix_it_writes_and_retention_knows_them() -> None:
    assert written_suffixes() == (".pb.gz", ".folded", ".speedscope.json")
    for name in FORMATS:
        exporter = get_exporter(name)
        assert exporter.suffixes[0] == exporter.suffix
        assert exporter_for_path("x" + exporter.suffix) is exporter
    # What gunzip leaves of a .pb.gz is goprof's too; .pprof, .txt, .json are not claimed.
    assert profile_suffixes() == (".speedscope.json", ".folded", ".pb.gz", ".pb")


def test_unknown_format_lists_known_ones() -> None:
    with pytest.raises(ValueError, match="pprof, folded, speedscope"):
        get_exporter("flamegraph")


@pytest.mark.parametrize("name", FORMATS)
def test_unknown_sample_type_is_an_error(name: str) -> None:
    with pytest.raises(ValueError, match="samples, cpu"):
        write(name, cpu_profile(), sample_type="wall")


# --- folded -------------------------------------------------------------------------


def test_folded_exact_text_with_processes() -> None:
    text = write("folded", cpu_profile()).decode()
    assert text == (
        "cpusplit (pid 42);main.main;libc.so.6+0x3000;entry_SYSCALL_64_[k];do_syscall_64_[k] 1\n"
        "cpusplit (pid 42);main.main;main.alpha;main.mix 5\n"
        "other (pid 7);0xdead000 1\n"
        "other (pid 7);main.main;main.beta 2\n"
    )


def test_folded_one_process_has_no_process_frame_and_weighs_by_choice() -> None:
    alloc = alloc_profile()
    # default_sample_type (alloc_space) wins over the "samples"-first rule.
    assert write("folded", alloc).decode() == (
        "main.main;main.alpha;main.mix 4096\n"
        "main.main;main.beta 64\n"
    )
    assert write("folded", alloc, sample_type="alloc_objects").decode() == (
        "main.main;main.alpha;main.mix 4\n"
        "main.main;main.beta 1\n"
    )
    cpu = cpu_profile()
    cpu.samples = [s for s in cpu.samples if s.labels["pid"] == "42"]
    assert write("folded", cpu, sample_type="cpu").decode().splitlines()[-1] == (
        f"main.main;main.alpha;main.mix {5 * MS}"
    )


def test_folded_skips_zero_and_empty_and_cleans_names() -> None:
    p = alloc_profile()
    odd = Location(0x404000, EXE, (Frame("main.a;b\nc"),))
    p.samples = [
        Sample((L_MAIN,), (0, 0)),
        Sample((), (1, 8)),
        Sample((odd,), (1, 8)),
    ]
    assert write("folded", p).decode() == "main.a:b c 8\n"


# --- speedscope ---------------------------------------------------------------------


def test_speedscope_structure() -> None:
    doc = json.loads(write("speedscope", cpu_profile()))
    assert doc["$schema"] == SCHEMA == "https://www.speedscope.app/file-format-schema.json"
    assert doc["exporter"].startswith("goprof@")
    assert doc["activeProfileIndex"] == 0
    assert doc["name"] == "goprof cpu (nanoseconds)"
    frames = doc["shared"]["frames"]
    by_name = {f["name"]: f for f in frames}
    assert by_name["main.alpha"] == {"name": "main.alpha", "file": "/src/main.go", "line": 9}
    assert by_name["libc.so.6+0x3000"] == {"name": "libc.so.6+0x3000"}
    assert by_name["0xdead000"] == {"name": "0xdead000"}
    assert by_name["do_syscall_64"] == {"name": "do_syscall_64"}
    assert len(frames) == len({(f["name"], f.get("file"), f.get("line")) for f in frames})

    # The busiest process first, since speedscope opens profile 0.
    assert [p["name"] for p in doc["profiles"]] == ["cpusplit (pid 42)", "other (pid 7)"]
    for prof in doc["profiles"]:
        assert prof["type"] == "sampled"
        assert prof["unit"] == "nanoseconds"
        assert prof["startValue"] == 0
        assert len(prof["samples"]) == len(prof["weights"])
        assert prof["endValue"] == sum(prof["weights"])
        assert all(0 <= i < len(frames) for s in prof["samples"] for i in s)
    first = doc["profiles"][0]
    stacks = {tuple(frames[i]["name"] for i in s): w
              for s, w in zip(first["samples"], first["weights"], strict=True)}
    # Root first, inlined callee after its caller, identical stacks merged.
    assert stacks[("main.main", "main.alpha", "main.mix")] == 5 * MS
    assert first["endValue"] == 6 * MS


@pytest.mark.parametrize(("profile", "sample_type", "unit"), [
    (cpu_profile, "samples", "none"),
    (cpu_profile, None, "nanoseconds"),
    (alloc_profile, None, "bytes"),
    (alloc_profile, "alloc_objects", "none"),
])
def test_speedscope_unit_follows_sample_type(profile, sample_type, unit) -> None:
    doc = json.loads(write("speedscope", profile(), **({"sample_type": sample_type}
                                                      if sample_type else {})))
    assert {p["unit"] for p in doc["profiles"]} == {unit}


def test_speedscope_with_no_samples_still_has_a_profile() -> None:
    p = alloc_profile()
    p.samples = []
    doc = json.loads(write("speedscope", p))
    assert doc["profiles"] == [{"type": "sampled", "name": "no samples", "unit": "bytes",
                                "startValue": 0, "endValue": 0, "samples": [], "weights": []}]


# --- pprof --------------------------------------------------------------------------


def test_pprof_layout() -> None:
    data = write("pprof", cpu_profile())
    assert data[:2] == b"\x1f\x8b"  # gzipped, like runtime/pprof
    msg = decode(data)
    check_pprof(msg)
    s = msg.string_table

    assert [(s[v.type], s[v.unit]) for v in msg.sample_type] == [
        ("samples", "count"), ("cpu", "nanoseconds")]
    assert (s[msg.period_type.type], s[msg.period_type.unit], msg.period) == (
        "cpu", "nanoseconds", MS)
    assert msg.time_nanos == 1_700_000_000_000_000_000
    assert msg.duration_nanos == 5_000_000_000
    assert [s[c] for c in msg.comment] == ["goprof test"]
    assert msg.default_sample_type == 0  # the model names none

    assert [(s[m.filename], s[m.build_id], m.memory_start, m.memory_limit, m.file_offset)
            for m in msg.mapping] == [
        ("/usr/local/bin/cpusplit", "b1d0", 0x400000, 0x500000, 0),
        ("[kernel.kallsyms]", "", KERNEL.start, KERNEL.limit, 0),
        ("/lib/libc.so.6", "", LIBC.start, LIBC.limit, 0x1000),
    ]
    flags = [(m.has_functions, m.has_filenames, m.has_line_numbers, m.has_inline_frames)
             for m in msg.mapping]
    assert flags == [(True,) * 4, (True,) * 4, (False,) * 4]

    funcs = {f.id: f for f in msg.function}
    for f in msg.function:
        assert f.name == f.system_name
    assert len({s[f.name] for f in msg.function}) == len(msg.function)  # deduplicated

    def lines(loc: pb.Location) -> list[tuple[str, int]]:
        return [(s[funcs[ln.function_id].name], ln.line) for ln in loc.line]

    locs = {loc.address: loc for loc in msg.location}
    assert len(locs) == len(msg.location) == 7
    # Innermost first: the inlined callee, then the function it was inlined into.
    assert lines(locs[L_MIX.address]) == [("main.mix", 21), ("main.alpha", 11)]
    assert funcs[locs[L_MIX.address].line[0].function_id].start_line == 19
    assert s[funcs[locs[L_MIX.address].line[0].function_id].filename] == "/src/main.go"
    # Unnamed addresses keep the address and no lines.
    assert lines(locs[L_LIBC.address]) == [] and locs[L_LIBC.address].mapping_id == 3
    assert lines(locs[L_BARE.address]) == [] and locs[L_BARE.address].mapping_id == 0
    # Kernel frames, mapped or not, land in [kernel.kallsyms].
    assert locs[L_KSYS.address].mapping_id == 2
    assert locs[L_KENTRY.address].mapping_id == 2

    loc_by_id = {loc.id: loc for loc in msg.location}
    first = msg.sample[0]
    assert [loc_by_id[i].address for i in first.location_id] == [L_MIX.address, L_MAIN.address]
    assert list(first.value) == [3, 3 * MS]
    assert {s[lb.key]: s[lb.str] for lb in first.label} == P42
    assert len(msg.sample) == 5  # pprof keeps samples as they are; tools merge


def test_pprof_sample_type_becomes_default_and_output_is_reproducible() -> None:
    msg = decode(write("pprof", cpu_profile(), sample_type="samples"))
    assert msg.string_table[msg.default_sample_type] == "samples"
    msg = decode(write("pprof", alloc_profile()))
    assert msg.string_table[msg.default_sample_type] == "alloc_space"
    assert write("pprof", cpu_profile()) == write("pprof", cpu_profile())


def test_pprof_rejects_a_sample_with_the_wrong_number_of_values() -> None:
    p = alloc_profile()
    p.samples.append(Sample((L_MAIN,), (1,)))
    with pytest.raises(ValueError, match="1 values"):
        write("pprof", p)


# --- go tool pprof reads what we write ----------------------------------------------


def go_pprof(path: Path, *args: str) -> str:
    go = gobuild.go_command()
    if not Path(go).exists():
        pytest.skip("go is not installed")
    env = gobuild.go_env("go1.26")
    env["PPROF_TMPDIR"] = str(path.parent)
    # -symbolize=none: the test's mapping paths are made up, and a real /lib/libc.so.6
    # on the machine must not lend our fake addresses its names.
    res = subprocess.run([go, "tool", "pprof", "-symbolize=none", *args, str(path)],
                         capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr
    return res.stdout


@pytest.fixture(scope="module")
def cpu_pprof(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pprof") / "cpu.pb.gz"
    path.write_bytes(write("pprof", cpu_profile()))
    return path


def test_go_tool_pprof_traces_mark_inlined_frames(cpu_pprof: Path) -> None:
    out = go_pprof(cpu_pprof, "-traces")
    assert "Type: cpu" in out
    lines = [ln.split() for ln in out.splitlines()]
    mix = next(i for i, ln in enumerate(lines) if "main.mix" in ln)
    assert lines[mix][-2:] == ["main.mix", "(inline)"]
    assert lines[mix + 1] == ["main.alpha"]  # the physical frame is not marked
    assert lines[mix + 2] == ["main.main"]
    assert "comm:" in out and "cpusplit" in out and "pid:" in out
    assert "do_syscall_64" in out and "entry_SYSCALL_64" in out


def test_go_tool_pprof_top_totals(cpu_pprof: Path) -> None:
    out = go_pprof(cpu_pprof, "-top")
    assert "Total samples = 90ms" in out
    assert "Duration: 5s" in out
    flat = {ln.split()[-1] if "(inline)" not in ln else ln.split()[-2]: ln.split()[0]
            for ln in out.splitlines() if ln.strip().endswith(("main.mix (inline)", "main.main"))}
    assert flat == {"main.mix": "50ms", "main.main": "0"}
    counts = go_pprof(cpu_pprof, "-top", "-sample_index=samples")
    assert "Showing nodes accounting for 9, 100% of 9 total" in counts


def test_go_tool_pprof_raw_round_trip(cpu_pprof: Path) -> None:
    out = go_pprof(cpu_pprof, "-raw")
    assert "samples/count cpu/nanoseconds" in out
    assert "PeriodType: cpu nanoseconds" in out and f"Period: {MS}" in out
    mappings = out.split("Mappings", 1)[1]
    assert "/usr/local/bin/cpusplit b1d0 [FN][FL][LN][IN]" in mappings
    assert "[kernel.kallsyms]" in mappings
    locations = out.split("Locations", 1)[1].split("Mappings", 1)[0]
    # No mapping: pprof prints the bare address and no M=.
    assert re.search(r"^\s*\d+: 0xdead000\s*$", locations, re.M)
    assert re.search(r"^\s*\d+: 0x7f0000002000 M=3\s*$", locations, re.M)
    assert "main.mix /src/main.go:21" in locations


def test_go_tool_pprof_reads_an_allocation_profile(tmp_path: Path) -> None:
    alloc = tmp_path / "alloc.pprof"
    alloc.write_bytes(write("pprof", alloc_profile()))
    out = go_pprof(alloc, "-top")
    assert "Type: alloc_space" in out
    assert "of 4160B total" in out  # 4096 + 64 bytes
    out = go_pprof(alloc, "-top", "-sample_index=alloc_objects")
    assert "of 5 total" in out
