#!/usr/bin/env python
"""Same-budget reproduction of MTARD against a single-teacher distillation baseline (RSLAD) and plain PGD-AT
(../shared/research/defenses.md §e).

Every arm trains the same student architecture from the same initial weights (same seed), on the same
images, with the same schedule, number of epochs and student attack budget (10 PGD steps of 2/255 in
Linf 8/255), with `rbx train`'s engine; each trained student is evaluated with the same suite (default:
rbx's union suite) on the same test images. MTARD is then compared with each baseline per test image:
for clean accuracy, each threat model and the union, the discordant pairs (MTARD right where the baseline
is wrong, and the reverse) give an exact McNemar p-value (robustbench_ext.reporting.regress.mcnemar_exact; raw
p-values, no multiple-comparison correction). Records go to RESULTS/records, the summary to
RESULTS/mtard_<tag>.json and .md.

- mtard:  natural teacher NAT, adversarial teacher ADV (loss weights balanced per batch, eta 0.025);
- rslad:  the adversarial teacher ADV alone (RSLAD's soft labels and KL adversary);
- pgd-at: cross-entropy on the student's PGD examples (no teacher).

Tiny check (minutes on a CPU):  --n-train 256 --epochs 1 --eval-n 20 --suite-steps 5
Full size (see the report for the CPU time; a GPU is advised):
    python benchmarks/mtard_repro.py --n-train 50000 --epochs 10 --eval-n 1000 --device cuda
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from robustbench_ext.records import provenance
from robustbench_ext.models.loading import load_model
from robustbench_ext.paths import atomic_write_text
from robustbench_ext.registry import DATASETS
from robustbench_ext.reporting.regress import paired_mcnemar
from robustbench_ext import evaluate
from robustbench_ext.evaluation.suites import AttackSpec, ThreatSpec, load_suite
from robustbench_ext.training.engine import TrainConfig, Trainer
from robustbench_ext.runtime import seed_arg

STUDENT_PGD = "pgd:steps={steps},rel_step_size=0.25,start_std=0.001"  # 2/255 steps at 8/255


def arms(nat: str, adv: str, steps: int) -> dict[str, str]:
    """Defense specs of the three arms, with the same student attack budget."""
    attack = STUDENT_PGD.format(steps=steps)
    return {"mtard": f'mtard:nat_teacher={nat},adv_teacher={adv},attack="{attack}"',
            "rslad": f"rslad:teacher={adv},steps={steps}",
            "pgd-at": f'pgd-at:attack="{attack}"'}


def light_suite(suite, steps: int) -> list[ThreatSpec]:
    """The suite's threat models with every attack's ``steps`` lowered to ``steps`` (for the tiny check only)."""
    return [ThreatSpec(t.threat, tuple(AttackSpec(a.name, {**a.params, "steps": steps}) for a in t.attacks))
            for t in suite.threats]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nat-teacher", default="trained:results/train/standard-smallcnn")
    ap.add_argument("--adv-teacher", default="cifar10-smallcnn-linf-at")
    ap.add_argument("--arch", default="smallcnn", help="the student (trained from scratch, same init for every arm)")
    ap.add_argument("--init", default=None, help="warm start every student from this model instead (same weights for every arm)")
    ap.add_argument("--arms", default="mtard,rslad,pgd-at")
    ap.add_argument("--dataset", default="cifar10-train")
    ap.add_argument("--n-train", type=int, default=50000)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--weight-decay", type=float, default=2e-4, help="MTARD's official value")
    ap.add_argument("--schedule", default="piecewise", help="piecewise: eta decays x0.1 with each LR decay, as MTARD's")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--pgd-steps", type=int, default=10)
    ap.add_argument("--eval-n", type=int, default=1000)
    ap.add_argument("--suite", default="cifar10-union")
    ap.add_argument("--suite-steps", type=int, default=None, help="lower every suite attack's steps (tiny checks only)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=seed_arg, default=0)
    ap.add_argument("--results-dir", default="results")
    ap.add_argument("--tag", default=None)
    ap.add_argument("--skip-teacher-eval", action="store_true",
                    help="do not evaluate the teachers (saves their suite runs; the arms' comparison does not need them)")
    a = ap.parse_args(argv)

    results = Path(a.results_dir)
    dev = "gpu" if torch.cuda.is_available() and a.device != "cpu" else "cpu"
    start = f"init-{a.init.split(':')[-1].rstrip('/').split('/')[-1]}" if a.init else a.arch
    tag = a.tag or f"{dev}_{start}_n{a.n_train}_e{a.epochs}"
    suite = load_suite(a.suite)
    threats = light_suite(suite, a.suite_steps) if a.suite_steps else suite.threats
    suite_label = suite.name if not a.suite_steps else f"{suite.name} (steps={a.suite_steps})"
    test = DATASETS.create(suite.dataset, n_examples=a.eval_n)
    specs = arms(a.nat_teacher, a.adv_teacher, a.pgd_steps)
    chosen = [s.strip() for s in a.arms.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in specs]
    if unknown or "mtard" not in chosen:
        raise SystemExit(f"--arms must include mtard and name arms among {', '.join(specs)}; got {a.arms}")
    summary = {"command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
               "date": provenance.utc_now(), "git_commit": provenance.git_state()["commit"], "settings": vars(a),
               "suite": suite_label, "teachers": {}, "arms": {}, "mcnemar": {}}
    for role, spec in (() if a.skip_teacher_eval else (("natural", a.nat_teacher), ("adversarial", a.adv_teacher))):
        ev = evaluate(load_model(spec), test, threats, suite=suite_label, seed=a.seed, progress=False, device=a.device)
        summary["teachers"][role] = {"model": spec, **_row(ev.record, ev.write(results), 0.0)}
        print("teacher", role, summary["teachers"][role], flush=True)
    flags = {}
    for arm in chosen:
        name = f"repro-mtard-{arm}-{tag}"
        cfg = TrainConfig(defense=specs[arm], out=str(results / "train" / name), arch=None if a.init else a.arch,
                          init=a.init, dataset=a.dataset,
                          n_train=a.n_train, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr,
                          weight_decay=a.weight_decay, schedule=a.schedule, seed=a.seed, device=a.device, name=name)
        t0 = time.perf_counter()
        trainer = Trainer(cfg)
        trained = trainer.run(resume=False)
        train_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        ev = evaluate(trainer.saved_model(), test, threats, suite=suite_label, seed=a.seed, progress=False, device=a.device)
        summary["arms"][arm] = {**_row(ev.record, ev.write(results), train_s), "eval_seconds": round(time.perf_counter() - t1, 1),
                                "defense": specs[arm], "train_log": trained.log}
        flags[arm] = ev.flags
        print(arm, {k: v for k, v in summary["arms"][arm].items() if k != "train_log"}, flush=True)
        atomic_write_text(results / f"mtard_{tag}.json", json.dumps(summary, indent=2) + "\n")
    for base in (b for b in chosen if b != "mtard"):
        summary["mcnemar"][f"mtard vs {base}"] = paired_mcnemar(flags["mtard"], flags[base])
    summary["device_name"] = ev.record.provenance["device_name"]
    atomic_write_text(results / f"mtard_{tag}.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(results / f"mtard_{tag}.md", report(summary))
    print(report(summary))
    return 0


def _row(record, path, train_seconds) -> dict:
    return {"record": str(path), "clean": round(100 * record.clean.accuracy, 1),
            **{t.threat: round(100 * t.robust.accuracy, 1) for t in record.threats},
            "union": round(100 * record.union.accuracy, 1), "train_seconds": round(train_seconds, 1)}


def report(summary: dict) -> str:
    """The summary as a Markdown table and the McNemar comparisons."""
    rows = {**{f"teacher ({k})": v for k, v in summary["teachers"].items()}, **summary["arms"]}
    cols = [k for k in next(iter(rows.values())) if k not in ("record", "train_seconds", "eval_seconds", "defense",
                                                                "train_log", "model")]
    s = summary["settings"]
    lines = [f"# MTARD vs single-teacher distillation and PGD-AT ({summary['date']})", "",
             f"Command: `{summary['command']}`  ", f"Commit {summary['git_commit']}, device {summary.get('device_name')}; "
             f"student {s['arch'] if not s.get('init') else 'warm-started from ' + s['init']}, {s['n_train']} training images, {s['epochs']} epochs, {s['schedule']} schedule, "
             f"lr {s['lr']}; suite {summary['suite']} on {s['eval_n']} test images.", "",
             "| model | " + " | ".join(cols) + " | train s |", "|---" * (len(cols) + 2) + "|"]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{r[c]}" for c in cols) + f" | {r.get('train_seconds', '')} |")
    for pair, metrics in summary["mcnemar"].items():
        lines += ["", f"## {pair}: exact McNemar test per test image (a = MTARD, b = the baseline)", "",
                  "| metric | MTARD % | baseline % | only MTARD right | only baseline right | p |", "|---|---|---|---|---|---|"]
        for m, v in metrics.items():
            lines.append(f"| {m} | {v['a']} | {v['b']} | {v['a_only']} | {v['b_only']} | {v['p_value']:.3g} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
