"""Compiled BPF objects: a cache of bcc's output, and loading it into the kernel.

The cache key covers everything the bytecode depends on: the C source, the
kernel release and headers bcc compiled against, and bcc's version. A miss runs
the compile helper in a child process (about 1-4 s, once per kernel and source:
`make setup` and `goprof doctor` warm it); a hit loads in milliseconds.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from goprof.bpf import syscalls
from goprof.bpf.compile import LD_IMM64, PSEUDO_MAP_FD
from goprof.errors import EnvironmentProblem


@dataclass(frozen=True)
class MapSpec:
    name: str
    fd: int  # bcc's fd at compile time, as it appears in the bytecode
    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int


@dataclass
class CompiledObject:
    source: str
    maps: dict[str, MapSpec]
    programs: dict[str, bytes]
    license: str


@dataclass
class LoadedObject:
    """Maps created and programs loaded; close() releases them (so does our exit)."""

    maps: dict[str, syscalls.Map]
    programs: dict[str, int] = field(default_factory=dict)

    def close(self) -> None:
        for fd in self.programs.values():
            os.close(fd)
        self.programs.clear()
        for m in self.maps.values():
            m.close()


def cache_dir() -> Path:
    if env := os.environ.get("GOPROF_CACHE_DIR"):
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/cache/goprof")
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "goprof"


def source_path(name: str) -> Path:
    return Path(str(resources.files("goprof.bpf") / name))


def _headers_identity() -> str:
    """Where bcc finds kernel headers: their identity is part of the cache key."""
    build = Path("/lib/modules") / os.uname().release / "build"
    try:
        return str(build.resolve(strict=True))
    except OSError:
        return "none"


def _bcc_version() -> str:
    try:
        from importlib.metadata import version

        return version("bcc")
    except Exception:
        pass
    for path in ("/usr/lib/x86_64-linux-gnu/libbcc.so.0",):
        try:
            return os.path.realpath(path)
        except OSError:
            continue
    return "unknown"


def cache_key(source_name: str, functions: list[str]) -> str:
    h = hashlib.sha256()
    source = source_path(source_name)
    h.update(source.read_bytes())
    for header in sorted(source.parent.glob("*.h")):  # what the programs #include
        h.update(b"\0" + header.name.encode() + b"\0" + header.read_bytes())
    for part in (os.uname().release, os.uname().version, _headers_identity(), _bcc_version(),
                 ",".join(functions)):
        h.update(b"\0" + part.encode())
    return h.hexdigest()[:24]


def compiled(source_name: str, functions: list[str]) -> tuple[CompiledObject, bool]:
    """The compiled object from the cache, else compiled now. Returns (object, was_cached)."""
    path = cache_dir() / f"{Path(source_name).stem}-{cache_key(source_name, functions)}.json"
    cached = path.exists()
    if not cached:
        _compile_in_helper(source_name, functions, path)
    try:
        data = json.loads(path.read_text())
        return (CompiledObject(
            source=source_name,
            maps={m["name"]: MapSpec(**m) for m in data["maps"]},
            programs={k: base64.b64decode(v) for k, v in data["programs"].items()},
            license=data["license"],
        ), cached)
    except (OSError, ValueError, KeyError, TypeError) as e:
        path.unlink(missing_ok=True)
        raise EnvironmentProblem(f"the compiled BPF cache {path} was unreadable ({e}); "
                                 "it was removed: run the command again") from None


def _compile_in_helper(source_name: str, functions: list[str], out: Path) -> None:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EnvironmentProblem(
            f"cannot create the BPF cache directory {out.parent}: {e.strerror}; "
            "set GOPROF_CACHE_DIR to a writable folder") from None
    check_bcc_ready()
    cmd = [sys.executable, "-m", "goprof.bpf.compile", str(source_path(source_name)), str(out),
           *functions]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        detail = "\n".join(res.stderr.strip().splitlines()[-12:])
        raise EnvironmentProblem(f"bcc could not compile {source_name}:\n{detail}\n"
                                 "run `sudo make setup` (installs bcc and kernel headers)")


def check_bcc_ready() -> None:
    """bcc and the kernel headers it compiles against: one clear line if missing."""
    try:
        import importlib.util

        found = importlib.util.find_spec("bcc") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise EnvironmentProblem("bcc's Python module is not installed: `sudo apt-get install "
                                 "python3-bpfcc` (or run `sudo make setup`), and run goprof with "
                                 "the Python that sees it")
    release = os.uname().release
    if not (Path("/lib/modules") / release / "build").exists():
        raise EnvironmentProblem(f"kernel headers for {release} not found "
                                 f"(/lib/modules/{release}/build): run `sudo make setup`, which "
                                 "installs linux-headers-amd64 and points bcc at them")


def load(obj: CompiledObject, sizes: dict[str, int] | None = None,
         value_sizes: dict[str, int] | None = None,
         prog_type: int = syscalls.PROG_PERF_EVENT,
         prog_types: dict[str, int] | None = None) -> LoadedObject:
    """Creates the object's maps (sizes override max_entries) and loads its programs,
    each as `prog_type` unless `prog_types` names another type for it."""
    sizes = sizes or {}
    prog_types = prog_types or {}
    value_sizes = value_sizes or {}
    loaded = LoadedObject(maps={})
    try:
        for spec in obj.maps.values():
            loaded.maps[spec.name] = syscalls.Map.create(
                spec.name, spec.type, spec.key_size, value_sizes.get(spec.name, spec.value_size),
                sizes.get(spec.name, spec.max_entries), spec.flags)
        fd_map = {spec.fd: loaded.maps[spec.name].fd for spec in obj.maps.values()}
        for name, code in obj.programs.items():
            loaded.programs[name] = syscalls.load_program(
                prog_types.get(name, prog_type), relocate(code, fd_map), name[:15], obj.license)
    except BaseException:
        loaded.close()
        raise
    return loaded


def relocate(code: bytes, fd_map: dict[int, int]) -> bytes:
    """Points every map-loading instruction at our maps instead of bcc's."""
    out = bytearray(code)
    for i in range(0, len(out), 8):
        op, regs, off, imm = struct.unpack_from("<BBhi", out, i)
        if op == LD_IMM64 and (regs >> 4) == PSEUDO_MAP_FD:
            struct.pack_into("<BBhi", out, i, op, regs, off, fd_map[imm])
    return bytes(out)
