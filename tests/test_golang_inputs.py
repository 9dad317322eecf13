"""goprof.golang on inputs that are not a good Go binary (not Go at all, truncated,
random bytes) or whose BinarySymbols came from another copy of the file."""

from __future__ import annotations

import random
import shutil

import pytest
from goprof.golang.globals import global_address
from goprof.golang.layouts import runtime_layout
from goprof.golang.probes import probe_site, stack_check
from goprof.golang.x86 import rip_refs
from goprof.symbolizer import SymbolizerError, load_binary

from tests.gotruth import GLOBALS, PROBED, build


def test_non_go_binary():
    true = shutil.which("true") or "/bin/true"
    for name in PROBED:
        assert probe_site(true, name) is None
    for name in GLOBALS:
        assert global_address(true, name) is None
    with pytest.raises(SymbolizerError, match="not a Go program"):
        runtime_layout(true)


def test_decoders_take_any_bytes():
    """Truncated prologues and garbage give None or candidates inside the code, never an
    exception (a corrupt or unusual binary must not break the caller)."""
    rng = random.Random(7)
    huge = bytes.fromhex("4989e4" "4981eca84d0000" "0f8296000000" "4d3b6610" "0f868c000000")
    for cut in range(len(huge) + 1):
        found = stack_check(huge[:cut])
        assert found is None if cut < len(huge) else found == ("huge", 0x10, 20, 6)
    assert stack_check(huge, size=20 + 6 + 0x8C) is None  # jumps past the end
    for _ in range(3000):
        code = rng.randbytes(rng.randrange(64))
        stack_check(code, rng.choice([None, 8, 1000]))
        for ref in rip_refs(code, 0x1000):
            assert 0x1000 <= ref.at < 0x1000 + len(code)


def test_truncated_binaries_fail_cleanly(tmp_path):
    data = build("go1.26", "normal").read_bytes()
    for size in (len(data) // 3, len(data) // 2, len(data) - 4096):
        path = tmp_path / f"cut{size}"
        path.write_bytes(data[:size])
        for call in (lambda p: probe_site(p, "runtime.mallocgc"),
                     lambda p: global_address(p, "runtime.mbuckets"),
                     lambda p: global_address(p, "runtime.MemProfileRate"),
                     runtime_layout):
            try:
                call(path)
            except SymbolizerError:
                pass


def test_path_of_another_copy(tmp_path):
    """A BinarySymbols shared by files with the same build id reads the file it is told."""
    first, second = tmp_path / "first", tmp_path / "second"
    shutil.copy(build("go1.27", "stripped"), first)
    shutil.copy(first, second)
    b = load_binary(str(first))
    expected = (probe_site(b, "runtime.mallocgc"),
                global_address(b, "runtime.mbuckets"), runtime_layout(b))
    assert None not in expected
    first.unlink()
    with pytest.raises(SymbolizerError):
        probe_site(b, "runtime.mallocgc")
    path = str(second)
    assert (probe_site(b, "runtime.mallocgc", path=path),
            global_address(b, "runtime.mbuckets", path=path),
            runtime_layout(b, path=path)) == expected
