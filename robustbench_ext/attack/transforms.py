"""Threat models beyond lp: the only place in rbx where spatial, colour and JPEG perturbation sets are defined.

Each is a parametrized transformation ``T(x, p)`` of an image ``x`` ``[N, C, H, W]`` (values in [0, 1]) whose
parameters ``p`` ``[N, *param_shape]`` lie in a box ``|p_j| <= b_j`` set by the threat model's budget; the
perturbation set is ``{clamp(T(x, p), 0, 1) : |p_j| <= b_j}``. :class:`Transform` is to these threat models
what :class:`~robustbench_ext.attack.geometry.Geometry` is to lp balls:

- :meth:`Transform.bounds` -- the per-parameter bounds ``b`` (broadcastable to ``p``);
- :meth:`Transform.apply` -- ``T(x, p)``, differentiable in ``p`` (and ``x``), clamped to the [0, 1] box;
- :meth:`Transform.project` -- the Euclidean projection onto the parameter box (a clamp);
- :meth:`Transform.budget_used` -- per sample, ``max_j |p_j| / b_j`` (<= 1 inside the threat model);
- :meth:`Transform.random_init` -- a uniform draw in the parameter box; :meth:`Transform.identity` -- ``p = 0``.

Attacks on these threat models search in parameter space (first-order steps on ``p``, or a grid) and return
``p``; the attack contract (:mod:`robustbench_ext.attack.base`) checks ``p`` is in the box and renders the
adversarial image itself, so a returned image is always a member of the set.

The sets and their budget conventions:

``spatial-rt:ROT,TRANS`` -- rotation by ``theta`` degrees about the image centre, then translation by
    ``(tx, ty)`` pixels, bilinear resampling with zero (black) padding: ``p = (theta, tx, ty)`` with
    ``|theta| <= ROT`` and ``|tx|, |ty| <= TRANS``. Engstrom, Tran, Tsipras, Schmidt & Madry, "Exploring the
    landscape of spatial robustness", ICML 2019: CIFAR-10 budget 30 degrees and 3 pixels (``spatial-rt:30,3``),
    attacked by a grid search (31 rotations x 5 x 5 translations) or first-order steps.
``stadv:EPS`` -- a per-pixel flow field ``f`` ``[2, H, W]``: output pixel ``(u, v)`` samples the input at
    ``(u, v) + f(u, v)`` (bilinear, border padding), in ``grid_sample``'s normalized coordinates where the
    image spans [-1, 1] (one pixel of a 32-pixel image is 2/32 = 0.0625); ``|f| <= EPS`` everywhere (Linf on
    the flow). Xiao, Zhu, Li, He, Liu & Song, "Spatially transformed adversarial examples", ICLR 2018 (flow
    fields with a smoothness loss, which the ``stadv`` attack adds); the Linf bound on the flow in these units
    is the convention of Laidlaw, Singla & Feizi, "Perceptual adversarial robustness", ICLR 2021, and of
    MultiRobustBench (Dai et al. 2023), whose CIFAR-10 union budget is ``stadv:0.05``.
``color:EPS`` -- a global hue rotation by ``h`` turns about the grey axis of RGB space (an exact rotation, so
    it keeps each pixel's channel mean), a saturation scale ``1 + s`` of each pixel's distance to its grey,
    then a brightness scale ``1 + b``: ``p = (h, s, b)``, each ``|.| <= EPS`` (``color:0.1``: hue +-36 degrees,
    saturation and brightness x[0.9, 1.1]). Three global parameters: a simple, first-order-searchable
    stand-in for ReColorAdv (Laidlaw & Feizi, "Functional adversarial attacks", NeurIPS 2019), whose
    per-pixel colour function is the richer reference (MultiRobustBench's ReColorAdv budget 0.06 is in its
    own units and not comparable); ``recolor`` below is rbx's version of that richer set.
``recolor:EPS`` -- a per-image colour function ``f(c) = c + g(c)`` applied to every pixel's RGB colour ``c``:
    ``g`` is given by offset vectors ``p`` ``[3, G, G, G]`` on the uniform grid of ``G = 16`` points per axis
    over the colour cube (grid point ``(i, j, k)`` sits at colour ``(i, j, k) / (G - 1)``, red along ``i``) and
    interpolated trilinearly between them; ``|p| <= EPS`` per channel and grid point (Linf on the parameters).
    After Laidlaw & Feizi, "Functional adversarial attacks", NeurIPS 2019 (arXiv 1906.00001), ReColorAdv.
    Their CIFAR-10 evaluation (``get_attack_from_name`` in ``recoloradv/utils.py`` of
    ``github.com/cassidylaidlaw/ReColorAdv``) perturbs CIELUV scaled to [0, 1] (``L*/100``,
    ``(u*+100)/200``, ``(v*+100)/200``) on a 16 x 32 x 32 grid with bound 0.06 per channel; rbx's set is in
    RGB on a 16 x 16 x 16 grid, so its budgets are not numerically comparable with theirs (or with
    MultiRobustBench's ReColorAdv 0.06). Trilinear weights are a convex combination, so every pixel moves by at
    most EPS per channel: ``recolor:EPS`` is a subset of ``Linf:EPS`` in which pixels of one colour move alike.
``jpeg-linf:EPS`` -- an additive perturbation ``d`` of the 8 x 8 block DCT coefficients (orthonormal DCT-II)
    of the image in YCbCr (JPEG's full-range conversion, channels in [0, 1]): ``x' = RGB(IDCT(DCT(YCbCr(x)) +
    d))``, ``|d| <= EPS``. After Kang, Sun, Hendrycks, Brown & Steinhardt, "Testing robustness against
    unforeseen adversaries" (arXiv 1908.08016, 2019), who perturb JPEG coefficients under an Linf budget;
    theirs are quantization-table-scaled with 4:2:0 chroma subsampling, ours unscaled and full resolution,
    so budgets are not numerically comparable with theirs or MultiRobustBench's ``JPEGLinf`` grid.
    H and W must be multiples of 8.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ThreatModelError

# ``ThreatModel`` (attack/threat.py) appears in annotations only, as a string: threat.py builds a threat model's
# transform from this module, so an import back would be a cycle.

class Transform(ABC):
    """A parametrized perturbation set with a box budget on its parameters. Stateless; see :func:`get_transform`."""

    kind: ClassVar[str]
    #: Relative slack of the budget check (float32 rounding of parameters on the box faces).
    rtol: ClassVar[float] = 1e-5

    @abstractmethod
    def param_shape(self, x_shape: Sequence[int]) -> tuple[int, ...]:
        """Per-sample parameter shape for inputs ``x_shape`` ``[C, H, W]`` (the batch dimension excluded)."""

    def check_input(self, x_shape: Sequence[int]) -> None:
        """Raise :class:`ThreatModelError` if inputs of shape ``[C, H, W]`` cannot take this transformation."""
        if len(x_shape) != 3:
            raise ThreatModelError(f"{self.kind} needs image inputs [C, H, W], got shape {tuple(x_shape)}")

    @abstractmethod
    def bounds(self, threat: "ThreatModel", like: Tensor) -> Tensor:
        """Per-parameter bounds ``b``, broadcastable to ``[N, *param_shape]``, on ``like``'s device/dtype."""

    @abstractmethod
    def _render(self, x: Tensor, p: Tensor) -> Tensor:
        """``T(x, p)`` before the box clamp."""

    def apply(self, x: Tensor, p: Tensor) -> Tensor:
        """The transformed images ``[N, C, H, W]`` in [0, 1], differentiable in ``p``."""
        return self._render(x, p.to(x.dtype)).clamp(0.0, 1.0)

    def identity(self, x: Tensor) -> Tensor:
        """Parameters of the identity transformation: zeros ``[N, *param_shape]``."""
        return x.new_zeros((x.shape[0], *self.param_shape(x.shape[1:])))

    def project(self, p: Tensor, threat: "ThreatModel") -> Tensor:
        """The closest parameters inside the budget box (a clamp per parameter)."""
        b = self.bounds(threat, p)
        return torch.maximum(torch.minimum(p, b), -b)

    def budget_used(self, p: Tensor, threat: "ThreatModel") -> Tensor:
        """``[N]``: ``max_j |p_j| / b_j`` (0 for the identity, <= 1 inside the threat model)."""
        b = self.bounds(threat, p.double()).expand_as(p.double())
        r = torch.where(b > 0, p.double().abs() / b.clamp_min(1e-300), torch.where(p.double() == 0, 0.0, math.inf))
        return r.reshape(p.shape[0], -1).amax(1) if p[0].numel() else p.new_zeros(p.shape[0], dtype=torch.float64)

    def random_init(self, x: Tensor, threat: "ThreatModel", generator: torch.Generator | None = None) -> Tensor:
        """Parameters drawn uniformly in the budget box, ``[N, *param_shape]``."""
        u = torch.rand((x.shape[0], *self.param_shape(x.shape[1:])), generator=generator, device=x.device, dtype=x.dtype)
        return (2 * u - 1) * self.bounds(threat, u)


class SpatialRT(Transform):
    """Rotation (degrees) and translation (pixels): ``p = (theta, tx, ty)``; Engstrom et al. 2019."""

    kind = "spatial-rt"

    def param_shape(self, x_shape):
        return (3,)

    def bounds(self, threat, like):
        return torch.tensor([threat.eps, threat.eps2, threat.eps2], dtype=like.dtype, device=like.device)

    def _render(self, x, p):
        n, _, h, w = x.shape
        th = p[:, 0] * (math.pi / 180.0)
        cos, sin = torch.cos(th), torch.sin(th)
        # affine_grid maps output coordinates (normalized to [-1, 1]) to input ones; in pixel units the map is a
        # rotation by theta about the centre, so the normalized matrix carries the aspect ratio.
        row0 = torch.stack([cos, -sin * (h / w), -2.0 * p[:, 1] / w], 1)
        row1 = torch.stack([sin * (w / h), cos, -2.0 * p[:, 2] / h], 1)
        grid = F.affine_grid(torch.stack([row0, row1], 1), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _identity_grid(n: int, h: int, w: int, like: Tensor) -> Tensor:
    eye = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=like.dtype, device=like.device).expand(n, 2, 3)
    return F.affine_grid(eye, [n, 1, h, w], align_corners=False)


class StAdvFlow(Transform):
    """A per-pixel flow field ``[2, H, W]`` in normalized grid units, Linf-bounded; Xiao et al. 2018."""

    kind = "stadv"

    def param_shape(self, x_shape):
        return (2, int(x_shape[-2]), int(x_shape[-1]))

    def bounds(self, threat, like):
        return torch.tensor(threat.eps, dtype=like.dtype, device=like.device)

    def _render(self, x, p):
        n, _, h, w = x.shape
        grid = _identity_grid(n, h, w, x) + p.permute(0, 2, 3, 1)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    @staticmethod
    def smoothness(p: Tensor, tiny: float = 1e-8) -> Tensor:
        """Xiao et al.'s flow loss ``L_flow`` ``[N]``: sum over pixels and their right/lower neighbours of
        ``sqrt(||f(p) - f(q)||^2 + tiny)`` (a smoothness penalty on the flow field ``p`` ``[N, 2, H, W]``)."""
        dx = p[:, :, :, 1:] - p[:, :, :, :-1]
        dy = p[:, :, 1:, :] - p[:, :, :-1, :]
        return ((dx.pow(2).sum(1) + tiny).sqrt().flatten(1).sum(1) + (dy.pow(2).sum(1) + tiny).sqrt().flatten(1).sum(1))


class ColorHSB(Transform):
    """Global hue rotation (turns), saturation and brightness scales: ``p = (h, s, b)``."""

    kind = "color"

    def param_shape(self, x_shape):
        return (3,)

    def check_input(self, x_shape):
        super().check_input(x_shape)
        if int(x_shape[0]) != 3:
            raise ThreatModelError(f"color shifts hue and saturation of RGB images: inputs need 3 channels, got {x_shape[0]}")

    def bounds(self, threat, like):
        return torch.tensor(threat.eps, dtype=like.dtype, device=like.device)

    def _render(self, x, p):
        a = 2 * math.pi * p[:, 0]
        cos, sin = torch.cos(a), torch.sin(a)
        # Rotation by angle a about the unit grey axis k = (1, 1, 1) / sqrt(3) (Rodrigues' formula).
        k = torch.full((3,), 1 / math.sqrt(3.0), dtype=x.dtype, device=x.device)
        kk = torch.outer(k, k)
        kx = torch.tensor([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]], dtype=x.dtype, device=x.device) / math.sqrt(3.0)
        eye = torch.eye(3, dtype=x.dtype, device=x.device)
        rot = cos[:, None, None] * eye + sin[:, None, None] * kx + (1 - cos)[:, None, None] * kk  # [N, 3, 3]
        y = torch.einsum("nij,njhw->nihw", rot, x)
        grey = y.mean(1, keepdim=True)
        y = grey + (1 + p[:, 1]).reshape(-1, 1, 1, 1) * (y - grey)
        return (1 + p[:, 2]).reshape(-1, 1, 1, 1) * y


class ReColor(Transform):
    """A colour function ``c + g(c)``, ``g`` trilinear between offsets ``[3, G, G, G]`` on a grid over the RGB cube,
    Linf-bounded; Laidlaw & Feizi 2019 (ReColorAdv, here in RGB)."""

    kind = "recolor"
    #: Grid points per colour axis (ReColorAdv's CIFAR-10 grid has 16 on its coarsest axis, CIELUV's L*).
    resolution: ClassVar[int] = 16

    def param_shape(self, x_shape):
        g = self.resolution
        return (3, g, g, g)

    def check_input(self, x_shape):
        super().check_input(x_shape)
        if int(x_shape[0]) != 3:
            raise ThreatModelError(f"recolor maps RGB colours: inputs need 3 channels, got {x_shape[0]}")

    def bounds(self, threat, like):
        return torch.tensor(threat.eps, dtype=like.dtype, device=like.device)

    def _render(self, x, p):
        # grid_sample on a volume [N, 3, D, H, W] reads its lookup coordinates as (x, y, z) = (W, H, D) indices:
        # colour (r, g, b) with red along the first grid axis is looked up at (b, g, r). align_corners=True puts
        # the grid's first and last points at the cube's faces (normalized -1 and 1), i.e. at colours 0 and 1.
        where = (2 * x - 1).flip(1).permute(0, 2, 3, 1).unsqueeze(1)  # [N, 1, H, W, 3]
        offset = F.grid_sample(p, where, mode="bilinear", padding_mode="border", align_corners=True)  # [N, 3, 1, H, W]
        return x + offset.squeeze(2)

    @staticmethod
    def smoothness(p: Tensor, tiny: float = 1e-8) -> Tensor:
        """Laidlaw & Feizi's smoothness regularizer ``[N]``: over every pair of grid points adjacent along a colour
        axis, ``sqrt(||p(a) - p(b)||^2 + tiny)`` summed (each pair once), for offsets ``p`` ``[N, 3, G, G, G]``."""
        return sum((p.diff(dim=d).pow(2).sum(1) + tiny).sqrt().flatten(1).sum(1) for d in (2, 3, 4))


def _dct_matrix(n: int, like: Tensor) -> Tensor:
    """The orthonormal DCT-II matrix ``[n, n]`` (rows: frequencies)."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    m = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    m[0] /= math.sqrt(2.0)
    return m.to(dtype=like.dtype, device=like.device)


#: JPEG (JFIF) full-range RGB -> YCbCr matrix; the offsets (0, 0.5, 0.5) cancel in an additive perturbation.
_YCC = ((0.299, 0.587, 0.114), (-0.168736, -0.331264, 0.5), (0.5, -0.418688, -0.081312))


class JpegLinf(Transform):
    """An Linf-bounded additive perturbation of the 8 x 8 block DCT coefficients of YCbCr; Kang et al. 2019."""

    kind = "jpeg-linf"

    def param_shape(self, x_shape):
        return tuple(int(s) for s in x_shape)

    def check_input(self, x_shape):
        super().check_input(x_shape)
        if int(x_shape[0]) != 3 or int(x_shape[1]) % 8 or int(x_shape[2]) % 8:
            raise ThreatModelError(f"jpeg-linf needs RGB images whose height and width are multiples of 8, got {tuple(x_shape)}")

    def bounds(self, threat, like):
        return torch.tensor(threat.eps, dtype=like.dtype, device=like.device)

    def _render(self, x, p):
        n, c, h, w = x.shape
        d = _dct_matrix(8, x)
        blocks = p.reshape(n, c, h // 8, 8, w // 8, 8)
        # Inverse blockwise DCT: D^T B D per 8 x 8 block.
        pix = torch.einsum("ki,ncakbl,lj->ncaibj", d, blocks, d).reshape(n, c, h, w)
        ycc_to_rgb = torch.linalg.inv(torch.tensor(_YCC, dtype=torch.float64)).to(dtype=x.dtype, device=x.device)
        return x + torch.einsum("ij,njhw->nihw", ycc_to_rgb, pix)

    @staticmethod
    def coefficients(x: Tensor) -> Tensor:
        """The blockwise DCT coefficients of ``x``'s YCbCr channels (offsets removed), ``[N, 3, H, W]`` (tests)."""
        n, c, h, w = x.shape
        d = _dct_matrix(8, x)
        ycc = torch.einsum("ij,njhw->nihw", torch.tensor(_YCC, dtype=x.dtype, device=x.device), x)
        blocks = ycc.reshape(n, c, h // 8, 8, w // 8, 8)
        return torch.einsum("ki,ncaibj,lj->ncakbl", d, blocks, d).reshape(n, c, h, w)


_TRANSFORMS: dict[str, Transform] = {t.kind: t for t in (SpatialRT(), StAdvFlow(), ColorHSB(), ReColor(), JpegLinf())}


def get_transform(kind: str) -> Transform:
    """The :class:`Transform` of a non-lp threat model kind (``spatial-rt``, ``stadv``, ``color``, ``recolor``, ``jpeg-linf``)."""
    try:
        return _TRANSFORMS[kind]
    except KeyError:
        raise ThreatModelError(f"{kind} is not a transformation threat model; known: {', '.join(_TRANSFORMS)}") from None
