"""Minimum-norm attacks (C&W, DeepFool, FMN): one search for the smallest adversarial perturbation,
usable both at a fixed eps and as a whole robust-accuracy-vs-eps curve.

A :class:`MinNormAttack` implements :meth:`MinNormAttack.search`, which looks for the closest
misclassified point of each (clean-correct) input without any radius. :meth:`MinNormAttack.run` then
fits the result to the threat model, so the fixed-eps contract holds unchanged:

- the search's points are reported in ``ctx.min_norm_points``; the base class
  (:meth:`robustbench_ext.attack.base.Attack.__call__`) verifies them with the model and returns their
  norms as ``AttackResult.min_norm`` (inf where no misclassified point was found, 0 where the clean
  input is already misclassified, which the search never sees);
- the returned candidate is that point itself when its norm is at most eps, else its projection
  onto the eps-ball ∩ box, which the contract then judges like any other candidate.

So for every eps, the points with ``min_norm <= eps`` are exactly broken by the fixed-eps run; the
fixed-eps run may break a few more (projections of farther adversarial points that stay
adversarial on the ball's surface). The search never reads eps, so one run gives the curve
(:func:`robustbench_ext.records.curves.robust_accuracy_curve`).
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from ..registry import ATTACKS
from .base import Attack, AttackContext


@dataclass(eq=False)
class MinNormAttack(Attack):
    """Base class of minimum-norm attacks; subclasses implement :meth:`search`."""

    minimum_norm: ClassVar[bool] = True

    @abstractmethod
    def search(self, ctx: AttackContext, x: Tensor, y: Tensor) -> Tensor:
        """Closest misclassified points ``[N, ...]`` found for the correctly classified ``x`` (any radius).

        Points must lie in the [0, 1] box; where nothing was found, return any non-adversarial point
        (e.g. ``x`` itself): the base class reads success from the model, never from the search.
        The search must not depend on ``ctx.eps`` (one run serves every radius).
        """

    def run(self, ctx: AttackContext, x: Tensor, y: Tensor) -> Tensor:
        geom = ctx.geometry
        correct = ctx.logits(x).argmax(1) == y
        x_min = x.clone()
        idx = correct.nonzero().squeeze(1)
        if idx.numel():
            x_min[idx] = self.search(ctx, x[idx], y[idx]).to(x_min.dtype)
        ctx.min_norm_points = x_min
        # The same float64 norm as the verification's, so `min_norm <= eps` <=> the point is returned as is.
        inside = geom.norm_of(x_min.double() - x.double()) <= ctx.eps
        if bool(inside.all()):
            return x_min.clone()
        out = geom.project(x, x_min, ctx.eps)
        out[inside] = x_min[inside]
        return out


def minimum_norm_attacks() -> list[str]:
    """The registered attacks that report minimal norms (``minimum_norm``): the ones ``--curve`` takes, read from
    the registry (a plugin that subclasses :class:`MinNormAttack` is listed the moment it registers)."""
    return [e.name for e in ATTACKS.entries() if getattr(e.factory, "minimum_norm", False)]
