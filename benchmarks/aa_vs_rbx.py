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

from robustbench_ext.records import provenance
from robustbench_ext._compat import import_pyautoattack
from robustbench_ext.models.loading import load_model
from robustbench_ext.paths import atomic_write_text
from robustbench_ext.registry import DATASETS
from robustbench_ext.attack.search import SearchOptions
from robustbench_ext.runtime import frozen, resolve_device, seed_arg
from robustbench_ext.records.schema import union_flags
from robustbench_ext import evaluate
from robustbench_ext.evaluation.suites import load_suite


def run_autoattack(net, x, y, threat, device, batch_size, seed):
    """pyautoattack on (x, y); returns per-sample robust flags, wall seconds, process CPU seconds, components."""
    aa_mod = import_pyautoattack()
    aa = aa_mod.AutoAttack(net, norm=threat.norm, eps=threat.eps, version="standard", seed=seed, device=device)
    if threat.norm == "L1":
        aa.attacks_to_run = ["apgd-ce", "apgd-t"]  # standard's L1 settings (5 restarts, 5 targets, large eps)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    x_adv, _ = aa.run_standard_evaluation(x.contiguous(), y.contiguous(), batch_size=batch_size)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    with torch.no_grad():
        pred = torch.cat([net(x_adv[i:i + batch_size]).argmax(1) for i in range(0, len(y), batch_size)])
    return (pred == y).cpu().numpy(), seconds, cpu, list(aa.attacks_to_run)


def autoattack_cached(model, data, net, x, y, threat, device, batch_size, seed, cache_dir, refresh=False):
    """:func:`run_autoattack` through the cache (:mod:`aa_cache`): an :class:`aa_cache.AAResult`."""
    import aa_cache
    import importlib.metadata

    fields = {"model_sha256": model.sha256, "data_sha256": data.sha256(), "n": int(len(y)), "norm": threat.norm,
              "eps": float(threat.eps), "aa_version": "standard", "l1_components": "apgd-ce,apgd-t" if threat.norm == "L1" else "",
              "pyautoattack": importlib.metadata.version("pyautoattack"), "seed": int(seed),
              "threads": torch.get_num_threads(), "device": device.type, "batch_size": int(batch_size),
              "torch": torch.__version__}
    return aa_cache.cached_run(cache_dir, fields, lambda: run_autoattack(net, x, y, threat, device, batch_size, seed), refresh)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="cifar10-resnet18-linf-at")
    ap.add_argument("--suite", default="cifar10-union")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--seed", type=seed_arg, default=0)
    ap.add_argument("--out", default=None, help="output stem (default results/aa_vs_rbx/<device>_<model>_n<N>)")
    ap.add_argument("--skip-aa", action="store_true", help="only run rbx (for tuning)")
    ap.add_argument("--union-only", action="store_true", help="rbx in union-only mode (rbx run --union-only)")
    ap.add_argument("--channels-last", action="store_true",
                    help="rbx's search in channels_last memory format (rbx run --channels-last; float32, successes re-verified)")
    ap.add_argument("--aa-cache", default=str(Path(__file__).resolve().parent.parent / "results" / "aa_cache"),
                    help="AutoAttack result cache folder ('' = no cache); see benchmarks/aa_cache.py")
    ap.add_argument("--refresh-aa", action="store_true", help="re-measure AutoAttack even when cached (and store it)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU); part of the cache key")
    ap.add_argument("--candidates", nargs="*", default=(), metavar="SUITE",
                    help="also these suites (names or .toml), run back to back after the main one and compared with "
                         "the same AutoAttack flags: for tuning the default cascade")
    ap.add_argument("--fill-cache", nargs="*", default=None, metavar="THREAT",
                    help="only run AutoAttack into the cache, for these threat models in this order (default: the "
                         "suite's), then exit: a long AutoAttack side (ResNet-18 on CPU) stored norm by norm")
    ap.add_argument("--only-threats", nargs="*", default=None, metavar="THREAT",
                    help="compare only these threat models of the suite (the union is then over them only, and says so)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)

    device = resolve_device(a.device)
    suite = load_suite(a.suite)
    if a.only_threats:
        import dataclasses

        suite = dataclasses.replace(suite, name=f"{suite.name}-subset", union_order=(),
                                    threats=tuple(t for t in suite.threats if t.threat.label in a.only_threats))
    model = load_model(a.model)
    data = DATASETS.create(suite.dataset, n_examples=a.n)
    tag = "gpu" if device.type == "cuda" else "cpu"
    out = Path(a.out or f"results/aa_vs_rbx/{tag}_{a.model}_n{a.n}")
    out.parent.mkdir(parents=True, exist_ok=True)
    net = model.module.to(device)
    x, y = data.x.to(device), data.y.to(device)
    if a.fill_cache is not None:
        by_label = {s.threat.label: s for s in suite.threats}
        with frozen(net):
            for label in a.fill_cache or list(by_label):
                res = autoattack_cached(model, data, net, x, y, by_label[label].threat, device, a.batch_size, a.seed,
                                        Path(a.aa_cache), a.refresh_aa)
                print(f"{label}: {res.seconds:.1f} s, {int(res.robust.sum())} of {len(y)} robust (AA's own flags), "
                      f"{'cached ' + res.cached_at if res.cached_at else 'measured now'}", flush=True)
        return 0

    # (b) rbx first (its record holds the clean pass too).
    if device.type == "cuda":
        torch.cuda.synchronize()
    def run_rbx(s):
        t0, c0 = time.perf_counter(), time.process_time()
        ev = evaluate(model, data, s.threats, union_attacks=s.union, suite=s.name, seed=a.seed, batch_size=a.batch_size,
                      device=device, progress=False, search=SearchOptions(channels_last=a.channels_last),
                      **({"union_only": True, "union_order": [o for o in s.union_order if o in {t.threat.label for t in s.threats}]} if a.union_only else {}))
        if device.type == "cuda":
            torch.cuda.synchronize()
        return ev, time.perf_counter() - t0, time.process_time() - c0

    ev, rbx_seconds, rbx_cpu = run_rbx(suite)
    record_path = ev.write(out.parent)
    rec, flags = ev.record, ev.flags
    result = {
        "model": a.model, "n": a.n, "dataset": rec.dataset["source"], "suite": suite.name,
        "device": str(device), "device_name": provenance.device_name(device),
        "torch": torch.__version__, "python": platform.python_version(), "rbx_version": provenance.rbx_version(),
        "git_commit": provenance.git_state()["commit"], "date": provenance.utc_now(),
        "command": "python " + " ".join([sys.argv[0], *(argv or sys.argv[1:])]),
        "threads": torch.get_num_threads(), "union_only": bool(a.union_only), "channels_last": bool(a.channels_last),
        "threat_subset": list(a.only_threats) if a.only_threats else None,
        "clean": rec.clean.accuracy,
        "rbx": {"seconds": round(rbx_seconds, 2), "cpu_seconds": round(rbx_cpu, 2), "record": str(record_path),
                "threats": {t.threat: {"robust": t.robust.accuracy if t.measured else None, "seconds": t.seconds,
                                       "attacks": [s.attack for s in t.attacks]} for t in rec.threats},
                "union": rec.union.accuracy},
    }
    if not a.skip_aa:
        aa_flags, aa_total, aa_cpu, aa_threats = [], 0.0, 0.0, {}
        with frozen(net):
            correct = flags.clean_correct
            for ti, spec in enumerate(suite.threats):
                res = autoattack_cached(model, data, net, x, y, spec.threat, device, a.batch_size,
                                        a.seed, Path(a.aa_cache) if a.aa_cache else None, a.refresh_aa)
                robust, secs, comps, cached_at = res.robust & correct, res.seconds, res.components, res.cached_at
                aa_flags.append(robust)
                aa_total += secs
                aa_cpu = None if aa_cpu is None or res.cpu_seconds is None else aa_cpu + res.cpu_seconds
                measured = flags.is_measured(spec.threat.label)  # union-only: later threat models not measured
                aa_threats[spec.threat.label] = {"robust": float(robust.mean()), "seconds": round(secs, 2), "attacks": comps, "cached_at": cached_at,
                                                 "broken_by_aa_not_rbx": int((~robust & flags.robust[:, ti]).sum()) if measured else None,
                                                 "broken_by_rbx_not_aa": int((robust & ~flags.robust[:, ti]).sum()) if measured else None}
        aa_union = union_flags(correct, np.stack(aa_flags, 1))
        result["autoattack"] = {"seconds": round(aa_total, 2), "cpu_seconds": None if aa_cpu is None else round(aa_cpu, 2),
                                "threats": aa_threats, "union": float(aa_union.mean()),
                                "union_broken_by_aa_not_rbx": int((~aa_union & union_flags(correct, flags.robust)).sum())}
        result["time_ratio_aa_over_rbx"] = round(aa_total / rbx_seconds, 2)
        if aa_cpu is not None:  # process CPU time: less sensitive than wall time to other jobs on a shared machine
            result["cpu_time_ratio_aa_over_rbx"] = round(aa_cpu / rbx_cpu, 2)
        result["candidates"] = []
        for cand in a.candidates:
            cs = load_suite(cand)
            cev, csecs, ccpu = run_rbx(cs)
            cf = cev.flags
            result["candidates"].append({
                "suite": cand, "attacks": {t.threat: [s.attack + str(s.params) for s in t.attacks] for t in cev.record.threats},
                "seconds": round(csecs, 2), "ratio": round(aa_total / csecs, 2), "cpu_seconds": round(ccpu, 2),
                "cpu_ratio": None if aa_cpu is None else round(aa_cpu / ccpu, 2), "union": cev.record.union.accuracy,
                "threats": {t.threat: t.robust.accuracy if t.measured else None for t in cev.record.threats},
                "broken_by_aa_not_rbx": {s.threat.label: int((~f & cf.robust[:, i]).sum()) if cf.is_measured(s.threat.label) else None
                                         for i, (s, f) in enumerate(zip(suite.threats, aa_flags))},
                "union_broken_by_aa_not_rbx": int((~aa_union & cf.union).sum())})
            print(json.dumps(result["candidates"][-1]), flush=True)
    atomic_write_text(out.with_suffix(".json"), json.dumps(result, indent=2) + "\n")
    atomic_write_text(out.with_suffix(".md"), to_markdown(result) + "\n")
    print(to_markdown(result))
    return 0


def to_markdown(r: dict) -> str:
    lines = [f"# AutoAttack vs rbx: {r['model']}, {r['dataset']}, first {r['n']}",
             "", f"Device: {r['device_name']} ({r['device']}); torch {r['torch']}; rbx {r['rbx_version']} "
             f"(commit {str(r['git_commit'])[:10]}); {r['date']}; {r.get('threads', '?')} torch threads.", f"Command: `{r['command']}`", "",
             f"Clean accuracy: {100 * r['clean']:.1f}%", "",
             "| threat | AutoAttack robust % | AA seconds | rbx robust % | rbx seconds | rbx attacks |",
             "| --- | ---: | ---: | ---: | ---: | --- |"]
    aa = r.get("autoattack", {"threats": {}})
    for label, t in r["rbx"]["threats"].items():
        a = aa["threats"].get(label, {})
        lines.append(f"| {label} | {100 * a['robust']:.1f} | {a['seconds']:.1f} | " if a else f"| {label} | - | - | ")
        rob = "n/m" if t["robust"] is None else f"{100 * t['robust']:.1f}"
        lines[-1] += f"{rob} | {t['seconds']:.1f} | {' > '.join(t['attacks'])} |"
    aa_union = f"{100 * aa['union']:.1f}" if "union" in aa else "-"
    aa_secs = f"{aa['seconds']:.1f}" if "seconds" in aa else "-"
    lines.append(f"| **union** | {aa_union} | {aa_secs} | {100 * r['rbx']['union']:.1f} | {r['rbx']['seconds']:.1f} | |")
    if r.get("threat_subset"):
        lines += ["", f"Only {' and '.join(r['threat_subset'])} compared: the union above is over them only."]
    if "time_ratio_aa_over_rbx" in r:
        lines += ["", f"AutoAttack took {r['time_ratio_aa_over_rbx']}x rbx's wall time (rbx's time includes its clean pass)"
                  + (f"; {r['cpu_time_ratio_aa_over_rbx']}x its process CPU time ({r['autoattack']['cpu_seconds']} s vs "
                     f"{r['rbx']['cpu_seconds']} s)" if r.get("cpu_time_ratio_aa_over_rbx") else "") + "."]
        dis = [f"{k}: AA broke {v['broken_by_aa_not_rbx']} points rbx did not, rbx broke {v['broken_by_rbx_not_aa']} AA did not"
               for k, v in aa["threats"].items() if v["broken_by_aa_not_rbx"] is not None]
        lines += ["", "Per-sample disagreements: " + "; ".join(dis + [f"union: AA broke {aa['union_broken_by_aa_not_rbx']} "
                                                                      "union points rbx did not"]) + "."]
        if r.get("candidates"):
            lines += ["", "Candidate cascades, run back to back after the main run against the same AutoAttack flags:", "",
                      "| suite | rbx seconds | AA / rbx | rbx CPU s | AA / rbx (CPU) | union % | per-norm % | AA broke, rbx not (per norm; union) |",
                      "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
            for c in r["candidates"]:
                per = ", ".join("n/m" if v is None else f"{100 * v:.1f}" for v in c["threats"].values())
                dis = ", ".join(str(v) for v in c["broken_by_aa_not_rbx"].values())
                lines.append(f"| {c['suite']} | {c['seconds']:.1f} | {c['ratio']} | {c['cpu_seconds']:.1f} | {c['cpu_ratio']} | "
                             f"{100 * c['union']:.1f} | {per} | "
                             f"{dis}; {c['union_broken_by_aa_not_rbx']} |")
        cached = [f"{k} (measured {v['cached_at']})" for k, v in aa["threats"].items() if v.get("cached_at")]
        if cached:
            lines += ["", "AutoAttack's flags and seconds taken from the cache (benchmarks/aa_cache.py, same model, images, "
                      "eps, versions, seed, threads): " + ", ".join(cached) + "."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
