"""`goprof agent --config FILE`: whatever the file holds, one clear line and exit code 2,
or the setting accepted where its meaning is clear (YAML 1.1's `off` for metrics-addr).
The errors come before goprof needs root, so most of these run as any user."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from pathlib import Path

import pytest
from goprof.agent import config

from tests.conftest import requires_root
from tests.helpers import goprof_command

DEEP = "window: " + "[" * 3000 + "]" * 3000 + "\n"


def agent(tmp_path: Path, cfg: Path | str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*goprof_command(), "agent", "--config", str(cfg), *args,
                           "--duration", "1s", "--spool-dir", str(tmp_path / "spool")],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "COLUMNS": "400"})


def one_clear_line(res: subprocess.CompletedProcess, *words: str) -> None:
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert "Traceback" not in res.stderr, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("goprof: --config "), res.stderr
    for w in words:
        assert w in lines[0], (w, res.stderr)


@pytest.mark.parametrize(("content", "says"), [
    (b"output-dir: /tmp/caf\xe9\n", ["not UTF-8 text (byte 0xe9 on line 1)"]),
    (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03" + bytes(range(256)), ["not UTF-8 text"]),
    (b"window: 1s\x00\n", ["not valid YAML (line 1)", "U+0000"]),
    (b"- output-dir: /tmp\n- window: 1s\n", ["expected a mapping", "found a list"]),
    (b"just some words\n", ["expected a mapping", "'just some words'"]),
    (b"window: 1s\nwindow: 2s\n", ["window is set twice (lines 1 and 2)"]),
    (b"output-dir: /a\noutput_dir: /b\n", ["output-dir is set twice (lines 1 and 2)"]),
    (b"window: {every: [1, {s: 2}]}\n", ["window (line 1): expected one value, found a mapping"]),
    (b"exe: [[api, worker]]\n", ["exe (line 1)", "not a list of lists"]),
    (b"? [a, b]\n: 1\n", ["line 1: a setting's name is text"]),
    (b"frequency: !!int lots\n", ["frequency (line 1)", "'lots' does not read as its tag !!int"]),
    (b"frequency: 1e400\n", ["'1e400' is not a whole number"]),
    (DEEP.encode(), ["nested too deeply"]),
    # YAML 1.1 booleans where text is expected, with no clear meaning: quote it
    (b"output-dir: yes\n", ["output-dir (line 1)", "unquoted yes as the boolean true",
                            "quote it ('yes')"]),
    (b"hostname: no\n", ["hostname (line 1)", "quote it ('no')"]),
    (b"comm: [api, off]\n", ["comm (line 1)", "quote it ('off')"]),
    (b"retain: off\n", ["retain (line 1)", "quote it ('off')"]),
    (b"metrics-addr: on\n", ["metrics-addr (line 1)", "HOST:PORT", "or off to disable"]),
], ids=["latin1", "binary", "nul", "list", "scalar", "duplicate", "duplicate-spelling",
        "nested", "nested-list", "list-key", "bad-tag", "huge-int", "deep", "bool-dir",
        "bool-host", "bool-in-list", "bool-retain", "metrics-on"])
def test_bad_config_file_gives_one_line_and_exit_2(tmp_path: Path, content: bytes,
                                                    says: list[str]) -> None:
    cfg = tmp_path / "agent.yaml"
    cfg.write_bytes(content)
    one_clear_line(agent(tmp_path, cfg, "--output-dir", str(tmp_path)), str(cfg), *says)


def test_a_directory_or_an_endless_file_is_refused(tmp_path: Path) -> None:
    one_clear_line(agent(tmp_path, tmp_path), "Is a directory")
    one_clear_line(agent(tmp_path, "/dev/zero"), "over 1 MiB, too large for a settings file")


def test_settings_that_say_nothing_leave_the_defaults(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.yaml"
    for text in ("", "# nothing yet\n", "window: ~\nkernel:\nparca: off\npyroscope: false\n"):
        cfg.write_text(text)
        args = argparse.Namespace(config=str(cfg))
        merged = config.merge(args)
        assert (merged.window, merged.kernel, merged.parca, merged.pyroscope) == \
            ("10s", True, None, None), text


def test_text_settings_keep_the_text_as_written(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.yaml"
    cfg.write_bytes(b"\xef\xbb\xbfservice-name: 1.10\nexe: [api, 007]\nhostname: 2024-01-01\n")
    assert config.read_config(str(cfg)) == {
        "service_name": "1.10", "exe": ["api", "007"], "hostname": "2024-01-01"}


def test_metrics_addr_off_unquoted_is_off(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.yaml"
    for text in ("metrics-addr: off\n", "metrics-addr: Off\n", "metrics-addr: false\n",
                 "metrics-addr: 'off'\n"):
        cfg.write_text(text)
        assert config.read_config(str(cfg)) == {"metrics_addr": "off"}, text


@requires_root
def test_agent_runs_with_metrics_addr_off_from_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(f"metrics-addr: off\noutput-dir: {tmp_path / 'out'}\n"
                   f"pid: [{os.getpid()}]\nlog-format: json\n")  # this test: not Go, skipped
    (tmp_path / "out").mkdir()
    res = agent(tmp_path, cfg)
    assert res.returncode == 0, res.stderr
    logged = [json.loads(line)["msg"] for line in res.stderr.splitlines() if line.startswith("{")]
    assert "agent stopped" in logged and "metrics served" not in logged, res.stderr
