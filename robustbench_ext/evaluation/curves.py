"""``rbx run --curve``: a robust-accuracy-vs-eps curve from one minimum-norm attack run, in the record,
checked against fixed-eps cascades.

A minimum-norm attack (any registered :class:`~robustbench_ext.attack.min_norm.MinNormAttack`: ``fmn``, ``cw``,
``deepfool``, ``fab``, ``fab-t``, ...; :func:`~robustbench_ext.attack.min_norm.minimum_norm_attacks`) reports per point the
norm of the closest misclassified point it found, whatever eps is (0: misclassified clean; inf: never
broken). Robust accuracy at every eps follows from one run (:func:`robustbench_ext.records.curves.robust_accuracy_curve`).

Per norm of the run's threat models, the curve comes from the first minimum-norm attack of that norm's
cascades: its own per-point results when it ran first (so it saw every clean-correct point), else one
extra run of it over every clean-correct point. Its grid: 0 to twice the largest eps of the norm, plus
every threat model's eps. Then, at each threat model's eps, the curve is checked against a fixed-eps
cascade: this run's own cascade for that threat model when it holds other (fixed-eps) attacks, else the
suite's default cascade for the norm, run on the clean-correct points. A minimum-norm attack that is
weaker than the cascade gives a curve at or above the cascade's robust accuracy; the check reports both
and counts, per point, where they disagree: ``missed_by_curve`` (the cascade broke it, the minimum-norm
attack found nothing within eps) and ``found_only_by_curve`` (the reverse). ``curve_above`` flags a
curve above the fixed-eps result.

A randomized model (the run judges by majority over draws, :mod:`robustbench_ext.evaluation.majority`) is
judged by the same rule throughout: the clean-correct points are the run's (majority) ones; a point's
minimal norm counts only if its closest misclassified point is misclassified in a strict majority of the
run's R fresh passes (:func:`~robustbench_ext.evaluation.majority.majority_min_norm`; else inf), with the
stage's own draws when the curve comes from the run's stage, so that at a threat model's eps the curve and
that stage's fixed-eps verdict agree on every point the stage returned unprojected; and the reference
cascade is re-checked stage by stage like the run's own (:func:`~robustbench_ext.evaluation.majority.majority_cascade`).
The curve's entry says which rule judged it (``judged``).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..attack.cascade import LabelledAttack, run_cascade
from ..attack.min_norm import minimum_norm_attacks
from .majority import RULE, Draws, batch_seed, majority_cascade, majority_min_norm
from ..records.curves import eps_grid, robust_accuracy_curve
from ..data.datasets import EvalData
from ..runtime import stream_seed
from ..errors import RbxError
from .plan import RunPlan
from ..records.stats import percent
from ..attack.threat import ThreatModel

log = logging.getLogger(__name__)

#: Points of the evenly spaced part of a curve's grid (0 .. 2 x the largest eps of its norm).
GRID_POINTS = 21


def min_norm_stage(plan: RunPlan, column: int):
    """The first minimum-norm stage of threat model ``column``'s cascade, or None."""
    for i in plan.column_stages(column):
        s = plan.stages[i]
        if s.kind != "union" and getattr(s.attack, "minimum_norm", False):
            return i, s
    return None


def check_curve_plan(plan: RunPlan) -> None:
    """``--curve`` needs a minimum-norm attack in some threat model's cascade: say so before anything runs."""
    if not any(min_norm_stage(plan, c) for c in range(plan.n_main)):
        names = minimum_norm_attacks()
        raise RbxError(f"--curve needs a minimum-norm attack in the cascade ({', '.join(names)}), "
                       f"e.g. rbx run --attack {names[0]} --curve" if names else
                       "--curve needs a minimum-norm attack in the cascade, and none is registered")


def build_curves(plan: RunPlan, net: nn.Module, data: EvalData, clean: np.ndarray, robust: np.ndarray,
                 captured: dict[int, np.ndarray], seed: int, batch_size: int, dev: torch.device,
                 reference_cascade, draws: Draws | None = None) -> tuple[dict[str, Any], ...]:
    """The record's ``curves`` block: one entry per norm with a minimum-norm attack (see the module docstring).

    ``clean`` ``[N]`` / ``robust`` ``[N, T]``: the run's flags; ``captured``: per stage index, the minimal
    norms ``[N]`` (NaN where the stage did not see the point) the run's own minimum-norm stages reported;
    ``reference_cascade(threat)``: the fixed-eps attacks to check a threat model against when its own
    cascade has none. ``draws``: a randomized run's re-check rule (None: single-pass verdicts, as the run's);
    ``captured`` then holds norms already judged by it (the executor does so).
    """
    out = []
    columns = list(range(plan.n_main))
    for norm in dict.fromkeys(plan.threats[c].threat.norm for c in columns):
        cols = [c for c in columns if plan.threats[c].threat.norm == norm]
        found = next(((c, *m) for c in cols if (m := min_norm_stage(plan, c))), None)
        if found is None:
            continue
        _, stage_i, stage = found
        norms = np.zeros(data.n, dtype=np.float64)  # misclassified clean: 0
        have = captured.get(stage_i)
        if have is not None and not np.isnan(have[clean]).any():
            norms[clean] = have[clean]
            origin = "the run's own stage"
        else:
            norms[clean] = _run_min_norm(stage.attack, net, data, np.flatnonzero(clean), plan.threats[cols[0]].threat,
                                         seed, batch_size, dev, draws)
            origin = "an extra run over the clean-correct points"
        eps_main = sorted({plan.threats[c].threat.eps for c in cols})
        grid = sorted(set(eps_grid(2 * max(eps_main), GRID_POINTS)) | set(eps_main))
        curve = robust_accuracy_curve(norms, grid)
        checks = []
        for c in cols:
            threat = plan.threats[c].threat
            fixed = [plan.stages[i] for i in plan.column_stages(c)
                     if plan.stages[i].kind != "union" and not getattr(plan.stages[i].attack, "minimum_norm", False)]
            if fixed:  # the run's own robust flags: its whole cascade at this eps
                ref_robust = robust[:, c]
                reference = "this run's cascade: " + ", ".join(plan.stages[i].label for i in plan.column_stages(c))
            else:
                stages = reference_cascade(threat)
                ref_robust = _run_reference(stages, net, data, clean, threat, seed, c, batch_size, dev, draws)
                reference = "the suite's cascade: " + ", ".join(s.label for s in stages)
            curve_robust = norms > threat.eps
            acc_curve, acc_ref = float(curve_robust.mean()), float(ref_robust.mean())
            checks.append({"threat": threat.label, "eps": threat.eps, "curve": acc_curve, "cascade": acc_ref,
                           "reference": reference,
                           "missed_by_curve": int((curve_robust & ~ref_robust).sum()),
                           "found_only_by_curve": int((~curve_robust & ref_robust).sum()),
                           "curve_above": acc_curve > acc_ref})
            if acc_curve > acc_ref:
                log.warning("curve %s: %s at %s, above the fixed-eps cascade's %s: %s missed %d points the cascade broke",
                            norm, percent(acc_curve), threat.label, percent(acc_ref), stage.label,
                            checks[-1]["missed_by_curve"])
        finite = norms[np.isfinite(norms) & clean]
        out.append({"norm": norm, "attack": stage.label, "params": stage.attack.params(), "source": origin,
                    "n": int(data.n), "eps": list(curve.eps), "robust_accuracy": list(curve.robust_accuracy),
                    "median_min_norm": float(np.median(finite)) if finite.size else math.inf,
                    "never_broken": int((np.isinf(norms)).sum()), "checks": checks,
                    "judged": f"majority of {draws.r} draws: {RULE}" if draws is not None else "single pass"})
    return tuple(out)


def _run_min_norm(attack, net, data: EvalData, idx: np.ndarray, threat: ThreatModel, seed: int, batch_size: int,
                  dev: torch.device, draws: Draws | None = None) -> np.ndarray:
    """``[len(idx)]`` minimal norms of the points ``idx`` (inf: none found); with ``draws``, judged by majority."""
    out = np.full(idx.size, math.inf)
    for bi, i in enumerate(range(0, idx.size, batch_size)):
        chunk = idx[i:i + batch_size]
        xb, yb = data.x[chunk].to(dev), data.y[chunk].to(dev)
        res = attack(net, xb, yb, threat, seed=stream_seed(seed, "curve", 0, bi))
        norms = res.min_norm if draws is None else majority_min_norm(net, xb, yb, res.min_norm_points, threat, draws.r,
                                                                     batch_seed(draws, 2, 0, bi))
        out[i:i + chunk.size] = norms.cpu().numpy()
    return out


def _run_reference(stages: Sequence[LabelledAttack], net, data: EvalData, clean: np.ndarray, threat: ThreatModel, seed: int,
                   column: int, batch_size: int, dev: torch.device, draws: Draws | None = None) -> np.ndarray:
    """``[N]`` bool: correct and left robust by ``stages`` at ``threat`` (batches seeded by position); with
    ``draws``, every stage's returned points judged by majority (:func:`majority_cascade`)."""
    robust = np.zeros(data.n, dtype=bool)
    idx = np.flatnonzero(clean)
    for bi, i in enumerate(range(0, idx.size, batch_size)):
        chunk = idx[i:i + batch_size]
        seeds = [stream_seed(seed, "curve", 1, column, bi, j) for j in range(len(stages))]
        xb, yb = data.x[chunk].to(dev), data.y[chunk].to(dev)
        if draws is None:
            _, r = run_cascade(stages, net, xb, yb, threat, seeds=seeds)
        else:
            r = majority_cascade(stages, net, xb, yb, threat, seeds=seeds, draws=draws, key=(3, column, bi))
        robust[chunk] = r.cpu().numpy()
    return robust
