"""Decision-based (label-only) attacks: they read only the model's predicted label, never a score or a
gradient, so they run on models that return labels only (``rbx run --label-only``, ``labels:MODEL``).

- ``rays``: RayS (Chen & Gu, "RayS: a ray searching method for hard-label adversarial attack", KDD 2020), Linf.
  It searches over rays ``x + r * s`` with sign vectors ``s`` in {-1, +1}^D for the one whose decision boundary
  is nearest: starting from ``s = 1``, it flips the signs of one block of coordinates at a time (blocks halve
  hierarchically: the whole input, then halves, quarters, ...), and keeps the flip when the boundary along the
  new ray is nearer. One query checks whether the new ray is adversarial at the best radius so far; only then a
  binary search (to ``tol`` = 1e-3 on the length along the unit ray ``s / ||s||_2``, as the authors' code) finds
  its boundary. The search is deterministic. A point is done when its best Linf radius is at most eps (the
  authors' code keeps searching to the query limit; the points broken at eps are the same).
- ``hsj``: HopSkipJump (Chen, Jordan & Wainwright, "HopSkipJumpAttack: a query-efficient decision-based attack",
  IEEE S&P 2020), L2 and Linf. From an adversarial start (uniform noise, then a binary search toward ``x``) it
  repeats (the start: uniform noise as the authors', alternating with random vertices of the box, which
  models that give all uniform noise one class often flip on): estimate the boundary's normal at the current boundary point by Monte-Carlo over ``100 sqrt(t)``
  random directions (the sign of each decision, baseline-corrected), step along it (sign of it for Linf) with a
  geometrically shrinking step ``dist / sqrt(t)`` until adversarial, and binary-search back to the boundary
  toward ``x`` (L2: along the segment; Linf: by clipping to a shrinking Linf ball), to precision
  ``theta = gamma / d^1.5`` (L2) or ``gamma / d^2`` (Linf). A point is done when its distance is at most eps.

Both stop a point at ``queries`` model queries (forward passes of that point; the record counts them) and
return the adversarial point when it lies within eps, else its projection onto the eps-ball.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from robustbench_ext.attack.base import Attack, AttackContext, require_positive_ints
from robustbench_ext.errors import RbxError
from robustbench_ext.registry import ATTACKS

LABEL_ONLY_NOTE = "it is a decision-based attack: it reads predicted labels only and takes no gradient to average"


class _Oracle:
    """The attack's only view of the model: is each input misclassified? Counts queries per sample."""

    def __init__(self, ctx: AttackContext, y: Tensor, chunk: int = 2048) -> None:
        self.ctx, self.y, self.chunk = ctx, y, chunk
        self.queries = torch.zeros(y.shape[0], dtype=torch.long, device=y.device)

    @torch.no_grad()
    def __call__(self, x: Tensor, rows: Tensor) -> Tensor:
        """``[M]`` bool: ``x`` ``[M, ...]`` (clipped to the box) is misclassified, for the samples ``rows`` ``[M]``."""
        if rows.numel() == 0:
            return torch.zeros(0, dtype=torch.bool, device=x.device)
        x = x.clamp(0.0, 1.0)
        labels = torch.cat([self.ctx.model(x[i:i + self.chunk]).argmax(1) for i in range(0, x.shape[0], self.chunk)])
        self.queries.index_add_(0, rows, torch.ones_like(rows))
        return labels != self.y[rows]


def _bcast(v: Tensor, like: Tensor) -> Tensor:
    return v.reshape(-1, *([1] * (like.ndim - 1)))


@dataclass(eq=False)
class DecisionAttack(Attack):
    """Common ground of decision-based attacks: label-only, black-box, a per-point query budget."""

    eot_note: ClassVar[str | None] = LABEL_ONLY_NOTE
    black_box: ClassVar[bool] = True
    #: Reads nothing but the predicted label: allowed on label-only models.
    label_only: ClassVar[bool] = True

    queries: int = 10000

    def __post_init__(self) -> None:
        require_positive_ints(self, "queries")

    def run(self, ctx: AttackContext, x: Tensor, y: Tensor) -> Tensor:
        oracle = _Oracle(ctx, y)
        rows = torch.arange(x.shape[0], device=x.device)
        wrong = oracle(x, rows)
        out = x.clone()
        idx = (~wrong).nonzero().squeeze(1)
        if idx.numel():
            sub = _Oracle(ctx, y[idx])
            sub.queries += 1
            out[idx] = self.search(ctx, x[idx], sub)
        return out

    def search(self, ctx: AttackContext, x: Tensor, oracle: _Oracle) -> Tensor:
        """Points ``[N, ...]`` in ball ∩ box for the correctly classified ``x``, asking only ``oracle``."""
        raise NotImplementedError


@ATTACKS.register("rays", summary="RayS (Chen & Gu 2020): hard-label ray search, Linf; label-only, no gradients")
@dataclass(eq=False)
class RayS(DecisionAttack):
    """RayS (see the module docstring)."""

    name: ClassVar[str] = "rays"
    norms: ClassVar[tuple[str, ...]] = ("Linf",)
    smoke_params: ClassVar[dict] = {"queries": 400}

    #: Binary-search precision on the ray's length ``d`` (the point is ``x + d * s / ||s||_2``), as the authors'
    #: code has it: 1e-3 in those units, 1e-3 / sqrt(D) in Linf.
    tol: float = 1e-3

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.tol > 0:
            raise RbxError(f"attack 'rays': tol must be > 0, got {self.tol!r}")

    def search(self, ctx: AttackContext, x: Tensor, oracle: _Oracle) -> Tensor:
        n, eps = x.shape[0], float(ctx.eps)
        dim = x[0].numel()
        xf = x.reshape(n, dim)
        sgn = torch.ones_like(xf)
        best_d = torch.full((n,), math.inf, device=x.device)  # ray length of the nearest boundary found
        scale = math.sqrt(dim)  # ||s||_2 of a sign vector: the Linf radius of x + d s / ||s|| is d / sqrt(D)
        level, block = 0, 0
        while True:
            live = (best_d / scale > eps) & (oracle.queries < self.queries)
            if not bool(live.any()):
                break
            size = math.ceil(dim / 2 ** level)
            start, end = block * size, min(dim, (block + 1) * size)
            attempt = sgn.clone()
            attempt[:, start:end] *= -1
            self._binary_search(xf, attempt, live, best_d, sgn, oracle, x.shape)
            block += 1
            if block == 2 ** level or end == dim:
                level, block = level + 1, 0
            done = float((oracle.queries.float().clamp_max(self.queries) / self.queries).mean())
            ctx.report(max(done, float((best_d / scale <= eps).float().mean())))
        radius = torch.minimum(best_d / scale, torch.full_like(best_d, eps)).clamp_max(1.0)
        return (xf + radius[:, None] * sgn).clamp(0.0, 1.0).reshape(x.shape)

    def _binary_search(self, xf: Tensor, attempt: Tensor, live: Tensor, best_d: Tensor, sgn: Tensor,
                       oracle: _Oracle, shape) -> None:
        unit = attempt / attempt.norm(dim=1, keepdim=True)
        point = lambda d, rows: (xf[rows] + d[:, None] * unit[rows]).reshape(-1, *shape[1:])  # noqa: E731
        rows = live.nonzero().squeeze(1)
        # One query: is the new ray adversarial at the best length so far (at the box's corner if none yet)?
        ok = oracle(point(best_d[rows], rows), rows)
        rows = rows[ok]
        hi = torch.minimum(best_d[rows], attempt[rows].norm(dim=1))
        lo = torch.zeros_like(hi)
        while rows.numel():
            active = (hi - lo > self.tol) & (oracle.queries[rows] < self.queries)
            if not bool(active.any()):
                break
            r_a = rows[active]
            mid = (lo[active] + hi[active]) / 2
            adv = oracle(point(mid, r_a), r_a)
            hi[active] = torch.where(adv, mid, hi[active])
            lo[active] = torch.where(adv, lo[active], mid)
        better = hi < best_d[rows]
        upd = rows[better]
        best_d[upd] = hi[better]
        sgn[upd] = attempt[upd]


@ATTACKS.register("hsj", summary="HopSkipJump (Chen et al. 2020): decision-based gradient estimation, L2/Linf; label-only, no gradients")
@dataclass(eq=False)
class HopSkipJump(DecisionAttack):
    """HopSkipJump (see the module docstring); ``steps`` iterations at most."""

    name: ClassVar[str] = "hsj"
    norms: ClassVar[tuple[str, ...]] = ("L2", "Linf")
    smoke_params: ClassVar[dict] = {"steps": 6, "queries": 3000, "init_evals": 20}

    steps: int = 40
    init_evals: int = 100
    max_evals: int = 10000
    gamma: float = 1.0
    init_tries: int = 100

    def __post_init__(self) -> None:
        super().__post_init__()
        require_positive_ints(self, "steps", "init_evals", "max_evals", "init_tries")
        if not self.gamma > 0:
            raise RbxError(f"attack 'hsj': gamma must be > 0, got {self.gamma!r}")

    def _dist(self, linf: bool, a: Tensor, b: Tensor) -> Tensor:
        d = (a - b).flatten(1)
        return d.abs().amax(1) if linf else d.norm(dim=1)

    def _blend(self, linf: bool, x: Tensor, x_adv: Tensor, alpha: Tensor) -> Tensor:
        """HSJ's projection: toward ``x`` by ``alpha`` (L2: the segment; Linf: clip to the alpha-ball)."""
        a = _bcast(alpha, x)
        if linf:
            return torch.minimum(torch.maximum(x_adv, x - a), x + a)
        return (1 - a) * x + a * x_adv

    def _boundary(self, linf: bool, x: Tensor, x_adv: Tensor, rows: Tensor, oracle: _Oracle, theta: float) -> Tensor:
        """Binary search between ``x`` and the adversarial ``x_adv`` to the boundary (adversarial side)."""
        dist = self._dist(linf, x, x_adv)
        hi = dist.clone() if linf else torch.ones_like(dist)
        thr = torch.clamp_max(dist * theta, theta) if linf else torch.full_like(dist, theta)
        lo = torch.zeros_like(hi)
        while True:
            active = ((hi - lo) > thr) & (oracle.queries[rows] < self.queries)
            if not bool(active.any()):
                break
            mid = (hi[active] + lo[active]) / 2
            adv = oracle(self._blend(linf, x[active], x_adv[active], mid), rows[active])
            hi[active] = torch.where(adv, mid, hi[active])
            lo[active] = torch.where(adv, lo[active], mid)
        return self._blend(linf, x, x_adv, hi)

    def search(self, ctx: AttackContext, x: Tensor, oracle: _Oracle) -> Tensor:
        n, eps = x.shape[0], float(ctx.eps)
        linf = ctx.threat.norm == "Linf"
        d = x[0].numel()
        theta = self.gamma / (d ** 2) if linf else self.gamma / (d * math.sqrt(d))
        g = ctx.generator
        rows_all = torch.arange(n, device=x.device)
        # Start: uniform noise until misclassified, then toward x.
        x_adv = x.clone()
        found = torch.zeros(n, dtype=torch.bool, device=x.device)
        for i in range(self.init_tries):
            todo = (~found).nonzero().squeeze(1)
            if todo.numel() == 0:
                break
            noise = torch.rand(x[todo].shape, generator=g, device=x.device, dtype=x.dtype)
            if i % 2:  # every other try a vertex of the box: models that call all noise one class often flip on those
                noise = (noise > 0.5).to(x.dtype)
            ok = oracle(noise, todo)
            x_adv[todo[ok]] = noise[ok]
            found[todo[ok]] = True
        rows = found.nonzero().squeeze(1)
        if rows.numel():
            lo = torch.zeros(rows.numel(), device=x.device)
            hi = torch.ones_like(lo)
            while True:  # the initialization's blend search (to 0.001, as the authors')
                active = (hi - lo > 1e-3) & (oracle.queries[rows] < self.queries)
                if not bool(active.any()):
                    break
                mid = (hi[active] + lo[active]) / 2
                adv = oracle((1 - _bcast(mid, x)) * x[rows][active] + _bcast(mid, x) * x_adv[rows][active], rows[active])
                hi[active] = torch.where(adv, mid, hi[active])
                lo[active] = torch.where(adv, lo[active], mid)
            x_adv[rows] = (1 - _bcast(hi, x)) * x[rows] + _bcast(hi, x) * x_adv[rows]
            x_adv[rows] = self._boundary(linf, x[rows], x_adv[rows], rows, oracle, theta)
        dist = torch.where(found, self._dist(linf, x, x_adv), torch.full((n,), math.inf, device=x.device))
        for t in range(1, self.steps + 1):
            live = found & (dist > eps) & (oracle.queries < self.queries)
            rows = live.nonzero().squeeze(1)
            if rows.numel() == 0:
                break
            m = rows.numel()
            xa, x0, dr = x_adv[rows], x[rows], dist[rows]
            delta = torch.full_like(dr, 0.1) if t == 1 else (d * theta if linf else math.sqrt(d) * theta) * dr
            evals = int(min(self.init_evals * math.sqrt(t), self.max_evals))
            grad = self._gradient(xa, rows, delta, evals, linf, oracle, g)
            update = grad.sign() if linf else grad
            step = dr / math.sqrt(t)
            pending = torch.ones(m, dtype=torch.bool, device=x.device)
            for _ in range(30):  # geometric step search: halve until adversarial
                todo = pending & (oracle.queries[rows] < self.queries)
                if not bool(todo.any()):
                    break
                ok = oracle((xa[todo] + _bcast(step[todo], xa) * update[todo]).clamp(0.0, 1.0), rows[todo])
                pending[todo.nonzero().squeeze(1)[ok]] = False
                step = torch.where(todo & pending, step / 2, step)
            moved = ~pending
            if bool(moved.any()):
                r_m = rows[moved]
                cand = (xa[moved] + _bcast(step[moved], xa) * update[moved]).clamp(0.0, 1.0)
                cand = self._boundary(linf, x0[moved], cand, r_m, oracle, theta)
                new_d = self._dist(linf, x0[moved], cand)
                closer = new_d < dist[r_m]
                x_adv[r_m[closer]] = cand[closer]
                dist[r_m[closer]] = new_d[closer]
            ctx.report(t / self.steps)
        # Within eps: the point found; else its projection onto the eps-ball (ball ∩ box).
        inside = dist <= eps
        return torch.where(_bcast(inside, x), x_adv, ctx.geometry.project(x, x_adv, eps))

    def _gradient(self, xa: Tensor, rows: Tensor, delta: Tensor, evals: int, linf: bool, oracle: _Oracle,
                  g: torch.Generator, budget: int = 4096) -> Tensor:
        """Monte-Carlo estimate of the boundary normal at ``xa`` ``[M, ...]`` from ``evals`` decisions each
        (in chunks of samples, at most ``budget`` perturbed inputs in memory at once)."""
        per = max(budget // evals, 1)
        if xa.shape[0] > per:
            return torch.cat([self._gradient(xa[i:i + per], rows[i:i + per], delta[i:i + per], evals, linf, oracle, g, budget)
                              for i in range(0, xa.shape[0], per)])
        m = xa.shape[0]
        shape = (m, evals, *xa.shape[1:])
        rv = (torch.rand(shape, generator=g, device=xa.device) * 2 - 1) if linf else torch.randn(shape, generator=g, device=xa.device)
        rv = rv / rv.flatten(2).norm(dim=2).reshape(m, evals, *([1] * (xa.ndim - 1)))
        dl = delta.reshape(m, 1, *([1] * (xa.ndim - 1)))
        pert = (xa[:, None] + dl * rv).clamp(0.0, 1.0)
        rv = (pert - xa[:, None]) / dl
        dec = oracle(pert.reshape(m * evals, *xa.shape[1:]), rows.repeat_interleave(evals)).reshape(m, evals).float()
        fval = 2 * dec - 1
        mean = fval.mean(1, keepdim=True)
        centred = torch.where(mean.abs() == 1, mean.expand_as(fval), fval - mean)
        grad = (centred.reshape(m, evals, *([1] * (xa.ndim - 1))) * rv).mean(1)
        return grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).reshape(-1, *([1] * (xa.ndim - 1)))
