#!/usr/bin/env python
"""How strong is a training adversary? Accuracy of a model at the points a training attack returns.

Multi-norm training (E-AT, MAX, RAMP) crafts its examples with APGD-CE, 10 steps, early stop off (the
highest-loss point). The RAMP authors' training APGD (``autopgd_train.py apgd_train``, ``is_train=True``)
starts at the clean point and its L1 steps start at 5% sparsity (rbx: ``random_start=false,init_sparsity=0.05``,
``robustbench_ext.training.contract.TRAINING_APGD``); rbx's training adversary used to start at a random point with
evaluation APGD's 20%. This script compares them on the first N training images: lower accuracy at the
returned points = a stronger adversary. Random-start variants run once per seed.

    python benchmarks/training_adversary.py --model cifar10-smallcnn-linf-at --n 256 --threat L1:12
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from robustbench_ext.records import provenance
from robustbench_ext.training.contract import TRAINING_APGD, build_attack
from robustbench_ext.models.loading import load_model
from robustbench_ext.registry import DATASETS
from robustbench_ext.runtime import frozen
from robustbench_ext.attack.threat import ThreatModel

VARIANTS = {
    "authors' training APGD (clean start, 5% initial sparsity)": (TRAINING_APGD, False),
    "evaluation start (random start, 20% initial sparsity)": ("apgd-ce:steps=10", True),
    "clean start, 20% initial sparsity": ("apgd-ce:steps=10,random_start=false", False),
}


def accuracy_at_returned_points(net, x, y, spec: str, threat: ThreatModel, seed: int, batch: int) -> float:
    """% of (x, y) the model still classifies correctly at the points ``spec`` (as built for training) returns."""
    attack = build_attack(spec, "training-adversary")
    correct = 0
    with frozen(net):
        for i in range(0, len(x), batch):
            res = attack(net, x[i:i + batch], y[i:i + batch], threat, seed=seed + i)
            correct += int((~res.success).sum())
    return 100.0 * correct / len(x)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="cifar10-smallcnn-linf-at")
    ap.add_argument("--dataset", default="cifar10-train")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--threat", default="L1:12")
    ap.add_argument("--seeds", type=int, default=3, help="seeds for the random-start variant")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    data = DATASETS.create(a.dataset, n_examples=a.n)
    net = load_model(a.model).module.eval()
    threat = ThreatModel.parse(a.threat)
    with torch.no_grad():
        clean = 100.0 * float((net(data.x).argmax(1) == data.y).float().mean())
    out = {"command": "python " + " ".join([sys.argv[0], *(argv or sys.argv[1:])]), "date": provenance.utc_now(),
           "git_commit": provenance.git_state()["commit"], "settings": vars(a), "clean": round(clean, 2), "variants": {}}
    print(f"{a.model}, first {a.n} images of {a.dataset}, {a.threat}: clean {clean:.1f}%", flush=True)
    for label, (spec, random_start) in VARIANTS.items():
        t0 = time.perf_counter()
        accs = [accuracy_at_returned_points(net, data.x, data.y, spec, threat, seed, a.batch)
                for seed in (range(a.seeds) if random_start else [0])]
        out["variants"][label] = {"attack": spec, "accuracy": [round(v, 2) for v in accs],
                                  "mean": round(sum(accs) / len(accs), 2), "seconds": round(time.perf_counter() - t0, 1)}
        print(f"{label}: {spec}: accuracy at the returned points {', '.join(f'{v:.1f}' for v in accs)}%", flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(out, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
