#!/usr/bin/env python
"""Per-stage majority re-checks against one re-check at the end, on a randomized model (issue 29).

rbx judges a randomized model's cascade stage by stage (robustbench_ext/evaluation/majority.py): every point a
stage returns is re-checked by the majority of R fresh passes, and a point broken by one re-check stays broken.
That errs toward "broken" for borderline points (one chance per stage). The alternative measured here re-checks
once at the end: the cascade continues while the attack's own single pass says robust (as for a deterministic
model), and each point's final candidate (the one whose single pass first succeeded, else the last stage's) is
re-checked once with R fresh passes.

Both rules are applied to the SAME attack runs, so that only the rule differs: stage s attacks every clean-correct
point that either rule still attacks, once, with the seeds the runner would use; the per-stage rule re-checks the
returned points it still attacks; the end rule records the candidates. Clean verdicts are the majority of R passes
for both. Counted: points broken by one rule and not the other (an exact McNemar test of the asymmetry, one test
per sigma in one declared family, Holm-adjusted), and, per rule, how many re-checks each point received and how
close their vote was (a borderline point: between 4 and 7 of 11 passes wrong).

    python benchmarks/recheck_direction.py --sigma 0.1 --start 1000 --n 200     (images 1000..1199, held out)

Writes RESULTS/randomized/recheck_direction.json (``runs`` by sigma, merged with earlier sigmas) with per-point
verdicts of both rules in the flags format benchmarks/paired.py reads (``runs.<sigma>.<rule>``); ``--render-only``
writes its table into results/randomized.md (the McNemar tests' Holm-adjusted p are in the page's family
``recheck``, results/families/randomized.toml).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paired import in_family, pair_tests, replace_blocks  # noqa: E402

from robustbench_ext import __version__ as rbx_version  # noqa: E402
from robustbench_ext.attack.base import SampleSeeds  # noqa: E402
from robustbench_ext.attack.threat import ThreatModel  # noqa: E402
from robustbench_ext.evaluation.majority import Draws, batch_seed, wrong_counts  # noqa: E402
from robustbench_ext.evaluation.suites import load_suite  # noqa: E402
from robustbench_ext.models.loading import load_model  # noqa: E402
from robustbench_ext.paths import atomic_write_text  # noqa: E402
from robustbench_ext.records import provenance  # noqa: E402
from robustbench_ext.registry import DATASETS  # noqa: E402
from robustbench_ext.runtime import seed_arg, stream_seed  # noqa: E402


def held_out(dataset: str, start: int, n: int):
    data = DATASETS.create(dataset, n_examples=start + n)
    return dataclasses.replace(data, x=data.x[start:], y=data.y[start:])


def compare_rules(net, x, y, threat: ThreatModel, stages, draws: Draws, seed: int, batch_size: int) -> dict:
    """Both rules on shared attack runs (see the module docstring). Returns per-point arrays (numpy)."""
    n, r = x.shape[0], draws.r
    clean_wrong = np.zeros(n, np.int64)
    for bi, i in enumerate(range(0, n, batch_size)):
        clean_wrong[i:i + batch_size] = wrong_counts(net, x[i:i + batch_size], y[i:i + batch_size], r,
                                                     batch_seed(draws, 0, bi)).numpy()
    clean = 2 * clean_wrong <= r
    broken_ps = np.zeros(n, bool)  # per-stage rule: broken by some stage's re-check
    checks_ps = np.zeros(n, np.int64)  # re-checks each point received under the per-stage rule
    votes_ps = [[] for _ in range(n)]  # the wrong counts of those re-checks
    done_single = np.zeros(n, bool)  # end rule: the cascade stopped (a single pass said broken)
    final = x.clone()
    for s, stage in enumerate(stages):
        todo = np.flatnonzero(clean & (~broken_ps | ~done_single))
        for bi, i in enumerate(range(0, todo.size, batch_size)):
            chunk = todo[i:i + batch_size]
            xb, yb = x[chunk], y[chunk]
            samples = SampleSeeds(stream_seed(seed, "stage", 0, s), torch.as_tensor(chunk, dtype=torch.int64))
            res = stage.attack(net, xb, yb, threat, seed=stream_seed(seed, "stage", 0, s, bi), samples=samples)
            ps = ~broken_ps[chunk]
            if ps.any():
                w = wrong_counts(net, res.x_adv[torch.as_tensor(ps)], yb[torch.as_tensor(ps)], r,
                                 batch_seed(draws, 1, 0, s, bi, 0)).numpy()
                pts = chunk[ps]
                checks_ps[pts] += 1
                for p, v in zip(pts, w):
                    votes_ps[p].append(int(v))
                broken_ps[pts] |= 2 * w > r
            eo = ~done_single[chunk]
            final[chunk[eo]] = res.x_adv[torch.as_tensor(eo)]
            done_single[chunk[eo]] |= res.success.numpy()[eo]
    end_wrong = np.zeros(n, np.int64)
    idx = np.flatnonzero(clean)
    for bi, i in enumerate(range(0, idx.size, batch_size)):
        chunk = idx[i:i + batch_size]
        end_wrong[chunk] = wrong_counts(net, final[chunk], y[chunk], r, batch_seed(draws, 9, bi)).numpy()
    broken_end = clean & (2 * end_wrong > r)
    return {"clean": clean, "clean_wrong": clean_wrong, "broken_per_stage": broken_ps & clean, "checks_per_stage": checks_ps,
            "votes_per_stage": votes_ps, "single_pass_broken": done_single & clean, "end_wrong": end_wrong,
            "broken_end": broken_end}


def borderline(v: int, r: int) -> bool:
    """A vote within 1.5 of a tie on either side (R = 11: 4 to 7 of 11 passes wrong)."""
    return abs(v - r / 2) <= 1.5


def summarize(res: dict, r: int) -> dict:
    clean, ps, end = res["clean"], res["broken_per_stage"], res["broken_end"]
    only_ps, only_end = np.flatnonzero(ps & ~end), np.flatnonzero(~ps & end)
    votes = res["votes_per_stage"]
    return {
        "clean_correct": int(clean.sum()),
        "broken_per_stage": int(ps.sum()), "broken_end": int(end.sum()),
        "robust_per_stage": int((clean & ~ps).sum()), "robust_end": int((clean & ~end).sum()),
        "broken_only_per_stage": int(only_ps.size), "broken_only_end": int(only_end.size),
        "points_rechecked_twice_or_more": int((res["checks_per_stage"] >= 2).sum()),
        "borderline_votes_per_stage": int(sum(borderline(v, r) for p in np.flatnonzero(clean) for v in votes[p])),
        "flips_per_stage_broken": [{"point": int(p), "votes": votes[p], "end_vote": int(res["end_wrong"][p])} for p in only_ps],
        "flips_end_broken": [{"point": int(p), "votes": votes[p], "end_vote": int(res["end_wrong"][p])} for p in only_end],
    }


def flags(res: dict, rule: str, y: np.ndarray, threat: str) -> dict:
    """Per-point verdicts in the flags format benchmarks/paired.py reads."""
    broken = res["broken_per_stage"] if rule == "per_stage" else res["broken_end"]
    return {"y": y.tolist(), "clean_correct": res["clean"].tolist(), "robust": {threat: (res["clean"] & ~broken).tolist()},
            "num_classes": 10}


def render_block(runs: dict) -> str:
    """The page's table of the measurement (one row per sigma), with the flipped points' votes."""
    lines = ["| sigma | clean-correct (majority) | broken, per-stage re-checks | broken, one re-check at the end | broken only "
             "per-stage | broken only at the end | exact McNemar raw p | points re-checked twice (per-stage) | "
             "borderline votes (4-7 of 11) | wall s / process CPU s |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    notes = []
    for sigma, r in sorted(runs.items(), key=lambda kv: float(kv[0])):
        m = r["summary"]
        lines.append(f"| {sigma} | {m['clean_correct']} | {m['broken_per_stage']} | {m['broken_end']} | "
                     f"{m['broken_only_per_stage']} | {m['broken_only_end']} | {r['mcnemar_raw_p']:.3g} | "
                     f"{m['points_rechecked_twice_or_more']} | {m['borderline_votes_per_stage']} | "
                     f"{r['wall_seconds']} / {r['process_cpu_seconds']} |")
        flips = ([f"point {f['point']}: per-stage votes {f['votes']}, end vote {f['end_vote']} (broken only per-stage)"
                  for f in m["flips_per_stage_broken"]] +
                 [f"point {f['point']}: per-stage votes {f['votes']}, end vote {f['end_vote']} (broken only at the end)"
                  for f in m["flips_end_broken"]])
        notes.append(f"- sigma {sigma}: `{r['command']}` ({r['date']}, commit {r['git_commit'][:7]}, {r['device']}; "
                     f"{r['images']}; cascade {' > '.join(r['cascade'])}; R = {r['draws']['r']}). Flips (votes = "
                     f"passes of {r['draws']['r']} that misclassify): " + ("; ".join(flips) if flips else "none") + ".")
    return "\n".join(lines + [""] + notes)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sigma", type=float, default=0.1)
    ap.add_argument("--base", default="cifar10-smallcnn-linf-at")
    ap.add_argument("--dataset", default="cifar10")
    ap.add_argument("--start", type=int, default=1000)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--suite", default="cifar10-union", help="its Linf 8/255 cascade is the one measured")
    ap.add_argument("--draws", type=int, default=11)
    ap.add_argument("--draw-seed", type=seed_arg, default=0)
    ap.add_argument("--seed", type=seed_arg, default=0)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--results-dir", default="results")
    ap.add_argument("--render-only", action="store_true",
                    help="rewrite the table in RESULTS/randomized.md (its <!-- recheck:table --> block) from the JSON")
    a = ap.parse_args(argv)
    out = Path(a.results_dir) / "randomized" / "recheck_direction.json"
    if a.render_only:
        page = Path(a.results_dir) / "randomized.md"
        block = render_block(json.loads(out.read_text())["runs"])
        atomic_write_text(page, replace_blocks(page.read_text(), {"table": block}, str(page), prefix="recheck"))
        return 0
    model = f"noisy:{a.base},sigma={a.sigma:g}"
    net = load_model(model).module.eval()
    data = held_out(a.dataset, a.start, a.n)
    threat = ThreatModel.parse("Linf:8/255")
    spec = next(t for t in load_suite(a.suite).threats if t.threat == threat)
    stages = [dataclasses.replace(s, attack=s.attack.fit(10, tuple(data.x.shape[1:]), threat)[0]) for s in spec.build()]
    draws = Draws(a.draws, a.draw_seed)
    torch.manual_seed(a.seed)
    t0, c0 = time.perf_counter(), time.process_time()
    res = compare_rules(net, data.x, data.y, threat, stages, draws, a.seed, a.batch_size)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    y = data.y.numpy()
    run = {"command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
           "date": provenance.utc_now(), "git_commit": provenance.git_state()["commit"], "rbx": rbx_version,
           "device": f"CPU ({platform.processor() or 'x86_64'}; 2 cores shared with other jobs), torch threads "
                     f"{torch.get_num_threads()}", "wall_seconds": round(wall, 1), "process_cpu_seconds": round(cpu, 1),
           "model": model, "images": f"{data.source} test images {a.start}..{a.start + a.n - 1}",
           "cascade": [s.label for s in stages], "draws": draws.describe(), "settings": vars(a),
           "summary": summarize(res, a.draws),
           "per_stage": flags(res, "per_stage", y, threat.label), "end": flags(res, "end", y, threat.label)}
    fa = _flags_obj(run["per_stage"])
    fb = _flags_obj(run["end"])
    (test,) = [t for t in in_family(pair_tests("per-stage vs end", fa, fb, [threat.label], 10))]
    run["mcnemar_raw_p"] = test.p_raw
    runs = json.loads(out.read_text())["runs"] if out.is_file() else {}
    runs[f"{a.sigma:g}"] = run
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps({"runs": runs}, indent=1) + "\n")
    print(json.dumps({k: v for k, v in run.items() if k not in ("per_stage", "end")}, indent=1))
    return 0


def _flags_obj(d: dict):
    from robustbench_ext.records.schema import SampleFlags

    threats = tuple(d["robust"])
    robust = np.stack([np.asarray(d["robust"][t], bool) for t in threats], 1)
    y = np.asarray(d["y"])
    return SampleFlags(np.arange(y.size), y, np.asarray(d["clean_correct"], bool), robust,
                       np.full(robust.shape, -1, np.int16), threats)


if __name__ == "__main__":
    sys.exit(main())
