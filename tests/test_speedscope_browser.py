"""Our speedscope file opens in the real speedscope app, in headless Chromium.

The Node side (tests/browser/render.mjs) serves speedscope's built app and the profile
on 127.0.0.1 and records the strings speedscope draws on its canvases. Setup:
`apt-get install -y chromium nodejs npm` and `npm ci --prefix tests/browser`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from goprof.exporters import get_exporter
from goprof.model import Frame, Location, Mapping, Profile, Sample, ValueType

BROWSER_DIR = Path(__file__).resolve().parent / "browser"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")

pytestmark = pytest.mark.browser


def _missing() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} not found (apt-get install -y chromium)"
    if shutil.which("node") is None:
        return "node not found (apt-get install -y nodejs npm)"
    for pkg in ("speedscope", "playwright-core"):
        if not (BROWSER_DIR / "node_modules" / pkg / "package.json").exists():
            return f"tests/browser/node_modules/{pkg} missing (npm ci --prefix tests/browser)"
    return None


def _profile() -> Profile:
    exe = Mapping(0x400000, 0x800000, 0, "/usr/local/bin/cpusplit", "feedface")
    main = Location(0x401000, exe, (Frame("main.main", "/src/main.go", 40, 35),))
    alpha = Location(0x402000, exe, (
        Frame("main.mix", "/src/mix.go", 12, 10, inlined=True),
        Frame("main.alpha", "/src/main.go", 20, 18),
    ))
    beta = Location(0x403000, exe, (Frame("main.beta", "/src/main.go", 30, 28),))
    labels = {"pid": "4242", "tid": "4243", "comm": "cpusplit"}
    return Profile(
        sample_types=[ValueType("samples", "count"), ValueType("cpu", "nanoseconds")],
        period_type=ValueType("cpu", "nanoseconds"),
        period=10_000_000,
        samples=[
            Sample((alpha, main), (70, 700_000_000), labels),
            Sample((beta, main), (30, 300_000_000), labels),
        ],
    )


def test_speedscope_app_draws_our_flame_graph(tmp_path: Path) -> None:
    reason = _missing()
    if reason:
        pytest.skip(reason)
    profile_path = tmp_path / "cpusplit.speedscope.json"
    with profile_path.open("wb") as f:
        get_exporter("speedscope").write(_profile(), f)
    shot = tmp_path / "speedscope.png"
    names = ["main.main", "main.alpha", "main.mix", "main.beta"]

    res = subprocess.run(
        ["node", str(BROWSER_DIR / "render.mjs"), str(profile_path), str(shot), *names],
        cwd=BROWSER_DIR, capture_output=True, text=True, timeout=120,
        env={**os.environ, "CHROMIUM": CHROMIUM},
    )
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout.strip().splitlines()[-1])

    drawn = report["texts"]
    for name in names:
        # Labels are cut to fit their box, so accept a drawn text that starts the name.
        assert any(name in t for t in drawn), f"{name} not drawn; drawn: {drawn}, {report}"
    # The time axis is drawn in the profile's unit (nanoseconds, shown as ms ticks for
    # this 1 s profile): the weights and the unit were read, not just the frame names.
    assert any(t.endswith("ms") for t in drawn), drawn
    assert report["blocked"] == [], "speedscope tried to leave 127.0.0.1"
    assert report["errors"] == []
    assert shot.stat().st_size > 10_000  # a real picture, not a blank page
