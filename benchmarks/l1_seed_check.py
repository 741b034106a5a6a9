#!/usr/bin/env python
"""Are the L1 points AutoAttack breaks and rbx's cascade misses a weaker attack, or chance? (issue 26, tuning only)

Runs one L1 attack alone on the given TUNING points of a model, with several seeds, and prints which points each
run breaks: pyautoattack's APGD-CE at AutoAttack's L1 settings (``aa-apgd-ce``: 5 restarts x 100 steps, large eps)
against rbx's own APGD-CE at the same settings, and rbx's with the "mind the box" masking of its L1 step turned off
(``nomask/`` prefix: coordinates on a box face are not skipped, as in pyautoattack's step). The points are those
``trust.py compare`` listed as missed on the ResNet-18's tuning slices 9200-9399.

    python benchmarks/l1_seed_check.py cifar10-resnet18-linf-at 9249,9261,9276,9346,9359 \\
        "aa-apgd-ce;apgd-ce:steps=100,restarts=5,large_eps=true;nomask/apgd-ce:steps=100,restarts=5,large_eps=true" 3

Output of that command (2026-12-05, CPU, 1 thread): results/trust/l1_seed_check_resnet18_tuning.txt.
"""
import argparse
import sys
import time

import torch
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
import aa_flags, splits
from robustbench_ext.registry import ATTACKS
from robustbench_ext.evaluation.suites import AttackSpec
from robustbench_ext.attack.threat import ThreatModel
from robustbench_ext.attack import geometry as G
from robustbench_ext.runtime import frozen
from robustbench_ext.errors import RbxError


def _points(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"points must be comma-separated test indices, got {text!r}") from None


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="a registered model or zoo entry")
    ap.add_argument("points", type=_points, help="comma-separated CIFAR-10 test indices (tuning images only)")
    ap.add_argument("variants", help="';'-separated attack specs; prefix 'nomask/' for rbx's L1 step without box masking")
    ap.add_argument("seeds", type=int, nargs="?", default=3, help="seeds 0..N-1 (default 3)")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    model, pts, variants, seeds = a.model, a.points, a.variants.split(";"), range(a.seeds)
    held = [p for p in pts if not splits.is_tuning("test", p, 1)]
    if held:
        raise RbxError(f"points {held} are held-out images: this check runs on tuning images only (benchmarks/splits.py)")
    net, ds, meta = aa_flags.resolve_model(model)
    xs, ys = [], []
    for p in pts:
        d = splits.images("test", p, 1); xs.append(d.x); ys.append(d.y)
    x, y = torch.cat(xs), torch.cat(ys)
    th = ThreatModel.parse("L1:12")
    orig = G.L1Geometry.step_direction
    def nomask(self, grad, x_adv=None, *, sparsity=None):
        return orig(self, grad, None, sparsity=sparsity)
    with frozen(net):
        print("clean pred ok:", (net(x).argmax(1) == y).tolist(), flush=True)
        for v in variants:
            mask = not v.startswith("nomask/")
            spec = v.removeprefix("nomask/")
            G.L1Geometry.step_direction = orig if mask else nomask
            for s in seeds:
                t0 = time.time()
                att = ATTACKS.create(AttackSpec.parse(spec)).fit(10, tuple(x.shape[1:]), th)[0]
                res = att(net, x, y, th, seed=s)
                print(f"{v:55s} seed {s}: broke {[p for p, b in zip(pts, res.success.tolist()) if b]} ({time.time()-t0:.0f}s)", flush=True)


if __name__ == "__main__":
    try:
        main()
    except RbxError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
