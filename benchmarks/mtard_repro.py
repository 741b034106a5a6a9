#!/usr/bin/env python
"""Same-budget reproduction of MTARD against a single-teacher distillation baseline (RSLAD) and plain PGD-AT
(../shared/research/defenses.md §e).

Every arm trains the same student architecture from the same initial weights (same seed), on the same
images, with the same schedule, number of epochs and student attack budget (10 PGD steps of 2/255 in
Linf 8/255), with `rbx train`'s engine; each trained student is evaluated with the same suite (default:
rbx's union suite) on the same test images. MTARD is then compared with each other arm per test image: for clean accuracy, each threat model and the
union, the discordant pairs (MTARD right where the other arm is wrong, and the reverse) give an exact McNemar
p-value; the run's comparisons form one family (every arm against MTARD, every metric), Holm-adjusted within
it, and a direction is "shown" only when the adjusted p < 0.05 and the students learned robustness (the rule
of benchmarks/paired.py). The page starts with a three-column summary (claim of the paper | what this run
shows | the budget a power calculation on the observed effect says would be needed). Records go to
RESULTS/records, the summary to RESULTS/mtard_<tag>.json and .md (``--render-only JSON`` rewrites the .md
from the JSON and the records' per-sample flags).

- mtard:  natural teacher NAT, adversarial teacher ADV (Entropy-Based Balance of the temperatures, loss weights
          balanced per batch, eta 0.025);
- mtard-nobalance: the same without the Entropy-Based Balance (temperatures fixed at 1, as the ECCV code);
- rslad:  the adversarial teacher ADV alone (RSLAD's soft labels and KL adversary);
- pgd-at: cross-entropy on the student's PGD examples (no teacher).

Evaluation images: the suite's test set from --eval-start (default 0) on, --eval-n of them; training images
come from the training split only. Tiny check (minutes on a CPU):  --n-train 256 --epochs 1 --eval-n 20 --suite-steps 5
Full size (see the report for the CPU time; a GPU is advised):
    python benchmarks/mtard_repro.py --n-train 50000 --epochs 10 --eval-n 1000 --device cuda
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # paired.py, the one rule for p-values
from paired import Test, family_table, in_family, pair_tests, summary_table  # noqa: E402

from robustbench_ext.records import provenance
from robustbench_ext.models.loading import load_model
from robustbench_ext.paths import atomic_write_text
from robustbench_ext.registry import DATASETS
from robustbench_ext.records.store import read_flags, read_record
from robustbench_ext import evaluate
from robustbench_ext.evaluation.suites import AttackSpec, ThreatSpec, load_suite
from robustbench_ext.training.engine import TrainConfig, Trainer
from robustbench_ext.runtime import seed_arg
from robustbench_ext.defenses.mtard import MTARD, TEMPERATURE_RANGE

STUDENT_PGD = "pgd:steps={steps},rel_step_size=0.25,start_std=0.001"  # 2/255 steps at 8/255


def arms(nat: str, adv: str, steps: int) -> dict[str, str]:
    """Defense specs of the three arms, with the same student attack budget."""
    attack = STUDENT_PGD.format(steps=steps)
    return {"mtard": f'mtard:nat_teacher={nat},adv_teacher={adv},attack="{attack}",balance=true',
            "mtard-nobalance": f'mtard:nat_teacher={nat},adv_teacher={adv},attack="{attack}",balance=false',
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
    ap.add_argument("--arms", default="mtard,mtard-nobalance,rslad,pgd-at")
    ap.add_argument("--dataset", default="cifar10-train")
    ap.add_argument("--n-train", type=int, default=50000)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--weight-decay", type=float, default=2e-4, help="MTARD's official value")
    ap.add_argument("--schedule", default="piecewise", help="piecewise: eta decays x0.1 with each LR decay, as MTARD's")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--pgd-steps", type=int, default=10)
    ap.add_argument("--eval-n", type=int, default=1000)
    ap.add_argument("--eval-start", type=int, default=0,
                    help="evaluate test images START .. START + eval-n - 1 (e.g. 1000: held out from earlier runs)")
    ap.add_argument("--suite", default="cifar10-union")
    ap.add_argument("--suite-steps", type=int, default=None, help="lower every suite attack's steps (tiny checks only)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=seed_arg, default=0)
    ap.add_argument("--results-dir", default="results")
    ap.add_argument("--tag", default=None)
    ap.add_argument("--skip-teacher-eval", action="store_true",
                    help="do not evaluate the teachers (saves their suite runs; the arms' comparison does not need them)")
    ap.add_argument("--render-only", type=Path, default=None, metavar="JSON",
                    help="rewrite the report of an earlier run from its JSON and its records; run nothing")
    ap.add_argument("--eval-init-only", action="store_true",
                    help="evaluate the --init model (the arms' common start) on the run's test images with the same "
                         "suite and seed, add it to the run's JSON as the row 'start' and rewrite the report")
    a = ap.parse_args(argv)
    if a.render_only is not None:
        summary = json.loads(a.render_only.read_text())
        summary.setdefault("tag", a.render_only.stem.removeprefix("mtard_"))
        atomic_write_text(a.render_only.with_suffix(".md"), report(summary))
        return 0

    results = Path(a.results_dir)
    dev = "gpu" if torch.cuda.is_available() and a.device != "cpu" else "cpu"
    start = f"init-{a.init.split(':')[-1].rstrip('/').split('/')[-1]}" if a.init else a.arch
    tag = a.tag or f"{dev}_{start}_n{a.n_train}_e{a.epochs}"
    suite = load_suite(a.suite)
    threats = light_suite(suite, a.suite_steps) if a.suite_steps else suite.threats
    suite_label = suite.name if not a.suite_steps else f"{suite.name} (steps={a.suite_steps})"
    test = eval_slice(suite.dataset, a.eval_start, a.eval_n)
    specs = arms(a.nat_teacher, a.adv_teacher, a.pgd_steps)
    chosen = [s.strip() for s in a.arms.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in specs]
    if unknown or "mtard" not in chosen:
        raise SystemExit(f"--arms must include mtard and name arms among {', '.join(specs)}; got {a.arms}")
    summary = {"command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
               "date": provenance.utc_now(), "git_commit": provenance.git_state()["commit"],
               "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()},
               "suite": suite_label, "tag": tag, "teachers": {}, "arms": {}, "evaluated": test.describe()["selection"]}
    if a.eval_init_only:
        if not a.init:
            raise SystemExit("--eval-init-only needs --init (the model every arm started from)")
        path = results / f"mtard_{tag}.json"
        if not path.is_file():
            raise SystemExit(f"--eval-init-only: no run {path} (run the reproduction first, with the same settings)")
        done = json.loads(path.read_text())
        ev = evaluate(load_model(a.init), test, threats, suite=suite_label, seed=a.seed, progress=False, device=a.device)
        done["start"] = {"model": a.init, "command": summary["command"], "date": summary["date"],
                         **_row(ev.record, ev.write(results), 0.0), "train_seconds": "-"}
        atomic_write_text(path, json.dumps(done, indent=2) + "\n")
        atomic_write_text(path.with_suffix(".md"), report(done))
        return 0
    for role, spec in (() if a.skip_teacher_eval else (("natural", a.nat_teacher), ("adversarial", a.adv_teacher))):
        ev = evaluate(load_model(spec), test, threats, suite=suite_label, seed=a.seed, progress=False, device=a.device)
        summary["teachers"][role] = {"model": spec, **_row(ev.record, ev.write(results), 0.0)}
        print("teacher", role, summary["teachers"][role], flush=True)
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
        print(arm, {k: v for k, v in summary["arms"][arm].items() if k != "train_log"}, flush=True)
        atomic_write_text(results / f"mtard_{tag}.json", json.dumps(summary, indent=2) + "\n")
    summary["tests"] = [dataclasses.asdict(t) for t in run_family(summary)]
    summary["device_name"] = ev.record.provenance["device_name"]
    atomic_write_text(results / f"mtard_{tag}.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(results / f"mtard_{tag}.md", report(summary))
    print(report(summary))
    return 0


def eval_slice(dataset: str, start: int, n: int):
    """Test images ``start`` .. ``start + n - 1`` of ``dataset`` (the record says which)."""
    if start < 0 or n < 1:
        raise SystemExit(f"--eval-start must be >= 0 and --eval-n >= 1, got {start} and {n}")
    data = DATASETS.create(dataset, n_examples=start + n)
    if start == 0:
        return data
    return dataclasses.replace(data, x=data.x[start:], y=data.y[start:],
                               selection=f"{data.source} images {start}..{start + n - 1} (test images held out from earlier runs)")


def _row(record, path, train_seconds) -> dict:
    return {"record": str(path), "clean": round(100 * record.clean.accuracy, 1),
            **{t.threat: round(100 * t.robust.accuracy, 1) for t in record.threats},
            "union": round(100 * record.union.accuracy, 1), "train_seconds": round(train_seconds, 1)}


def _path(p: str) -> Path:
    """A record path as the summary stores it (relative to where the run started: the repository root)."""
    path = Path(p)
    return path if path.is_file() else Path(__file__).resolve().parent.parent / p


def run_family(summary: dict) -> list[Test]:
    """The run's one family: every other arm against MTARD, on every metric, from the records' per-sample flags."""
    arms = summary["arms"]
    if "mtard" not in arms:
        return []
    rec = read_record(_path(arms["mtard"]["record"]))
    k = int(rec.dataset.get("num_classes") or 10)
    fm = read_flags(_path(arms["mtard"]["record"]), rec)
    tests: list[Test] = []
    for other in (o for o in arms if o != "mtard"):
        tests += pair_tests(f"MTARD vs {other}", fm, read_flags(_path(arms[other]["record"])), None, k)
    return in_family(tests)


#: The paper's claims a run can speak to: (claim, the arm MTARD is compared with, metric, direction, context metrics).
CLAIMS = (
    ("MTARD's student keeps more clean accuracy than single-teacher robust distillation (RSLAD) at similar robust "
     "accuracy (Zhao et al., ECCV 2022)", "rslad", "clean", "higher", ("Linf:8/255", "union")),
    ("MTARD's student is more robust than plain adversarial training (and more accurate; Zhao et al., ECCV 2022)",
     "pgd-at", "Linf:8/255", "higher", ("clean", "union")),
    ("The Entropy-Based Balance of the teachers' temperatures is part of MTARD's gain (its ablation in the paper)",
     "mtard-nobalance", "Linf:8/255", "higher", ("clean",)),
)


def _temperature_lines(summary: dict) -> list[str]:
    """What the Entropy-Based Balance did in this run, from the balanced arms' train logs (epoch means of the
    teachers' temperatures) and the most it could do: lr_tau per batch over the run's batches."""
    s, out = summary["settings"], []
    for name, r in summary["arms"].items():
        log = [e for e in r.get("train_log", []) if "tau_nat" in e]
        if not log:
            continue
        batches = math.ceil(s["n_train"] / s["batch_size"]) * s["epochs"]
        given = re.search(r"temperature_lr=([0-9.eE+-]+)", r.get("defense", ""))
        lr_tau = float(given.group(1)) if given else MTARD.temperature_lr
        means = "; ".join(f"epoch {e['epoch']}: tau_nat {e['tau_nat']}, tau_adv {e['tau_adv']}" for e in log)
        out.append(f"{name}'s teachers' temperatures (the Entropy-Based Balance; epoch means from its train log, both "
                   f"start at 1): {means}. At lr_tau = {lr_tau:g} per batch (decayed with the learning rate) "
                   f"over this run's {batches} batches a temperature can move by at most {batches * lr_tau:.3g} (its "
                   f"range is [{TEMPERATURE_RANGE[0]:g}, {TEMPERATURE_RANGE[1]:g}]), so a difference between the balanced and the unbalanced arm is not to be "
                   "expected at this budget.")
    return ["", *out] if out else []


def report(summary: dict) -> str:
    """The page: title, the three-column summary, the arms' table, the family of tests with raw and Holm p."""
    tests = run_family(summary)
    rows = {**({"start (no training)": summary["start"]} if "start" in summary else {}),
            **{f"teacher ({k})": v for k, v in summary["teachers"].items()}, **summary["arms"]}
    cols = [k for k in next(iter(rows.values())) if k not in ("record", "train_seconds", "eval_seconds", "defense",
                                                                "train_log", "model", "command", "date")]
    s = summary["settings"]
    start = s.get("eval_start", 0)
    where = (f"test images {start}..{start + s['eval_n'] - 1}" if start else f"the first {s['eval_n']} test images")
    where += " (held out: rbx reports on CIFAR-10 test images 0-8999 and tunes only on 9000-9999 and training images)"
    claims = []
    for claim, other, metric, direction, context in CLAIMS:
        find = {t.metric: t for t in tests if t.comparison == f"MTARD vs {other}"}
        if metric in find:
            claims.append((claim, find[metric], [find[c] for c in context if c in find], direction))
    lines = [f"# MTARD vs single-teacher distillation and PGD-AT ({summary['date']})", ""]
    confound = [role for role, spec in (("natural", s["nat_teacher"]), ("adversarial", s["adv_teacher"]))
                if s.get("init") and s["init"] == spec]
    if claims:
        lines += [summary_table(claims), "",
                  "The budget column is a power calculation on this run's observed effect (benchmarks/paired.py): test "
                  "images needed at THIS training budget. The paper's effects need students trained at the paper's "
                  "budget; the GPU-sized reproduction (`--n-train 50000 --epochs 10 --eval-n 1000 --device cuda` or "
                  "longer) is owed: no GPU was lent.", ""]
    if confound:
        lines += [f"**Confounded**: every student starts from the {confound[0]} teacher itself (`{s['init']}`), so an arm "
                  f"that stays near its start stays near that teacher; a difference between the arms says how far each "
                  "moved in this budget, not what the method does. Read the rows below with that in mind.", ""]
    dirty = read_record(_path(summary["arms"]["mtard"]["record"])).provenance.get("git_dirty") if "mtard" in summary["arms"] else None
    lines += [f"Command: `{summary['command']}`  ", f"Commit {summary['git_commit']}"
              f"{' (working tree with uncommitted changes)' if dirty else ''}, device {summary.get('device_name')}; "
              f"student {s['arch'] if not s.get('init') else 'warm-started from ' + s['init']}, {s['n_train']} training "
              f"images, {s['epochs']} epochs, {s['schedule']} schedule, lr {s['lr']}; teachers: natural "
              f"`{s['nat_teacher']}`, adversarial `{s['adv_teacher']}`; suite {summary['suite']} on {where}.", "",
              "| model | " + " | ".join(cols) + " | train s |", "|---" * (len(cols) + 2) + "|"]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{r[c]}" for c in cols) + f" | {r.get('train_seconds', '')} |")
    lines += ["", "Arms (`rbx train --defense`): " + "; ".join(
        f"{name} `{r['defense']}`" + (" (written before 2026-12-04, when the Entropy-Based Balance was off by default: "
                                      "temperatures fixed at 1)" if r["defense"].startswith("mtard:") and "balance=" not in r["defense"] else "")
        for name, r in summary["arms"].items() if "defense" in r) + "."]
    lines += _temperature_lines(summary)
    if "start" in summary:
        lines += ["", f"The start row: `{summary['start']['command']}` ({summary['start']['date']}), the same suite, seed and "
                  "test images."]
    if tests:
        lines += ["", "## Every comparison of the run (one family)", "",
                  family_table(f"mtard-{summary.get('tag') or summary['settings'].get('tag') or 'run'}",
                               "every other arm against MTARD (candidate = MTARD), on every metric:", tests)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
