"""How close `goprof mem`'s attribution is to the truth, per method (root):
`sudo .venv/bin/python bench/mem_accuracy.py`.

Profiles tests/fixtures/allocsplit (sites with a byte split known by construction:
distinct size classes 10/15/20/25/30 %, and two sites alternating one size class,
50/50) with each method, and prints each site's share of alloc_space next to the
truth, and the largest gap in points.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests import gobuild  # noqa: E402
from tests.test_mem import (  # noqa: E402
    SITES,
    profile_alloc,
    site_shares,
    truth_shares,
    value_index,
)

METHODS = {"go-sampler": ["--go-sampler"], "span": ["--method", "span"],
           "exact": ["--method", "exact"]}
MODES = {"split": SITES, "alternate": ("SiteA", "SiteB")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--toolchain", default="go1.26", choices=list(gobuild.TOOLCHAINS))
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root", file=sys.stderr)
        return 2
    binary = gobuild.build("allocsplit", args.toolchain, "stripped")
    out = {}
    with tempfile.TemporaryDirectory() as d:
        for mode, names in MODES.items():
            for method, flags in METHODS.items():
                target_args = ("-mode", mode, "-rounds", "20") if method == "exact" else \
                    ("-mode", mode, "-duration", "2s")
                gaps, runs = [], []
                for _ in range(args.repeat):
                    prof, target, _ = profile_alloc(Path(d), binary, flags, target_args)
                    got = site_shares(prof, value_index(prof, "alloc_space"), names)
                    want = truth_shares(target["truth"], names=names)
                    gaps.append(max(abs(got[k] - want[k]) for k in names))
                    runs.append({k: round(got[k], 1) for k in names})
                out[f"{mode}/{method}"] = {"truth": {k: round(v, 1) for k, v in want.items()},
                                           "runs": runs,
                                           "max_gap_points": round(max(gaps), 1)}
                print(mode, method, out[f"{mode}/{method}"], file=sys.stderr)
    print(json.dumps({"toolchain": args.toolchain, **out}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
