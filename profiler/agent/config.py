"""`goprof agent` settings: built-in defaults, then the --config YAML file, then the
command line, each overriding the one before.

The file's keys are the long flag names (`output-dir: /var/lib/goprof`; `output_dir`
is accepted too), so the flags' help documents the file and nothing drifts.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml
from goprof.errors import UsageError

DEFAULTS: dict[str, Any] = {
    "pid": [], "exe": [], "comm": [], "cgroup": [],
    "window": "10s", "frequency": 99, "kernel": True, "mem": False, "mem_rate": "512K",
    "service_name": None, "hostname": None,
    "parca": None, "insecure": False, "parca_ca": None, "parca_token_file": None,
    "pyroscope": None, "pyroscope_user": None, "pyroscope_password_file": None,
    "pyroscope_token_file": None, "tenant_id": None,
    "output_dir": None, "output_template": "{exe}-{pid}-{time}.{kind}.pb.gz",
    "retain": None, "retain_size": None,
    "spool_dir": "/var/lib/goprof/spool", "spool_size": "1G", "queue_size": "64M",
    "metrics_addr": "127.0.0.1:7471", "log_format": "text", "duration": None,
}
LISTS = {"pid", "exe", "comm", "cgroup"}
BOOLS = {"kernel", "mem", "insecure"}
INTS = {"frequency"}


def read_config(path: str) -> dict[str, Any]:
    """The file's settings by option name; UsageError saying what is wrong and where."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise UsageError(f"--config {path}: {e.strerror}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" (line {where.line + 1})" if where is not None else ""
        raise UsageError(f"--config {path}: not valid YAML{at}: "
                         f"{getattr(e, 'problem', None) or e}") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise UsageError(f"--config {path}: expected a mapping of settings (key: value)")
    settings: dict[str, Any] = {}
    for key, value in doc.items():
        name = str(key).replace("-", "_")
        if name not in DEFAULTS:
            known = ", ".join(k.replace("_", "-") for k in DEFAULTS)
            raise UsageError(f"--config {path}: unknown setting {key!r}; known: {known}")
        settings[name] = _typed(path, str(key), name, value)
    return settings


def _typed(path: str, key: str, name: str, value: Any) -> Any:
    bad = UsageError(f"--config {path}: {key}: {value!r} is not a valid value")
    if value is None:
        return None
    if name in LISTS:
        items = value if isinstance(value, list) else [value]
        if name == "pid":
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
                raise bad
            return items
        return [str(v) for v in items]
    if name in BOOLS:
        if not isinstance(value, bool):
            raise bad
        return value
    if name in INTS:
        if not isinstance(value, int) or isinstance(value, bool):
            raise bad
        return value
    if isinstance(value, (dict, list)):
        raise bad
    return str(value)


def merge(args: argparse.Namespace) -> argparse.Namespace:
    """The effective settings: the command line where given, else the file, else the
    defaults (the agent's flags all default to None, so "given" is visible)."""
    from_file = read_config(args.config) if args.config else {}
    merged = {}
    for name, default in DEFAULTS.items():
        given = getattr(args, name, None)
        if name in LISTS and not given:
            given = None
        merged[name] = given if given is not None else from_file.get(name, default)
    return argparse.Namespace(**merged, config=args.config)
