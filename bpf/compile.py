"""Compile a program under bpf/ with bcc and write its bytecode and map specs as JSON.

Run as a short-lived helper process (`python -m goprof.bpf.compile SOURCE OUT`):
bcc's clang costs about 1 s and 170 MB of RSS, which should not stay in a
profiler that runs for hours. The profiling process loads the result with
goprof.bpf.syscalls (see goprof.bpf.objects for the cache).
"""

from __future__ import annotations

import base64
import ctypes
import json
import os
import re
import struct
import sys
from pathlib import Path

# Instructions that load a map: BPF_LD | BPF_IMM | BPF_DW with src_reg
# BPF_PSEUDO_MAP_FD; bcc puts its own map fds in imm, which the loader replaces.
LD_IMM64 = 0x18
PSEUDO_MAP_FD = 1


def compile_source(source: Path, functions: list[str]) -> dict:
    # Imported here: only this helper process pays for bcc and its clang.
    from bcc import BPF
    from bcc.libbcc import lib

    lib.bpf_table_name.restype = ctypes.c_char_p
    bpf = BPF(text=inline_includes(source).encode())
    maps = []
    for i in range(lib.bpf_num_tables(bpf.module)):
        name = lib.bpf_table_name(bpf.module, i)
        maps.append(_map_spec(name, bpf.get_table(name)))
    if not maps:
        raise SystemExit("no maps found in the compiled module")
    fd_to_name = {m["fd"]: m["name"] for m in maps}
    programs = {}
    for fn in functions:
        code = bpf.dump_func(fn.encode())
        for i in range(0, len(code), 8):
            op, regs, _off, imm = struct.unpack_from("<BBhi", code, i)
            if op == LD_IMM64 and (regs >> 4) == PSEUDO_MAP_FD and imm not in fd_to_name:
                raise SystemExit(f"{fn}: instruction {i // 8} loads an unknown map fd {imm}")
        programs[fn] = base64.b64encode(code).decode()
    return {"maps": maps, "programs": programs, "license": "GPL"}


def inline_includes(source: Path) -> str:
    """The source with each `#include "x.h"` of its own folder replaced by that file.
    bcc rewrites map calls (`stacks0.lookup(...)`) only in the main file: code that
    uses maps in a header would reach the kernel as calls it refuses."""
    lines = []
    for line in source.read_text().splitlines():
        m = _LOCAL_INCLUDE.match(line)
        if m:
            header = source.parent / m.group(1)
            lines.append(f"// ---- {header.name} ----")
            lines.extend(inline_includes(header).splitlines())
            lines.append(f"// ---- end of {header.name} ----")
        else:
            lines.append(line)
    return "\n".join(lines) + "\n"


_LOCAL_INCLUDE = re.compile(r'^\s*#include\s+"([\w.-]+)"\s*$')


def _map_spec(name: bytes | str, table) -> dict:
    if isinstance(name, bytes):
        name = name.decode()
    return {
        "name": name,
        "fd": table.map_fd,
        "type": table.ttype,
        "key_size": ctypes.sizeof(table.Key),
        # bcc widens a per-CPU map's Leaf to one slot per CPU; sLeaf is one slot.
        "value_size": ctypes.sizeof(getattr(table, "sLeaf", table.Leaf)),
        "max_entries": table.max_entries,
        "flags": table.flags,
    }


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print("usage: python -m goprof.bpf.compile SOURCE OUT FUNCTION...", file=sys.stderr)
        return 2
    source, out, functions = Path(argv[0]), Path(argv[1]), argv[2:]
    spec = compile_source(source, functions)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(spec))
    os.replace(tmp, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
