#!/usr/bin/env python
"""AutoAttack (pyautoattack, called directly) vs rbx's union suite, on the same model, images and device.

For each threat model of the suite (CIFAR-10: Linf 8/255, L2 0.5, L1 12):

(a) pyautoattack's ``AutoAttack`` -- version ``standard`` for Linf and L2; for L1, AutoAttack's L1
    settings: APGD-CE with 5 restarts and APGD-T with 5 target classes, both with the large-eps warm
    start (pyautoattack's ``standard`` L1 configuration restricted to those two components);
(b) rbx's runner with the suite's attack cascades (default suite: ``cifar10-union``).

It writes robust accuracy per norm, union accuracy, seconds, and the per-sample disagreements, with the
device name and versions, to ``OUT.json`` and ``OUT.md`` (and the rbx record under ``OUT_DIR/records``).

GPU (the issue's measurement):  python benchmarks/aa_vs_rbx.py --model cifar10-resnet18-linf-at --n 500 --device cuda
CPU (small stand-in):           python benchmarks/aa_vs_rbx.py --model cifar10-smallcnn-linf-at --n 100 --device cpu
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from robustbench_ext import provenance
from robustbench_ext._compat import import_pyautoattack
from robustbench_ext.models import load_model
from robustbench_ext.records import atomic_write_text
from robustbench_ext.registry import DATASETS
from robustbench_ext.devutils import frozen, resolve_device
from robustbench_ext.records import union_flags
from robustbench_ext.runner import evaluate
from robustbench_ext.suites import load_suite


def run_autoattack(net, x, y, threat, device, batch_size, seed):
    """pyautoattack on (x, y); returns per-sample robust flags and seconds."""
    aa_mod = import_pyautoattack()
    aa = aa_mod.AutoAttack(net, norm=threat.norm, eps=threat.eps, version="standard", seed=seed, device=device)
    if threat.norm == "L1":
        aa.attacks_to_run = ["apgd-ce", "apgd-t"]  # standard's L1 settings (5 restarts, 5 targets, large eps)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    x_adv, _ = aa.run_standard_evaluation(x.contiguous(), y.contiguous(), batch_size=batch_size)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        pred = torch.cat([net(x_adv[i:i + batch_size]).argmax(1) for i in range(0, len(y), batch_size)])
    return (pred == y).cpu().numpy(), seconds, list(aa.attacks_to_run)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="cifar10-resnet18-linf-at")
    ap.add_argument("--suite", default="cifar10-union")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="output stem (default results/aa_vs_rbx/<device>_<model>_n<N>)")
    ap.add_argument("--skip-aa", action="store_true", help="only run rbx (for tuning)")
    a = ap.parse_args(argv)

    device = resolve_device(a.device)
    suite = load_suite(a.suite)
    model = load_model(a.model)
    data = DATASETS.create(suite.dataset, n_examples=a.n)
    tag = "gpu" if device.type == "cuda" else "cpu"
    out = Path(a.out or f"results/aa_vs_rbx/{tag}_{a.model}_n{a.n}")
    out.parent.mkdir(parents=True, exist_ok=True)
    net = model.module.to(device)
    x, y = data.x.to(device), data.y.to(device)

    # (b) rbx first (its record holds the clean pass too).
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    ev = evaluate(model, data, suite.threats, union_attacks=suite.union, suite=suite.name, seed=a.seed,
                  batch_size=a.batch_size, device=device, progress=False)
    rbx_seconds = time.perf_counter() - t0
    record_path = ev.write(out.parent)
    rec, flags = ev.record, ev.flags
    result = {
        "model": a.model, "n": a.n, "dataset": rec.dataset["source"], "suite": suite.name,
        "device": str(device), "device_name": provenance.device_name(device),
        "torch": torch.__version__, "python": platform.python_version(), "rbx_version": provenance.rbx_version(),
        "git_commit": provenance.git_state()["commit"], "date": provenance.utc_now(),
        "command": "python " + " ".join([sys.argv[0], *(argv or sys.argv[1:])]),
        "clean": rec.clean.accuracy,
        "rbx": {"seconds": round(rbx_seconds, 2), "record": str(record_path),
                "threats": {t.threat: {"robust": t.robust.accuracy, "seconds": t.seconds,
                                       "attacks": [s.attack for s in t.attacks]} for t in rec.threats},
                "union": rec.union.accuracy},
    }
    if not a.skip_aa:
        aa_flags, aa_total, aa_threats = [], 0.0, {}
        with frozen(net):
            correct = flags.clean_correct
            for ti, spec in enumerate(suite.threats):
                robust, secs, comps = run_autoattack(net, x, y, spec.threat, device, a.batch_size, a.seed)
                robust &= correct
                aa_flags.append(robust)
                aa_total += secs
                aa_threats[spec.threat.label] = {"robust": float(robust.mean()), "seconds": round(secs, 2), "attacks": comps,
                                                 "broken_by_aa_not_rbx": int((~robust & flags.robust[:, ti]).sum()),
                                                 "broken_by_rbx_not_aa": int((robust & ~flags.robust[:, ti]).sum())}
        aa_union = union_flags(correct, np.stack(aa_flags, 1))
        result["autoattack"] = {"seconds": round(aa_total, 2), "threats": aa_threats, "union": float(aa_union.mean()),
                                "union_broken_by_aa_not_rbx": int((~aa_union & union_flags(correct, flags.robust)).sum())}
        result["time_ratio_aa_over_rbx"] = round(aa_total / rbx_seconds, 2)
    atomic_write_text(out.with_suffix(".json"), json.dumps(result, indent=2) + "\n")
    atomic_write_text(out.with_suffix(".md"), to_markdown(result) + "\n")
    print(to_markdown(result))
    return 0


def to_markdown(r: dict) -> str:
    lines = [f"# AutoAttack vs rbx: {r['model']}, {r['dataset']}, first {r['n']}",
             "", f"Device: {r['device_name']} ({r['device']}); torch {r['torch']}; rbx {r['rbx_version']} "
             f"(commit {str(r['git_commit'])[:10]}); {r['date']}.", f"Command: `{r['command']}`", "",
             f"Clean accuracy: {100 * r['clean']:.1f}%", "",
             "| threat | AutoAttack robust % | AA seconds | rbx robust % | rbx seconds | rbx attacks |",
             "| --- | ---: | ---: | ---: | ---: | --- |"]
    aa = r.get("autoattack", {"threats": {}})
    for label, t in r["rbx"]["threats"].items():
        a = aa["threats"].get(label, {})
        lines.append(f"| {label} | {100 * a['robust']:.1f} | {a['seconds']:.1f} | " if a else f"| {label} | - | - | ")
        lines[-1] += f"{100 * t['robust']:.1f} | {t['seconds']:.1f} | {' > '.join(t['attacks'])} |"
    aa_union = f"{100 * aa['union']:.1f}" if "union" in aa else "-"
    aa_secs = f"{aa['seconds']:.1f}" if "seconds" in aa else "-"
    lines.append(f"| **union** | {aa_union} | {aa_secs} | {100 * r['rbx']['union']:.1f} | {r['rbx']['seconds']:.1f} | |")
    if "time_ratio_aa_over_rbx" in r:
        lines += ["", f"AutoAttack took {r['time_ratio_aa_over_rbx']}x rbx's time (rbx's time includes its clean pass)."]
        dis = [f"{k}: AA broke {v['broken_by_aa_not_rbx']} points rbx did not, rbx broke {v['broken_by_rbx_not_aa']} AA did not"
               for k, v in aa["threats"].items()]
        lines += ["", "Per-sample disagreements: " + "; ".join(dis) + "."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
