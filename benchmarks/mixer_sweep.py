#!/usr/bin/env python
"""Adaptive smoothing / MixedNUTS at small scale: clean vs robust accuracy of a standard + robust pair.

Evaluates, end to end with rbx's default union suite on the same test images:
- the constant-alpha mixed classifier for a sweep of alpha (alpha = 0 and 1 are the two base models;
  the straight line between them is the "chord" a mixer has to beat);
- MixedNUTS in the authors' setting (one-hot standard map), with (s, p, c, alpha, alpha_diffable) fitted on
  held-out test images (the last ``--fit-n`` of the test set, disjoint from the evaluated first ``--n``) from
  the robust model alone; attacked twice, through the authors' surrogate gradient (``grad=surrogate``) and
  through rbx's bypass (``grad=rbx-bypass``); the summary's ``mixednuts`` entry is the stronger of the two
  per sample (a point counts as robust only if both attacks left it robust);
- the adaptive mixing network, trained with ``rbx train --defense adaptive-smoothing`` (bases frozen; the
  authors' recipe: AdamW, lr 1e-4, weight decay 1e-5, warm-up + cosine; ``--mixnet-epochs`` epochs) and
  evaluated with its inference settings (alpha in [0.2, 0.95]). The training run is resumable: run the same
  command again after an interruption and it continues from the last finished epoch.
``--parts`` runs only some of the three (the summary keeps the others' earlier results).
Writes the records, ``RESULTS/mixer_<tag>.json`` and the plot ``RESULTS/plots/mixer_<tag>.png``.

CPU size: --std trained:results/train/standard-smallcnn --rob cifar10-smallcnn-linf-at --n 200 --mixnet-epochs 5
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from robustbench_ext.defenses.smoothing_mixer import fit_mixednuts
from robustbench_ext.records import provenance
from robustbench_ext.models.loading import load_model
from robustbench_ext.reporting.plots import png_bytes
from robustbench_ext.paths import atomic_write_bytes, atomic_write_text
from robustbench_ext.registry import DATASETS
from robustbench_ext.runtime import frozen, seed_arg
from robustbench_ext import evaluate
from robustbench_ext.evaluation.suites import load_suite
from robustbench_ext.training.engine import TrainConfig, Trainer


def point(record, path) -> dict:
    return {"record": str(path), "clean": round(100 * record.clean.accuracy, 2), "union": round(100 * record.union.accuracy, 2),
            **{t.threat: round(100 * t.robust.accuracy, 2) for t in record.threats},
            "checks_passed": record.checks.get("passed")}


def stronger(evals: dict) -> dict:
    """Per sample, the worse outcome of several evaluations of one classifier on the same images."""
    flags = [ev.flags for ev in evals.values()]
    robust = np.logical_and.reduce([f.robust for f in flags])  # [N, T]: robust under every attack
    clean = flags[0].clean_correct
    union = clean & robust.all(1)
    return {"of": list(evals), "clean": round(100 * float(clean.mean()), 2), "union": round(100 * float(union.mean()), 2),
            **{t: round(100 * float((clean & robust[:, j]).mean()), 2) for j, t in enumerate(flags[0].threats)}}


def fit_nuts(rob_spec: str, fit_n: int, device, beta: float) -> dict:
    """(s, p, c, alpha) from the robust model on the last ``fit_n`` test images (Linf cascade of the default suite)."""
    full = DATASETS.create("cifar10")
    x, y = full.x[-fit_n:].to(device), full.y[-fit_n:].to(device)
    rob = load_model(rob_spec).module.to(device).eval()
    linf = load_suite("cifar10-union").threats[0]
    with frozen(rob):
        with torch.no_grad():
            z_clean = rob(x)
        x_adv, robust = x.clone(), z_clean.argmax(1) == y
        for j, st in enumerate(linf.build()):
            idx = robust.nonzero().squeeze(1)
            res = st.attack(rob, x[idx], y[idx], linf.threat, seed=j)
            x_adv[idx] = res.x_adv
            robust[idx[res.success]] = False
        with torch.no_grad():
            z_adv = rob(x_adv)
    wrong = z_clean.argmax(1) != y
    return fit_mixednuts(z_clean[wrong].cpu(), z_adv[robust].cpu(), beta=beta)


def plot(points: dict, title: str) -> bytes:
    import matplotlib.pyplot as plt  # the Agg backend: robustbench_ext.reporting.plots sets it

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    sweep = sorted(points["constant"], key=lambda p: p["alpha"])
    for ax, key in zip(axes, ("union", "Linf:8/255")):
        xs, ys = [p["clean"] for p in sweep], [p[key] for p in sweep]
        ax.plot(xs, ys, "o-", label="constant alpha (prob. mixing)")
        for p in sweep:
            ax.annotate(f"{p['alpha']:g}", (p["clean"], p[key]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        a0, a1 = sweep[0], sweep[-1]
        ax.plot([a0["clean"], a1["clean"]], [a0[key], a1[key]], "--", color="grey", label="chord between the base models")
        if "mixednuts" in points:
            ax.plot(points["mixednuts"]["clean"], points["mixednuts"][key], "s", ms=8, label="MixedNUTS")
        if "mixnet" in points:
            ax.plot(points["mixnet"]["clean"], points["mixnet"][key], "^", ms=9, label="mixing network")
        ax.set_xlabel("clean accuracy (%)")
        ax.set_ylabel(f"{key} robust accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    return png_bytes(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--std", required=True)
    ap.add_argument("--rob", default="cifar10-smallcnn-linf-at")
    ap.add_argument("--alphas", default="0,0.2,0.4,0.6,0.8,0.9,1")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--fit-n", type=int, default=1000)
    ap.add_argument("--beta", type=float, default=98.5)
    ap.add_argument("--mixnet-n-train", type=int, default=10000)
    ap.add_argument("--mixnet-epochs", type=int, default=5, help="the authors' CIFAR-10 AT configuration trains 5")
    ap.add_argument("--mixnet-batch-size", type=int, default=128)
    ap.add_argument("--parts", default="constant,nuts,mixnet", help="which of constant, nuts, mixnet to run")
    ap.add_argument("--suite", default="cifar10-union", help="evaluation suite (a cheaper one only for smoke checks)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=seed_arg, default=0)
    ap.add_argument("--results-dir", default="results")
    ap.add_argument("--tag", default="cpu_smallcnn")
    a = ap.parse_args(argv)
    parts = set(a.parts.split(","))
    if parts - {"constant", "nuts", "mixnet"}:
        ap.error(f"--parts: unknown {sorted(parts - {'constant', 'nuts', 'mixnet'})}; known: constant, nuts, mixnet")
    results = Path(a.results_dir)
    suite = load_suite(a.suite)
    data = DATASETS.create("cifar10", n_examples=a.n)
    pair = f"{a.std}+{a.rob}"
    summary = results / f"mixer_{a.tag}.json"
    out = json.loads(summary.read_text()) if summary.is_file() else {"constant": []}  # keeps the parts not rerun
    out.update({"command": "python " + " ".join([sys.argv[0], *(argv or sys.argv[1:])]), "date": provenance.utc_now(),
                "git_commit": provenance.git_state()["commit"], "settings": vars(a)})

    def run(spec: str):
        t0 = time.perf_counter()
        ev = evaluate(load_model(spec), data, suite.threats, suite=suite.name, seed=a.seed, device=a.device, progress=False)
        p = point(ev.record, ev.write(results))
        p["seconds"] = round(time.perf_counter() - t0, 1)
        out["device_name"] = ev.record.provenance["device_name"]
        print(spec, p, flush=True)
        return p, ev

    if "constant" in parts:
        out["constant"] = []
        for alpha in (float(v) for v in a.alphas.split(",")):
            out["constant"].append({"alpha": alpha, **run(f"mix:{pair},alpha={alpha:g}")[0]})
            atomic_write_text(summary, json.dumps(out, indent=2) + "\n")
    if "nuts" in parts:
        nuts = fit_nuts(a.rob, a.fit_n, torch.device("cuda" if a.device == "cuda" else "cpu"), a.beta)
        nuts_path = results / f"mixednuts_{a.tag}.json"
        atomic_write_text(nuts_path, json.dumps(nuts, indent=2) + "\n")
        attacks = {grad: run(f"mix:{pair},nuts={nuts_path},grad={grad}") for grad in ("surrogate", "rbx-bypass")}
        out["mixednuts"] = {"params": nuts, **stronger({g: ev for g, (_, ev) in attacks.items()}),
                            "by_attack": {g: p for g, (p, _) in attacks.items()}}
        atomic_write_text(summary, json.dumps(out, indent=2) + "\n")
    if "mixnet" in parts:
        run_dir = results / "train" / f"mixnet_{a.tag}_e{a.mixnet_epochs}"
        cfg = TrainConfig(defense="adaptive-smoothing", out=str(run_dir), init=f"mix:{pair},alpha=net",
                          n_train=a.mixnet_n_train, epochs=a.mixnet_epochs, batch_size=a.mixnet_batch_size, seed=a.seed,
                          device=a.device, name=run_dir.name)  # optimizer and schedule: the defense's recipe
        t0 = time.perf_counter()
        trainer = Trainer(cfg, progress=True)
        trained = trainer.run()  # resumes after the last finished epoch if an earlier run was interrupted
        out["mixnet"] = {"train_seconds_this_run": round(time.perf_counter() - t0, 1), "train_log": trained.log,
                         "train_config": trainer._config_dict(), **run(trainer.saved_model_spec())[0]}
        atomic_write_text(summary, json.dumps(out, indent=2) + "\n")
    if not out.get("constant"):
        return 0
    png = results / "plots" / f"mixer_{a.tag}.png"
    png.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(png, plot(out, f"{pair}: first {a.n} CIFAR-10 test images, {suite.name} attacks end to end"))
    print("plot:", png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
