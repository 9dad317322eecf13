"""`goprof agent` settings: built-in defaults, then the --config YAML file, then the
command line, each overriding the one before.

The file's keys are the long flag names (`output-dir: /var/lib/goprof`; `output_dir`
is accepted too), so the flags' help documents the file and nothing drifts.

The file is read node by node (not with yaml.safe_load) so that a setting given twice
is refused instead of the last one silently winning, a text setting keeps the text as
written (`service-name: 1.10` is "1.10", not the float 1.1), and an error can name
the line.
"""

from __future__ import annotations

import argparse
import codecs
from typing import Any

import yaml
from goprof.errors import UsageError
from goprof.exporters.directory import DEFAULT_TEMPLATE

DEFAULTS: dict[str, Any] = {
    "pid": [], "exe": [], "comm": [], "cgroup": [],
    "window": "10s", "frequency": 99, "kernel": True, "mem": False, "mem_rate": "512K",
    "goroutine_ids": False, "goroutines": False,
    "service_name": None, "hostname": None,
    "parca": None, "insecure": False, "parca_ca": None, "parca_token_file": None,
    "pyroscope": None, "pyroscope_user": None, "pyroscope_password_file": None,
    "pyroscope_token_file": None, "tenant_id": None,
    "output_dir": None, "output_template": DEFAULT_TEMPLATE,
    "retain": None, "retain_size": None,
    "spool_dir": "/var/lib/goprof/spool", "spool_size": "1G", "queue_size": "64M",
    "metrics_addr": "127.0.0.1:7471", "log_format": "text", "duration": None,
}
LISTS = {"pid", "exe", "comm", "cgroup"}
BOOLS = {"kernel", "mem", "insecure", "goroutine_ids", "goroutines"}
INTS = {"frequency"}
# YAML 1.1 reads unquoted off/no/false as the boolean false. For these text settings
# false has one clear meaning: metrics off, or no such sink (as if the line were not
# there). Any other text setting given a boolean is refused with a hint to quote it.
FALSE_MEANS: dict[str, str | None] = {"metrics_addr": "off", "parca": None,
                                      "pyroscope": None, "output_dir": None}
# A settings file is a few hundred bytes; reading stops here (`--config /dev/zero`).
MAX_BYTES = 1 << 20


def read_config(path: str) -> dict[str, Any]:
    """The file's settings by option name; UsageError saying what is wrong and where."""
    text = _read_text(path)
    loader: yaml.SafeLoader | None = None
    try:
        loader = yaml.SafeLoader(text)  # its reader already refuses control characters
        root = loader.get_single_node()
        if root is None:
            return {}  # empty, or only comments: no settings
        if not isinstance(root, yaml.MappingNode):
            raise UsageError(f"--config {path}: expected a mapping of settings (key: value), "
                             f"found {_kind(root)}")
        settings: dict[str, Any] = {}
        lines: dict[str, int] = {}
        for key_node, value_node in root.value:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                raise UsageError(f"--config {path}: line {line}: a setting's name is text, "
                                 f"not {_kind(key_node)}")
            key = key_node.value
            name = key.replace("-", "_")
            if name not in DEFAULTS:
                known = ", ".join(k.replace("_", "-") for k in DEFAULTS)
                raise UsageError(f"--config {path}: unknown setting {_show(key)} (line "
                                 f"{line}); known: {known}")
            if name in lines:
                flag = name.replace("_", "-")
                raise UsageError(f"--config {path}: {flag} is set twice (lines {lines[name]} "
                                 f"and {line}): keep one")
            lines[name] = line
            value = _typed(f"--config {path}: {key} (line {line})", name, value_node, loader)
            if value is not None:  # `key:` or `key: ~`: as if not given (the default)
                settings[name] = value
        return settings
    except yaml.YAMLError as e:
        raise UsageError(f"--config {path}: not valid YAML{_yaml_problem(e, text)}") from None
    except RecursionError:
        raise UsageError(f"--config {path}: nested too deeply to be a settings file") from None
    finally:
        if loader is not None:
            loader.dispose()


def _read_text(path: str) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise UsageError(f"--config {path}: {e.strerror}") from None
    if len(data) > MAX_BYTES:
        raise UsageError(f"--config {path}: over {MAX_BYTES >> 20} MiB, too large for a "
                         "settings file: is it the right file?")
    # YAML files are UTF-8, or UTF-16 with a byte order mark (some Windows editors).
    utf16 = data[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
    try:
        return data.decode("utf-16" if utf16 else "utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise UsageError(f"--config {path}: not {'UTF-16' if utf16 else 'UTF-8'} text (byte "
                         f"0x{data[e.start]:02x} on line {line}): a settings file is YAML "
                         "text; is it the right file?") from None


def _typed(where: str, name: str, node: yaml.Node, loader: yaml.SafeLoader) -> Any:
    """The setting's value from its node, checked against the type the flag takes."""
    value = _construct(where, node, loader)
    if value is None:
        return None
    if name in LISTS:
        items = node.value if isinstance(node, yaml.SequenceNode) else [node]
        if not all(isinstance(item, yaml.ScalarNode) for item in items):
            raise UsageError(f"{where}: give one value or a list of values, not "
                             f"{_kind(node)} of lists or mappings")
        if name == "pid":
            pids = [_construct(where, item, loader) for item in items]
            for item, pid in zip(items, pids, strict=True):
                if not isinstance(pid, int) or isinstance(pid, bool):
                    raise UsageError(f"{where}: {_show(item.value)} is not a process id")
            return pids
        return [_text(where, name, item, loader) for item in items]
    if not isinstance(node, yaml.ScalarNode):
        raise UsageError(f"{where}: expected one value, found {_kind(node)}")
    if name in BOOLS:
        if not isinstance(value, bool):
            raise UsageError(f"{where}: {_show(node.value)} is not true or false")
        return value
    if name in INTS:
        if not isinstance(value, int) or isinstance(value, bool):
            raise UsageError(f"{where}: {_show(node.value)} is not a whole number")
        return value
    return _text(where, name, node, loader)


def _text(where: str, name: str, node: yaml.ScalarNode, loader: yaml.SafeLoader
          ) -> str | None:
    """A text setting: the scalar as written, unless YAML made it a boolean."""
    value = _construct(where, node, loader)
    if isinstance(value, bool):
        if not value and name in FALSE_MEANS:
            return FALSE_MEANS[name]
        if name == "metrics_addr":
            raise UsageError(f"{where}: {_show(node.value)}: give HOST:PORT (default "
                             "127.0.0.1:7471), or off to disable it")
        raise UsageError(f"{where}: YAML reads unquoted {node.value} as the boolean "
                         f"{str(value).lower()}, not as text: quote it ('{node.value}') "
                         "if that is the value you mean")
    return node.value


def _construct(where: str, node: yaml.Node, loader: yaml.SafeLoader) -> Any:
    try:
        return loader.construct_object(node, deep=True)
    except yaml.YAMLError:
        raise
    except (ValueError, TypeError, AttributeError, OverflowError):
        # An explicit tag the text does not fit (`!!int abc`): PyYAML's constructors
        # raise plain Python errors for those.
        raise UsageError(f"{where}: {_show(getattr(node, 'value', ''))} does not read as "
                         f"its tag !!{node.tag.rsplit(':', 1)[-1]}") from None


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return f"the value {_show(node.value)}"


def _show(text: str) -> str:
    """A value for a message, bounded: a key or value may be megabytes long."""
    return repr(text if len(text) <= 60 else text[:60] + "...")


def _yaml_problem(e: yaml.YAMLError, text: str) -> str:
    """One line from PyYAML's multi-line error: the line, then the problem."""
    if isinstance(e, yaml.reader.ReaderError):
        line = text[:e.position].count("\n") + 1
        return (f" (line {line}): character U+{e.character:04X} is not allowed in YAML"
                if isinstance(e.character, int) else f" (line {line}): {e.reason}")
    mark = getattr(e, "problem_mark", None)
    at = f" (line {mark.line + 1})" if mark is not None else ""
    problem = getattr(e, "problem", None) or str(e)
    return f"{at}: {' '.join(str(problem).split())}"


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
