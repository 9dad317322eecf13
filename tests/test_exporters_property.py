"""Properties of the exporters over random profiles: nothing is lost or invented.

pprof keeps every function's flat and cumulative totals; folded and speedscope weigh
to exactly the sum of the chosen sample value.
"""

from __future__ import annotations

import json
from collections import Counter

from goprof.exporters.folded import fold
from goprof.exporters.proto import profile_pb2 as pb
from goprof.model import Frame, Location, Mapping, Profile, Sample, ValueType, unnamed_name
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_exporters import check_pprof, decode, write

MAPPINGS = [
    Mapping(0x400000, 0x500000, 0, "/bin/app", "b1"),
    Mapping(0x7F0000000000, 0x7F0000100000, 0x2000, "/lib/libx.so", symbolized=False),
    Mapping(0xFFFFFFFF81000000, 0xFFFFFFFF82000000, 0, "[kernel.kallsyms]"),
]
FUNCS = [f"pkg.f{i}" for i in range(6)]


@st.composite
def locations(draw: st.DrawFn, index: int) -> Location:
    mapping = draw(st.sampled_from([None, *MAPPINGS]))
    base = mapping.start if mapping else 0x1000
    names = draw(st.lists(st.sampled_from(FUNCS), max_size=3))
    kernel = mapping is MAPPINGS[2]
    frames = tuple(
        # A function's identity (file, start line) is fixed; the sampled line varies.
        Frame(name, f"/src/{name}.go", draw(st.integers(0, 500)), 10 * FUNCS.index(name),
              inlined=i < len(names) - 1, kernel=kernel)
        for i, name in enumerate(names)
    )
    return Location(base + 0x10 * index, mapping, frames)


@st.composite
def profiles(draw: st.DrawFn) -> Profile:
    n_locs = draw(st.integers(1, 8))
    locs = [draw(locations(i)) for i in range(n_locs)]
    samples = []
    for _ in range(draw(st.integers(0, 15))):
        stack = tuple(draw(st.lists(st.sampled_from(locs), min_size=1, max_size=6)))
        count = draw(st.integers(0, 50))
        labels = draw(st.sampled_from([
            {"pid": "1", "tid": "1", "comm": "a"},
            {"pid": "1", "tid": "2", "comm": "a"},
            {"pid": "20", "tid": "20", "comm": "b"},
            {},
        ]))
        samples.append(Sample(stack, (count, count * 1000), labels))
    return Profile(
        sample_types=[ValueType("samples", "count"), ValueType("cpu", "nanoseconds")],
        period_type=ValueType("cpu", "nanoseconds"),
        period=1000,
        samples=samples,
    )


def model_totals(profile: Profile) -> tuple[Counter, Counter]:
    """(flat, cum) per function name, or per unnamed address, for every value index."""
    flat: Counter = Counter()
    cum: Counter = Counter()
    for s in profile.samples:
        names = [[f.function for f in loc.frames] or [f"@{loc.address:x}"]
                 for loc in s.locations]
        for i, v in enumerate(s.values):
            flat[(names[0][0], i)] += v
            for name in {n for group in names for n in group}:
                cum[(name, i)] += v
    return flat, cum


def pprof_totals(msg: pb.Profile) -> tuple[Counter, Counter]:
    st_ = msg.string_table
    funcs = {f.id: st_[f.name] for f in msg.function}
    locs = {loc.id: [funcs[ln.function_id] for ln in loc.line] or [f"@{loc.address:x}"]
            for loc in msg.location}
    flat: Counter = Counter()
    cum: Counter = Counter()
    for s in msg.sample:
        names = [locs[i] for i in s.location_id]
        for i, v in enumerate(s.value):
            flat[(names[0][0], i)] += v
            for name in {n for group in names for n in group}:
                cum[(name, i)] += v
    return flat, cum


@settings(max_examples=150, deadline=None)
@given(profiles())
def test_pprof_round_trip_keeps_totals_per_function(profile: Profile) -> None:
    msg = decode(write("pprof", profile))
    check_pprof(msg)
    assert len(msg.sample) == len(profile.samples)
    assert pprof_totals(msg) == model_totals(profile)
    # Every named frame became exactly one Line, innermost first.
    st_ = msg.string_table
    funcs = {f.id: st_[f.name] for f in msg.function}
    by_id = {loc.id: loc for loc in msg.location}
    for sample, written in zip(profile.samples, msg.sample, strict=True):
        for loc, loc_id in zip(sample.locations, written.location_id, strict=True):
            assert by_id[loc_id].address == loc.address
            assert [funcs[ln.function_id] for ln in by_id[loc_id].line] == [
                f.function for f in loc.frames]


@settings(max_examples=150, deadline=None)
@given(profiles(), st.sampled_from([None, "samples", "cpu"]))
def test_folded_total_is_the_sum_of_sample_values(profile: Profile, sample_type) -> None:
    index = 1 if sample_type == "cpu" else 0  # None: "samples" is folded's default
    expected = sum(s.values[index] for s in profile.samples)
    text = write("folded", profile, **({"sample_type": sample_type} if sample_type else {}))
    lines = text.decode().splitlines()
    stacks = [ln.rsplit(" ", 1)[0] for ln in lines]
    assert stacks == sorted(set(stacks))  # merged and sorted
    assert sum(int(ln.rsplit(" ", 1)[1]) for ln in lines) == expected
    assert sum(fold(profile, sample_type).values()) == expected
    # Every unnamed address is printed the way the model names it.
    for s in profile.samples:
        for loc in s.locations:
            if not loc.frames and s.values[index]:
                assert unnamed_name(loc) in text.decode()


@settings(max_examples=150, deadline=None)
@given(profiles(), st.sampled_from([None, "samples", "cpu"]))
def test_speedscope_total_is_the_sum_of_sample_values(profile: Profile, sample_type) -> None:
    index = 0 if sample_type == "samples" else 1  # None: the last type, cpu
    doc = json.loads(write("speedscope", profile,
                           **({"sample_type": sample_type} if sample_type else {})))
    n_frames = len(doc["shared"]["frames"])
    total = 0
    for prof in doc["profiles"]:
        assert len(prof["samples"]) == len(prof["weights"])
        assert prof["endValue"] == sum(prof["weights"])
        assert all(0 <= i < n_frames for s in prof["samples"] for i in s)
        total += prof["endValue"]
    assert total == sum(s.values[index] for s in profile.samples)
    pids = {s.labels.get("pid") for s in profile.samples if s.values[index]}
    assert len(doc["profiles"]) == max(1, len(pids))
