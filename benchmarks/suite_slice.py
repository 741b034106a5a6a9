"""Run a suite on a held-out slice of the CIFAR-10 test set (images START..START+N-1) and write its record.

The union suites are tuned on nothing here; tuning images are 9000-9999 (the project rule), so a slice such as
1000-1099 is held out. Usage (CPU, one thread; the record and table go to --out):

    python benchmarks/suite_slice.py --suite cifar10-union-l0 --model cifar10-smallcnn-linf-at --start 1000 --n 100 \\
        --out results/attacks30
    python benchmarks/suite_slice.py --suite cifar10-union-extended --start 1000 --n 100 --eps-sweep 0.5,2 \\
        --out results/extended/curves

Prints the table; the record's provenance says the device, the date and the wall time.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", required=True)
    ap.add_argument("--model", default="cifar10-smallcnn-linf-at")
    ap.add_argument("--dataset", default="cifar10")
    ap.add_argument("--start", type=int, default=1000)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--label-only", action="store_true")
    ap.add_argument("--audit", type=int, default=None, metavar="K",
                    help="audit K sampled robust points per threat model with its reference attack (rbx run --audit)")
    ap.add_argument("--eps-sweep", default=None, metavar="F1,F2,...",
                    help="also run every threat model at eps x F (robust accuracy vs strength: MultiRobustBench's curves)")
    ap.add_argument("--out", type=Path, default=Path("results/attacks30"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from robustbench_ext import evaluate
    from robustbench_ext.registry import DATASETS

    import splits

    role = ("tuning images: test 9000-9999" if splits.is_tuning("test", a.start, a.n) else
            "held out: tuning uses 9000-9999" if splits.is_held_out("test", a.start, a.n) else
            "mixes tuning and held-out images")
    full = DATASETS.create(a.dataset)
    if a.start + a.n > full.n:
        raise SystemExit(f"rbx: error: {a.dataset} has {full.n} images; {a.start}+{a.n} is past its end")
    data = dataclasses.replace(full, x=full.x[a.start:a.start + a.n].clone(), y=full.y[a.start:a.start + a.n].clone(),
                               selection=f"test images {a.start}..{a.start + a.n - 1} ({role})")
    ev = evaluate(a.model, data, suite=a.suite, device="cpu", label_only=a.label_only, progress=False, audit=a.audit,
                  eps_sweep=[float(f) for f in a.eps_sweep.split(",")] if a.eps_sweep else ())
    print(ev)
    ev.write(a.out)


if __name__ == "__main__":
    main()
