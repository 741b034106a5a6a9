#!/usr/bin/env python
"""Speed of rbx against its peers and against the hardware, on one model, one image set, one device.

Every measurement runs in this one process, on the same model, the same first-N test images (class
balanced), the same device and batch size, after a warm-up batch, with the device synchronized around
the clock. Rows:

- ``ceiling``: the model's plain forward + backward (gradient w.r.t. the input, weights frozen) over
  the N images, ``steps`` times: the throughput no first-order attack can beat;
- ``rbx pgd`` / ``torchattacks pgd``: Linf PGD at equal steps, step size and random start; rbx with
  ``early_stop=false`` does exactly the same work as torchattacks (every point, every step), rbx with
  early stop (its default in evaluation) stops paying for a point once it is fooled;
- ``rbx apgd-ce`` / ``pyautoattack apgd-ce``: APGD-CE with the same iterations and one restart;
- ``--standard``: rbx's default union suite vs pyautoattack ``standard`` on the same three threat
  models (see ``benchmarks/aa_vs_rbx.py``; minutes on CPU);
- ``--variants``: rbx PGD (no early stop) with the engine's switches: channels_last, bf16 search
  (float32 re-verification), ``torch.compile``;
- ``--union-only``: the default suite in full and in union-only mode (``rbx run --union-only``), back to
  back in this process on the same images and seed: both times, whether the union flags are identical, and
  per threat model the points it broke per second in the full run (each threat model attacked every
  clean-correct point there), the measurement behind the suite's ``union_order``.

AutoAttack's side of ``--standard`` goes through the cache of ``benchmarks/aa_cache.py`` (same model,
images, eps, versions, seed and thread count); the table says when a cached result was used and when it
was measured (``--refresh-aa`` measures it again).

Quick rows run interleaved (each repeat runs every row once, so drift in the machine's speed hits all rows
alike) and report the median of ``--repeat`` runs (all listed in the JSON); the suite rows run once.
Throughput = images passed forward+backward per second (counted by rbx's CountingModel for rbx, by
construction for the peers). These are benchmarks, not tests: nothing here asserts on seconds.

CPU:  python benchmarks/perf.py --model cifar10-smallcnn-linf-at --n 200 --device cpu
GPU:  python benchmarks/perf.py --model cifar10-resnet18-linf-at --n 1000 --device cuda --batch-size 500 --standard --variants
Results: results/perf/<cpu|gpu>_<model>_n<N>.{json,md}
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from robustbench_ext.records import provenance
from robustbench_ext._compat import import_pyautoattack
from robustbench_ext.models.loading import load_model
from robustbench_ext.paths import atomic_write_text
from robustbench_ext.registry import DATASETS
from robustbench_ext.evaluation.suites import AttackSpec
from robustbench_ext.attack.search import SearchOptions, search_model
from robustbench_ext.runtime import frozen, resolve_device, seed_arg
from robustbench_ext.attack.threat import ThreatModel


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def clock(device: torch.device, out: dict):
    _sync(device)
    t0 = time.perf_counter()
    yield
    _sync(device)
    out["seconds"] = time.perf_counter() - t0


def batches(x, y, bs):
    for i in range(0, len(y), bs):
        yield x[i:i + bs], y[i:i + bs]


def ceiling(net, x, y, bs, steps, device):
    """Plain forward+backward w.r.t. the input, ``steps`` times over every batch."""
    t = {}
    with clock(device, t):
        for xb, yb in batches(x, y, bs):
            for _ in range(steps):
                xg = xb.detach().requires_grad_(True)
                loss = F.cross_entropy(net(xg), yb, reduction="sum")
                torch.autograd.grad(loss, xg)
    return {"seconds": t["seconds"], "fwd_bwd": len(y) * steps, "robust": None}


def run_rbx(net, x, y, bs, threat, spec, device, seed):
    attack = AttackSpec.parse(spec).build()
    t, robust, nb = {}, [], 0
    with clock(device, t):
        for i, (xb, yb) in enumerate(batches(x, y, bs)):
            res = attack(net, xb, yb, threat, seed=seed + i)
            robust.append(~res.success)
            nb += res.n_backward
    return {"seconds": t["seconds"], "fwd_bwd": nb, "robust": float(torch.cat(robust).float().mean())}


def run_torchattacks(net, x, y, bs, threat, steps, device, seed):
    import torchattacks

    atk = torchattacks.PGD(net, eps=threat.eps, alpha=2.5 * threat.eps / steps, steps=steps, random_start=True)
    torch.manual_seed(seed)
    t, robust = {}, []
    with clock(device, t):
        for xb, yb in batches(x, y, bs):
            adv = atk(xb, yb)
            with torch.no_grad():
                robust.append(net(adv).argmax(1) == yb)
    return {"seconds": t["seconds"], "fwd_bwd": len(y) * steps, "robust": float(torch.cat(robust).float().mean()),
            "version": torchattacks.__version__}


def run_aa_apgd(net, x, y, bs, threat, steps, device, seed):
    import importlib

    aa = import_pyautoattack()
    APGDAttack = importlib.import_module("pyautoattack.autopgd_base").APGDAttack

    atk = APGDAttack(net, n_iter=steps, norm=threat.norm, eps=threat.eps, loss="ce", n_restarts=1, seed=seed,
                     device=device)
    t, robust = {}, []
    with clock(device, t):
        for xb, yb in batches(x, y, bs):
            adv = atk.perturb(xb, yb)
            with torch.no_grad():
                robust.append(net(adv).argmax(1) == yb)
    # APGD attacks only the clean-correct points and does not stop early: steps passes each (+ the init).
    with torch.no_grad():
        n_correct = int(sum((net(xb).argmax(1) == yb).sum() for xb, yb in batches(x, y, bs)))
    return {"seconds": t["seconds"], "fwd_bwd": n_correct * steps, "robust": float(torch.cat(robust).float().mean()),
            "version": getattr(aa, "__version__", "?")}


def run_union_only(model, data, device, bs, seed):
    """The default suite in full, then union-only (its measured ``union_order``), back to back."""
    from robustbench_ext import evaluate
    from robustbench_ext.evaluation.suites import load_suite

    suite = load_suite("cifar10-union")
    kw = dict(union_attacks=suite.union, suite=suite.name, seed=seed, batch_size=bs, device=device, progress=False)
    t_full, t_only = {}, {}
    with clock(device, t_full):
        full = evaluate(model, data, suite.threats, **kw)
    with clock(device, t_only):
        only = evaluate(model, data, suite.threats, union_only=True, union_order=suite.union_order, **kw)
    n_correct = int(full.flags.clean_correct.sum())
    rates = {}
    for t in full.record.threats:  # in the full run every threat model attacked every clean-correct point
        broken = n_correct - t.robust.count
        rates[t.threat] = {"broken": broken, "seconds": t.seconds, "broken_per_second": round(broken / max(t.seconds, 1e-9), 3),
                           "passes": sum(a.n_forward + a.n_backward for a in t.attacks)}
    measured = sorted(rates, key=lambda k: -rates[k]["broken_per_second"])
    order = only.record.config["union_only"]["order"]
    # What any union-only run must still pay: the first threat model attacks every clean-correct point (as in the
    # full run), and each union-robust point survives every stage of every later threat model, a forward and a
    # backward per step (the last evaluation of each segment left out: a lower bound).
    n_union = int(full.flags.union.sum())
    per_point = {spec.threat.label: 2 * sum(sum(p.steps for p in st.attack.segments()) if hasattr(st.attack, "segments") else 0
                                            for st in spec.build()) for spec in suite.threats}
    floor = rates[order[0]]["passes"] + n_union * sum(per_point[t] for t in order[1:])
    full_passes = sum(v["passes"] for v in rates.values())
    bound = {"union_robust": n_union, "passes_per_robust_point": per_point, "full_passes": full_passes,
             "floor_passes": floor, "max_speedup_in_passes": round(full_passes / max(floor, 1), 2)}
    return ({"seconds": t_full["seconds"], "robust": full.record.union.accuracy,
             "per_threat": {r.threat: r.robust.accuracy for r in full.record.threats}},
            {"seconds": t_only["seconds"], "robust": only.record.union.accuracy, "order": order,
             "per_threat": {r.threat: (r.robust.accuracy if r.measured else None) for r in only.record.threats},
             "union_flags_equal_full": bool((only.flags.union == full.flags.union).all()),
             "union_flags_differ": int((only.flags.union != full.flags.union).sum())},
            {"per_threat": rates, "order_by_rate": measured, "bound": bound})


def run_standard(model, data, device, bs, seed, search=None, cache_dir=None, refresh=False, repeat=1):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import aa_vs_rbx  # noqa: E402

    from robustbench_ext.records.schema import union_flags
    from robustbench_ext import evaluate
    from robustbench_ext.evaluation.suites import load_suite

    suite = load_suite("cifar10-union")
    runs = []  # the suite ``repeat`` times, back to back: its time is the median (one run varied by 15-25% here)
    for _ in range(max(repeat, 1)):
        t = {}
        with clock(device, t):
            ev = evaluate(model, data, suite.threats, union_attacks=suite.union, suite=suite.name, seed=seed,
                          batch_size=bs, device=device, progress=False)
        if runs and not (ev.flags.union == runs[0][1].flags.union).all():
            raise RuntimeError("rbx's suite gave other union flags on a repeat with the same seed: not deterministic here")
        runs.append((t["seconds"], ev))
    secs = sorted(r[0] for r in runs)
    ev = runs[0][1]
    rbx = {"seconds": secs[len(secs) // 2], "seconds_all": [round(r[0], 3) for r in runs], "robust": ev.record.union.accuracy,
           "per_threat": {r.threat: r.robust.accuracy for r in ev.record.threats}}
    fast = None
    if search is not None:
        t = {}
        with clock(device, t):
            evf = evaluate(model, data, suite.threats, union_attacks=suite.union, suite=suite.name, seed=seed,
                           batch_size=bs, device=device, progress=False, search=search)
        fast = {"seconds": t["seconds"], "robust": evf.record.union.accuracy,
                "per_threat": {r.threat: r.robust.accuracy for r in evf.record.threats},
                "union_flags_equal_fp32": bool((evf.flags.union == ev.flags.union).all())}
    net = model.module.to(device)
    x, y = data.x.to(device), data.y.to(device)
    flags, total, per, cached = [], 0.0, {}, {}
    with frozen(net):
        for spec in suite.threats:
            res = aa_vs_rbx.autoattack_cached(model, data, net, x, y, spec.threat, device, bs, seed, cache_dir, refresh)
            robust, secs, when = res.robust & ev.flags.clean_correct, res.seconds, res.cached_at
            flags.append(robust)
            total += secs
            per[spec.threat.label] = float(robust.mean())
            if when:
                cached[spec.threat.label] = when
    aa_union = union_flags(ev.flags.clean_correct, np.stack(flags, 1))
    rbx_union = ev.flags.union
    disagree = {"union_broken_by_aa_not_rbx": int((~aa_union & rbx_union).sum()),
                "per_threat_broken_by_aa_not_rbx": {s.threat.label: int((~f & ev.flags.robust[:, i]).sum())
                                                    for i, (s, f) in enumerate(zip(suite.threats, flags))}}
    rbx.update(disagree)
    return rbx, fast, {"seconds": total, "robust": float(aa_union.mean()), "per_threat": per, "cached_at": cached}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="cifar10-smallcnn-linf-at")
    ap.add_argument("--dataset", default="cifar10")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=200)
    ap.add_argument("--steps", type=int, default=10, help="PGD steps (rbx and torchattacks)")
    ap.add_argument("--apgd-steps", type=int, default=100)
    ap.add_argument("--eps", type=float, default=8 / 255)
    ap.add_argument("--seed", type=seed_arg, default=0)
    ap.add_argument("--standard", action="store_true", help="also rbx's union suite vs pyautoattack standard")
    ap.add_argument("--variants", action="store_true", help="also PGD with channels_last / bf16 search / compile")
    ap.add_argument("--repeat", type=int, default=5, help="runs per quick row (the median is reported)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    ap.add_argument("--union-only", action="store_true", help="also the union suite in full vs union-only, back to back")
    ap.add_argument("--aa-cache", default=str(Path(__file__).resolve().parent.parent / "results" / "aa_cache"),
                    help="AutoAttack result cache for --standard ('' = none; see benchmarks/aa_cache.py)")
    ap.add_argument("--refresh-aa", action="store_true", help="--standard: measure AutoAttack again even when cached")
    ap.add_argument("--suite-repeat", type=int, default=3,
                    help="--standard: run rbx's suite this many times and report the median seconds (default 3)")
    ap.add_argument("--no-quick", action="store_true", help="skip the quick rows (only --standard / --union-only)")
    ap.add_argument("--out", default=None, help="output stem (default results/perf/<cpu|gpu>_<model>_n<N>)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)

    device = resolve_device(a.device)
    model = load_model(a.model)
    data = DATASETS.create(a.dataset, n_examples=a.n)
    net = model.module.to(device).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    x, y = data.x.to(device), data.y.to(device)
    threat = ThreatModel("Linf", a.eps)
    bs, S = a.batch_size, a.steps
    tag = "gpu" if device.type == "cuda" else "cpu"
    out = Path(a.out or f"results/perf/{tag}_{a.model}_n{a.n}")
    out.parent.mkdir(parents=True, exist_ok=True)

    # warm-up: one batch of each code path (allocator, kernels, lazy imports)
    xw, yw = x[:min(bs, 32)], y[:min(bs, 32)]
    ceiling(net, xw, yw, bs, 2, device)
    run_rbx(net, xw, yw, bs, threat, "pgd:steps=2", device, a.seed)

    rows: dict[str, dict] = {}

    def add(name, r, note=""):
        r = dict(r, note=note)
        r["throughput"] = r["fwd_bwd"] / r["seconds"] if r.get("fwd_bwd") else None
        rows[name] = r
        rob = "" if r.get("robust") is None else f" robust {100 * r['robust']:.1f}%"
        print(f"{name:44s} {r['seconds']:8.2f} s{rob}", flush=True)

    quick = [
        ("ceiling (fwd+bwd)", ceiling, (net, x, y, bs, S, device), f"{S} passes over the images"),
        (f"rbx pgd-{S} (no early stop)", run_rbx, (net, x, y, bs, threat, f"pgd:steps={S},early_stop=false", device, a.seed), ""),
        (f"rbx pgd-{S}", run_rbx, (net, x, y, bs, threat, f"pgd:steps={S}", device, a.seed), "early stop (rbx default)"),
        (f"pyautoattack apgd-ce-{a.apgd_steps}", run_aa_apgd, (net, x, y, bs, threat, a.apgd_steps, device, a.seed), ""),
        (f"rbx apgd-ce-{a.apgd_steps}", run_rbx, (net, x, y, bs, threat, f"apgd:steps={a.apgd_steps}", device, a.seed), ""),
    ]
    import importlib.util

    if importlib.util.find_spec("torchattacks") is not None:
        quick.insert(2, (f"torchattacks pgd-{S}", run_torchattacks, (net, x, y, bs, threat, S, device, a.seed), ""))
    else:
        rows[f"torchattacks pgd-{S}"] = {"skipped": "torchattacks is not installed (pip install -e '.[perf]')"}
    if a.variants:
        for name, opts in [("channels_last", SearchOptions(channels_last=True)),
                           ("bf16 search", SearchOptions(precision="bf16")),
                           ("bf16 search + channels_last", SearchOptions(precision="bf16", channels_last=True)),
                           ("torch.compile", SearchOptions(compile=True))]:
            row = f"rbx pgd-{S} (no early stop, {name})"
            try:
                snet = search_model(net, opts, device)
                run_rbx(snet, xw, yw, bs, threat, "pgd:steps=2", device, a.seed)  # warm-up / compile
                quick.append((row, run_rbx, (snet, x, y, bs, threat, f"pgd:steps={S},early_stop=false", device, a.seed), ""))
            except Exception as exc:  # a switch the platform lacks is a row, not a crash
                print(f"{name}: skipped ({type(exc).__name__}: {exc})".splitlines()[0], flush=True)
                rows[row] = {"skipped": f"{type(exc).__name__}: {exc}"[:300]}
    # Interleaved: every repeat runs every row once, so drift in the machine's speed hits all rows alike.
    if a.no_quick:
        quick = [q for q in quick if q[0] == "ceiling (fwd+bwd)"]
    runs: dict[str, list[dict]] = {name: [] for name, *_ in quick}
    for _ in range(a.repeat):
        for name, fn, args, _note in quick:
            runs[name].append(fn(*args))
    for name, _fn, _args, note in quick:
        rs = sorted(runs[name], key=lambda r: r["seconds"])
        med = dict(rs[len(rs) // 2], seconds_all=[round(r["seconds"], 3) for r in runs[name]])
        add(name, med, note)
    result = {
        "model": a.model, "n": a.n, "batch_size": bs, "repeat": a.repeat, "steps": S, "apgd_steps": a.apgd_steps, "eps": a.eps,
        "device": str(device), "device_name": provenance.device_name(device), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(), "rbx_version": provenance.rbx_version(),
        "git_commit": provenance.git_state()["commit"], "date": provenance.utc_now(),
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "rows": rows,
    }
    if a.union_only:
        full, only, rates = run_union_only(model, data, device, bs, a.seed)
        add("rbx union suite, full (for union-only)", full, "run just before the union-only row, same images and seed")
        add(f"rbx union suite, union-only ({' > '.join(only['order'])})", only,
            f"union flags identical to the full run's: {only['union_flags_equal_full']} "
            f"({only['union_flags_differ']} differ); per-norm: only {only['order'][0]} measured")
        result["union_only"] = {"full": full, "union_only": only, "rates": rates,
                                "speedup": round(full["seconds"] / only["seconds"], 2)}
    if a.standard:
        # The bf16 suite row only with --variants: on a CPU without native bf16 (emulated) it takes many times fp32's.
        fast_opts = SearchOptions(precision="bf16", channels_last=True) if a.variants else None
        rbx, fast, aa = run_standard(model, data, device, bs, a.seed, fast_opts, Path(a.aa_cache) if a.aa_cache else None,
                                     a.refresh_aa, repeat=a.suite_repeat)
        add("rbx union suite (3 threats)", rbx, f"median of {len(rbx['seconds_all'])} runs ({', '.join(f'{v:.1f}' for v in rbx['seconds_all'])} s); "
            "per-norm cascades + union stage; clean pass and checks included; points AA "
            f"broke that rbx did not: union {rbx['union_broken_by_aa_not_rbx']}, per threat "
            + ", ".join(f"{k} {v}" for k, v in rbx["per_threat_broken_by_aa_not_rbx"].items()))
        if fast is not None:
            add("rbx union suite, bf16 + channels_last", fast, "successes re-verified in float32; union flags equal to fp32: "
                f"{fast['union_flags_equal_fp32']}")
        when = "; ".join(f"{k} measured {v}" for k, v in aa["cached_at"].items())
        add("pyautoattack standard (3 threats)", aa, "Linf, L2 standard; L1 apgd-ce + apgd-t"
            + (f"; CACHED result (benchmarks/aa_cache.py): {when}" if when else "; measured in this run"))
    ceil = rows["ceiling (fwd+bwd)"]["throughput"]
    for r in rows.values():
        if r.get("throughput"):
            r["of_ceiling"] = r["throughput"] / ceil
    ratios = {} if a.no_quick or "skipped" in rows[f"torchattacks pgd-{S}"] else {
        "torchattacks_over_rbx_pgd_equal_work": rows[f"torchattacks pgd-{S}"]["seconds"] / rows[f"rbx pgd-{S} (no early stop)"]["seconds"],
        "torchattacks_over_rbx_pgd_default": rows[f"torchattacks pgd-{S}"]["seconds"] / rows[f"rbx pgd-{S}"]["seconds"],
    }
    if not a.no_quick:
        ratios |= {
            "pyautoattack_over_rbx_apgd_ce": rows[f"pyautoattack apgd-ce-{a.apgd_steps}"]["seconds"] / rows[f"rbx apgd-ce-{a.apgd_steps}"]["seconds"],
        }
    if a.union_only:
        ratios["rbx_full_over_union_only"] = result["union_only"]["speedup"]
        if a.standard:
            ratios["pyautoattack_standard_over_rbx_union_only"] = (rows["pyautoattack standard (3 threats)"]["seconds"]
                                                                   / result["union_only"]["union_only"]["seconds"])
    if a.standard:
        ratios["pyautoattack_standard_over_rbx_union"] = rows["pyautoattack standard (3 threats)"]["seconds"] / rows["rbx union suite (3 threats)"]["seconds"]
        if "rbx union suite, bf16 + channels_last" in rows:
            ratios["pyautoattack_standard_over_rbx_union_bf16"] = (rows["pyautoattack standard (3 threats)"]["seconds"]
                                                                   / rows["rbx union suite, bf16 + channels_last"]["seconds"])
    result["ratios"] = ratios
    atomic_write_text(out.with_suffix(".json"), json.dumps(result, indent=2) + "\n")
    atomic_write_text(out.with_suffix(".md"), to_markdown(result) + "\n")
    print(to_markdown(result))
    return 0


def to_markdown(r: dict) -> str:
    lines = [f"# rbx speed: {r['model']}, first {r['n']} CIFAR-10 test images, batch {r['batch_size']}", "",
             f"Device: {r['device_name']} ({r['device']}, {r['threads']} threads); torch {r['torch']}; rbx {r['rbx_version']} "
             f"(commit {str(r['git_commit'])[:10]}); {r['date']}.", f"Command: `{r['command']}`", "",
             "| run | seconds | fwd+bwd images/s | of ceiling | robust % | note |", "| --- | ---: | ---: | ---: | ---: | --- |"]
    for name, row in r["rows"].items():
        if "skipped" in row:
            lines.append(f"| {name} | - | - | - | - | skipped: {row['skipped'][:80]} |")
            continue
        thr = f"{row['throughput']:.0f}" if row.get("throughput") else "-"
        of = f"{100 * row['of_ceiling']:.0f}%" if row.get("of_ceiling") else "-"
        rob = f"{100 * row['robust']:.1f}" if row.get("robust") is not None else "-"
        lines.append(f"| {name} | {row['seconds']:.2f} | {thr} | {of} | {rob} | {row.get('note', '')} |")
    lines += ["", "Ratios (peer seconds / rbx seconds): " + ", ".join(f"{k} = {v:.2f}" for k, v in r["ratios"].items()) + "."]
    if "union_only" in r:
        u = r["union_only"]
        lines += ["", f"Union-only: {u['full']['seconds']:.2f} s full vs {u['union_only']['seconds']:.2f} s union-only = "
                  f"{u['speedup']}x, union flags identical: {u['union_only']['union_flags_equal_full']}.", "",
                  "Points broken per second per threat model in the full run (each attacked every clean-correct point): "
                  "the measurement behind `union_order` in benchmarks/cifar10-union.toml.", "",
                  "| threat | points broken | seconds | broken / s | passes |", "| --- | ---: | ---: | ---: | ---: |"]
        for k, v in u["rates"]["per_threat"].items():
            lines.append(f"| {k} | {v['broken']} | {v['seconds']:.2f} | {v['broken_per_second']:.2f} | {v['passes']} |")
        lines += ["", f"Order by measured rate: {' > '.join(u['rates']['order_by_rate'])}; order used: "
                  f"{' > '.join(u['union_only']['order'])}."]
        b = u["rates"].get("bound")
        if b:
            lines += ["", f"The floor for identical union flags: the first threat model attacks every clean-correct point "
                      f"({u['rates']['per_threat'][u['union_only']['order'][0]]['passes']} passes in the full run) and each of "
                      f"the {b['union_robust']} union-robust points pays every later threat model's whole cascade ("
                      + ", ".join(f"{k}: {v}" for k, v in b["passes_per_robust_point"].items())
                      + f" passes per point): at least {b['floor_passes']} passes against the full run's {b['full_passes']}, "
                      f"so union-only can be at most {b['max_speedup_in_passes']}x faster in passes on these images."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
