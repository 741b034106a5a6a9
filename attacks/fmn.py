"""FMN: the fast minimum-norm attack (Pintor, Roli, Brendel & Biggio, "Fast Minimum-norm Adversarial Attacks
through Adaptive Norm Constraints", NeurIPS 2021), for L1, L2 and Linf.

Each step alternates a step on the norm constraint and a step on the loss, starting from the clean point
with eps = inf:

1. at the current point x + delta, evaluate the logit margin L = max_{j!=y} z_j - z_y (> 0: misclassified)
   and its gradient g; keep the smallest-norm misclassified point seen;
2. update the radius: if misclassified, eps <- min(eps * (1 - gamma), best norm) (shrink toward the
   boundary); else, once some adversarial point was found, eps <- eps * (1 + gamma) (grow back); else,
   eps <- ||delta|| + |L| / ||g||_* (the linearized distance to the boundary, in the dual norm). eps
   never exceeds the norm of the largest perturbation the box allows;
3. delta <- projection onto the eps-ball ∩ box of delta + alpha * g / ||g||_2.

The step alpha and the radius factor gamma decay by cosine annealing from ``alpha_init`` (default 1) to
``alpha_final`` (default alpha_init / 100) and from ``gamma_init`` = 0.05 to ``gamma_final`` = 0.001, the
paper's defaults. All per-norm math (norm, dual norm, exact projection onto ball ∩ box) is the
geometry's; the step itself is Euclidean for every norm, as in the paper. The search ignores the
threat model's eps (:mod:`robustbench_ext.attack.min_norm` fits the result to it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from robustbench_ext.attack.base import AttackContext, require_positive_ints
from robustbench_ext.errors import RbxError
from robustbench_ext.attack.geometry import get_geometry
from robustbench_ext.attack.losses import logit_margin
from robustbench_ext.attack.min_norm import MinNormAttack
from robustbench_ext.registry import ATTACKS

_EUCLIDEAN = get_geometry("L2")


def cosine_anneal(start: float, end: float, step: int, steps: int) -> float:
    """``end + (start - end) * (1 + cos(pi * step / steps)) / 2``: ``start`` at step 0, toward ``end`` at ``steps``."""
    return end + (start - end) * (1 + math.cos(math.pi * step / steps)) / 2


@ATTACKS.register("fmn", summary="FMN: fast minimum-norm attack, adaptive eps-ball (Pintor et al. 2021); reports minimal norms")
@dataclass(eq=False)
class FMN(MinNormAttack):
    """Fast minimum-norm attack (see the module docstring)."""

    name: ClassVar[str] = "fmn"
    smoke_params: ClassVar[dict] = {"steps": 20}

    steps: int = 100
    alpha_init: float = 1.0
    alpha_final: float | None = None  # None: alpha_init / 100
    gamma_init: float = 0.05
    gamma_final: float = 0.001

    def __post_init__(self) -> None:
        super().__post_init__()
        require_positive_ints(self, "steps")
        if not self.alpha_init > 0 or (self.alpha_final is not None and not self.alpha_final > 0):
            raise RbxError(f"attack 'fmn': step sizes must be > 0, got alpha_init={self.alpha_init!r}, alpha_final={self.alpha_final!r}")
        if not (0 <= self.gamma_final <= self.gamma_init < 1):
            raise RbxError(f"attack 'fmn': need 0 <= gamma_final <= gamma_init < 1, got {self.gamma_final!r}, {self.gamma_init!r}")

    def search(self, ctx: AttackContext, x: Tensor, y: Tensor) -> Tensor:
        geom, n = ctx.geometry, x.shape[0]
        alpha_final = self.alpha_final if self.alpha_final is not None else self.alpha_init / 100
        worst = geom.norm_of(torch.maximum(x, 1 - x))  # the largest perturbation the box allows
        eps = torch.full((n,), math.inf, device=x.device)
        best_norm, best = worst.clone(), x.clone()
        found = torch.zeros(n, dtype=torch.bool, device=x.device)
        xk = x.clone()
        for step in range(self.steps):
            alpha = cosine_anneal(self.alpha_init, alpha_final, step, self.steps)
            gamma = cosine_anneal(self.gamma_init, self.gamma_final, step, self.steps)
            logits, loss, grad = ctx.value_and_grad(xk, lambda z: logit_margin(z, y))
            ctx.record_loss(loss)
            ctx.report((step + 1) / (self.steps + 1))
            norm = geom.norm_of(xk - x)
            adv = logits.argmax(1) != y
            smaller = adv & (norm < best_norm)
            best_norm = torch.where(smaller, norm, best_norm)
            best[smaller] = xk[smaller]
            found |= adv
            to_boundary = loss.abs() / geom.dual_norm_of(grad).clamp_min(1e-12)
            eps = torch.where(adv, torch.minimum(eps * (1 - gamma), best_norm),
                              torch.where(found, eps * (1 + gamma), norm + to_boundary))
            eps = torch.minimum(eps, worst)
            xk = geom.project(x, xk + alpha * _EUCLIDEAN.step_direction(grad), eps)
        # The last iterate has not been evaluated yet.
        adv = ctx.logits(xk).argmax(1) != y
        smaller = adv & (geom.norm_of(xk - x) < best_norm)
        best[smaller] = xk[smaller]
        return best
