"""FAB, the fast adaptive boundary attack (Croce & Hein, "Minimally distorted adversarial examples with a
fast adaptive boundary attack", ICML 2020), untargeted and targeted, Linf / L2 / L1: rbx's own
minimum-norm implementation (it reports ``min_norm`` and feeds ``--curve`` like FMN).

Per step (paper, Sec. 3), at the iterate ``x1`` of a point ``x0`` with label ``y``:

1. linearize the decision boundary: for each class k != y (untargeted: the full Jacobian, K backward
   passes; targeted: one class, one pass) ``f_k = z_k - z_y`` and its input gradient ``g_k``; pick the class
   whose linearized boundary is closest, ``|f_k| / ||g_k||_*`` (dual norm);
2. project both ``x1`` and ``x0`` onto that hyperplane within the [0, 1] box with the smallest step in the
   threat model's norm (:meth:`~robustbench_ext.attack.geometry.Geometry.hyperplane_step`, exact): ``d1``, ``d2``;
3. step to a biased combination ``(x1 + eta d1)(1 - a) + (x0 + eta d2) a`` with ``a = ||d1|| / (||d1|| + ||d2||)``
   capped at ``alpha_max`` (extrapolation ``eta`` = 1.05), clipped to the box;
4. if the new point is misclassified, keep it when it is the closest so far, then pull it back toward
   ``x0`` by ``beta`` (0.9).

Restarts after the first start from ``x0 + 0.5 * r * u`` with ``u`` a random direction of unit norm, ``r`` the
point's best norm so far (``start_eps`` fixes it; pyautoattack uses the threat model's eps). The targeted
version (``fab-t``, AutoAttack's FAB-T) runs once per target among the ``n_targets`` most likely wrong classes
(ranked by the clean logits, 2nd to ``n_targets + 1``-th). Every run attacks every point and the closest
adversarial point over all runs is reported: unlike pyautoattack's fixed-eps FAB, which skips points already
broken at eps, the search never reads eps. With one restart FAB draws no random number, and it then follows
pyautoattack's ``FABAttack_PT`` step for step (benchmarks/reference_compare.py compares them per sample).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from robustbench_ext.attack.base import AttackContext, require_positive_ints
from robustbench_ext.attack.min_norm import MinNormAttack
from robustbench_ext.errors import RbxError
from robustbench_ext.registry import ATTACKS

#: pyautoattack's radius of FAB's random starts when no eps is given (``DEFAULT_EPS_DICT_BY_NORM``).
DEFAULT_START = {"Linf": 0.3, "L2": 1.0, "L1": 5.0}


def _bcast(v: Tensor, like: Tensor) -> Tensor:
    return v.reshape(-1, *([1] * (like.ndim - 1)))


@ATTACKS.register("fab", summary="FAB: fast adaptive boundary attack (Croce & Hein 2020), Linf/L2/L1; reports minimal norms")
@dataclass(eq=False)
class FAB(MinNormAttack):
    """Untargeted FAB (see the module docstring): the Jacobian of every logit per step."""

    name: ClassVar[str] = "fab"
    smoke_params: ClassVar[dict] = {"steps": 10}
    targeted: ClassVar[bool] = False

    steps: int = 100
    restarts: int = 1
    alpha_max: float = 0.1
    eta: float = 1.05
    beta: float = 0.9
    #: Radius of the random starts of restarts > 0 (None: each point's best norm so far, else DEFAULT_START).
    start_eps: float | None = None

    def __post_init__(self) -> None:
        require_positive_ints(self, "steps", "restarts")
        if not 0 <= self.alpha_max <= 1:
            raise RbxError(f"attack '{self.name}': alpha_max must be in [0, 1], got {self.alpha_max!r}")
        if not self.eta >= 1:
            raise RbxError(f"attack '{self.name}': eta (overshoot) must be >= 1, got {self.eta!r}")
        if not 0 < self.beta <= 1:
            raise RbxError(f"attack '{self.name}': beta must be in (0, 1], got {self.beta!r}")
        if self.start_eps is not None and not self.start_eps > 0:
            raise RbxError(f"attack '{self.name}': start_eps must be > 0, got {self.start_eps!r}")

    def runs(self) -> list[tuple[int | None, int]]:
        """(target rank or None, restart) of each run, in order."""
        return [(None, r) for r in range(self.restarts)]

    def search(self, ctx: AttackContext, x: Tensor, y: Tensor) -> Tensor:
        geom = ctx.geometry
        best = x.clone()
        best_norm = torch.full((x.shape[0],), float("inf"), device=x.device)
        runs = self.runs()
        ranked = ctx.logits(x).sort(dim=-1)[1] if self.targeted else None  # ascending, as pyautoattack ranks
        for i, (rank, restart) in enumerate(runs):
            target = None if ranked is None else ranked[:, -(rank + 2)]
            radius = None
            if restart > 0:
                fallback = self.start_eps or DEFAULT_START[ctx.threat.norm]
                radius = torch.where(torch.isfinite(best_norm), best_norm, torch.full_like(best_norm, fallback)) \
                    if self.start_eps is None else torch.full_like(best_norm, self.start_eps)
            adv, norm = self._single_run(ctx, x, y, target, radius, ctx.sub_progress(i / len(runs), (i + 1) / len(runs)))
            better = norm < best_norm
            best[better] = adv[better]
            best_norm = torch.where(better, norm, best_norm)
        return best

    def _single_run(self, ctx: AttackContext, x0: Tensor, y: Tensor, target: Tensor | None, radius: Tensor | None,
                    progress) -> tuple[Tensor, Tensor]:
        geom = ctx.geometry
        n = x0.shape[0]
        u = torch.arange(n, device=x0.device)
        adv = x0.clone()
        res = torch.full((n,), float("inf"), device=x0.device)
        x1 = x0.clone()
        if radius is not None:
            direction = geom.random_direction(x0.shape, ctx.generator, x0.device, x0.dtype)
            x1 = (x0 + _bcast(radius, x0) * direction * 0.5).clamp(0.0, 1.0)
        for step in range(self.steps):
            if target is not None:
                _, f, g = ctx.value_and_grad(x1, lambda z: z[u, target] - z[u, y])
                df, dg = f[:, None], g[:, None]
            else:
                _, f, g = ctx.value_and_grads(x1, lambda z: z)  # logits [N, K], gradients [K, N, ...]
                g = g.transpose(0, 1)
                df = f - f[u, y][:, None]
                dg = g - g[u, y][:, None]
                df[u, y] = 1e10  # the label is no boundary
            k = df.shape[1]
            dual = geom.dual_norm_of(dg.reshape(n * k, *x0.shape[1:])).reshape(n, k)
            ind = (df.abs() / (1e-12 + dual)).min(dim=1)[1]
            w = dg[u, ind]
            b = -df[u, ind] + (w * x1).reshape(n, -1).sum(-1)
            d1 = geom.hyperplane_step(x1, w, b)
            d2 = geom.hyperplane_step(x0, w, b)
            a1 = geom.norm_of(d1).clamp_min(1e-8)
            a2 = geom.norm_of(d2).clamp_min(1e-8)
            alpha = _bcast((a1 / (a1 + a2)).clamp(0.0, self.alpha_max), x0)
            x1 = ((x1 + self.eta * d1) * (1 - alpha) + (x0 + d2 * self.eta) * alpha).clamp(0.0, 1.0)
            is_adv = ctx.logits(x1).argmax(1) != y
            if bool(is_adv.any()):
                t = geom.norm_of(x1 - x0)
                closer = is_adv & (t < res)
                adv[closer] = x1[closer]
                res = torch.where(closer, t, res)
                x1 = torch.where(_bcast(is_adv, x1), x0 + (x1 - x0) * self.beta, x1)
            if progress is not None:
                progress((step + 1) / self.steps)
        return adv, res


@ATTACKS.register("fab-t", summary="targeted FAB over the top-k wrong classes (AutoAttack's FAB-T); reports minimal norms")
@dataclass(eq=False)
class FABT(FAB):
    """Targeted FAB: one run per target among the ``n_targets`` most likely wrong classes, each one gradient per step."""

    name: ClassVar[str] = "fab-t"
    smoke_params: ClassVar[dict] = {"steps": 10, "n_targets": 2}
    targeted: ClassVar[bool] = True

    n_targets: int = 9

    def __post_init__(self) -> None:
        super().__post_init__()
        require_positive_ints(self, "n_targets")

    def fit(self, num_classes, input_shape, threat):
        if self.n_targets > num_classes - 1:
            return (dataclasses.replace(self, n_targets=num_classes - 1),
                    f"{self.name}: n_targets={self.n_targets} asked, the model has {num_classes} classes: "
                    f"ran with {num_classes - 1} (every other class)")
        return self, None

    def runs(self) -> list[tuple[int | None, int]]:
        return [(t, r) for t in range(self.n_targets) for r in range(self.restarts)]

    def search(self, ctx: AttackContext, x: Tensor, y: Tensor) -> Tensor:
        k = ctx.logits(x[:1]).shape[1]
        if self.n_targets > k - 1:
            raise RbxError(f"attack '{self.name}': n_targets={self.n_targets} but the model has {k} classes (at most {k - 1})")
        return super().search(ctx, x, y)
