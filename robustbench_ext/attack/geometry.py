"""Per-norm geometry: the only place in rbx where Linf, L2, L1 and L0 differ.

Every attack is written once against the :class:`Geometry` interface (Foolbox-style hooks):

- :meth:`Geometry.norm_of` -- the norm of a perturbation, per sample;
- :meth:`Geometry.dual_norm_of` -- the dual norm of a gradient, per sample (distances to a linearized
  decision boundary: DeepFool, FMN);
- :meth:`Geometry.project` -- the Euclidean projection onto the eps-ball intersected with the [0, 1] box;
- :meth:`Geometry.step_direction` -- the steepest-ascent direction of unit norm;
- :meth:`Geometry.random_init` -- a random point inside ball and box;
- :meth:`Geometry.tolerance` -- how far float32 rounding can push a projected point past eps.

Shapes: ``x`` and ``x_adv`` are ``[N, C, H, W]`` (any ``[N, ...]`` works) with values in [0, 1];
``eps`` is a float or a per-sample tensor ``[N]``. All maps are batched and differentiable-free
(call them on detached tensors).

The L2 and L1 projections are exact projections onto ball ∩ box, not "scale, then clip"
(which stays feasible but is not the closest point). Both reduce to a one-dimensional
monotone equation in a Lagrange multiplier whose solution is found exactly by sorting its
breakpoints; for L1 this is the box-constrained projection of Croce & Hein, "Mind the box:
l1-APGD for sparse adversarial attacks on image classifiers" (ICCV 2021), Sec. 3.

L0 (:class:`L0Geometry`) counts changed *units*: pixels (``L0``: the C channels of pixel (h, w) of an
``[N, C, H, W]`` input form one unit) or coordinates (``L0c``). Its projection onto the L0 ball ∩ box is
exact too: a unit kept changed costs ``||v_u - clip(v_u)||^2`` (the box projection of its wanted change
``v_u``), a unit reset costs ``||v_u||^2``, so the projection keeps the K units of largest *gain*
``||v_u||^2 - ||v_u - clip(v_u)||^2`` (not simply of largest clipped change: a coordinate clipped at the
face gains ``c (2 v - c)``, more than ``c^2``) and resets the others; tests/test_geometry.py checks it
against brute force over every support. L0 has no dual norm and no steepest-ascent step of a length
(its "norm" is a count): :meth:`L0Geometry.step_direction` is the L2-normalized gradient, the step of
PGD_0 (Croce & Hein, ICCV 2019), and sparse attacks work on units through :meth:`L0Geometry.units`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import ClassVar, Union

import torch
from torch import Tensor

from ..errors import ThreatModelError

Eps = Union[float, Tensor]

#: Fraction of coordinates an L1 steepest-ascent step moves when the caller does not say: the top 1%
#: of gradient magnitudes, as in SLIDE (Tramèr & Boneh, "Adversarial training and robustness for
#: multiple perturbations", NeurIPS 2019).
DEFAULT_L1_SPARSITY = 0.01


def _flat(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1)


def _eps_column(eps: Eps, n: int, like: Tensor) -> Tensor:
    """eps as a ``[N, 1]`` tensor on ``like``'s device and dtype."""
    e = torch.as_tensor(eps, dtype=like.dtype, device=like.device)
    if e.ndim == 0:
        e = e.expand(n)
    return e.reshape(n, 1)


class Geometry(ABC):
    """The math of one lp threat model. Stateless; get instances with :func:`get_geometry`."""

    norm: ClassVar[str]
    #: Whether steepest-ascent steps are sparse (take a ``sparsity``); attacks adapt their schedule to it.
    sparse_steps: ClassVar[bool] = False

    # ---- the norm -----------------------------------------------------------------------------
    @abstractmethod
    def norm_of(self, delta: Tensor) -> Tensor:
        """Per-sample norm of ``delta`` ``[N, ...]`` -> ``[N]``."""

    @abstractmethod
    def dual_norm_of(self, grad: Tensor) -> Tensor:
        """Per-sample dual norm of ``grad`` ``[N, ...]`` -> ``[N]``: ``max <grad, u>`` over ``||u|| <= 1``.

        For a function linearized as ``f(x) + <grad, d>``, ``|f(x)| / dual_norm_of(grad)`` is the norm of
        the smallest ``d`` that reaches ``f = 0`` (box ignored).
        """

    def tolerance(self, eps: Eps, n_features: int) -> Tensor | float:
        """Largest norm a correctly projected float32 point may show: eps plus rounding slack.

        ``x + d`` is rounded to float32 (half an ulp of 1, < 6e-8 per coordinate), so the
        measured norm of ``x_adv - x`` can exceed eps by that much per moved coordinate.
        """
        return eps * (1 + 1e-5) + self._rounding_slack(n_features)

    @abstractmethod
    def _rounding_slack(self, n_features: int) -> float: ...

    # ---- projection ---------------------------------------------------------------------------
    def project(self, x: Tensor, x_adv: Tensor, eps: Eps) -> Tensor:
        """The point of {x + d : ||d|| <= eps, 0 <= x + d <= 1} closest (in L2) to ``x_adv``."""
        n = x.shape[0]
        v = _flat(x_adv - x)
        xf = _flat(x)
        # Per coordinate, the solution keeps the sign of v and moves at most `cap` toward the box face.
        cap = torch.where(v >= 0, 1.0 - xf, xf).clamp_min(0)
        a = v.abs()
        mag = self._project_magnitudes(a, cap, _eps_column(eps, n, v))
        d = torch.sign(v) * mag
        return (xf + d).clamp(0.0, 1.0).reshape(x.shape)

    @abstractmethod
    def _project_magnitudes(self, a: Tensor, cap: Tensor, eps: Tensor) -> Tensor:
        """Solve min ||m - a||_2 s.t. 0 <= m <= cap, ||m|| <= eps, for a >= 0. Shapes [N, D], eps [N, 1]."""

    # ---- steps and starts ---------------------------------------------------------------------
    @abstractmethod
    def step_direction(self, grad: Tensor, x_adv: Tensor | None = None, *, sparsity: float | Tensor | None = None) -> Tensor:
        """Steepest-ascent direction of unit norm for the gradient ``grad`` ``[N, ...]``.

        ``x_adv`` (the current point) lets a geometry skip coordinates that sit on a box face and
        would be pushed outward; ``sparsity`` (fraction of coordinates to move) is used by L1 only.
        A zero gradient gives a zero direction.
        """

    @abstractmethod
    def random_init(self, x: Tensor, eps: Eps, generator: torch.Generator | None = None) -> Tensor:
        """A random point of ball ∩ box around ``x``, drawn with ``generator`` (uniform in the ball, then clipped)."""

    # ---- hyperplanes (minimum-norm attacks: FAB) ----------------------------------------------------
    def hyperplane_step(self, x: Tensor, w: Tensor, b: Tensor) -> Tensor:
        """The smallest step ``d`` (in this norm) with ``<w, x + d> = b`` and ``x + d`` in the [0, 1] box.

        ``x``, ``w``: ``[N, ...]``; ``b``: ``[N]``. Where the box does not let the hyperplane be reached, the step
        that gets closest: every coordinate moved to the box face toward it. This is the projection FAB takes
        (Croce & Hein, "Minimally distorted adversarial examples with a fast adaptive boundary attack", ICML
        2020, Sec. 3.1), solved exactly: with ``m_i = |d_i|`` and the sign of each ``d_i`` fixed by ``w``, it is
        a one-dimensional monotone equation in a multiplier, solved by sorting its breakpoints (as the ball
        projections above). Coordinates with ``w_i = 0`` never move.
        """
        shape, dtype = x.shape, x.dtype
        t, wf = _flat(x).double(), _flat(w).double()
        c = (wf * t).sum(1) - b.double().reshape(-1)
        sgn = torch.where(c >= 0, 1.0, -1.0).to(t.dtype)
        wp = wf * sgn[:, None]  # after the flip, <wp, x + d> must fall by cp >= 0
        cp = (c * sgn)[:, None]
        aw = wp.abs()
        cap = torch.where(wp > 0, t, 1.0 - t).clamp_min(0) * (wp != 0)  # how far each coordinate can move usefully
        reach = (aw * cap).sum(1, keepdim=True)
        m = torch.where(reach <= cp, cap, self._hyperplane_magnitudes(aw, cap, cp))
        return (-torch.sign(wp) * m).to(dtype).reshape(shape)

    def _hyperplane_magnitudes(self, aw: Tensor, cap: Tensor, c: Tensor) -> Tensor:
        """Solve min ||m|| s.t. sum_i aw_i m_i = c, 0 <= m <= cap (feasible rows; [N, D] float64, c [N, 1])."""
        raise ThreatModelError(f"no hyperplane projection for {self.norm}")

    def random_direction(self, shape, generator: torch.Generator | None = None, device=None,
                         dtype: torch.dtype = torch.float32) -> Tensor:
        """A random vector ``[N, ...]`` of unit norm (FAB's random restarts): Linf from uniform, L2 and L1 from Gaussian draws."""
        raise ThreatModelError(f"no random direction for {self.norm}")


class LinfGeometry(Geometry):
    norm = "Linf"

    def norm_of(self, delta: Tensor) -> Tensor:
        return _flat(delta).abs().amax(dim=1)

    def dual_norm_of(self, grad: Tensor) -> Tensor:
        return _flat(grad).abs().sum(dim=1)  # L1

    def _rounding_slack(self, n_features: int) -> float:
        return 1e-6

    def project(self, x: Tensor, x_adv: Tensor, eps: Eps) -> Tensor:
        # Ball and box are both boxes: their intersection is a box and clipping is exact.
        e = _eps_column(eps, x.shape[0], x).reshape(-1, *([1] * (x.ndim - 1)))
        return torch.minimum(torch.maximum(x_adv, x - e), x + e).clamp(0.0, 1.0)

    def _project_magnitudes(self, a: Tensor, cap: Tensor, eps: Tensor) -> Tensor:  # pragma: no cover - project overrides
        return torch.minimum(torch.minimum(a, cap), eps)

    def step_direction(self, grad, x_adv=None, *, sparsity=None):
        return grad.sign()

    def random_init(self, x, eps, generator=None):
        e = _eps_column(eps, x.shape[0], x).reshape(-1, *([1] * (x.ndim - 1)))
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return (x + (2 * u - 1) * e).clamp(0.0, 1.0)

    def _hyperplane_magnitudes(self, aw, cap, c):
        # m_i = min(lam, cap_i); R(lam) = sum_i aw_i min(lam, cap_i) rises piecewise linearly through the sorted caps.
        caps, order = cap.sort(dim=1)
        a_s = aw.gather(1, order)
        below = torch.cumsum(a_s * caps, 1)  # sum_{j <= k} aw_j cap_j
        above = a_s.flip(1).cumsum(1).flip(1) - a_s  # sum_{j > k} aw_j
        r_at = below + caps * above  # R at each cap
        k = (r_at < c).sum(1, keepdim=True)  # caps passed before R reaches c
        zero = torch.zeros_like(c)
        done = torch.where(k > 0, below.gather(1, (k - 1).clamp_min(0)), zero)
        slope = torch.where(k > 0, above.gather(1, (k - 1).clamp_min(0)), a_s.sum(1, keepdim=True))
        lam = (c - done) / slope.clamp_min(1e-300)
        return torch.minimum(lam.expand_as(cap), cap)

    def random_direction(self, shape, generator=None, device=None, dtype=torch.float32):
        t = 2 * torch.rand(shape, generator=generator, device=device, dtype=dtype) - 1
        return t / _flat(t).abs().amax(1).reshape(-1, *([1] * (len(shape) - 1)))


class L2Geometry(Geometry):
    norm = "L2"

    def norm_of(self, delta: Tensor) -> Tensor:
        return _flat(delta).norm(p=2, dim=1)

    def dual_norm_of(self, grad: Tensor) -> Tensor:
        return _flat(grad).norm(p=2, dim=1)  # L2 is self-dual

    def _rounding_slack(self, n_features: int) -> float:
        return 1e-7 * math.sqrt(n_features)

    def _project_magnitudes(self, a: Tensor, cap: Tensor, eps: Tensor) -> Tensor:
        # m_i = min(t * a_i, cap_i) with t = 1 / (1 + mu) in (0, 1]; f(t) = ||m(t)||^2 rises with t.
        clipped = torch.minimum(a, cap)
        out = clipped.clone()
        rows = (clipped.square().sum(1, keepdim=True) > eps.square()).squeeze(1).nonzero().squeeze(1)
        if rows.numel() == 0:
            return out
        a64, c64, e64 = a[rows].double(), cap[rows].double(), eps[rows].double()
        # Coordinate i is capped once t >= b_i = cap_i / a_i (never when a_i == 0).
        b = torch.where(a64 > 0, c64 / a64.clamp_min(1e-300), torch.full_like(a64, math.inf))
        b, order = b.sort(dim=1)
        a_s, c_s = a64.gather(1, order), c64.gather(1, order)
        capped_sq = torch.cumsum(c_s.square(), dim=1)  # C_k: first k coordinates capped
        free_sq = a_s.square().flip(1).cumsum(1).flip(1) - a_s.square()  # V_k: the rest, free
        f_at_b = torch.where(torch.isinf(b), torch.full_like(b, math.inf), capped_sq + b.square() * free_sq)
        # k = number of breakpoints with f(b_k) <= eps^2; on [b_k, b_{k+1}) f(t) = C_k + t^2 V_k.
        k = (f_at_b <= e64.square()).sum(1, keepdim=True)
        zero = torch.zeros_like(e64)
        c_k = torch.where(k > 0, capped_sq.gather(1, (k - 1).clamp_min(0)), zero)
        v_k = torch.where(k > 0, free_sq.gather(1, (k - 1).clamp_min(0)), a_s.square().sum(1, keepdim=True))
        t = ((e64.square() - c_k).clamp_min(0) / v_k.clamp_min(1e-300)).sqrt().clamp(0, 1)
        out[rows] = torch.minimum(t * a64, c64).to(out.dtype)
        return out

    def step_direction(self, grad, x_adv=None, *, sparsity=None):
        g = _flat(grad)
        return (g / g.norm(p=2, dim=1, keepdim=True).clamp_min(1e-12)).reshape(grad.shape)

    def _hyperplane_magnitudes(self, aw, cap, c):
        # m_i = min(alpha aw_i, cap_i); coordinate i is capped once alpha >= cap_i / aw_i.
        brk = torch.where(aw > 0, cap / aw.clamp_min(1e-300), torch.full_like(aw, math.inf))
        brk, order = brk.sort(dim=1)
        a_s, c_s = aw.gather(1, order), cap.gather(1, order)
        capped = torch.cumsum(a_s * c_s, 1)  # reduction of the first k (capped) coordinates
        free = a_s.square().flip(1).cumsum(1).flip(1) - a_s.square()  # sum_{j > k} aw_j^2
        r_at = torch.where(torch.isinf(brk), torch.full_like(brk, math.inf), capped + brk * free)
        k = (r_at < c).sum(1, keepdim=True)
        zero = torch.zeros_like(c)
        done = torch.where(k > 0, capped.gather(1, (k - 1).clamp_min(0)), zero)
        slope = torch.where(k > 0, free.gather(1, (k - 1).clamp_min(0)), a_s.square().sum(1, keepdim=True))
        alpha = (c - done) / slope.clamp_min(1e-300)
        return torch.minimum(alpha * aw, cap)

    def random_direction(self, shape, generator=None, device=None, dtype=torch.float32):
        t = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        return t / _flat(t).square().sum(1).sqrt().reshape(-1, *([1] * (len(shape) - 1)))

    def random_init(self, x, eps, generator=None):
        n, d = x.shape[0], x[0].numel()
        g = torch.randn((n, d), generator=generator, device=x.device, dtype=x.dtype)
        u = torch.rand((n, 1), generator=generator, device=x.device, dtype=x.dtype)
        radius = _eps_column(eps, n, g) * u.pow(1.0 / d)  # uniform in the ball
        delta = g / g.norm(dim=1, keepdim=True).clamp_min(1e-12) * radius
        return (x + delta.reshape(x.shape)).clamp(0.0, 1.0)


class L1Geometry(Geometry):
    norm = "L1"
    sparse_steps = True

    def norm_of(self, delta: Tensor) -> Tensor:
        return _flat(delta).abs().sum(dim=1)

    def dual_norm_of(self, grad: Tensor) -> Tensor:
        return _flat(grad).abs().amax(dim=1)  # Linf

    def _rounding_slack(self, n_features: int) -> float:
        return 1e-7 * n_features

    def _project_magnitudes(self, a: Tensor, cap: Tensor, eps: Tensor) -> Tensor:
        # m_i = min(max(a_i - lam, 0), cap_i); phi(lam) = sum_i m_i falls piecewise linearly in lam.
        clipped = torch.minimum(a, cap)
        out = clipped.clone()
        rows = (clipped.sum(1, keepdim=True) > eps).squeeze(1).nonzero().squeeze(1)
        if rows.numel() == 0:
            return out
        a64, c64, e64 = a[rows].double(), cap[rows].double(), eps[rows].double()
        d = a64.shape[1]
        # Term i is capped for lam <= a_i - cap_i, linear (slope -1) up to a_i, then zero.
        events = torch.cat([a64 - c64, a64], dim=1)
        slope_change = torch.cat([-torch.ones_like(a64), torch.ones_like(a64)], dim=1)
        events, order = events.sort(dim=1)
        slope = slope_change.gather(1, order).cumsum(1)  # slope of phi just after each event
        gaps = events.diff(dim=1)
        phi = c64.sum(1, keepdim=True) + torch.cat(
            [torch.zeros_like(e64), (slope[:, :-1] * gaps).cumsum(1)], dim=1
        )  # phi at each event
        # j = last event with phi > eps; the root lies on the segment after it, where the slope is < 0.
        j = ((phi > e64).sum(1, keepdim=True) - 1).clamp(0, 2 * d - 1)
        lam = events.gather(1, j) + (phi.gather(1, j) - e64) / (-slope.gather(1, j)).clamp_min(1.0)
        out[rows] = torch.minimum((a64 - lam.clamp_min(0)).clamp_min(0), c64).to(out.dtype)
        return out

    def step_direction(self, grad, x_adv=None, *, sparsity=None):
        """Sparse steepest ascent: sign of the top-k gradient coordinates, L1-normalized.

        With ``x_adv`` given, coordinates already on a box face that the gradient pushes outward are
        skipped first, so the k moved coordinates can all move ("mind the box").
        """
        g = _flat(grad)
        n, d = g.shape
        mag = g.abs()
        if x_adv is not None:
            xa = _flat(x_adv)
            blocked = ((xa <= 0) & (g < 0)) | ((xa >= 1) & (g > 0))
            mag = mag.masked_fill(blocked, 0)
        frac = DEFAULT_L1_SPARSITY if sparsity is None else sparsity
        k = (torch.as_tensor(frac, device=g.device, dtype=torch.float64).expand(n) * d).ceil().long().clamp(1, d)
        kth = mag.sort(dim=1, descending=True).values.gather(1, (k - 1).reshape(n, 1))
        keep = (mag >= kth) & (mag > 0)
        s = torch.sign(g) * keep
        return (s / keep.sum(1, keepdim=True).clamp_min(1)).reshape(grad.shape)

    def _hyperplane_magnitudes(self, aw, cap, c):
        # Greedy: the cheapest reduction per unit of L1 comes from the largest |w_i|; fill those to their caps first.
        a_s, order = aw.sort(dim=1, descending=True, stable=True)
        c_s = cap.gather(1, order)
        full = torch.cumsum(a_s * c_s, 1)  # reduction with the first k+1 coordinates at their caps
        k = (full < c).sum(1, keepdim=True).clamp_max(aw.shape[1] - 1)  # the coordinate that finishes the job
        before = torch.where(k > 0, full.gather(1, (k - 1).clamp_min(0)), torch.zeros_like(c))
        idx = torch.arange(aw.shape[1], device=aw.device)[None]
        m_s = torch.where(idx < k, c_s, torch.zeros_like(c_s))
        last = ((c - before) / a_s.gather(1, k).clamp_min(1e-300)).clamp_max(c_s.gather(1, k))
        m_s = m_s.scatter(1, k, last)
        return torch.zeros_like(m_s).scatter(1, order, m_s)

    def random_direction(self, shape, generator=None, device=None, dtype=torch.float32):
        t = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        return t / _flat(t).abs().sum(1).reshape(-1, *([1] * (len(shape) - 1)))

    def random_init(self, x, eps, generator=None):
        # (E_1..E_d) / (E_1 + ... + E_{d+1}) with E ~ Exp(1) is uniform on the simplex's interior;
        # random signs make it uniform in the L1 ball.
        n, d = x.shape[0], x[0].numel()
        e = torch.empty((n, d + 1), device=x.device, dtype=x.dtype).exponential_(generator=generator)
        signs = torch.rand((n, d), generator=generator, device=x.device, dtype=x.dtype) < 0.5
        delta = e[:, :d] / e.sum(1, keepdim=True) * torch.where(signs, -1.0, 1.0).to(x.dtype)
        delta = delta * _eps_column(eps, n, delta)
        return (x + delta.reshape(x.shape)).clamp(0.0, 1.0)


class L0Geometry(Geometry):
    """At most ``eps`` (a whole number) changed units: pixels (``grouped``, norm ``L0``) or coordinates (``L0c``).

    A unit of an input ``[N, C, H, W]`` is pixel (h, w) with its C channels (``L0``) or one coordinate
    (``L0c``); of an input ``[N, D]``, one coordinate either way. :meth:`units` reshapes a batch to
    ``[N, G, U]`` (G values per unit, U units) so sparse attacks are written once for both conventions.
    """

    sparse_steps = True

    def __init__(self, grouped: bool) -> None:
        self.grouped = grouped
        self.norm = "L0" if grouped else "L0c"  # type: ignore[misc]

    def units(self, t: Tensor) -> Tensor:
        """``t`` ``[N, ...]`` viewed as ``[N, G, U]``: G values per unit (the channels of a pixel, or 1), U units."""
        n = t.shape[0]
        if self.grouped and t.ndim >= 3:
            return t.reshape(n, t.shape[1], -1)
        return t.reshape(n, 1, -1)

    def n_units(self, shape: "tuple[int, ...] | torch.Size") -> int:
        """How many units an input of ``shape`` (one sample, ``[C, H, W]``) has: its pixels (L0) or coordinates (L0c)."""
        dims = [int(s) for s in shape]
        return math.prod(dims[1:]) if (self.grouped and len(dims) >= 2) else math.prod(dims)

    def changed(self, delta: Tensor) -> Tensor:
        """``[N, U]`` bool: which units of ``delta`` ``[N, ...]`` are non-zero in any of their values."""
        return (self.units(delta) != 0).any(1)

    def norm_of(self, delta: Tensor) -> Tensor:
        return self.changed(delta).sum(1).to(delta.dtype if delta.is_floating_point() else torch.float32)

    def dual_norm_of(self, grad: Tensor) -> Tensor:
        raise ThreatModelError(f"{self.norm} counts changed {'pixels' if self.grouped else 'coordinates'}: it has no dual "
                               "norm, so distance-to-boundary attacks (DeepFool, FMN) do not apply; use sparse attacks")

    def tolerance(self, eps: Eps, n_features: int) -> Tensor | float:
        # A count: rounding x + d to float32 can only reset a change (d rounds away), never add one.
        return eps

    def _rounding_slack(self, n_features: int) -> float:  # pragma: no cover - tolerance overrides
        return 0.0

    def project(self, x: Tensor, x_adv: Tensor, eps: Eps) -> Tensor:
        """Exact Euclidean projection onto {x + d : at most eps units of d non-zero, 0 <= x + d <= 1}."""
        n = x.shape[0]
        v = x_adv - x
        c = x_adv.clamp(0.0, 1.0) - x  # the box projection of every unit's wanted change
        gain = (self.units(v).square() - self.units(v - c).square()).sum(1)  # [N, U], >= 0
        u = gain.shape[1]
        k = _eps_column(eps, n, gain).round().long().clamp(0, u)  # [N, 1]
        order = gain.argsort(dim=1, descending=True, stable=True)
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(u, device=x.device).expand(n, u))
        keep = (rank < k) & (gain > 0)  # [N, U]
        d = self.units(c) * keep[:, None, :].to(c.dtype)
        return (x + d.reshape(x.shape)).clamp(0.0, 1.0)

    def _project_magnitudes(self, a: Tensor, cap: Tensor, eps: Tensor) -> Tensor:  # pragma: no cover - project overrides
        raise NotImplementedError

    def step_direction(self, grad, x_adv=None, *, sparsity=None):
        """The L2-normalized gradient (PGD_0's step, Croce & Hein 2019): the projection makes it sparse."""
        g = _flat(grad)
        return (g / g.norm(p=2, dim=1, keepdim=True).clamp_min(1e-12)).reshape(grad.shape)

    def random_init(self, x, eps, generator=None):
        """``eps`` units drawn uniformly without replacement, each set to a uniform random value in [0, 1]."""
        n = x.shape[0]
        xu = self.units(x)
        u = xu.shape[2]
        k = _eps_column(eps, n, xu).round().long().clamp(0, u)
        scores = torch.rand((n, u), generator=generator, device=x.device, dtype=x.dtype)
        rank = scores.argsort(dim=1).argsort(dim=1)
        pick = (rank < k)[:, None, :]
        values = torch.rand(xu.shape, generator=generator, device=x.device, dtype=x.dtype)
        return torch.where(pick, values, xu).reshape(x.shape)


_GEOMETRIES: dict[str, Geometry] = {g.norm: g for g in (LinfGeometry(), L2Geometry(), L1Geometry(),
                                                          L0Geometry(grouped=True), L0Geometry(grouped=False))}


def get_geometry(norm: str) -> Geometry:
    """The geometry for a canonical norm name (``Linf``, ``L2``, ``L1``, ``L0``, ``L0c``)."""
    try:
        return _GEOMETRIES[norm]
    except KeyError:
        raise ThreatModelError(f"no geometry for norm '{norm}'; known: {', '.join(_GEOMETRIES)}") from None
