#!/usr/bin/env python
"""Small same-budget reproductions of RAMP, SOVR and LTD against their baselines (../shared/research/defenses.md).

Every arm of an experiment starts from the same model with the same data, seed, schedule and attack
budget, trains with `rbx train`'s engine, and is evaluated with rbx's default union suite on the same
test images; the records go to RESULTS/records and the summary to RESULTS/defenses_<tag>.md/.json.

- ramp: fine-tune the Linf-AT model with E-AT (Linf / L1), MAX (worst of Linf, L2, L1 per sample) and RAMP
  (finetune mode: Linf + L1, lbd 1.5, no GP); training adversary: the authors' training APGD (10 steps
  from the clean point, L1 at 5% initial sparsity); compare Linf, L2, L1, union.
- ramp-scratch: from scratch (``--arch``), E-AT against RAMP in its scratch mode (lbd 5, gradient projection
  with one natural-training epoch per epoch).
- sovr: CE-AT vs SOVR (PGD-5), plus the histogram of test logit margins under PGD-20.
- ltd:  hard-label AT vs LTD with the reference ResNet-18 as teacher (PGD-5).

Each arm's training run resumes where it stopped if the script is run again (``--fresh`` starts over), and
is evaluated from the weights it saved (``trained:`` source: the record's sha256 is theirs).

CPU size (what this session could run): --init cifar10-smallcnn-linf-at --n-train 10000 --eval-n 500
From scratch on the CPU: --experiments ramp-scratch --arch smallcnn --epochs 10 --lr 0.05 --schedule piecewise
GPU size (the issue's suggestion):      --init cifar10-resnet18-linf-at --n-train 50000 --eval-n 1000 --device cuda
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from robustbench_ext.records import provenance
from robustbench_ext.models.loading import load_model
from robustbench_ext.reporting.plots import png_bytes
from robustbench_ext.paths import atomic_write_bytes, atomic_write_text
from robustbench_ext.registry import ATTACKS, DATASETS
from robustbench_ext.runtime import frozen, seed_arg
from robustbench_ext import evaluate
from robustbench_ext.evaluation.suites import load_suite
from robustbench_ext.attack.threat import ThreatModel
from robustbench_ext.training.engine import TrainConfig, Trainer

EXPERIMENTS = {
    "ramp": [("e-at", "e-at"), ("max", "max"), ("ramp", "ramp:mode=finetune")],
    "ramp-scratch": [("e-at", "e-at"), ("ramp", "ramp:mode=scratch")],
    "sovr": [("ce-at", "pgd-at:attack=pgd:steps=5"), ("sovr", "sovr:attack=pgd:steps=5,M=0.4,lbd=1.0")],
    "ltd": [("hard-at", "pgd-at:attack=pgd:steps=5"),
            ("ltd", "ltd:attack=pgd:steps=5,teacher=cifar10-resnet18-linf-at,tau_teacher=0.5,tau_student=2.0")],
}
#: Experiments that train from ``--arch`` instead of fine-tuning ``--init``.
FROM_SCRATCH = {"ramp-scratch"}


def margins_under_pgd(model, data, device, steps=20) -> np.ndarray:
    """Logit margins z_y - max_{k!=y} z_k of PGD-20 (Linf 8/255) examples on the test images (clean-correct or not)."""
    from robustbench_ext.defenses.sovr import logit_margin

    net = model.module.to(device)
    attack = ATTACKS.create("pgd", steps=steps, early_stop=False)
    out = []
    with frozen(net):
        for i in range(0, data.n, 250):
            x, y = data.x[i:i + 250].to(device), data.y[i:i + 250].to(device)
            x_adv = attack(net, x, y, ThreatModel.parse("Linf:8/255"), seed=i).x_adv
            with torch.no_grad():
                out.append(logit_margin(net(x_adv), y).cpu().numpy())
    return np.concatenate(out)


def histogram_png(margins: dict[str, np.ndarray], title: str) -> bytes:
    import matplotlib.pyplot as plt  # the Agg backend: robustbench_ext.reporting.plots sets it

    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = np.linspace(-6, 8, 57)
    for name, m in margins.items():
        ax.hist(np.clip(m, -6, 8), bins=bins, histtype="step", lw=1.5, label=f"{name} (mean {m.mean():.2f})")
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_xlabel("logit margin of PGD-20 test examples (clipped to [-6, 8])")
    ax.set_ylabel("test images")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    return png_bytes(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiments", default="ramp,sovr,ltd")
    ap.add_argument("--init", default="cifar10-smallcnn-linf-at")
    ap.add_argument("--arch", default="smallcnn", help="architecture of the from-scratch experiments")
    ap.add_argument("--schedule", default="onecycle")
    ap.add_argument("--fresh", action="store_true", help="start every training run over (default: resume)")
    ap.add_argument("--n-train", type=int, default=10000)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--eval-n", type=int, default=500)
    ap.add_argument("--suite", default="cifar10-union")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=seed_arg, default=0)
    ap.add_argument("--results-dir", default="results")
    ap.add_argument("--tag", default=None)
    a = ap.parse_args(argv)

    results = Path(a.results_dir)
    tag = a.tag or f"{'gpu' if torch.cuda.is_available() and a.device != 'cpu' else 'cpu'}_{a.init}"
    suite = load_suite(a.suite)
    test = DATASETS.create(suite.dataset, n_examples=a.eval_n)
    experiments = a.experiments.split(",")
    for exp in experiments:
        if exp not in EXPERIMENTS:
            ap.error(f"unknown experiment '{exp}'; known: {', '.join(EXPERIMENTS)}")
    path = results / f"defenses_{tag}.json"
    summary = json.loads(path.read_text()) if path.is_file() else {"experiments": {}}  # keeps experiments not rerun
    summary.update({"command": "python " + " ".join([sys.argv[0], *(argv or sys.argv[1:])]), "date": provenance.utc_now(),
                    "git_commit": provenance.git_state()["commit"], "settings": vars(a)})
    if not set(experiments) <= FROM_SCRATCH:  # the fine-tuning experiments' starting point
        ev = evaluate(load_model(a.init), test, suite.threats, suite=suite.name, seed=a.seed, progress=False, device=a.device)
        summary["device_name"] = ev.record.provenance["device_name"]
        summary["init"] = _row(ev.record, ev.write(results), 0.0)
        print("init", summary["init"], flush=True)
    for exp in experiments:
        arms = {}
        margins = {}
        scratch = exp in FROM_SCRATCH
        for arm, spec in EXPERIMENTS[exp]:
            start = a.arch if scratch else tag.split("_", 1)[1]
            name = f"repro-{exp}-{arm}-{start}-e{a.epochs}"
            cfg = TrainConfig(defense=spec, out=str(results / "train" / name), init=None if scratch else a.init,
                              arch=a.arch if scratch else None, n_train=a.n_train, epochs=a.epochs,
                              batch_size=a.batch_size, lr=a.lr, schedule=a.schedule, seed=a.seed, device=a.device, name=name)
            t0 = time.perf_counter()
            trainer = Trainer(cfg)
            trained = trainer.run(resume=False if a.fresh else None)
            train_s = time.perf_counter() - t0
            ev = evaluate(trainer.saved_model(), test, suite.threats, suite=suite.name, seed=a.seed, progress=False,
                          device=a.device)
            summary["device_name"] = ev.record.provenance["device_name"]
            arms[arm] = {**_row(ev.record, ev.write(results), train_s), "defense": spec,
                         "defense_params": trainer.defense.params(), "train_log": trained.log}
            print(exp, arm, {k: v for k, v in arms[arm].items() if k != "train_log"}, flush=True)
            if exp == "sovr":
                margins[arm] = margins_under_pgd(trainer.saved_model(), test, trainer.device)
                arms[arm]["margin_mean"] = round(float(margins[arm].mean()), 3)
                arms[arm]["margin_share_0_2"] = round(float(((margins[arm] > 0) & (margins[arm] < 2)).mean()), 4)
                arms[arm]["margin_share_negative"] = round(float((margins[arm] <= 0).mean()), 4)
        if margins:
            png = results / "plots" / f"defenses_{tag}_sovr_margins.png"
            png.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(png, histogram_png(margins, f"Test logit margins under PGD-20 (Linf 8/255), {tag}"))
            arms["histogram"] = str(png)
        summary["experiments"][exp] = arms
        atomic_write_text(path, json.dumps(summary, indent=2) + "\n")
    return 0


def _row(record, path, train_seconds) -> dict:
    return {"record": str(path), "clean": round(100 * record.clean.accuracy, 1),
            **{t.threat: round(100 * t.robust.accuracy, 1) for t in record.threats},
            "union": round(100 * record.union.accuracy, 1), "train_seconds": round(train_seconds, 1)}


if __name__ == "__main__":
    sys.exit(main())
