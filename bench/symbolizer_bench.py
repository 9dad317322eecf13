"""Load the biggest Go binary at hand and name 10,000 distinct pcs of it.

Prints load time, resolve time and peak RSS. The target is the symbolizer's budget:
load + resolve within 0.5 s on a toolchain binary (about 25 MB, 8 MB of pclntab).

    .venv/bin/python bench/symbolizer_bench.py [BINARY] [--pcs N]
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import subprocess
import time

from goprof.symbolizer import load_binary


def default_binary() -> str:
    """The bigger of `go` and the compiler of the machine's toolchain."""
    go = shutil.which("go") or "/usr/local/go/bin/go"
    root = subprocess.run([go, "env", "GOROOT"], capture_output=True, text=True,
                          check=True).stdout.strip()
    candidates = [os.path.join(root, "bin", "go"),
                  os.path.join(root, "pkg", "tool", "linux_amd64", "compile")]
    return max((p for p in candidates if os.path.exists(p)), key=os.path.getsize)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("binary", nargs="?")
    ap.add_argument("--pcs", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    path = args.binary or default_binary()

    t0 = time.perf_counter()
    b = load_binary(path)
    t1 = time.perf_counter()
    if b.pclntab is None:
        raise SystemExit(f"{path} is not a Go binary")
    lo, hi = b.pclntab.text_range
    # Uniform over the text, as samples of a program busy everywhere would be: most
    # functions get one pc, big ones several.
    rng = random.Random(args.seed)
    pcs = rng.sample(range(lo, hi), args.pcs)

    t2 = time.perf_counter()
    named = inlined = 0
    for pc in pcs:
        frames = b.frames(pc)
        named += bool(frames)
        inlined += len(frames) > 1
    t3 = time.perf_counter()
    frameless = sum(b.frameless(pc) for pc in pcs)  # the SP-delta tables: asked of leaf pcs
    t4 = time.perf_counter()
    # A fixed pure-Python loop, to compare runs on busy or slower machines.
    t5 = time.perf_counter()
    x = 0
    for i in range(1_000_000):
        x += i
    ref_ms = (time.perf_counter() - t5) * 1e3
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print(f"binary:  {path} ({os.path.getsize(path) / 1e6:.1f} MB, {b.go_version}, "
          f"{b.pclntab.nfunc} functions)")
    print(f"load:    {(t1 - t0) * 1e3:.1f} ms")
    print(f"resolve: {(t3 - t2) * 1e3:.1f} ms for {len(pcs)} distinct pcs "
          f"({named} named, {inlined} with inlined frames)")
    print(f"frameless: {(t4 - t3) * 1e3:.1f} ms for the same pcs ({frameless} frameless)")
    print(f"total:   {(t1 - t0 + t3 - t2) * 1e3:.1f} ms")
    print(f"peak RSS: {rss_mb:.1f} MB")
    print(f"machine: a 1M-iteration Python loop took {ref_ms:.1f} ms")


if __name__ == "__main__":
    main()
