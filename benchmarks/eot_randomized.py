#!/usr/bin/env python
"""EOT and re-checks over draws on a randomized model (issue 18): the small CNN behind Gaussian input noise.

Model: ``noisy:cifar10-smallcnn-linf-at,sigma=S`` (fresh noise at every forward pass, from torch's global RNG,
seeded here before every run). Data: the first N images of ``cifar10-1k``. Threat: Linf 8/255.

(a) EOT against no EOT, APGD-CE, every run judged by the same majority rule over R draws:
    - ``eot=1``, STEPS iterations;
    - ``eot=K``, STEPS iterations (K times the gradient evaluations);
    - ``eot=1``, K * STEPS iterations (the same number of gradient evaluations as eot=K).
    Robust accuracies come from ``rbx``'s runner (``evaluate(..., randomized=True, draws=R)``); their records
    go to RESULTS/randomized/records (kept off the leaderboard: a test subject, not a defense to rank).
(b) The majority rule against a single pass: the same attacks called directly on the points correct by
    majority; for each returned point, the single-pass verdict the attack contract gives (one forward pass)
    against the majority over R fresh seeded passes. Counted: "lucky successes" (one pass says broken,
    the majority says robust) and the reverse; the same for clean accuracy (one pass against the majority).

Writes RESULTS/randomized_cpu_smallcnn.json (``runs`` by sigma; ``--append`` keeps the other sigmas') and
RESULTS/randomized.md.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paired import replace_blocks  # noqa: E402

from robustbench_ext.records import provenance
from robustbench_ext.runtime import derive_seed, seed_arg
from robustbench_ext.evaluation.majority import majority_wrong
from robustbench_ext.models.loading import load_model
from robustbench_ext.paths import atomic_write_text
from robustbench_ext.registry import ATTACKS, DATASETS
from robustbench_ext.reporting.regress import mcnemar_exact
from robustbench_ext import evaluate
from robustbench_ext.records.stats import percent
from robustbench_ext.attack.threat import ThreatModel


def run_arm(model_spec, data, attack, a, results):
    """One evaluate() run under the majority rule; its row for the table."""
    torch.manual_seed(a.seed)
    t0 = time.perf_counter()
    ev = evaluate(load_model(model_spec), data, ["Linf:8/255"], attacks=[attack], seed=a.seed, progress=False,
                  randomized=True, draws=a.draws, draw_seed=a.draw_seed, batch_size=a.batch_size)
    path = ev.write(results / "randomized")
    t = ev.record.threats[0]
    stage = t.attacks[0]
    return {"attack": attack, "clean": ev.record.clean.accuracy, "robust": t.robust.accuracy, "ci95": list(t.robust.ci95),
            "n_backward": stage.n_backward, "n_attacked": stage.n_attacked, "seconds": round(time.perf_counter() - t0, 1),
            "draws": ev.record.config["draws"], "record": str(path), "robust_flags": ev.flags.robust[:, 0].tolist()}


@torch.no_grad()
def single_vs_majority(model_spec, data, attack_spec, a):
    """(b): per point, the single-pass verdict (the attack contract's) against the majority of R seeded passes."""
    net = load_model(model_spec).module.eval()
    threat = ThreatModel.parse("Linf:8/255")
    x, y = data.x, data.y
    torch.manual_seed(a.seed)
    clean_single = (net(x).argmax(1) == y).numpy()
    clean_major = (~majority_wrong(net, x, y, a.draws, a.draw_seed)).numpy()
    idx = np.flatnonzero(clean_major)
    attack = ATTACKS.create(attack_spec)
    single, major = np.zeros(len(idx), bool), np.zeros(len(idx), bool)
    for bi, i in enumerate(range(0, len(idx), a.batch_size)):
        chunk = idx[i:i + a.batch_size]
        with torch.enable_grad():
            res = attack(net, x[chunk], y[chunk], threat, seed=derive_seed(a.seed, 7, bi))
        single[i:i + len(chunk)] = res.success.numpy()
        major[i:i + len(chunk)] = majority_wrong(net, res.x_adv, y[chunk], a.draws, derive_seed(a.draw_seed, 8, bi)).numpy()
    return {"attack": attack_spec, "n_attacked": int(len(idx)),
            "clean_single_pass": float(clean_single.mean()), "clean_majority": float(clean_major.mean()),
            "clean_correct_single_not_majority": int((clean_single & ~clean_major).sum()),
            "clean_correct_majority_not_single": int((~clean_single & clean_major).sum()),
            "broken_single_pass": int(single.sum()), "broken_majority": int(major.sum()),
            "lucky_successes": int((single & ~major).sum()),  # one pass broken, the majority robust
            "missed_by_single_pass": int((~single & major).sum())}  # one pass robust, the majority broken


def rerender(results: Path) -> None:
    """Write RESULTS/randomized.md again from the JSON (no attack runs)."""
    runs = json.loads((results / "randomized_cpu_smallcnn.json").read_text())["runs"]
    write_page(results / "randomized.md", runs)


def write_page(page: Path, runs: dict) -> None:
    """The per-sigma sections of the page: between its ``<!-- eot:sections -->`` markers when it has them (the
    summary, the families of benchmarks/paired.py and the hand-written reading around them stay), else the page."""
    body = "\n".join(report(r) for _, r in sorted(runs.items(), key=lambda kv: float(kv[0])))
    text = page.read_text() if page.is_file() else ""
    if "<!-- eot:sections -->" in text:
        atomic_write_text(page, replace_blocks(text, {"sections": body}, str(page), prefix="eot"))
    else:
        atomic_write_text(page, render(runs))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sigma", type=float, default=0.05)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--eot", type=int, default=5)
    ap.add_argument("--draws", type=int, default=11)
    ap.add_argument("--draw-seed", type=seed_arg, default=0)
    ap.add_argument("--seed", type=seed_arg, default=0)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--results-dir", default="results")
    ap.add_argument("--append", action="store_true", help="keep the other sigmas' runs in the JSON and the report")
    ap.add_argument("--render-only", action="store_true", help="rewrite the report from the JSON, run nothing")
    a = ap.parse_args(argv)
    results = Path(a.results_dir)
    if a.render_only:
        rerender(results)
        return 0
    model = f"noisy:cifar10-smallcnn-linf-at,sigma={a.sigma:g}"
    data = DATASETS.create("cifar10-1k", n_examples=a.n)
    k, s = a.eot, a.steps
    arms = {"no EOT, same iterations": f"apgd-ce:steps={s}",
            f"EOT {k}, same iterations": f"apgd-ce:steps={s},eot={k}",
            "no EOT, same gradient evaluations": f"apgd-ce:steps={k * s}"}
    summary = {"command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
               "date": provenance.utc_now(), "git_commit": provenance.git_state()["commit"],
               "device": f"CPU ({platform.processor() or 'x86_64'}; 2 cores shared with other jobs), torch threads "
                         f"{torch.get_num_threads()}", "model": model, "n": a.n, "settings": vars(a), "arms": {}, "recheck": {}}
    for name, spec in arms.items():
        summary["arms"][name] = run_arm(model, data, spec, a, results)
        print(name, {k_: v for k_, v in summary["arms"][name].items() if k_ != "robust_flags"}, flush=True)
    for spec in (arms["no EOT, same iterations"], arms[f"EOT {k}, same iterations"]):
        summary["recheck"][spec] = single_vs_majority(model, data, spec, a)
        print(spec, summary["recheck"][spec], flush=True)
    out = results / "randomized_cpu_smallcnn.json"
    runs = {}
    if a.append and out.is_file():  # keep the runs at other sigmas
        old = json.loads(out.read_text())
        runs = old["runs"] if "runs" in old else {f"{old['settings']['sigma']:g}": old}
    runs[f"{a.sigma:g}"] = summary
    atomic_write_text(out, json.dumps({"runs": runs}, indent=2) + "\n")
    write_page(results / "randomized.md", runs)
    print(report(summary))
    return 0


def render(runs: dict) -> str:
    """The whole report: a header, then one section per sigma (lowest first)."""
    head = ["# EOT and re-checks over draws on a randomized model", "",
            "Written by `benchmarks/eot_randomized.py` (see its docstring for what each arm does). Robust accuracies "
            "in %, with 95% Wilson intervals; 'gradient evaluations' counts images passed backward by the attack.", ""]
    return "\n".join(head) + "\n" + "\n".join(report(r) for _, r in sorted(runs.items(), key=lambda kv: float(kv[0])))


def report(sm: dict) -> str:
    st = sm["settings"]
    lines = [f"## sigma = {st['sigma']:g} ({sm['date']})", "",
             f"Command: `{sm['command']}`  ", f"Commit {sm['git_commit']}; {sm['device']}.", "",
             f"Model `{sm['model']}` (the reference small CNN behind Gaussian input noise, fresh at every pass); "
             f"first {sm['n']} images of `cifar10-1k`; Linf 8/255. Every verdict (clean and adversarial) is the "
             f"majority over R = {st['draws']} fresh passes seeded by {st['draw_seed']} (`evaluate(..., randomized=True)`).",
             "", "### (a) EOT against no EOT (APGD-CE)", "",
             "| arm | attack | clean % | robust % | 95% CI | gradient evaluations (images) | seconds |",
             "|---|---|---:|---:|---|---:|---:|"]
    for name, r in sm["arms"].items():
        lines.append(f"| {name} | `{r['attack']}` | {percent(r['clean'])} | {percent(r['robust'])} | "
                     f"[{percent(r['ci95'][0])}, {percent(r['ci95'][1])}] | {r['n_backward']} | {r['seconds']} |")
    arms = list(sm["arms"].items())
    eot_name, eot_arm = next((n, r) for n, r in arms if "eot=" in r["attack"])
    eot_flags = np.asarray(eot_arm["robust_flags"], dtype=bool)
    lines.append("")
    for name, r in arms:
        if r is eot_arm:
            continue
        other = np.asarray(r["robust_flags"], dtype=bool)
        only_other, only_eot = int((~eot_flags & other).sum()), int((eot_flags & ~other).sum())
        lines.append(f"- {eot_name} vs {name}, per image: {only_other} points robust only against the latter "
                     f"(EOT broke them), {only_eot} robust only against EOT; exact McNemar raw p = "
                     f"{mcnemar_exact(only_other, only_eot):.3g} (the Holm-adjusted p of the page's family `eot` is "
                     "in its table at the top).")
    lines += ["", "### (b) Majority of R draws against a single pass", "",
              "| attack | points attacked | broken, single pass | broken, majority | lucky successes (single broken, majority robust) | missed by the single pass (majority broken) |",
              "|---|---:|---:|---:|---:|---:|"]
    for spec, r in sm["recheck"].items():
        lines.append(f"| `{spec}` | {r['n_attacked']} | {r['broken_single_pass']} | {r['broken_majority']} | "
                     f"{r['lucky_successes']} | {r['missed_by_single_pass']} |")
    r0 = next(iter(sm["recheck"].values()))
    lines += ["", f"Clean accuracy: one pass {percent(r0['clean_single_pass'])} %, majority {percent(r0['clean_majority'])} %; "
              f"{r0['clean_correct_single_not_majority']} points correct in the single pass but misclassified by the majority, "
              f"{r0['clean_correct_majority_not_single']} the reverse.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
