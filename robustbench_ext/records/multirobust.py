"""MultiRobustBench's metrics from run records: robust accuracy vs strength per threat-model type, CR_ind-avg,
CR_ind-worst and the stability constant (SC).

Dai, Mahloujifar, Xiang, Sehwag, Chen & Mittal, "MultiRobustBench: Benchmarking Robustness Against Multiple
Attacks", ICML 2023 (arXiv 2302.10980). Their leaderboard evaluates each model under attack types ``a`` at a grid
of strengths ``eps_{a,1} < ... < eps_{a,K}`` (20 per type) and compares it with ``acc*``, the accuracies of models
adversarially trained for each attack and strength individually (``acc*(a, eps)`` and ``acc*(clean)``).

Where the definitions come from. Only the opening of the paper's text (abstract, introduction) could be read here;
its metric definitions could not. What is implemented is what the authors' own code computes, read in their
repositories: ``CR_ind_avg``, ``CR_ind_worst`` and ``SC`` in ``scripts/utils.js`` of
``github.com/inspire-group/multirobustbench.github.io`` (the leaderboard), which the README of
``github.com/multirobustbench/multirobustbench`` names as the metrics' code (with a Python copy of the first two in
its ``metrics.py``); the leaderboard page says "higher CR ... better, lower SC ... better (SC is best used only
when comparing defenses which use the same training threat model)". rbx's own code, written from that description.

With the ratios ``r(s) = acc(s) / acc*(s)`` over ``S = {clean} ∪ {(a, eps_{a,k})}``:

    CR_ind-avg   = 100 * mean_{s in S} r(s)
    CR_ind-worst = 100 * min_{s in S} r(s)

Stability constant, for a model whose training threat models (the ``seen`` points: clean, and every ``(a, eps)``
with ``a`` a training attack type and ``eps`` at most its training strength) are known, with a locality ``alpha``::

    SC = max { |acc(s1) - acc(s2)| / |acc*(s1) - acc*(s2)| :  s1 seen, s2 in S, s2 != s1,
                                                              0 < |acc*(s1) - acc*(s2)| < alpha }

(0 when no pair is that close; undefined when every point of S is seen). Which threat models a model was trained
on (:func:`training_threats`): given (``--seen``), else what the record says of a model ``rbx train`` made (its
defense's declared training threat models, :attr:`~robustbench_ext.training.contract.Defense.trains_on`, when it
was trained from scratch), else unknown, and SC is then undefined rather than computed as if only clean were seen. ``alpha`` is 3 accuracy points in the
leaderboard (``getLocalityVal``), :data:`LOCALITY` = 0.03 here, accuracies being fractions. One deviation: the
leaderboard code does not skip a clean pair whose reference accuracies are equal (it divides by zero there); rbx
skips every such pair. SC needs the reference accuracies ``acc*``: without them it is undefined (``None``), never
computed against a stand-in.

Without individually trained reference models (``reference=None``), every reference accuracy is taken as 1 (a
perfect classifier): CR_ind-avg and CR_ind-worst are then the mean and the minimum of the accuracies themselves,
labelled as such (``reference: none``), never passed off as the paper's competitive ratios.

rbx's steepest drop (rbx's own number, not MultiRobustBench's; it was called "stability constant" before the
authors' definition was checked): how fast the ratio curve drops as the strength grows, on strengths normalized by
each type's largest strength ``eps_{a,K}``, with ``r(a, 0) = r(clean)`` prepended to every curve::

    steepest_drop = max_a max_k  max(0, r(a, eps_{a,k}) - r(a, eps_{a,k+1})) / ((eps_{a,k+1} - eps_{a,k}) / eps_{a,K})

The curves come from a record (:func:`strength_curves`): every measured threat model of a type (the main ones and
those of ``--eps-sweep``) is a point of that type's curve, and a ``--curve`` run's minimum-norm curve adds its
points at the strengths no fixed-eps cascade measured (a fixed-eps cascade's result wins where both exist: it is
what the record reports). A type's strength is its threat model's first budget (``spatial-rt:ROT,TRANS``: ROT;
a sweep scales both). A record has MultiRobustBench metrics (:func:`record_block`) when some type has robust
accuracy at two strengths or more.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

#: SC's locality: only pairs whose reference accuracies differ by less than this (a fraction; the leaderboard's 3
#: accuracy points) are compared.
LOCALITY = 0.03
#: Why a record's SC is undefined without reference models.
NEEDS_REFERENCE = "no reference models: give --reference (rbx report --multirobust, rbx leaderboard)"
#: Why a record's SC is undefined when the model's training threat models are not known.
SEEN_UNKNOWN = "training threat models unknown: give --seen"
#: Why SC is undefined when every point is seen.
ALL_SEEN = "undefined: every strength evaluated is one the model was trained on"


@dataclass(frozen=True)
class StrengthCurve:
    """Robust accuracy (fraction) of one threat-model type at increasing strengths ``eps`` (its ``eps`` units)."""

    norm: str
    eps: tuple[float, ...]
    accuracy: tuple[float, ...]


@dataclass(frozen=True)
class MultiRobustMetrics:
    """CR_ind-avg and CR_ind-worst (in %), the stability constant, rbx's steepest drop, the per-type averages and
    the reference used. ``stability`` is None where undefined (no reference, or every point seen)."""

    cr_avg: float
    cr_worst: float
    stability: float | None
    per_type: Mapping[str, float]  # 100 * mean ratio over the type's strengths and the clean point
    worst_at: str  # where CR_ind-worst is reached: "clean" or "NORM@eps"
    reference: str  # "none" (perfect reference) or the reference's name
    steepest_drop: float = 0.0  # rbx's own number (module docstring), not MultiRobustBench's
    stability_note: str = ""  # why ``stability`` is None


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def strength_curves(record) -> dict[str, StrengthCurve]:
    """Per threat-model type (norm), its measured robust accuracies sorted by strength: ``RunRecord.threats`` and
    ``sweeps``, then a ``--curve`` run's minimum-norm points at strengths > 0 not measured by those (threat models
    whose accuracy was not measured, e.g. in a union-only run, are left out)."""
    points: dict[str, dict[float, float]] = {}

    def add(norm: str, eps: float, acc: float, fixed: bool = True) -> None:
        have = points.setdefault(norm, {})
        if any(_close(eps, e) for e in have):
            return  # first wins: fixed-eps results come before a minimum-norm curve's
        if fixed or eps > 0:
            have[float(eps)] = float(acc)

    for t in record.threats:
        if t.robust is not None:
            add(t.norm, t.eps, t.robust.accuracy)
    for sw in getattr(record, "sweeps", ()) or ():
        for p in sw.get("points", ()):
            if p.get("robust") is not None:
                add(sw["norm"], float(p["eps"]), float(p["robust"]["accuracy"]))
    for cv in getattr(record, "curves", ()) or ():
        for e, a in zip(cv.get("eps", ()), cv.get("robust_accuracy", ())):
            add(cv["norm"], float(e), float(a), fixed=False)
    return {n: StrengthCurve(n, tuple(sorted(p)), tuple(p[e] for e in sorted(p))) for n, p in points.items() if p}


def has_strength_curve(curves: Mapping[str, StrengthCurve]) -> bool:
    """Whether some type has robust accuracy at two strengths or more (then a record gets the metrics)."""
    return any(len(c.eps) >= 2 for c in curves.values())


def _ratio(acc: float, ref: float | None) -> float:
    if ref is None:
        return acc
    if ref <= 0:
        return math.inf if acc > 0 else 1.0
    return acc / ref


def _matched(norm: str, c: StrengthCurve, reference: Mapping[str, StrengthCurve]) -> list[float]:
    if norm not in reference:
        raise ValueError(f"the reference has no curve for {norm}")
    rc = reference[norm]
    missing = [e for e in c.eps if not any(_close(e, f) for f in rc.eps)]
    if missing:
        raise ValueError(f"the reference's {norm} curve lacks strengths {missing}")
    return [rc.accuracy[next(i for i, f in enumerate(rc.eps) if _close(e, f))] for e in c.eps]


def stability_constant(points: Sequence[tuple[str, float, float, bool]], alpha: float = LOCALITY) -> float | None:
    """MultiRobustBench's SC (module docstring) over ``points`` = ``(name, acc, acc*, seen)`` (fractions); None when
    every point is seen (undefined)."""
    if all(seen for *_, seen in points):
        return None
    best = 0.0
    for n1, a1, r1, seen in points:
        if not seen:
            continue
        for n2, a2, r2, _ in points:
            gap = abs(r1 - r2)
            if n2 != n1 and 0 < gap < alpha:
                best = max(best, abs(a1 - a2) / gap)
    return best


def multirobust_metrics(clean: float, curves: Mapping[str, StrengthCurve], reference_clean: float | None = None,
                        reference: Mapping[str, StrengthCurve] | None = None, reference_name: str = "none",
                        seen: Mapping[str, float] | None = None, alpha: float = LOCALITY) -> MultiRobustMetrics:
    """The metrics above from ``clean`` accuracy and ``curves`` (fractions in [0, 1]).

    ``reference`` (with ``reference_clean``): the individually trained models' curves, one per type, on the
    same strengths; None: a perfect reference (ratios are the accuracies; SC undefined). ``seen``: the model's
    training threat models, type -> training strength (clean is always seen). Raises ``ValueError`` when there
    is no curve, or a reference lacks a strength the curves have.
    """
    if not curves:
        raise ValueError("no threat model with a measured robust accuracy: nothing to compute MultiRobustBench metrics from")
    has_ref = reference is not None
    ref_clean = reference_clean if has_ref else None
    r_clean = _ratio(clean, ref_clean)
    ratios: list[tuple[str, float]] = [("clean", r_clean)]
    sc_points: list[tuple[str, float, float, bool]] = [("clean", clean, ref_clean if ref_clean is not None else 1.0, True)]
    per_type: dict[str, float] = {}
    drop = 0.0
    seen = dict(seen or {})
    for norm, c in curves.items():
        ref = _matched(norm, c, reference) if has_ref else [None] * len(c.eps)
        r = [_ratio(a, f) for a, f in zip(c.accuracy, ref)]
        ratios += [(f"{norm}@{e:g}", v) for e, v in zip(c.eps, r)]
        sc_points += [(f"{norm}@{e:g}", a, 1.0 if f is None else f, norm in seen and e <= seen[norm] * (1 + 1e-9))
                      for e, a, f in zip(c.eps, c.accuracy, ref)]
        per_type[norm] = 100.0 * (r_clean + sum(r)) / (1 + len(r))
        top = c.eps[-1]
        xs, ys = (0.0, *c.eps), (r_clean, *r)
        for k in range(len(xs) - 1):
            step = (xs[k + 1] - xs[k]) / top if top > 0 else 0.0
            if step > 0:
                drop = max(drop, max(0.0, ys[k] - ys[k + 1]) / step)
    worst_at, worst = min(ratios, key=lambda kv: kv[1])
    avg = 100.0 * sum(v for _, v in ratios) / len(ratios)
    sc, note = None, NEEDS_REFERENCE
    if has_ref:
        sc = stability_constant(sc_points, alpha)
        note = "" if sc is not None else ALL_SEEN
    return MultiRobustMetrics(avg, 100.0 * worst, sc, per_type, worst_at, reference_name if has_ref else "none",
                              drop, note)


def parse_seen(texts: Sequence[str]) -> dict[str, float]:
    """Training threat models as ``--seen`` gives them (``Linf:8/255``, repeatable; ``clean`` for clean training
    only) -> type -> training strength (the largest given per type). Raises the threat grammar's error."""
    from ..attack.threat import ThreatModel

    seen: dict[str, float] = {}
    for text in texts:
        if str(text).strip().lower() == "clean":
            continue
        t = ThreatModel.parse(text)
        seen[t.norm] = max(seen.get(t.norm, t.eps), t.eps)
    return seen


def training_threats(record) -> tuple[dict[str, float] | None, str]:
    """What a record says its model was trained on, as ``(type -> training strength, where from)``; ``(None, why
    not)`` where it cannot say.

    Only a model ``rbx train`` made from scratch says it: its record's ``model.trained`` names the defense and its
    parameters, and the defense declares which parameters are its training threat models
    (:attr:`~robustbench_ext.training.contract.Defense.trains_on`). A fine-tuned model (``init``) also saw what
    its starting model was trained on, which the record does not carry: unknown.
    """
    from ..errors import RbxError
    from ..registry import DEFENSES

    trained = record.model.get("trained") if isinstance(record.model, Mapping) else None
    if not isinstance(trained, Mapping) or not trained.get("defense"):
        return None, "the record does not say what the model was trained on"
    name = str(trained["defense"])
    if trained.get("init"):
        return None, f"fine-tuned from {trained['init']}, whose training the record does not carry"
    try:
        declared = getattr(DEFENSES.get(name).factory, "trains_on", None)
    except RbxError:
        return None, f"defense '{name}' is not registered here"
    params = trained.get("defense_params", trained.get("params")) or {}
    if declared is None or any(k not in params for k in declared):
        return None, f"defense '{name}' does not declare its training threat models"
    specs = [s for k in declared for s in ([params[k]] if isinstance(params[k], str) else list(params[k]))]
    try:
        seen = parse_seen(specs)
    except RbxError:
        return None, f"defense '{name}''s training threat models {specs} do not parse"
    return seen, f"record: {name} on {', '.join(specs) if specs else 'clean inputs'}"


def describe_seen(seen: Mapping[str, float]) -> str:
    """``clean, Linf <= 0.0314`` -- the seen points of SC in words."""
    return ", ".join(["clean", *(f"{n} <= {e:.4g}" for n, e in seen.items())])


def record_metrics(record, reference_record=None, seen: Mapping[str, float] | None = None) -> MultiRobustMetrics:
    """:func:`multirobust_metrics` of a :class:`~robustbench_ext.records.schema.RunRecord`, against another
    record as the reference (the individually trained models' results merged into one record) or none.

    ``seen``: the model's training threat models (``{}``: clean only); None: what the record says
    (:func:`training_threats`), and where it cannot say, SC is undefined (``stability_note`` says why).
    """
    ref_curves = strength_curves(reference_record) if reference_record is not None else None
    why = ""
    if seen is None and reference_record is not None:
        seen, why = training_threats(record)
    m = multirobust_metrics(float(record.clean.accuracy), strength_curves(record),
                            float(reference_record.clean.accuracy) if reference_record is not None else None,
                            ref_curves, reference_record.model.get("name", "reference") if reference_record is not None else "none",
                            seen)
    if reference_record is not None and seen is None:
        return replace(m, stability=None, stability_note=f"{SEEN_UNKNOWN} ({why})")
    return m


def record_block(record) -> dict[str, Any] | None:
    """The record's ``multirobust`` block (reference: none), or None when no type has two strengths or more.

    Derived from the record's own accuracies whenever a record is built or read (never trusted from the file).
    """
    curves = strength_curves(record)
    if not has_strength_curve(curves):
        return None
    return _block(multirobust_metrics(float(record.clean.accuracy), curves), curves)


def reference_block(record, reference_record, seen: Mapping[str, float] | None = None) -> dict[str, Any]:
    """A record's ``multirobust`` block against ``reference_record`` (what a board shows with ``--reference``), with
    the seen points and where they come from (``seen`` given: ``--seen``; None: the record, :func:`training_threats`).
    Raises ``ValueError`` as :func:`multirobust_metrics` does."""
    m = record_metrics(record, reference_record, seen)
    given, where = (seen, "--seen") if seen is not None else training_threats(record)
    return {**_block(m, strength_curves(record)), "seen": describe_seen(given) if given is not None else None,
            "seen_from": where}


def _block(m: MultiRobustMetrics, curves: Mapping[str, StrengthCurve]) -> dict[str, Any]:
    return {"reference": m.reference, "cr_ind_avg": m.cr_avg, "cr_ind_worst": m.cr_worst, "worst_at": m.worst_at,
            "stability_constant": m.stability, "stability_note": m.stability_note, "rbx_steepest_drop": m.steepest_drop,
            "per_type": dict(m.per_type), "strengths": {n: list(c.eps) for n, c in curves.items()},
            "definition": "Dai et al. 2023 (MultiRobustBench), as their leaderboard code computes it: "
                          "robustbench_ext.records.multirobust"}


def block_line(block: Mapping[str, Any]) -> str:
    """One table line of a ``multirobust`` block: CR_ind-avg, CR_ind-worst (where), SC (or why not), rbx's steepest
    drop, and what the ratios are against."""
    sc = block["stability_constant"]
    sc_text = f"{sc:.3g}" if sc is not None else f"n/a ({block['stability_note']})"
    n = sum(len(v) for v in block["strengths"].values())
    what = "ratios are the accuracies themselves" if block["reference"] == "none" else f"reference {block['reference']}"
    return (f"MultiRobustBench ({len(block['strengths'])} types, {n} strengths; {what}): CR_ind-avg "
            f"{block['cr_ind_avg']:.1f} · CR_ind-worst {block['cr_ind_worst']:.1f} (at {block['worst_at']}) · "
            f"SC {sc_text} · rbx steepest drop {block['rbx_steepest_drop']:.3g}"
            + (f" · seen: {block['seen']} ({block['seen_from']})" if block.get("seen") else ""))


def metrics_table(records: Sequence, reference_record=None, seen: Mapping[str, float] | None = None) -> str:
    """A Markdown table: per record, clean accuracy, each type's robust accuracy at every strength, CR_ind-avg,
    CR_ind-worst (where), the stability constant and rbx's steepest drop. ``seen`` as in :func:`record_metrics`."""
    lines = []
    for rec in records:
        m = record_metrics(rec, reference_record, seen)
        curves = strength_curves(rec)
        given, where = (seen, "--seen") if seen is not None else training_threats(rec)
        seen_text = f"; seen: {describe_seen(given)} ({where})" if reference_record is not None and given is not None else ""
        lines.append(f"**{rec.model.get('name', '?')}** (n={rec.n}, reference: {m.reference}{seen_text})")
        lines.append("")
        lines.append("| threat model | strength -> robust accuracy (%) | avg ratio incl. clean (%) |")
        lines.append("| --- | --- | --- |")
        for norm, c in curves.items():
            pts = ", ".join(f"{e:g}: {100 * a:.1f}" for e, a in zip(c.eps, c.accuracy))
            lines.append(f"| {norm} | {pts} | {m.per_type[norm]:.1f} |")
        lines.append("")
        lines.append(f"clean {100 * float(rec.clean.accuracy):.1f}% · " + block_line(_block(m, curves)))
        lines.append("")
    return "\n".join(lines)
