#!/usr/bin/env python
"""Exact McNemar p-values between rbx records of different models on the same images (reproductions).

    python benchmarks/paired.py --against BASE.json CAND.json [CAND2.json ...] [--names base,cand,...]

For each candidate: per metric (clean, each threat model, union) the two accuracies, the discordant pairs
(candidate right and baseline wrong, and the reverse) and the raw two-sided exact McNemar p-value
(:func:`robustbench_ext.reporting.regress.paired_mcnemar`). Prints Markdown (``--json`` for JSON). ``rbx regress``
is the gate for one model against itself; this is the comparison of training arms.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from robustbench_ext.records.store import read_flags
from robustbench_ext.reporting.regress import paired_mcnemar


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--against", required=True, type=Path, help="the baseline record")
    ap.add_argument("candidates", nargs="+", type=Path)
    ap.add_argument("--names", default=None, help="comma-separated labels: baseline first, then each candidate")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    names = args.names.split(",") if args.names else [p.stem for p in [args.against, *args.candidates]]
    base = read_flags(args.against)
    out = {f"{names[i + 1]} vs {names[0]}": paired_mcnemar(read_flags(c), base) for i, c in enumerate(args.candidates)}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print("| comparison | metric | candidate % | baseline % | only candidate right | only baseline right | exact McNemar p |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for pair, metrics in out.items():
        for m, v in metrics.items():
            print(f"| {pair} | {m} | {v['a']} | {v['b']} | {v['a_only']} | {v['b_only']} | {v['p_value']:.3g} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
