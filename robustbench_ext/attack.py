"""The attack contract and the one gradient-ascent loop that iterative attacks share.

:class:`Attack` owns the contract (Foolbox 3 style): ``attack(model, x, y, threat, seed=...)``
validates its input, calls the subclass's :meth:`Attack.run` (the search, nothing else), then
re-checks in float32 that every returned point lies in the eps-ball ∩ [0, 1] box and recomputes
per-sample success from the model's own predictions. A subclass cannot report a success the
model does not confirm, nor a point outside the threat model.

:class:`IterativeAttack` is the shared first-order loop (random start, steps, restarts, early
stop of fooled points); attacks plug in a loss and a step-size schedule, and the threat model's
:class:`~robustbench_ext.geometry.Geometry` supplies all per-norm math.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
from torch import Tensor, nn

from .errors import AttackContractError, RbxError, UnsupportedNormError
from .geometry import DEFAULT_L1_SPARSITY, Geometry
from .threat import NORMS, ThreatModel


@dataclass(frozen=True)
class AttackResult:
    """What an attack returns for a batch.

    ``x_adv``: ``[N, C, H, W]`` float32, inside ball ∩ box (checked). ``success``: ``[N]`` bool,
    ``model(x_adv).argmax(1) != y`` (recomputed by the base class). ``n_forward`` / ``n_backward``:
    images passed forward / backward, the verification pass included. ``loss_sum`` / ``loss_count``:
    per step (restarts one after another), the summed loss over the points still being attacked
    and how many there were; ``loss_curve`` is their ratio.
    """

    x_adv: Tensor
    success: Tensor
    n_forward: int = 0
    n_backward: int = 0
    loss_sum: tuple[float, ...] = ()
    loss_count: tuple[int, ...] = ()

    @property
    def loss_curve(self) -> tuple[float, ...]:
        """Mean loss per step over the points still being attacked."""
        return tuple(s / max(c, 1) for s, c in zip(self.loss_sum, self.loss_count))


class AttackContext:
    """What :meth:`Attack.run` gets besides the data: the model, geometry, eps, RNG, and counters.

    Use :meth:`logits` and :meth:`value_and_grad` for every model call so that the forward and
    backward passes are counted.
    """

    def __init__(self, model: nn.Module, threat: ThreatModel, generator: torch.Generator) -> None:
        self.model = model
        self.threat = threat
        self.geometry: Geometry = threat.geometry
        self.eps = threat.eps
        self.generator = generator
        self.n_forward = 0
        self.n_backward = 0
        self._curve: list[tuple[Tensor, int]] = []

    @torch.no_grad()
    def logits(self, x: Tensor) -> Tensor:
        """Model logits ``[N, K]`` without gradients."""
        self.n_forward += x.shape[0]
        return self.model(x)

    def value_and_grad(self, x: Tensor, loss_fn: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Logits ``[N, K]``, per-sample loss ``[N]`` and d(loss)/dx ``[N, ...]`` at ``x`` (all detached)."""
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            logits = self.model(xg)
            loss = loss_fn(logits)
            (grad,) = torch.autograd.grad(loss.sum(), xg)
        self.n_forward += x.shape[0]
        self.n_backward += x.shape[0]
        return logits.detach(), loss.detach(), grad.detach()

    def record_loss(self, loss: Tensor) -> None:
        """Append one step's per-sample losses to the curve (kept on device until the end: no sync here)."""
        if loss.numel():
            self._curve.append((loss.detach().float().sum(), loss.numel()))

    def loss_trace(self) -> tuple[tuple[float, ...], tuple[int, ...]]:
        """Per-step loss sums and point counts (one host sync for the whole attack)."""
        if not self._curve:
            return (), ()
        sums = torch.stack([s for s, _ in self._curve]).cpu().tolist()
        return tuple(sums), tuple(n for _, n in self._curve)


class Attack(ABC):
    """Base class of every attack. Subclasses are dataclasses whose fields are their parameters.

    Subclasses set ``name`` (the registry name), optionally ``norms`` (the norms they support),
    and implement :meth:`run`. Call an attack as ``attack(model, x, y, threat, seed=0)``.
    """

    name: ClassVar[str] = "attack"
    norms: ClassVar[tuple[str, ...]] = NORMS

    def params(self) -> dict[str, Any]:
        """The attack's parameters, as written to result records."""
        return dataclasses.asdict(self) if dataclasses.is_dataclass(self) else {}

    def supports(self, threat: ThreatModel) -> bool:
        return threat.norm in self.norms

    @abstractmethod
    def run(self, ctx: AttackContext, x: Tensor, y: Tensor) -> Tensor:
        """Search for adversarial examples; return candidates ``[N, ...]`` (the base class checks them)."""

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, *, seed: int = 0) -> AttackResult:
        """Attack ``model`` at ``x`` ``[N, C, H, W]`` (values in [0, 1]) with labels ``y`` ``[N]`` under ``threat``.

        ``seed`` fixes every random choice of the attack: the same seed gives the same result on CPU.
        """
        if not self.supports(threat):
            raise UnsupportedNormError(
                f"attack '{self.name}' does not support {threat.norm}; it supports: {', '.join(self.norms)}"
            )
        _check_inputs(x, y)
        if x.shape[0] == 0:
            return AttackResult(x.detach().float().clone(), torch.zeros(0, dtype=torch.bool, device=x.device))
        x = x.detach()
        generator = torch.Generator(device=x.device).manual_seed(int(seed))
        ctx = AttackContext(model, threat, generator)
        x_adv = self.run(ctx, x, y)
        x_adv = self._enforce_threat_model(x, x_adv, threat)
        success = ctx.logits(x_adv).argmax(1) != y
        return AttackResult(x_adv, success, ctx.n_forward, ctx.n_backward, *ctx.loss_trace())

    def _enforce_threat_model(self, x: Tensor, x_adv: Tensor, threat: ThreatModel) -> Tensor:
        """Check, in float32 (norms accumulated in float64), that ``x_adv`` is in ball ∩ box."""
        if not isinstance(x_adv, Tensor) or x_adv.shape != x.shape:
            raise AttackContractError(
                f"attack '{self.name}' returned shape {getattr(x_adv, 'shape', None)} for input {tuple(x.shape)}"
            )
        x_adv = x_adv.detach().to(torch.float32)
        if not torch.isfinite(x_adv).all():
            raise AttackContractError(f"attack '{self.name}' returned NaN or inf pixels")
        if x_adv.min() < 0 or x_adv.max() > 1:
            raise AttackContractError(
                f"attack '{self.name}' left the [0, 1] box (range {x_adv.min().item():.4g}..{x_adv.max().item():.4g})"
            )
        geom = threat.geometry
        norms = geom.norm_of(x_adv.double() - x.double())
        limit = geom.tolerance(threat.eps, x[0].numel())
        bad = norms > limit
        if bad.any():
            raise AttackContractError(
                f"attack '{self.name}' returned {int(bad.sum())} points outside the {threat.label} ball "
                f"(largest {threat.norm} norm {norms.max().item():.6g} > eps {threat.eps:.6g}): a bug in the attack"
            )
        return x_adv


def _check_inputs(x: Tensor, y: Tensor) -> None:
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise RbxError("x and y must be torch tensors")
    if x.ndim < 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise RbxError(f"expected x [N, C, H, W] and y [N]; got x {tuple(x.shape)} and y {tuple(y.shape)}")
    if not x.is_floating_point():
        raise RbxError(f"x must be floating point in [0, 1], got {x.dtype}: divide uint8 images by 255")
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise RbxError(
            f"inputs must lie in [0, 1], got range {x.min().item():.4g}..{x.max().item():.4g} "
            "(0..255 data? divide by 255; normalized data? move the normalization into the model)"
        )
    if y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise RbxError(f"labels must be integer class indices, got {y.dtype}")


@dataclass(eq=False)
class IterativeAttack(Attack):
    """The shared first-order loop: random start, ``steps`` projected steps, ``restarts``, early stop.

    Per restart, only points not yet fooled are attacked; a point is frozen at the first iterate the
    model misclassifies. Points never fooled return the final iterate with the highest loss over
    restarts. Subclasses implement :meth:`objective` and :meth:`step_size`.
    """

    steps: int = 10
    restarts: int = 1
    random_start: bool = True
    l1_sparsity: float = DEFAULT_L1_SPARSITY

    def __post_init__(self) -> None:
        for name in ("steps", "restarts"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise RbxError(f"attack '{self.name}': {name} must be a positive integer, got {value!r}")
        if self.restarts > 1 and not self.random_start:
            raise RbxError(f"attack '{self.name}': restarts > 1 need random_start=true (else every restart is the same)")
        if not 0 < self.l1_sparsity <= 1:
            raise RbxError(f"attack '{self.name}': l1_sparsity must be in (0, 1], got {self.l1_sparsity!r}")

    @abstractmethod
    def objective(self, logits: Tensor, y: Tensor, step: int) -> Tensor:
        """Per-sample loss ``[N]`` to maximize at ``step`` (0-based)."""

    @abstractmethod
    def step_size(self, step: int, eps: float) -> float:
        """Absolute step length at ``step``, in the threat model's norm."""

    def run(self, ctx: AttackContext, x: Tensor, y: Tensor) -> Tensor:
        geom, eps = ctx.geometry, ctx.eps
        best = x.clone()
        best_loss = torch.full((x.shape[0],), -math.inf, device=x.device)
        fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for _ in range(self.restarts):
            idx = (~fooled).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            x0, y0 = x[idx], y[idx]
            xk = geom.random_init(x0, eps, ctx.generator) if self.random_start else x0.clone()
            for step in range(self.steps):
                logits, loss, grad = ctx.value_and_grad(xk, functools.partial(self.objective, y=y0, step=step))
                ctx.record_loss(loss)
                hit = logits.argmax(1) != y0
                if hit.any():  # freeze fooled points where they were fooled and stop spending on them
                    best[idx[hit]] = xk[hit]
                    fooled[idx[hit]] = True
                    keep = ~hit
                    idx, x0, y0, xk, grad = idx[keep], x0[keep], y0[keep], xk[keep], grad[keep]
                    if idx.numel() == 0:
                        break
                direction = geom.step_direction(grad, xk, sparsity=self.l1_sparsity)
                xk = geom.project(x0, xk + self.step_size(step, eps) * direction, eps)
            if idx.numel() == 0:
                continue
            logits = ctx.logits(xk)
            final_loss = self.objective(logits, y0, self.steps).float()
            hit = logits.argmax(1) != y0
            better = hit | (final_loss > best_loss[idx])
            best[idx[better]] = xk[better]
            best_loss[idx[better]] = final_loss[better]
            fooled[idx[hit]] = True
        return best
