"""Re-checks over draws: how a randomized model's clean and adversarial predictions are judged.

A randomized model (random noise, random resizing, stochastic activations) gives a different prediction
at each forward pass, so one pass decides a point by luck: an adversarial point may fool one draw and not
the next, a clean point may be misclassified by one unlucky draw. rbx judges such a model by majority:

    a point is broken (or, clean, misclassified) only if the model misclassifies it in a strict
    majority of R fresh forward passes; a tie is not a majority.

The R passes are seeded (torch's global RNG, forked so that the caller's stream is left as it was) by a
fixed seed that the record keeps, derived per (stage, batch), so the same run gives the same verdicts on
CPU. The keys of the ``draws`` seed stream (:func:`batch_seed`): ``(0, batch)`` the clean verdicts;
``(1, stage key..., batch, column)`` a cascade stage's returned points (and, with ``--curve``, the same
stage's minimum-norm points, judged with the same draws); ``(2, 0, batch)`` the minimum-norm points of
``--curve``'s extra run; ``(3, column, batch, position)`` the stages of ``--curve``'s reference cascade.

Where the rule applies: every clean verdict; every point a cascade stage returns, per stage (the
executor); the union stages; and ``--curve`` (:mod:`robustbench_ext.evaluation.curves`): a point's minimal
norm counts only if its closest misclassified point is misclassified by majority
(:func:`majority_min_norm`, else inf: never broken), and the fixed-eps reference cascade a curve is checked
against is judged stage by stage exactly like the run's own cascade (:func:`majority_cascade`).

The direction of the per-stage re-check, precisely. Stage s of a cascade attacks only the points that
every earlier re-check left robust, and every point it returns gets its own re-check with fresh draws; a
point is broken as soon as one re-check says "misclassified by majority", robust only if every re-check
that saw it said robust. A re-check of a candidate whose per-pass misclassification probability q is near
1/2 says "broken" with probability m(q) = P(Binomial(R, q) > R/2), which is 1/2 at q = 1/2 for odd R and
falls off on either side (R = 11: m(0.4) = 0.25, m(0.3) = 0.08). A point whose candidates are all
borderline gets one such chance per stage that attacks it, so the per-stage rule errs toward BROKEN, by
at most 1 - prod_s (1 - m(q_s)) for a point reached by stages s = 1..S. It does not err toward robust by
re-checking more: a point one stage's re-check wrongly calls robust (q slightly above 1/2) is attacked
again by the next stage, which can only add chances to break it. A single re-check at the end of the
cascade (continue while one pass says robust, re-check the final candidate once) gives each point one
chance instead, but stops attacking a point after a lucky single-pass success, so it errs toward robust
where the later stages would have found a real adversarial point. rbx keeps the per-stage rule (every
stage attacks every point the majority still calls robust, as for a deterministic model) and reports the
measured size of the difference: ``benchmarks/recheck_direction.py``, results/randomized.md. This is the evaluation side of AutoAttack's ``rand`` version (Croce & Hein, ICML 2020: APGD-CE and
APGD-DLR with EOT over 20 draws against randomized defenses), whose repository discusses that a single
pass at the end of the attack over- or under-counts successes on randomized defenses
(https://github.com/fra31/auto-attack/issues). The attacks themselves average gradients over draws with
``eot=K`` (:class:`robustbench_ext.attack.base.AttackContext`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ..attack.cascade import LabelledAttack
from ..attack.threat import ThreatModel
from ..runtime import check_seed, stream_seed
from ..errors import RbxError

#: Default number of fresh passes per re-check (odd: a strict majority always exists).
DEFAULT_DRAWS = 11
#: The rule as the record states it.
RULE = "broken (clean: misclassified) iff misclassified in a strict majority of R fresh forward passes"


@dataclass(frozen=True)
class Draws:
    """The re-check setting of a run on a randomized model: ``r`` passes per point, seeded by ``seed``.

    ``source``: why the run re-checks (``declared``: the user said the model is randomized; ``detected``:
    the determinism pre-check found two passes that differ).
    """

    r: int = DEFAULT_DRAWS
    seed: int = 0
    source: str = "declared"

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise RbxError(f"draws must be a positive integer (fresh forward passes per re-check), got {self.r!r}")
        check_seed(self.seed, "draw seed")  # distinct seeds, distinct draws: nothing outside [0, 2**32) is cut down

    def describe(self) -> dict[str, Any]:
        """The record's ``draws`` block."""
        return {"r": self.r, "seed": self.seed, "rule": RULE, "source": self.source}


@torch.no_grad()
def wrong_counts(net: nn.Module, x: Tensor, y: Tensor, r: int, seed: int) -> Tensor:
    """``[N]`` int64: in how many of ``r`` fresh passes ``net`` misclassifies each row of ``x`` ``[N, ...]``.

    torch's global RNG (CPU, and the CUDA device of ``x``) is forked and seeded by ``seed`` for the ``r``
    passes, so the draws are reproducible and the caller's random stream is unchanged afterwards.
    """
    devices = [x.device] if x.device.type == "cuda" else []
    wrong = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        for _ in range(r):
            wrong += (net(x).argmax(1) != y).long()
    return wrong


def majority_wrong(net: nn.Module, x: Tensor, y: Tensor, r: int, seed: int) -> Tensor:
    """``[N]`` bool: misclassified in a strict majority of ``r`` seeded fresh passes (:func:`wrong_counts`)."""
    return 2 * wrong_counts(net, x, y, r, seed) > r


def batch_seed(draws: Draws, *key: Any) -> int:
    """The draws' seed for one re-check (a stage and batch, or the clean pass), from the run's draw seed."""
    return stream_seed(draws.seed, "draws", *key)


def majority_min_norm(net: nn.Module, x: Tensor, y: Tensor, x_min: Tensor, threat: ThreatModel, r: int,
                      seed: int) -> Tensor:
    """``[N]`` float64: ``||x_min - x||`` (``threat``'s norm) where ``x_min`` ``[N, ...]`` is misclassified in a
    strict majority of ``r`` seeded fresh passes, else inf: a minimum-norm attack's closest points judged by the
    rule of the fixed-eps flags (a point one lucky pass misclassifies does not count; one the single pass
    missed but most draws misclassify does)."""
    x_min = x_min.to(x.device, torch.float32)
    norms = threat.geometry.norm_of(x_min.double() - x.double())
    wrong = majority_wrong(net, x_min, y, r, seed)
    return torch.where(wrong, norms, torch.full_like(norms, math.inf))


def majority_cascade(stages: Sequence[LabelledAttack], net: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, *,
                     seeds: Sequence[int], draws: "Draws", key: Sequence[int]) -> Tensor:
    """``[N]`` bool: left robust by ``stages`` run one after another on the points still robust, each stage's
    returned points judged by majority over ``draws.r`` fresh passes (the per-stage rule of the module
    docstring, as the runner's executor applies it). ``seeds``: one attack seed per stage; ``key``: the
    draws' seed key of this batch (stage position appended). Every point of ``x`` is attacked (pass only
    clean-correct points)."""
    robust = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    for j, (stage, seed) in enumerate(zip(stages, seeds)):
        idx = robust.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        res = stage.attack(net, x[idx], y[idx], threat, seed=seed)
        robust[idx[majority_wrong(net, res.x_adv, y[idx], draws.r, batch_seed(draws, *key, j))]] = False
    return robust
