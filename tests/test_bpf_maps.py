"""goprof's own bpf(2) map calls against real kernel maps."""

from __future__ import annotations

import struct

import pytest
from goprof.bpf import syscalls
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import requires_root


def _hash_map(max_entries: int) -> syscalls.Map:
    return syscalls.Map.create("goprof_test", syscalls.MAP_HASH, 12, 8, max_entries)


@requires_root
@settings(max_examples=25, deadline=None)
@given(entries=st.dictionaries(st.binary(min_size=12, max_size=12),
                               st.integers(0, 2**64 - 1), max_size=300),
       chunk=st.sampled_from([1, 7, 64, 4096]))
def test_take_all_returns_every_entry_once_and_empties_the_map(entries, chunk) -> None:
    m = _hash_map(512)
    try:
        for key, value in entries.items():
            m.update(key, struct.pack("<Q", value))
        got = m.take_all(chunk=chunk)
        assert len(got) == len(entries)
        assert {k: struct.unpack("<Q", v)[0] for k, v in got} == entries
        assert list(m.keys()) == [], "taken entries are gone from the map"
        assert m.take_all(chunk=chunk) == []
    finally:
        m.close()


@requires_root
def test_take_all_grows_its_buffer_for_a_crowded_bucket() -> None:
    # 300 entries in 512 buckets: some bucket holds two or more, more than a chunk of 1
    # (the kernel answers ENOSPC and takes nothing from that bucket).
    m = _hash_map(512)
    try:
        want = {struct.pack("<III", i, i * 7, 1): i for i in range(300)}
        for key, value in want.items():
            m.update(key, struct.pack("<Q", value))
        got = m.take_all(chunk=1)
        assert {k: struct.unpack("<Q", v)[0] for k, v in got} == want
        assert list(m.keys()) == []
    finally:
        m.close()


@requires_root
def test_take_all_is_for_hash_maps_only() -> None:
    m = syscalls.Map.create("goprof_test", syscalls.MAP_ARRAY, 4, 8, 4)
    try:
        with pytest.raises(ValueError, match="hash maps"):
            m.take_all()
    finally:
        m.close()
