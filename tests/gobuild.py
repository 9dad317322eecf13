"""Builds the Go programs under tests/fixtures/, for the tests and benchmarks.

Each (program, toolchain, variant) is built once and cached under build/fixtures/,
keyed by a hash of the sources, so a second test run reuses it.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures"
CACHE = Path(__file__).resolve().parent.parent / "build" / "fixtures"

# name -> GOTOOLCHAIN value. "local" is the machine's Go (1.26); 1.27.3 comes from
# the module proxy the first time (about 70 MB).
TOOLCHAINS = {"go1.26": "local", "go1.27": "go1.27.3"}

# Variants users ship: plain, stripped (-s -w), stripped PIE.
VARIANTS = {
    "normal": [],
    "stripped": ["-ldflags=-s -w"],
    "pie": ["-buildmode=pie", "-ldflags=-s -w"],
}


@dataclass(frozen=True)
class GoBinary:
    path: Path
    program: str
    toolchain: str
    variant: str

    @property
    def id(self) -> str:
        return f"{self.program}-{self.toolchain}-{self.variant}"


# A quoted import path of a package of this module (go.mod: module goprof.test/fixtures).
_LOCAL_IMPORT = re.compile(r'"goprof\.test/fixtures/([\w./-]+)"')


def _local_packages(program: str) -> list[str]:
    """The fixture packages that program imports, directly or not (e.g. allocwork)."""
    seen: set[str] = set()
    todo = [program]
    while todo:
        pkg = todo.pop()
        for p in sorted((FIXTURES / pkg).glob("*.go")):
            for dep in _LOCAL_IMPORT.findall(p.read_text()):
                if dep not in seen and dep != program:
                    seen.add(dep)
                    todo.append(dep)
    return sorted(seen)


def _source_hash(program: str) -> str:
    """Hash of the program's sources, go.mod, and the local packages it imports."""
    h = hashlib.sha256()
    for p in sorted((FIXTURES / program).rglob("*.go")) + [FIXTURES / "go.mod"]:
        h.update(p.name.encode())
        h.update(p.read_bytes())
    # After the program's own files, so programs without local imports keep their key.
    for pkg in _local_packages(program):
        for p in sorted((FIXTURES / pkg).glob("*.go")):
            h.update(f"{pkg}/{p.name}".encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def go_env(toolchain: str) -> dict[str, str]:
    env = dict(os.environ)
    env["GOTOOLCHAIN"] = TOOLCHAINS[toolchain]
    env.setdefault("GOFLAGS", "-mod=mod")
    env.setdefault("HOME", "/root")
    env.setdefault("GOPATH", "/root/go")
    env.setdefault("GOCACHE", "/root/.cache/go-build")
    return env


def go_command() -> str:
    go = shutil.which("go") or "/usr/local/go/bin/go"
    return go


def build(program: str, toolchain: str = "go1.26", variant: str = "normal") -> GoBinary:
    key = f"{program}-{toolchain}-{variant}-{_source_hash(program)}"
    out = CACHE / key / program
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        cmd = [go_command(), "build", *VARIANTS[variant], "-o", str(tmp), f"./{program}"]
        res = subprocess.run(cmd, cwd=FIXTURES, env=go_env(toolchain), capture_output=True,
                             text=True, timeout=600)
        if res.returncode != 0:
            raise RuntimeError(f"building {program} with {toolchain}/{variant} failed:\n"
                               f"{res.stdout}{res.stderr}")
        tmp.rename(out)
    return GoBinary(out, program, toolchain, variant)


def go_version_of(binary: Path) -> str:
    res = subprocess.run([go_command(), "version", str(binary)], capture_output=True, text=True,
                         check=True)
    return res.stdout.split()[-1]
