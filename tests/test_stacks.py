"""Stacks never collide: a program running through 4096 distinct stacks
(tests/fixtures/manystacks) profiled by goprof cpu and goprof mem keeps every one of
them apart. The old BPF_STACK_TRACE map (4 buckets per possible stack) dropped a stack
whose hash bucket was taken: the demo lost 4 of 513 samples that way."""

from __future__ import annotations

import json
import re

import pytest

from tests import gobuild
from tests.conftest import requires_root
from tests.helpers import read_pprof, run_goprof, sample_functions

pytestmark = requires_root

DEPTH = 12  # manystacks' default: 2^12 = 4096 distinct stacks


def walked_stacks(prof) -> tuple[set[tuple[str, ...]], int]:
    """The distinct left/right paths of the samples under main.walk, and how many
    samples (by count) went through main.leaf. Each is checked well-formed on the way:
    main.leaf, DEPTH frames of main.left/main.right, main.walk."""
    paths: set[tuple[str, ...]] = set()
    leaf_samples = 0
    for sample, names in zip(prof.sample, sample_functions(prof), strict=True):
        if "main.leaf" not in names:
            continue
        at = names.index("main.leaf")
        path = tuple(names[at + 1:at + 1 + DEPTH])
        assert set(path) <= {"main.left", "main.right"} and len(path) == DEPTH, names
        assert names[at + 1 + DEPTH] == "main.walk", names
        paths.add(path)
        leaf_samples += sample.value[0]
    return paths, leaf_samples


def assert_no_collisions(stats_path, stderr: str) -> dict:
    """Collisions counted 0 in --stats (goprof cpu says stack_collisions, goprof mem
    collisions) and in the summary's row."""
    stats = json.loads(stats_path.read_text())
    key = "stack_collisions" if "stack_collisions" in stats else "collisions"
    assert stats[key] == 0, stats
    assert stats.get("stacks_full", 0) == 0, stats  # goprof mem: the stack map had no room
    m = re.search(r"^stack collisions\s+(\d+)", stderr, re.M)
    assert m and m.group(1) == "0", stderr
    return stats


def test_cpu_keeps_thousands_of_stacks_apart(tmp_path):
    """6 s at 997 Hz on both cores: ~12000 samples over 4096 equally likely stacks on an
    idle host (about 3900 distinct expected), every one well-formed, none collided. A
    busy host leaves it less: 4 s beside other test runs gave 1834 samples, 1488 distinct
    stacks; 6 s keeps that well above 1000."""
    binary = gobuild.build("manystacks", "go1.26", "normal")
    out, stats = tmp_path / "cpu.pb.gz", tmp_path / "s.json"
    res = run_goprof("cpu", "-F", "997", "--stats", str(stats), "-o", str(out), "--",
                     str(binary.path), "-duration", "6s", check=True)
    st = assert_no_collisions(stats, res.stderr)
    prof = read_pprof(out)
    paths, leaf_samples = walked_stacks(prof)
    assert len(paths) > 1000, (len(paths), leaf_samples)
    # Every sample goprof counted is in the profile: none dropped for want of its stack.
    assert sum(s.value[0] for s in prof.sample) == st["samples"], st


@pytest.mark.parametrize("method", [["--method", "span", "--rate", "65536"],
                                    ["--method", "exact"]], ids=["span", "exact"])
def test_mem_keeps_thousands_of_stacks_apart(method, tmp_path):
    """The leaves allocate 64 KiB each (the large-object path): with the span method at
    a 64 KiB rate most allocations take a stack, with exact all do; every one of the
    4096 stacks is allocated from a dozen times a second per core."""
    binary = gobuild.build("manystacks", "go1.27", "stripped")
    out, stats = tmp_path / "mem.pb.gz", tmp_path / "s.json"
    res = run_goprof("mem", *method, "--stats", str(stats), "-o", str(out), "--",
                     str(binary.path), "-mode", "alloc", "-duration", "3s", check=True)
    assert_no_collisions(stats, res.stderr)
    paths, leaf_samples = walked_stacks(read_pprof(out))
    assert len(paths) > 1000, (len(paths), leaf_samples)
