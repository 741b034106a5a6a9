"""MultiRobustBench's metrics from run records: robust accuracy vs strength per threat model, CR_ind-avg,
CR_ind-worst and a stability constant.

Dai, Mahloujifar, Xiang, Sehwag, Chen & Mittal, "MultiRobustBench: Benchmarking Robustness Against Multiple
Attacks", ICML 2023. Their leaderboard evaluates each model under attack types ``a`` at a grid of strengths
``eps_{a,1} < ... < eps_{a,K}`` (20 per type) and compares it with ``ind``, the models adversarially trained
for each attack individually (their reference accuracies ``acc_ind(a, eps)`` and ``acc_ind(clean)``).
With the ratios ``r(a, eps) = acc(a, eps) / acc_ind(a, eps)`` and ``r(clean) = acc(clean) / acc_ind(clean)``
over the set ``S = {clean} ∪ {(a, eps_{a,k})}`` (as their ``metrics.py`` computes them):

    CR_ind-avg   = 100 * mean_{s in S} r(s)
    CR_ind-worst = 100 * min_{s in S} r(s)

Without individually trained reference models (``reference=None``), every reference accuracy is taken as
1 (a perfect classifier): the two numbers are then the mean and the minimum of the accuracies themselves,
labelled as such in tables (``reference: none``), never passed off as the paper's competitive ratios.

Stability constant (rbx's definition; the paper's exact formula was not available offline, so it is not
claimed to be theirs): how fast the ratio curve can drop as the strength grows, on strengths normalized by
each type's largest grid strength ``eps_{a,K}`` (so types with different units compare)::

    sigma = max_a max_k  max(0, r(a, eps_{a,k}) - r(a, eps_{a,k+1})) / ((eps_{a,k+1} - eps_{a,k}) / eps_{a,K})

with ``r(a, eps_{a,0} = 0) = r(clean)`` prepended to every curve. A model whose accuracy collapses within a
small strength step has a large sigma; a flat curve has 0.

The curves come from a record's threat results: every threat model of a norm (the main ones and those of
``--eps-sweep``) is one point of that norm's curve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence


@dataclass(frozen=True)
class StrengthCurve:
    """Robust accuracy (fraction) of one threat-model type at increasing strengths ``eps`` (its ``eps`` units)."""

    norm: str
    eps: tuple[float, ...]
    accuracy: tuple[float, ...]


@dataclass(frozen=True)
class MultiRobustMetrics:
    """CR_ind-avg and CR_ind-worst (in %), the stability constant, the per-type averages, and the reference used."""

    cr_avg: float
    cr_worst: float
    stability: float
    per_type: Mapping[str, float]  # 100 * mean ratio over the type's strengths and the clean point
    worst_at: str  # where CR_ind-worst is reached: "clean" or "NORM@eps"
    reference: str  # "none" (perfect reference) or the reference's name


def strength_curves(record) -> dict[str, StrengthCurve]:
    """Per threat-model type (norm), its measured robust accuracies sorted by strength (``RunRecord.threats``;
    threat models whose accuracy was not measured, e.g. in a union-only run, are left out)."""
    points: dict[str, dict[float, float]] = {}
    for t in record.threats:
        if t.robust is None:
            continue
        points.setdefault(t.norm, {})[float(t.eps)] = float(t.robust.accuracy)
    return {n: StrengthCurve(n, tuple(sorted(p)), tuple(p[e] for e in sorted(p))) for n, p in points.items()}


def _ratio(acc: float, ref: float | None) -> float:
    if ref is None:
        return acc
    if ref <= 0:
        return math.inf if acc > 0 else 1.0
    return acc / ref


def multirobust_metrics(clean: float, curves: Mapping[str, StrengthCurve], reference_clean: float | None = None,
                        reference: Mapping[str, StrengthCurve] | None = None, reference_name: str = "none") -> MultiRobustMetrics:
    """The metrics above from ``clean`` accuracy and ``curves`` (fractions in [0, 1]).

    ``reference`` (with ``reference_clean``): the individually trained models' curves, one per type, on the
    same strengths; None: a perfect reference (ratios are the accuracies). Raises ``ValueError`` when a
    reference lacks a strength the curves have.
    """
    if not curves:
        raise ValueError("no threat model with a measured robust accuracy: nothing to compute MultiRobustBench metrics from")
    r_clean = _ratio(clean, reference_clean if reference is not None else None)
    ratios: list[tuple[str, float]] = [("clean", r_clean)]
    per_type: dict[str, float] = {}
    sigma = 0.0
    for norm, c in curves.items():
        ref = None
        if reference is not None:
            if norm not in reference:
                raise ValueError(f"the reference has no curve for {norm}")
            rc = reference[norm]
            missing = [e for e in c.eps if not any(math.isclose(e, f, rel_tol=1e-9) for f in rc.eps)]
            if missing:
                raise ValueError(f"the reference's {norm} curve lacks strengths {missing}")
            ref = [rc.accuracy[next(i for i, f in enumerate(rc.eps) if math.isclose(e, f, rel_tol=1e-9))] for e in c.eps]
        r = [_ratio(a, None if ref is None else ref[i]) for i, a in enumerate(c.accuracy)]
        ratios += [(f"{norm}@{e:g}", v) for e, v in zip(c.eps, r)]
        per_type[norm] = 100.0 * (r_clean + sum(r)) / (1 + len(r))
        top = c.eps[-1]
        xs, ys = (0.0, *c.eps), (r_clean, *r)
        for k in range(len(xs) - 1):
            step = (xs[k + 1] - xs[k]) / top
            if step > 0:
                sigma = max(sigma, max(0.0, ys[k] - ys[k + 1]) / step)
    worst_at, worst = min(ratios, key=lambda kv: kv[1])
    avg = 100.0 * sum(v for _, v in ratios) / len(ratios)
    return MultiRobustMetrics(avg, 100.0 * worst, sigma, per_type, worst_at, reference_name if reference is not None else "none")


def record_metrics(record, reference_record=None) -> MultiRobustMetrics:
    """:func:`multirobust_metrics` of a :class:`~robustbench_ext.records.schema.RunRecord`, against another
    record as the reference (the individually trained models' results merged into one record) or none."""
    ref_curves = strength_curves(reference_record) if reference_record is not None else None
    return multirobust_metrics(float(record.clean.accuracy), strength_curves(record),
                               float(reference_record.clean.accuracy) if reference_record is not None else None,
                               ref_curves, reference_record.model.get("name", "reference") if reference_record is not None else "none")


def metrics_table(records: Sequence, reference_record=None) -> str:
    """A Markdown table: per record, clean accuracy, each type's robust accuracy at every strength, CR_ind-avg,
    CR_ind-worst (where) and the stability constant."""
    lines = []
    for rec in records:
        m = record_metrics(rec, reference_record)
        curves = strength_curves(rec)
        lines.append(f"**{rec.model.get('name', '?')}** (n={rec.n}, reference: {m.reference})")
        lines.append("")
        lines.append("| threat model | strength -> robust accuracy (%) | avg ratio incl. clean (%) |")
        lines.append("| --- | --- | --- |")
        for norm, c in curves.items():
            pts = ", ".join(f"{e:g}: {100 * a:.1f}" for e, a in zip(c.eps, c.accuracy))
            lines.append(f"| {norm} | {pts} | {m.per_type[norm]:.1f} |")
        lines.append("")
        lines.append(f"clean {100 * float(rec.clean.accuracy):.1f}% · CR_ind-avg {m.cr_avg:.1f} · CR_ind-worst {m.cr_worst:.1f} "
                     f"(at {m.worst_at}) · stability constant {m.stability:.3g}")
        lines.append("")
    return "\n".join(lines)
