"""Square Attack (Andriushchenko, Croce, Flammarion & Hein, "Square Attack: a query-efficient black-box
adversarial attack via random search", ECCV 2020), Linf and L2: rbx's own batched implementation.

A score-based black-box attack: it reads the model's logits only (never a gradient) and, per query,
proposes one random square-shaped change of the current best point, keeping it when the margin loss
``z_y - max_{j != y} z_j`` falls (or the point is misclassified). Per the paper (Alg. 1 and Sec. 3):

- square side ``s = round(sqrt(p * H * W))`` (at least 1; L2: at least 3 and odd), with ``p`` halved
  on AutoAttack's fixed schedule (iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000; with
  ``rescale_schedule`` the iteration is first rescaled to a 10,000-query budget) from ``p_init`` = 0.8;
- Linf: the start is vertical stripes ``x + eps * (+-1)`` per channel and column; each step sets the
  square, per channel, to ``x +- eps`` (a jump of ``2 eps`` clipped to ball ∩ box);
- L2: the start is a 5x5 grid of the paper's "eta" blocks (two opposite pyramids of mass ``1/(k+1)^2``)
  with random signs per channel; each step moves the mass of a second random square into a first one,
  re-shaped as a new eta block, keeping ``||delta||_2 = eps`` (then clipped to the box).

Random draws (``draws``):

- ``sample`` (default): each image gets its own square position and colours at each step, as in the
  authors' reference code (``max-andr/square-attack``: a position per image);
- ``batch``: one position (and, for Linf, one colour per channel) per step shared by the whole batch,
  drawn in exactly the order of pyautoattack's ``SquareAttack`` (AutoAttack's Square), from a CPU
  generator seeded with the attack's seed as pyautoattack seeds torch's global one: on CPU, with the same
  seed and queries, it reproduces pyautoattack's points (benchmarks/reference_compare.py checks it).

``queries`` counts steps after the first query, as AutoAttack's ``n_queries`` (5,000 in AutoAttack) does;
per point that stays robust the attack spends ``1 + queries`` forward passes per restart, no backward pass.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from robustbench_ext.attack.base import Attack, AttackContext, require_positive_ints
from robustbench_ext.errors import RbxError
from robustbench_ext.registry import ATTACKS

DRAWS = ("sample", "batch")
BLACK_BOX_NOTE = "it is a black-box attack: it reads the model's outputs only and takes no gradient to average"


def p_selection(p_init: float, it: int, n_queries: int, rescale: bool) -> float:
    """Square's fraction of pixels changed at step ``it`` (AutoAttack's piecewise-constant schedule)."""
    if rescale:
        it = int(it / n_queries * 10000)
    for bound, div in ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64), (6000, 128), (8000, 256)):
        if it <= bound:
            return p_init / div
    return p_init / 512


@functools.lru_cache(maxsize=64)
def _eta_rectangle(rows: int, cols: int) -> Tensor:
    """The paper's L2 block: nested rectangles of mass ``1 / (k + 1)^2`` around the centre, unit L2 norm."""
    delta = torch.zeros(rows, cols, dtype=torch.float32)
    r0, c0 = rows // 2, cols // 2
    for k in range(max(rows // 2 + 1, cols // 2 + 1)):
        delta[max(r0 - k, 0):min(r0 - k + 2 * k + 1, rows), max(c0 - k, 0):min(c0 - k + 2 * k + 1, cols)] += \
            1.0 / torch.tensor([k + 1.0]).view(1, 1) ** 2
    return delta / (delta ** 2).sum(dim=(0, 1), keepdim=True).sqrt()


@functools.lru_cache(maxsize=64)
def _eta(s: int) -> Tensor:
    """An ``s x s`` eta block: a positive pyramid on top, a negative one below, unit L2 norm."""
    delta = torch.zeros(s, s, dtype=torch.float32)
    delta[:s // 2] = _eta_rectangle(s // 2, s)
    delta[s // 2:] = -1.0 * _eta_rectangle(s - s // 2, s)
    return delta / (delta ** 2).sum(dim=(0, 1), keepdim=True).sqrt()


class _Draws:
    """The attack's random numbers, from a CPU generator: per image (``sample``) or shared (``batch``)."""

    def __init__(self, seed: int, per_sample: bool, device: torch.device) -> None:
        self.g = torch.Generator().manual_seed(int(seed))
        self.per_sample = per_sample
        self.device = device

    def rand(self, shape) -> Tensor:
        return torch.rand(shape, generator=self.g).to(self.device)

    def signs(self, shape) -> Tensor:
        return torch.sign(2 * self.rand(shape) - 1)

    def ints(self, low: int, high: int, m: int) -> Tensor:
        """``[m]`` integers in [low, high) (one shared draw in ``batch`` mode), as pyautoattack draws them."""
        t = low + (high - low) * self.rand([m if self.per_sample else 1])
        return t.long().expand(m)

    def flip(self, m: int) -> Tensor:
        """``[m]`` bool: whether each image's eta block is transposed (one shared coin in ``batch`` mode)."""
        return (self.rand([m if self.per_sample else 1]) > 0.5).expand(m)


def _window_mask(vh: Tensor, vw: Tensor, s: int, h: int, w: int) -> Tensor:
    """``[M, 1, H, W]`` bool: the ``s x s`` square at (vh, vw) of each image."""
    rows = torch.arange(h, device=vh.device)
    cols = torch.arange(w, device=vh.device)
    in_r = (rows[None] >= vh[:, None]) & (rows[None] < vh[:, None] + s)
    in_c = (cols[None] >= vw[:, None]) & (cols[None] < vw[:, None] + s)
    return (in_r[:, :, None] & in_c[:, None, :])[:, None]


def _window_index(vh: Tensor, vw: Tensor, s: int):
    """Advanced indices selecting each image's ``s x s`` square: ``t[m, :, r, c]`` is ``[M, s, s, C]``."""
    ar = torch.arange(s, device=vh.device)
    m = torch.arange(vh.shape[0], device=vh.device)[:, None, None]
    return m, (vh[:, None] + ar)[:, :, None], (vw[:, None] + ar)[:, None, :]


@ATTACKS.register("square", summary="Square Attack (Andriushchenko et al. 2020): score-based random search, Linf/L2; no gradients")
@dataclass(eq=False)
class Square(Attack):
    """Square Attack on the margin loss (see the module docstring)."""

    name: ClassVar[str] = "square"
    norms: ClassVar[tuple[str, ...]] = ("Linf", "L2")
    smoke_params: ClassVar[dict] = {"queries": 300, "rescale_schedule": True}
    eot_note: ClassVar[str | None] = BLACK_BOX_NOTE
    #: Reads only the model's outputs (logits): no backward pass (a score-based black-box attack).
    black_box: ClassVar[bool] = True

    queries: int = 5000
    p_init: float = 0.8
    restarts: int = 1
    loss: str = "margin"
    draws: str = "sample"
    rescale_schedule: bool = False  # AutoAttack's setting (resc_schedule=False)

    def __post_init__(self) -> None:
        require_positive_ints(self, "queries", "restarts")
        if not 0 < self.p_init <= 1:
            raise RbxError(f"attack 'square': p_init must be in (0, 1], got {self.p_init!r}")
        if self.loss not in ("margin", "ce"):
            raise RbxError(f"attack 'square': loss must be margin or ce, got {self.loss!r}")
        if self.draws not in DRAWS:
            raise RbxError(f"attack 'square': draws must be one of {', '.join(DRAWS)}, got {self.draws!r}")

    def fit(self, num_classes, input_shape, threat):
        if len(input_shape) != 3:
            raise RbxError(f"attack 'square' needs images [C, H, W]; the data's inputs are {list(input_shape)}")
        return self, None

    # ---- the search --------------------------------------------------------------------------------
    def run(self, ctx: AttackContext, x: Tensor, y: Tensor) -> Tensor:
        if x.ndim != 4:
            raise RbxError(f"attack 'square' needs images [N, C, H, W], got {tuple(x.shape)}")
        out = x.clone()
        robust = ctx.logits(x).argmax(1) == y
        draws = _Draws(ctx.generator.initial_seed(), self.draws == "sample", x.device)
        for r in range(self.restarts):
            idx = robust.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            adv, margin = self._single_run(ctx, x[idx], y[idx], draws, r)
            fooled = margin <= 0
            out[idx[fooled]] = adv[fooled]
            robust[idx[fooled]] = False
            keep = ~fooled  # the lowest-margin point of a robust image: the closest to the boundary found
            out[idx[keep]] = adv[keep]
        return out

    def _margin_and_loss(self, ctx: AttackContext, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        logits = ctx.model(x).float()
        u = torch.arange(x.shape[0], device=x.device)
        z_y = logits[u, y]
        z_other = logits.index_put((u, y), torch.tensor(-math.inf, device=x.device)).amax(1)
        margin = z_y - z_other
        loss = margin if self.loss == "margin" else -F.cross_entropy(logits, y, reduction="none")
        return margin, loss

    @torch.no_grad()
    def _single_run(self, ctx: AttackContext, x: Tensor, y: Tensor, draws: _Draws, restart: int) -> tuple[Tensor, Tensor]:
        n, c, h, w = x.shape
        eps = float(ctx.eps)
        n_features = c * h * w
        linf = ctx.threat.norm == "Linf"
        x_best = self._start(x, eps, draws, linf)
        margin_min, loss_min = self._margin_and_loss(ctx, x_best, y)
        if bool((margin_min < 0).all()):
            return x_best, margin_min
        total = self.queries * self.restarts
        for it in range(self.queries):
            act = (margin_min > 0).nonzero().squeeze(1)
            m = act.numel()
            x_curr, x_best_curr, y_curr = x[act], x_best[act], y[act]
            p = p_selection(self.p_init, it, self.queries, self.rescale_schedule)
            if linf:
                s = min(max(int(round(math.sqrt(p * n_features / c))), 1), min(h, w))
                vh, vw = draws.ints(0, h - s, m), draws.ints(0, w - s, m)
                colour = draws.signs([m if draws.per_sample else 1, c, 1, 1])
                x_new = torch.where(_window_mask(vh, vw, s, h, w), x_best_curr + 2.0 * eps * colour, x_best_curr)
                x_new = torch.min(torch.max(x_new, x_curr - eps), x_curr + eps).clamp(0.0, 1.0)
            else:
                x_new = self._l2_step(x_curr, x_best_curr, eps, p, draws)
            margin, loss = self._margin_and_loss(ctx, x_new, y_curr)
            improved = loss < loss_min[act]
            loss_min[act] = torch.where(improved, loss, loss_min[act])
            improved = improved | (margin <= 0)
            margin_min[act] = torch.where(improved, margin, margin_min[act])
            x_best[act] = torch.where(improved[:, None, None, None], x_new, x_best_curr)
            if it % 50 == 0:
                ctx.report((restart * self.queries + it + 1) / total)
            if bool((margin_min <= 0).all()):
                break
        return x_best, margin_min

    def _start(self, x: Tensor, eps: float, draws: _Draws, linf: bool) -> Tensor:
        n, c, h, w = x.shape
        if linf:  # vertical stripes of +-eps, per image, channel and column
            return (x + eps * draws.signs([n, c, 1, w])).clamp(0.0, 1.0)
        s = max(min(h, w) // 5, 1)
        delta = torch.zeros_like(x)
        vh = (h - s * 5) // 2 if h >= 5 * s else 0
        for _ in range(h // s):
            vw = (w - s * 5) // 2 if w >= 5 * s else 0
            for _ in range(w // s):
                flip = draws.flip(n)
                block = torch.where(flip[:, None, None], _eta(s).to(x.device).t(), _eta(s).to(x.device))[:, None]
                delta[:, :, vh:vh + s, vw:vw + s] += (block * draws.signs([n, c, 1, 1]))[:, :, :max(min(s, h - vh), 0), :max(min(s, w - vw), 0)]
                vw += s
            vh += s
        return (x + _normalize(delta) * eps).clamp(0.0, 1.0)

    def _l2_step(self, x_curr: Tensor, x_best_curr: Tensor, eps: float, p: float, draws: _Draws) -> Tensor:
        m, c, h, w = x_curr.shape
        delta = x_best_curr - x_curr
        s = max(int(round(math.sqrt(p * c * h * w / c))), 3)
        if s % 2 == 0:
            s += 1
        s = min(s, min(h, w))
        vh, vw = draws.ints(0, h - s, m), draws.ints(0, w - s, m)
        i1 = _window_index(vh, vw, s)
        norms_window_1 = (delta[i1[0], :, i1[1], i1[2]].permute(0, 3, 1, 2) ** 2).sum(dim=(-2, -1), keepdim=True).sqrt()
        vh2, vw2 = draws.ints(0, h - s, m), draws.ints(0, w - s, m)
        norms_image = _l2(x_best_curr - x_curr)
        mask = _window_mask(vh, vw, s, h, w) | _window_mask(vh2, vw2, s, h, w)
        norms_windows = ((delta * mask) ** 2).sum(dim=(-2, -1), keepdim=True).sqrt()
        flip = draws.flip(m)
        eta = torch.where(flip[:, None, None], _eta(s).to(x_curr.device).t(), _eta(s).to(x_curr.device))[:, None]
        new = torch.ones([m, c, s, s], device=x_curr.device) * (eta * draws.signs([m, c, 1, 1]))
        new = new + delta[i1[0], :, i1[1], i1[2]].permute(0, 3, 1, 2) / (1e-12 + norms_window_1)
        new = new / (1e-12 + (new ** 2).sum(dim=(-2, -1), keepdim=True).sqrt()) * (
            torch.max((eps * torch.ones_like(new)) ** 2 - norms_image ** 2, torch.zeros_like(new)) / c + norms_windows ** 2).sqrt()
        i2 = _window_index(vh2, vw2, s)
        delta[i2[0], :, i2[1], i2[2]] = 0.0
        delta[i1[0], :, i1[1], i1[2]] = new.permute(0, 2, 3, 1)
        return (x_curr + _normalize(delta) * eps).clamp(0.0, 1.0)


def _l2(t: Tensor) -> Tensor:
    return (t ** 2).reshape(t.shape[0], -1).sum(-1).sqrt().reshape(-1, *([1] * (t.ndim - 1)))


def _normalize(t: Tensor) -> Tensor:
    return t / (_l2(t) + 1e-12)
