"""DeepFool (Moosavi-Dezfooli, Fawzi & Frossard, "DeepFool: a simple and accurate method to fool deep neural
networks", CVPR 2016), for Linf and L2: a minimum-norm attack.

At each step, for the ``candidates - 1`` classes k ranked highest by the clean logits (the label
excluded), the classifier is linearized: f_k = z_k - z_y, w_k = grad f_k. The closest linearized
boundary is the k minimizing |f_k| / ||w_k||_* (the dual norm), and the step reaching it is
r = (|f_k| + 1e-4) / ||w_k||_* * u_k, with u_k the unit steepest-ascent direction of w_k in the threat
model's norm (sign for Linf, normalized for L2; so <w_k, u_k> = ||w_k||_*). Steps accumulate, and the
iterate is x + (1 + overshoot) * sum r, clipped to the box. A point stops at its first misclassified
iterate. Defaults as in the paper and Foolbox: overshoot 0.02, 50 steps, 10 candidates. The search
ignores the threat model's eps (:mod:`robustbench_ext.attack.min_norm` fits the result to it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from robustbench_ext.attack.base import AttackContext, require_positive_ints
from robustbench_ext.errors import RbxError
from robustbench_ext.attack.min_norm import MinNormAttack
from robustbench_ext.registry import ATTACKS


@ATTACKS.register("deepfool", summary="DeepFool: steps to the closest linearized boundary (Moosavi-Dezfooli et al. 2016); reports minimal norms")
@dataclass(eq=False)
class DeepFool(MinNormAttack):
    """DeepFool over the top ``candidates`` classes (see the module docstring)."""

    name: ClassVar[str] = "deepfool"
    norms: ClassVar[tuple[str, ...]] = ("Linf", "L2")
    smoke_params: ClassVar[dict] = {"steps": 20, "candidates": 4}

    steps: int = 50
    candidates: int = 10
    overshoot: float = 0.02

    def __post_init__(self) -> None:
        super().__post_init__()
        require_positive_ints(self, "steps", "candidates")
        if self.candidates < 2:
            raise RbxError(f"attack 'deepfool': candidates must be >= 2 (the label and at least one other class), got {self.candidates}")
        if not self.overshoot >= 0:
            raise RbxError(f"attack 'deepfool': overshoot must be >= 0, got {self.overshoot!r}")

    def search(self, ctx: AttackContext, x: Tensor, y: Tensor) -> Tensor:
        geom = ctx.geometry
        logits = ctx.logits(x)
        k = min(self.candidates, logits.shape[1]) - 1
        others = logits.scatter(1, y[:, None], float("-inf")).topk(k, dim=1).indices  # [N, k], best first
        out = x.clone()
        total = torch.zeros_like(x)  # the accumulated step, without overshoot
        idx = torch.arange(x.shape[0], device=x.device)  # points still being attacked
        xk = x.clone()
        for step in range(self.steps + 1):
            yi, oi = y[idx], others[idx]
            if step == self.steps:  # the last iterate: evaluate only
                adv = ctx.logits(xk).argmax(1) != yi
                out[idx[adv]] = xk[adv]
                break
            logits, f, grads = ctx.value_and_grads(xk, lambda z: z.gather(1, oi) - z.gather(1, yi[:, None]))
            ctx.report((step + 1) / (self.steps + 1))
            adv = logits.argmax(1) != yi
            out[idx[adv]] = xk[adv]
            keep = ~adv
            if not bool(keep.any()):
                break
            idx, f, grads = idx[keep], f[keep], grads[:, keep]
            dual = torch.stack([geom.dual_norm_of(g) for g in grads], 1)  # [n, k]
            dist = f.abs() / (dual + 1e-8)
            j = dist.argmin(1)
            rows = torch.arange(idx.numel(), device=x.device)
            w = grads[j, rows]
            r = (dist[rows, j] + 1e-4).reshape(-1, *([1] * (x.ndim - 1))) * geom.step_direction(w)
            total[idx] += r
            xk = (x[idx] + (1 + self.overshoot) * total[idx]).clamp(0.0, 1.0)
        return out
