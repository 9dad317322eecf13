from __future__ import annotations

import os

import pytest

from tests import gobuild

requires_root = pytest.mark.skipif(os.geteuid() != 0, reason="loads BPF programs: needs root")

ALL_BUILDS = [(t, v) for t in gobuild.TOOLCHAINS for v in gobuild.VARIANTS]


@pytest.fixture(scope="session", params=ALL_BUILDS, ids=lambda p: f"{p[0]}-{p[1]}")
def cpusplit(request) -> gobuild.GoBinary:
    """The CPU-split fixture, for every toolchain and variant."""
    toolchain, variant = request.param
    return gobuild.build("cpusplit", toolchain, variant)


@pytest.fixture(scope="session")
def cpusplit_plain() -> gobuild.GoBinary:
    return gobuild.build("cpusplit", "go1.26", "normal")
