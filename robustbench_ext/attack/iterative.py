"""The shared first-order loop (Foolbox 3's ``gradient_descent_base.py``): PGD, APGD, PMA, MD and the
training adversaries differ only in hooks.

:class:`IterativeAttack` runs :meth:`~IterativeAttack.segments` (restarts, target classes, decomposition
rounds, large-eps stages); in each it evaluates the objective and its input gradient, lets
:meth:`~IterativeAttack.checkpoint` send samples back to their best point, moves along the threat model's
steepest-ascent direction with optional heavy-ball momentum, and projects onto ball ∩ box. All per-norm
math comes from the threat model's :class:`~robustbench_ext.attack.geometry.Geometry`.
"""

from __future__ import annotations

import functools
import math
from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from .base import Attack, AttackContext, require_positive_ints
from ..errors import RbxError
from .geometry import DEFAULT_L1_SPARSITY, Geometry


def madry_step(rel_step_size: float | None, steps: int, eps: float) -> float:
    """PGD's step length: ``rel_step_size * eps``, by default Madry et al.'s ``2.5 * eps / steps``."""
    return (rel_step_size if rel_step_size is not None else 2.5 / steps) * eps


@dataclass(frozen=True)
class Segment:
    """One optimization segment of an :class:`IterativeAttack` over the points not yet fooled: a restart, a
    target class, a decomposition round or a large-eps stage.

    ``restart``: which restart it belongs to; ``round``: PMA's decomposition round; ``target_rank``:
    for targeted attacks, 0 = the most likely wrong class; ``eps_scale`` > 1: a large-eps warm-up stage
    whose fooled points do not count (Croce & Hein 2021); ``warm_start``: start from the previous
    segment's best point (projected onto this pass's ball) instead of a fresh start.
    """

    steps: int
    restart: int = 0
    round: int = 0
    target_rank: int | None = None
    eps_scale: float = 1.0
    warm_start: bool = False

    @property
    def counts(self) -> bool:
        """Whether points fooled in this segment are adversarial examples under the real eps."""
        return self.eps_scale == 1.0


@dataclass
class Track:
    """Per-sample best point of the running segment (highest objective), as checkpoint hooks see it."""

    loss: Tensor
    x: Tensor
    grad: Tensor | None  # None when the attack has no checkpoint hook (nothing reads it)


def _compact(keep: Tensor, *tensors: Tensor) -> list[Tensor]:
    return [t[keep] for t in tensors]


@dataclass(eq=False)
class IterativeAttack(Attack):
    """The shared first-order loop. Subclasses implement :meth:`objective` and :meth:`step_size`.

    Per segment (:meth:`segments`), only points not yet fooled are attacked; in a segment that counts, a
    point is frozen at the first iterate the model misclassifies -- as its logits without gradient
    tracking say, the values the contract verifies -- and costs nothing more (early
    stop; ``early_stop=False``, for training, keeps ascending and returns the highest-objective point). Each step evaluates the objective and its gradient, lets :meth:`checkpoint` send samples
    back to their best point, then moves ``step_size`` along the geometry's steepest-ascent
    direction, with heavy-ball :meth:`momentum`, and projects onto ball ∩ box. Points never fooled
    return their highest-objective point.

    With ``eot`` = K > 1 (for randomized models) every gradient, loss and logit the loop reads is the mean
    over K passes (:meth:`AttackContext.value_and_grad`, :meth:`AttackContext.value`): the best point,
    the checkpoints' decisions and the early stop follow the K-draw mean; a point is frozen when the mean
    logits misclassify it and one fresh pass confirms it (the runner's re-checks over draws then judge it
    by majority).
    """

    steps: int = 10
    restarts: int = 1
    random_start: bool = True
    l1_sparsity: float = DEFAULT_L1_SPARSITY
    #: Evaluation: freeze a point at the first iterate that fools the model (and stop paying for it).
    #: Training: False, keep ascending and return every point's highest-objective iterate.
    early_stop: bool = True
    #: Whether :meth:`checkpoint` reads ``best.grad`` (the loop keeps the best point's gradient only then).
    needs_best_grad: ClassVar[bool] = False

    def __post_init__(self) -> None:
        super().__post_init__()
        require_positive_ints(self, "steps", "restarts")
        if self.restarts > 1 and not self.random_start:
            raise RbxError(f"attack '{self.name}': restarts > 1 need random_start=true (else every restart is the same)")
        if not 0 < self.l1_sparsity <= 1:
            raise RbxError(f"attack '{self.name}': l1_sparsity must be in (0, 1], got {self.l1_sparsity!r}")

    # ---- hooks -------------------------------------------------------------------------------------
    def segments(self) -> list[Segment]:
        """The optimization segments, in order (default: one per restart)."""
        return [Segment(self.steps, restart=r) for r in range(self.restarts)]

    def start(self, ctx: AttackContext, x0: Tensor, eps: float, p: Segment) -> Tensor:
        """Starting point of a fresh segment (default: uniform in ball ∩ box, or the clean point)."""
        if not self.random_start:
            return x0.clone()
        return ctx.per_sample(x0, lambda x, g: ctx.geometry.random_init(x, eps, g))

    def begin(self, ctx: AttackContext, x0: Tensor, y0: Tensor, x_start: Tensor, eps: float, p: Segment) -> dict[str, Any]:
        """Per-segment state; tensors with first dimension N are compacted with the points."""
        return {}

    @abstractmethod
    def objective(self, logits: Tensor, y: Tensor, step: int, state: dict[str, Any], p: Segment) -> Tensor:
        """Per-sample objective ``[N]`` to maximize at ``step`` (0-based)."""

    @abstractmethod
    def step_size(self, step: int, eps: float, state: dict[str, Any], p: Segment) -> float | Tensor:
        """Step length at ``step`` in the threat model's norm: a float or a per-sample ``[N]`` tensor."""

    def momentum(self, geometry: Geometry) -> float:
        """Weight of the previous displacement in the update (0: plain projected steps)."""
        return 0.0

    def sparsity(self, state: dict[str, Any]) -> float | Tensor:
        """Fraction of coordinates an L1 step moves (float or per-sample ``[N]``)."""
        return self.l1_sparsity

    def checkpoint(self, step: int, loss: Tensor, state: dict[str, Any], p: Segment, best: Track, x0: Tensor) -> Tensor | None:
        """After evaluating ``step``: a ``[N]`` bool mask of samples to send back to their best point, or None."""
        return None

    # ---- the loop ----------------------------------------------------------------------------------
    def run(self, ctx: AttackContext, x: Tensor, y: Tensor) -> Tensor:
        geom, n = ctx.geometry, x.shape[0]
        out = x.clone()
        out_loss = torch.full((n,), -math.inf, device=x.device)
        fooled = torch.zeros(n, dtype=torch.bool, device=x.device)
        warm: Tensor | None = None  # previous segment's best points (full size), for warm starts
        # Only attacks that read the best point's gradient (APGD's checkpoints) pay for keeping it.
        keep_grad = self.needs_best_grad
        segments = self.segments()
        total_steps, steps_done = max(sum(p.steps for p in segments), 1), 0
        for p in segments:
            idx = (~fooled).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            eps = ctx.eps * p.eps_scale
            x0, y0 = x[idx], y[idx]
            ctx.rows = idx  # whose random start the next draw is (per-sample seeds)
            xk = geom.project(x0, warm[idx], eps) if (p.warm_start and warm is not None) else self.start(ctx, x0, eps, p)
            state = self.begin(ctx, x0, y0, xk, eps, p)
            m = self.momentum(geom)
            x_prev = xk
            best = Track(torch.full((idx.numel(),), -math.inf, device=x.device), xk.clone(),
                         torch.zeros_like(xk) if keep_grad else None)
            for step in range(p.steps):
                logits, loss, grad = ctx.value_and_grad(xk, functools.partial(self.objective, y=y0, step=step, state=state, p=p))
                ctx.record_loss(loss)
                ctx.report((steps_done + step + 1) / total_steps)
                if p.counts and self.early_stop:
                    hit = logits.argmax(1) != y0
                    if hit.any():
                        # A hit must be one the contract's verification confirms: the model's logits without
                        # gradient tracking. In gradient mode a model may return other values (a straight-
                        # through surrogate, a different kernel), and a point frozen on such a value would be
                        # verified robust yet never attacked again.
                        cand = hit.nonzero().squeeze(1)
                        hit[cand] = ctx.logits(xk[cand]).argmax(1) != y0[cand]
                    if hit.any():  # freeze fooled points where they were fooled; spend nothing more on them
                        out[idx[hit]] = xk[hit]
                        fooled[idx[hit]] = True
                        keep, m_keep = ~hit, hit.shape[0]
                        idx, x0, y0, xk, x_prev, grad, loss = _compact(keep, idx, x0, y0, xk, x_prev, grad, loss)
                        best = Track(best.loss[keep], best.x[keep], None if best.grad is None else best.grad[keep])
                        state = {k: (v[keep] if isinstance(v, Tensor) and v.ndim and v.shape[0] == m_keep else v)
                                 for k, v in state.items()}
                        if idx.numel() == 0:
                            break
                better = loss > best.loss
                best.loss = torch.where(better, loss, best.loss)
                best.x[better] = xk[better]  # masked copy: measured faster than torch.where on CPU
                if best.grad is not None:
                    best.grad[better] = grad[better]
                back = self.checkpoint(step, loss, state, p, best, x0)
                if back is not None and back.any():
                    xk = torch.where(_bcast(back, xk), best.x, xk)
                    grad = torch.where(_bcast(back, grad), best.grad, grad)
                eta = self.step_size(step, eps, state, p)
                if isinstance(eta, Tensor):
                    eta = _bcast(eta, xk)
                direction = geom.step_direction(grad, xk, sparsity=self.sparsity(state))
                z = geom.project(x0, xk + eta * direction, eps)
                if m and step > 0:
                    z = geom.project(x0, xk + (1 - m) * (z - xk) + m * (xk - x_prev), eps)
                x_prev, xk = xk, z
            steps_done += p.steps
            if idx.numel() == 0:
                continue
            # The last iterate has not been evaluated yet.
            logits, loss = ctx.value(xk, functools.partial(self.objective, y=y0, step=p.steps, state=state, p=p))
            loss = loss.float()
            better = loss > best.loss
            best.loss = torch.where(better, loss, best.loss)
            best.x[better] = xk[better]
            if p.counts:
                hit = (logits.argmax(1) != y0) if self.early_stop else torch.zeros_like(y0, dtype=torch.bool)
                out[idx[hit]] = xk[hit]
                fooled[idx[hit]] = True
                keep = ~hit & (best.loss > out_loss[idx])
                out[idx[keep]] = best.x[keep]
                out_loss[idx[keep]] = best.loss[keep]
            warm = x.clone() if warm is None else warm
            warm[idx] = best.x
        return out


def _bcast(v: Tensor, like: Tensor) -> Tensor:
    """A per-sample ``[N]`` tensor shaped to broadcast against ``[N, ...]``."""
    return v.reshape(-1, *([1] * (like.ndim - 1)))
