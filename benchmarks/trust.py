#!/usr/bin/env python
"""rbx's default against AutoAttack, per sample, on tuning and held-out images and models (issue 26).

AutoAttack's flags come from the cache (``benchmarks/aa_flags.py``; never recomputed here). rbx runs as a user
runs it: ``evaluate`` with the suite, escalation on, no audit (the audit is AutoAttack itself: it would hide
what the cascade misses). Which images are tuning and which held out is ``benchmarks/splits.py``'s rule, and
every output says which; ``compare`` refuses to write a held-out comparison with candidate suites (candidates
are chosen on tuning images only).

    # tuning: candidate cascades against AutoAttack on the tuning slice
    python benchmarks/trust.py compare --model cifar10-smallcnn-linf-at --start 9000 --n 500 \
        --candidates benchmarks/candidates/l1-apgd-ce.toml
    # which AutoAttack component breaks the points a cascade misses (each component alone, AutoAttack's settings)
    python benchmarks/trust.py attribute --model cifar10-resnet18-linf-at --start 9000 --n 100 --norm L1
    # held out: the default on held-out images / models, one JSON per comparison under results/trust/
    python benchmarks/trust.py compare --model quantized --start 1000 --n 200
    # the per-run audit as a leaderboard run gets it (AutoAttack on 20 sampled robust points per threat model)
    python benchmarks/trust.py audit --model cifar10-smallcnn-linf-at --start 1000 --n 1000
    python benchmarks/trust.py table         # results/trust/table.{md,json} from every held-out comparison

Seconds: wall and process-CPU time of this machine (2 cores, shared with other jobs during these runs: wall
time is inflated and noisy); the ratio reported is process-CPU time, AutoAttack's (from the cache) over rbx's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import aa_flags  # noqa: E402
import splits  # noqa: E402
from robustbench_ext import evaluate  # noqa: E402
from robustbench_ext.attack.threat import ThreatModel  # noqa: E402
from robustbench_ext.errors import RbxError  # noqa: E402
from robustbench_ext.models.loading import LoadedModel  # noqa: E402
from robustbench_ext.evaluation.suites import load_suite  # noqa: E402
from robustbench_ext.paths import atomic_write_text  # noqa: E402
from robustbench_ext.records import provenance  # noqa: E402
from robustbench_ext.records.schema import union_flags  # noqa: E402
from robustbench_ext.registry import ATTACKS  # noqa: E402
from robustbench_ext.runtime import frozen, seed_arg  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "results" / "trust"
NORM_ORDER = ("Linf", "L2", "L1")


def _suite_for(dataset: str, suite: str | None) -> str:
    return suite or {"mnist5k": "mnist-union"}.get(dataset, "cifar10-union")


def aa_side(model: str, split: str, start: int, n: int, norms, randomized: bool):
    """AutoAttack's cached flags per norm (the majority verdict for randomized models) and their CPU seconds."""
    flags, cpu, wall = {}, 0.0, 0.0
    verdict = "majority" if randomized else "single"
    for norm in norms:
        f = aa_flags.load_flags(model, split, start, n, norm, verdict=verdict)
        if f is None:
            raise RbxError(f"no cached AutoAttack flags for {model} {split}[{start}:{start + n}] {norm} ({verdict}): run "
                           f"benchmarks/aa_flags.py --model {model} --split {split} --start {start} --n {n} --norms {norm}")
        flags[norm] = f
        for e in aa_flags.entries():
            k = e["key"]
            if (k["model"] == model and k["split"] == split and k["norm"] == norm and start <= k["start"] < start + n
                    and "verdict" not in k):
                cpu += e.get("cpu_seconds") or 0.0
                wall += e["seconds"]
    return flags, cpu, wall


def _restrict(suite, norms):
    """The suite with only the threat models of ``norms`` (None: all); its name says when it is a subset."""
    if not norms:
        return suite
    keep = tuple(t for t in suite.threats if t.threat.norm in norms)
    return dataclasses.replace(suite, name=f"{suite.name}[{'+'.join(t.threat.norm for t in keep)}]", threats=keep,
                               union_order=())


def run_rbx(net, data, suite, seed: int, batch_size: int, escalate: bool = True):
    """rbx as a user runs it (escalation on unless ``escalate`` is False, no audit); its flags, record and wall/CPU
    seconds."""
    t0, c0 = time.perf_counter(), time.process_time()
    ev = evaluate(net, data, suite=suite, seed=seed, batch_size=batch_size, device="cpu", progress=False, audit=0,
                  escalate=escalate)
    return ev, time.perf_counter() - t0, time.process_time() - c0


def prefix_misses(broken_by: np.ndarray, aa_robust: np.ndarray, correct: np.ndarray, stages) -> list[dict]:
    """What each prefix of one threat model's cascade would have given, read off one run of the whole cascade.

    Stage ``k``'s outcome on a point does not depend on later stages nor on the batch (per-sample seeds, see
    ``evaluation/plan.py``), so the first ``k`` stages of a run ARE the run of the ``k``-stage cascade: a point
    counts as broken by the prefix when its ``broken_by`` mark is below ``k``. Per prefix: the stage it ends with,
    points AutoAttack breaks and the prefix does not, the prefix's robust count, and its seconds (the stages' own
    wall clock as the record stores it). One run of a long candidate thus judges every shorter one."""
    out, seconds = [], 0.0
    for k, st in enumerate(stages, start=1):
        seconds += float(st.seconds)
        robust_k = correct & ((broken_by < 0) | (broken_by >= k))
        out.append({"stages": k, "last": st.attack, "robust": int(robust_k.sum()),
                    "aa_only": int((robust_k & ~aa_robust).sum()), "seconds": round(seconds, 1)})
    return out


def compare_one(ev, aa: dict, norms) -> dict:
    """Per threat model and union: robust counts and the points each side breaks that the other does not."""
    f = ev.flags
    correct = f.clean_correct
    out, aa_cols, rbx_cols = {}, [], []
    for ti, t in enumerate(ev.record.threats):
        norm = t.norm
        if norm not in aa:
            continue
        a = aa[norm] & correct
        r = f.robust[:, ti]
        aa_cols.append(a)
        rbx_cols.append(r)
        out[t.threat] = {"rbx_robust": int(r.sum()), "aa_robust": int(a.sum()),
                         "aa_breaks_rbx_not": [int(i) for i in f.index[~a & r]],
                         "rbx_breaks_aa_not": int((a & ~r).sum()),
                         "by_prefix": prefix_misses(f.broken_by[:, ti], a, correct, t.attacks)}
    ua, ur = union_flags(correct, np.stack(aa_cols, 1)), union_flags(correct, np.stack(rbx_cols, 1))
    out["union"] = {"rbx_robust": int(ur.sum()), "aa_robust": int(ua.sum()),
                    "aa_breaks_rbx_not": [int(i) for i in f.index[~ua & ur]], "rbx_breaks_aa_not": int((ua & ~ur).sum())}
    return out


def _same_cascade(old: dict, new: dict) -> bool:
    """Whether two runs of one suite name ran the same cascades (runs before the ``spec`` field: attack names)."""
    if "spec" in old:
        return old["spec"] == new["spec"]
    return old["cascades"] == {k: [x.split("{")[0] for x in v] for k, v in new["cascades"].items()}


def accumulate(old_runs: list[dict], new_runs: list[dict]) -> list[dict]:
    """Candidate runs of one slice, old then new. A suite measured again replaces its older run only when it ran
    the same cascades; when the suite has changed since (the default's cascade did, 2026-12-05), the older run is
    evidence for the choice made then and stays, its name dated (``cifar10-union (as of 2026-12-05T04:48)``)."""
    kept = []
    for run in old_runs:
        same = [n for n in new_runs if n["suite"] == run["suite"]]
        if not same:
            kept.append(run)
        elif not _same_cascade(run, same[0]):
            kept.append({**run, "suite": f"{run['suite']} (as of {str(run.get('date', '?'))[:16]})"})
    return kept + new_runs


def cmd_compare(a) -> int:
    if a.threads:
        torch.set_num_threads(a.threads)
    net, dataset, meta = aa_flags.resolve_model(a.model)
    split = a.split or aa_flags.DEFAULT_SPLIT[dataset]
    role = "tuning" if splits.is_tuning(split, a.start, a.n) else "held-out" if splits.is_held_out(split, a.start, a.n) else None
    if role is None:
        raise RbxError(f"{split}[{a.start}:{a.start + a.n}] mixes tuning and held-out images: keep to one side "
                       "(benchmarks/splits.py)")
    if a.candidates and role != "tuning":
        raise RbxError("candidate cascades are compared on tuning images only (never tune on what you report)")
    data = splits.images(split, a.start, a.n)
    # global indices in the records' flags: the slice's own positions, offset to the split's numbering
    if a.candidates_only and not a.candidates:
        raise RbxError("--candidates-only needs --candidates FILE ...")
    default = [] if a.candidates_only else [_suite_for(dataset, a.suite)]
    suites = [_restrict(load_suite(s), a.norms) for s in [*default, *a.candidates]]
    norms = [t.threat.norm for t in suites[0].threats]
    aa, aa_cpu, aa_wall = aa_side(a.model, split, a.start, a.n, norms, bool(meta.get("randomized")))
    rows = []
    for suite in suites:
        ev, wall, cpu = run_rbx(net, data, suite, a.seed, a.batch_size, escalate=not a.no_escalate)
        comp = compare_one(ev, aa, norms)
        for v in comp.values():
            v["aa_breaks_rbx_not"] = [a.start + i for i in v["aa_breaks_rbx_not"]]
        row = {"suite": suite.name + (" (--no-escalate)" if a.no_escalate else ""),
               "cascades": {t.threat: [s.attack + (str(s.params) if a.verbose else "") for s in t.attacks]
                            for t in ev.record.threats},
               "spec": {str(t.threat): [sp.text() for sp in t.attacks] for t in suite.threats},
               "escalation": ev.record.escalation or None, "clean": int(ev.flags.clean_correct.sum()),
               "rbx_wall": round(wall, 1), "rbx_cpu": round(cpu, 1), "aa_cpu": round(aa_cpu, 1),
               "aa_wall": round(aa_wall, 1), "cpu_ratio": round(aa_cpu / cpu, 1) if cpu else None,
               "threats": comp}
        rows.append(row)
        misses = {k: len(v["aa_breaks_rbx_not"]) for k, v in comp.items()}
        print(f"{a.model} {split}[{a.start}:{a.start + a.n}] ({role}) {row['suite']}: AA broke, rbx not: {misses}; "
              f"rbx {cpu:.0f} s CPU ({wall:.0f} s wall), AA {aa_cpu:.0f} s CPU: {row['cpu_ratio']}x", flush=True)
        for k, v in comp.items():
            if len(v.get("by_prefix", ())) > 1:
                print(f"  {k} by cascade prefix (AA-only / robust / stage seconds): " + "; ".join(
                    f"{p['stages']}:{p['last']} {p['aa_only']}/{p['robust']}/{p['seconds']}s" for p in v["by_prefix"]))
    result = {"model": a.model, "model_meta": {k: v for k, v in meta.items() if k != "module"}, "dataset": dataset,
              "split": split, "start": a.start, "n": a.n, "role": role, "seed": a.seed, "threads": torch.get_num_threads(),
              "device_name": provenance.device_name(torch.device("cpu")), "torch": torch.__version__,
              "git_commit": provenance.git_state()["commit"], "date": provenance.utc_now(),
              "command": "python " + " ".join(sys.argv), "runs": rows}
    OUT.mkdir(parents=True, exist_ok=True)
    tag = "tuning" if role == "tuning" else "heldout"
    out = OUT / (f"{tag}_{a.model}_{split}{a.start}-{a.start + a.n}{'_candidates' if a.candidates else ''}"
                 f"{'_noescalate' if a.no_escalate else ''}.json")
    if a.candidates:
        # Candidate comparisons accumulate: runs of earlier candidate sets on the same slice stay (each run carries
        # its own command and commit), and a suite measured again replaces its older run.
        for run in rows:
            run.update(command=result["command"], git_commit=result["git_commit"], date=result["date"])
        if out.is_file():
            result["runs"] = accumulate(json.loads(out.read_text())["runs"], rows)
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


def cmd_attribute(a) -> int:
    """Each AutoAttack component alone (AutoAttack's standard settings for the norm) on the points AutoAttack
    breaks and the default cascade does not: which component class the cascade is missing."""
    if a.threads:
        torch.set_num_threads(a.threads)
    net, dataset, meta = aa_flags.resolve_model(a.model)
    split = a.split or aa_flags.DEFAULT_SPLIT[dataset]
    data = splits.images(split, a.start, a.n)
    threat = ThreatModel(a.norm, aa_flags.RADII[dataset][a.norm])
    aa = aa_flags.load_flags(a.model, split, a.start, a.n, a.norm)
    ev, _, _ = run_rbx(net, data, _restrict(load_suite(_suite_for(dataset, a.suite)), [a.norm]), a.seed, a.batch_size)
    ti = [t.norm for t in ev.record.threats].index(a.norm)
    missed = np.flatnonzero(ev.flags.clean_correct & ~aa & ev.flags.robust[:, ti])
    print(f"{len(missed)} points AutoAttack breaks and the cascade does not: {[a.start + int(i) for i in missed]}")
    if not len(missed):
        return 0
    x, y = data.x[missed], data.y[missed]
    comps = ["apgd-ce", "apgd-t", "fab-t", "square"]
    with frozen(net):
        for c in comps:
            attack = ATTACKS.create(f"aa-{c}").fit(10, tuple(x.shape[1:]), threat)[0]
            res = attack(net, x, y, threat, seed=a.seed)
            hit = [a.start + int(missed[i]) for i in np.flatnonzero(res.success.numpy())]
            print(f"  {c:8s} alone ({'L1 settings: 5 restarts / 5 targets, large eps' if a.norm == 'L1' else 'standard'}):"
                  f" breaks {len(hit)} of {len(missed)}: {hit}", flush=True)
    return 0


def cmd_audit(a) -> int:
    """rbx's default run as a user gets it on a leaderboard-sized slice: the audit (AutoAttack standard on a random
    sample of the points the cascade left robust, per threat model) on, at its default size unless ``--audit K``.
    Writes the run's record under results/trust/audit/ and a summary JSON beside the comparisons."""
    if a.threads:
        torch.set_num_threads(a.threads)
    net, dataset, meta = aa_flags.resolve_model(a.model)
    split = a.split or aa_flags.DEFAULT_SPLIT[dataset]
    splits.assert_held_out(a.start, a.n, split)
    data = splits.images(split, a.start, a.n)
    # the record names the model as the command did, with its weights' sha256
    model = LoadedModel(net, a.model, type(net).__name__, f"trust.py: {a.model}", meta.get("sha256"),
                        extra={k: v for k, v in meta.items() if k in ("wrapper",) and v})
    t0, c0 = time.perf_counter(), time.process_time()
    ev = evaluate(model, data, suite=load_suite(_suite_for(dataset, a.suite)), seed=a.seed, batch_size=a.batch_size,
                  device="cpu", progress=False, audit=a.audit)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    rec_dir = OUT / "audit"
    path = ev.write(rec_dir)
    threats = {t.threat: {"robust": t.robust.count, "stages": [[s.attack, s.n_broken] for s in t.attacks]}
               for t in ev.record.threats}
    result = {"model": a.model, "dataset": dataset, "split": split, "start": a.start, "n": a.n, "role": "held-out",
              "seed": a.seed, "audit_size": ev.record.config.get("audit"), "audit": list(ev.record.audit),
              "clean": int(ev.flags.clean_correct.sum()), "union_robust": int(ev.flags.union.sum()),
              "threats": threats, "wall": round(wall, 1), "cpu": round(cpu, 1), "record": str(path.relative_to(REPO)),
              "threads": torch.get_num_threads(), "device_name": provenance.device_name(torch.device("cpu")),
              "torch": torch.__version__, "git_commit": provenance.git_state()["commit"], "date": provenance.utc_now(),
              "command": "python " + " ".join(sys.argv)}
    out = OUT / f"audit_{a.model}_{split}{a.start}-{a.start + a.n}.json"
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    for blk in ev.record.audit:
        print(f"{blk['threat']}: {blk['attack']} broke {blk['broken']} of {blk['sampled']} sampled robust points (of "
              f"{blk['population']}); miss rate <= {100 * blk['miss_rate_upper95']:.1f}% (95%)")
    print(f"wrote {out} and {path}")
    return 0


def cmd_table(a) -> int:
    """The committed table: every held-out comparison, per model and threat model."""
    rows, data = [], []
    for f in sorted(OUT.glob("heldout_*.json")):
        r = json.loads(f.read_text())
        run = r["runs"][0]
        data.append({k: r[k] for k in ("model", "split", "start", "n", "role", "date", "command")} | {"run": run})
        label = r["model"] + (" (rbx without escalation)" if "--no-escalate" in run["suite"] else "")
        single = len(run["threats"]) == 2  # one threat model (--norms): its union row would repeat it
        for threat, t in run["threats"].items():
            if single and threat == "union":
                continue
            last = threat == "union" or single
            cascade = " > ".join(run["cascades"].get(threat, [])) if threat != "union" else ""
            rows.append(f"| {label} | {r['split']}[{r['start']}:{r['start'] + r['n']}] | {threat} | {cascade} | "
                        f"{100 * t['rbx_robust'] / r['n']:.1f} | {100 * t['aa_robust'] / r['n']:.1f} | "
                        f"{len(t['aa_breaks_rbx_not'])} | {t['rbx_breaks_aa_not']} | "
                        + (f"{run['cpu_ratio']}x | " if last else "| ")
                        + (", ".join(e["sign"] for e in (run["escalation"] or {}).get("reasons", [])) if last
                           else "") + " |")
    tuning = []
    for f in sorted(OUT.glob("tuning_*.json")):
        r = json.loads(f.read_text())
        for run in r["runs"]:
            misses = {k: len(v["aa_breaks_rbx_not"]) for k, v in run["threats"].items()}
            prefix = "; ".join(f"{k}: " + ", ".join(f"{p['last']} {p['aa_only']}" for p in v["by_prefix"])
                               for k, v in run["threats"].items() if len(v.get("by_prefix", ())) > 2)
            tuning.append(f"| {r['model']} | {r['split']}[{r['start']}:{r['start'] + r['n']}] | {run['suite']} | "
                          + ", ".join(f"{k} {v}" for k, v in misses.items())
                          + f" | {prefix} | {run['rbx_cpu']} | {run['cpu_ratio']}x |")
    lines = ["# rbx's default vs AutoAttack on held-out models and images", "",
             "Generated by `python benchmarks/trust.py table` from `results/trust/heldout_*.json` (each made by the "
             "command it records). Robust accuracy in % of the n images; 'AA only' = points AutoAttack standard breaks "
             "and rbx's default does not (the number that must be 0), 'rbx only' = the reverse; the time ratio is "
             "AutoAttack's process-CPU seconds (cached) over rbx's, on this 2-core CPU (shared with other jobs, so "
             "wall seconds are not comparable). Escalation: the masking signs rbx found and acted on. Cascade: the "
             "attacks rbx's default ran. The L1 cascade changed twice on 2026-12-05: it gained apgd-ce (3 x 50), then "
             "apgd-ce took AutoAttack's own L1 budget (5 x 100) followed by apgd-t 5 x 100 ('pma > apgd-t > apgd-ce > "
             "apgd-t', the current default). Rows with a shorter L1 cascade are earlier runs of the default, kept as "
             "evidence (files named *_before-*.json, or made before a change).", "",
             "| model | images | threat | cascade | rbx % | AA % | AA only | rbx only | CPU ratio | escalation |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |", *rows]
    if tuning:
        lines += ["", "## Tuning images: how the default cascade was chosen", "",
                  "Candidate cascades against AutoAttack's flags on TUNING images only (CIFAR-10 test 9000-9999; "
                  "`benchmarks/splits.py`), from `results/trust/tuning_*.json`. 'AA only' per threat model: points AutoAttack "
                  "breaks and the candidate does not. The rule was: the default is kept unless a candidate misses fewer "
                  "points at a CPU ratio of at least 20x on the ordinary models. On 2026-12-05 no candidate met both and "
                  "the default took the fewest misses at about 15x (header of benchmarks/cifar10-union.toml). 'By prefix' (runs since 2026-12-05 08:00, "
                  "cascades of 3 or more stages): AA only after each stage of the threat model's cascade, read off the "
                  "same run (a stage's outcome does not depend on later stages: `prefix_misses`), so one run of a long "
                  "candidate judges each of its shorter prefixes too.", "",
                  "| model | images | candidate | AA only | by prefix | rbx CPU s | CPU ratio |",
                  "| --- | --- | --- | --- | --- | ---: | ---: |",
                  *tuning]
    audits = []
    for f in sorted(OUT.glob("audit_*.json")):
        r = json.loads(f.read_text())
        for blk in r["audit"]:
            audits.append(f"| {r['model']} | {r['split']}[{r['start']}:{r['start'] + r['n']}] | {blk['threat']} | "
                          f"{blk['population']} | {blk['sampled']} | {blk['broken']} | "
                          f"{100 * blk['miss_rate_upper95']:.1f} | {100 * r['threats'][blk['threat']]['robust'] / r['n']:.1f} | "
                          f"`{r['command']}` |")
    if audits:
        lines += ["", "## The per-run audit on held-out images", "",
                  "A default run with the audit on (`--audit K`; K = 20 by default for runs of >= 1,000 images): AutoAttack "
                  "standard on a seeded random sample of the points the cascade left robust, per threat model. 'broken' "
                  "= sampled points AutoAttack broke (counted as broken in the run's robust accuracy, shown after "
                  "them); 'miss <= %' = the one-sided 95% Clopper-Pearson upper bound on the share of the cascade's "
                  "robust points it misses. From `results/trust/audit_*.json`.", "",
                  "| model | images | threat | robust before | sampled | broken | miss <= % | robust % (after) | command |",
                  "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |", *audits]
    noise = _aa_against_itself(data)
    if noise:
        lines += ["", "## AutoAttack against itself: a second seed", "",
                  "AutoAttack standard run again on the same images with seed 1 (`benchmarks/aa_flags.py --seed 1`), "
                  "against its seed-0 flags that every comparison above uses. 'seed 0 only' = points seed 0 breaks and "
                  "seed 1 does not: AutoAttack's own run-to-run miss, the floor under which 'AA only' above cannot be "
                  "told from chance. 'rbx's AA-only, seed 1 also misses': of the points of the held-out comparison "
                  "that seed-0 AutoAttack breaks and rbx does not, how many seed-1 AutoAttack leaves robust too.", "",
                  "| model | images | threat | seed-0 robust | seed-1 robust | seed 0 only | seed 1 only | "
                  "rbx's AA-only, seed 1 also misses |", "| --- | --- | --- | ---: | ---: | ---: | ---: | --- |", *noise]
    atomic_write_text(OUT / "table.md", "\n".join(lines) + "\n")
    atomic_write_text(OUT / "table.json", json.dumps(data, indent=2) + "\n")
    print("\n".join(lines))
    return 0


def _aa_against_itself(heldout: list[dict]) -> list[str]:
    """Table rows comparing AutoAttack's seed-1 flags with its seed-0 flags, per contiguous cached range."""
    seeded: dict[tuple, list[tuple[int, int]]] = {}
    for e in aa_flags.entries():
        k = e["key"]
        if k.get("seed", 0) == 1 and "verdict" not in k:
            seeded.setdefault((k["model"], k["split"], k["norm"], k["eps"]), []).append((k["start"], e["n"]))
    rows = []
    for (model, split, norm, eps), chunks in sorted(seeded.items()):
        chunks.sort()
        ranges = []
        for start, n in chunks:  # merge contiguous chunks
            if ranges and ranges[-1][0] + ranges[-1][1] == start:
                ranges[-1] = (ranges[-1][0], ranges[-1][1] + n)
            elif not ranges or start >= ranges[-1][0] + ranges[-1][1]:
                ranges.append((start, n))
        for start, n in ranges:
            s1 = aa_flags.load_flags(model, split, start, n, norm, seed=1)
            s0 = aa_flags.load_flags(model, split, start, n, norm, seed=0)
            if s0 is None or s1 is None:
                continue
            only0, only1 = np.flatnonzero(~s0 & s1), np.flatnonzero(s0 & ~s1)
            label = next((t for d in heldout if d["model"] == model and d["split"] == split and d["start"] == start
                          and d["n"] == n for t in d["run"]["threats"] if t.startswith(norm + ":")), None)
            mine = next((d["run"]["threats"][label]["aa_breaks_rbx_not"] for d in heldout if label and d["model"] == model
                         and d["split"] == split and d["start"] == start and d["n"] == n), None)
            also = ("" if mine is None else
                    f"{sum(bool(s1[i - start]) for i in mine)} of {len(mine)}" + (f" ({', '.join(map(str, mine))})" if mine else ""))
            rows.append(f"| {model} | {split}[{start}:{start + n}] | {norm} | {int(s0.sum())} | {int(s1.sum())} | "
                        f"{len(only0)}" + (f" ({', '.join(str(start + int(i)) for i in only0)})" if len(only0) else "")
                        + f" | {len(only1)} | {also} |")
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("compare", "attribute", "audit"):
        p = sub.add_parser(name)
        p.add_argument("--model", required=True)
        p.add_argument("--split", default=None)
        p.add_argument("--start", type=int, required=True)
        p.add_argument("--n", type=int, required=True)
        p.add_argument("--suite", default=None)
        p.add_argument("--seed", type=seed_arg, default=0)
        p.add_argument("--batch-size", type=int, default=500)
        p.add_argument("--threads", type=int, default=2)
        p.add_argument("--verbose", action="store_true")
        if name == "compare":
            p.add_argument("--candidates", nargs="*", default=[])
            p.add_argument("--candidates-only", action="store_true",
                           help="run the candidates without the default (its run on the slice is already stored)")
            p.add_argument("--no-escalate", action="store_true",
                           help="rbx without its masking escalation (what the default was before issue 26)")
            p.add_argument("--norms", nargs="*", default=None, choices=NORM_ORDER,
                           help="compare only these threat models (AutoAttack's flags may exist for some only)")
        elif name == "attribute":
            p.add_argument("--norm", required=True, choices=NORM_ORDER)
        else:
            p.add_argument("--audit", type=int, default=None,
                           help="audit size per threat model (default: rbx's, 20 for runs of >= 1,000 images)")
    sub.add_parser("table")
    a = ap.parse_args(argv)
    try:
        return {"compare": cmd_compare, "attribute": cmd_attribute, "audit": cmd_audit, "table": cmd_table}[a.cmd](a)
    except RbxError as exc:
        print(f"trust: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
