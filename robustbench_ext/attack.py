"""The attack contract, the one gradient-ascent loop that iterative attacks share, and cascades.

:class:`Attack` owns the contract (Foolbox 3 style): ``attack(model, x, y, threat, seed=...)``
validates its input, calls the subclass's :meth:`Attack.run` (the search, nothing else), then
re-checks in float32 that every returned point lies in the eps-ball ∩ [0, 1] box and recomputes
per-sample success from the model's own predictions. A subclass cannot report a success the
model does not confirm, nor a point outside the threat model. Every forward and backward pass
through the model is counted (:class:`CountingModel`), also inside foreign code.

:class:`IterativeAttack` is the shared first-order loop: PGD, APGD and PMA differ only in their
hooks (starting point, objective, step size, momentum, checkpoints, passes), and the threat
model's :class:`~robustbench_ext.geometry.Geometry` supplies all per-norm math.

:class:`Ensemble` is an attack made of other attacks run as a cascade on still-robust points;
:class:`MultiThreatAttack` searches several threat models at once (union / multi-lp attacks).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Sequence

import torch
from torch import Tensor, nn

from .errors import AttackContractError, RbxError, UnsupportedNormError
from .geometry import DEFAULT_L1_SPARSITY, Geometry
from .progress import StepReport
from .threat import NORMS, ThreatModel


# ---- counting --------------------------------------------------------------------------------------
class CountingModel(nn.Module):
    """Wraps a model and counts images passed forward, and backward through its output."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.n_forward = 0
        self.n_backward = 0

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        self.n_forward += n
        out = self.model(x)
        if out.requires_grad:
            def _count(grad: Tensor, n: int = n) -> None:
                self.n_backward += n

            out.register_hook(_count)
        return out


def _unwrap(model: nn.Module) -> nn.Module:
    return model.model if isinstance(model, CountingModel) else model


# ---- results and context -----------------------------------------------------------------------
@dataclass(frozen=True)
class AttackResult:
    """What an attack returns for a batch.

    ``x_adv``: ``[N, C, H, W]`` float32, inside ball ∩ box (checked). ``success``: ``[N]`` bool,
    ``model(x_adv).argmax(1) != y`` (recomputed by the base class). ``n_forward`` / ``n_backward``:
    images passed forward / backward, the verification pass included. ``loss_sum`` / ``loss_count``:
    per step (passes one after another), the summed loss over the points still being attacked
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
    """What :meth:`Attack.run` gets besides the data: the (counting) model, geometry, eps and RNG."""

    def __init__(self, model: nn.Module, threat: ThreatModel, generator: torch.Generator,
                 progress: StepReport | None = None) -> None:
        self.model = model if isinstance(model, CountingModel) else CountingModel(model)
        self.threat = threat
        self.geometry: Geometry = threat.geometry
        self.eps = threat.eps
        self.generator = generator
        self.progress = progress
        self._curve: list[tuple[Tensor, int]] = []
        self._seen: tuple[Tensor, Tensor] | None = None  # the last (inputs, logits) of :meth:`logits`

    @property
    def n_forward(self) -> int:
        return self.model.n_forward

    @property
    def n_backward(self) -> int:
        return self.model.n_backward

    @torch.no_grad()
    def logits(self, x: Tensor) -> Tensor:
        """Model logits ``[N, K]`` without gradients."""
        out = self.model(x)
        self._seen = (x.detach().clone(), out)  # a copy: the caller may change x in place afterwards
        return out

    @torch.no_grad()
    def verification_logits(self, x_adv: Tensor) -> Tensor:
        """The model's logits at the returned points, for the contract's success check.

        Rows identical (bit for bit) to the inputs of the last :meth:`logits` call -- typically the
        loop's evaluation of its final iterate -- reuse that forward pass of the same model; every
        other row is passed through the model again. So the verdict is always the model's own.
        """
        seen, self._seen = self._seen, None
        if seen is None or seen[0].shape != x_adv.shape:
            return self.model(x_adv)
        same = (seen[0] == x_adv).flatten(1).all(1)
        if bool(same.all()):
            return seen[1]
        if not bool(same.any()):
            return self.model(x_adv)
        out = seen[1].clone()
        out[~same] = self.model(x_adv[~same]).to(out.dtype)
        return out

    def value_and_grad(self, x: Tensor, loss_fn: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Logits ``[N, K]``, per-sample loss ``[N]`` and d(loss)/dx ``[N, ...]`` at ``x`` (all detached)."""
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            logits = self.model(xg)
            loss = loss_fn(logits)
            (grad,) = torch.autograd.grad(loss.sum(), xg)
        return logits.detach(), loss.detach(), grad.detach()

    def report(self, fraction: float) -> None:
        """Tell the caller's progress bar that ``fraction`` (0..1) of this attack's work is done."""
        if self.progress is not None:
            self.progress(fraction)

    def sub_progress(self, lo: float, hi: float) -> StepReport | None:
        """A callback for a sub-attack that covers the share ``[lo, hi]`` of this attack's work."""
        if self.progress is None:
            return None
        return lambda f: self.progress(lo + (hi - lo) * f)

    def spawn_seed(self) -> int:
        """A seed for a sub-attack, drawn from this attack's generator (so it is reproducible)."""
        return int(torch.randint(0, 2**62, (1,), generator=self.generator, device=self.generator.device).item())

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


# ---- the contract ----------------------------------------------------------------------------------
class Attack(ABC):
    """Base class of every attack. Subclasses are dataclasses whose fields are their parameters.

    Subclasses set ``name`` (the registry name), optionally ``norms`` (the norms they support),
    and implement :meth:`run`. Call an attack as ``attack(model, x, y, threat, seed=0)``.
    """

    name: ClassVar[str] = "attack"
    norms: ClassVar[tuple[str, ...]] = NORMS
    #: Parameters for a quick but real run (contract tests use them, so every attack stays cheap to test).
    smoke_params: ClassVar[dict[str, Any]] = {}

    def params(self) -> dict[str, Any]:
        """The attack's parameters, as written to result records."""
        return dataclasses.asdict(self) if dataclasses.is_dataclass(self) else {}

    def supports(self, threat: ThreatModel) -> bool:
        return threat.norm in self.norms

    def require(self, threat: ThreatModel) -> None:
        """Raise :class:`UnsupportedNormError` unless this attack supports ``threat``."""
        if not self.supports(threat):
            raise UnsupportedNormError(
                f"attack '{self.name}' does not support {threat.norm}; it supports: {', '.join(self.norms)}"
            )

    @abstractmethod
    def run(self, ctx: AttackContext, x: Tensor, y: Tensor) -> Tensor:
        """Search for adversarial examples; return candidates ``[N, ...]`` (the base class checks them)."""

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, *, seed: int = 0,
                 progress: StepReport | None = None) -> AttackResult:
        """Attack ``model`` at ``x`` ``[N, C, H, W]`` (values in [0, 1]) with labels ``y`` ``[N]`` under ``threat``.

        ``seed`` fixes every random choice of the attack: the same seed gives the same result on CPU.
        ``progress``, if given, is called with the fraction of the work done as the attack steps.
        """
        self.require(threat)
        check_inputs(x, y)
        if x.shape[0] == 0:
            return AttackResult(x.detach().float().clone(), torch.zeros(0, dtype=torch.bool, device=x.device))
        x = x.detach()
        ctx = AttackContext(model, threat, torch.Generator(device=x.device).manual_seed(int(seed)), progress)
        x_adv = check_in_threat_model(self.name, x, self.run(ctx, x, y), threat)
        success = verified_success(ctx.verification_logits(x_adv), y)
        ctx.report(1.0)
        return AttackResult(x_adv, success, ctx.n_forward, ctx.n_backward, *ctx.loss_trace())


def verified_success(logits: Tensor, y: Tensor) -> Tensor:
    """``[N]`` bool: the model's prediction differs from ``y``; NaN or inf logits are an error, not a success."""
    if not torch.isfinite(logits).all():
        raise RbxError("the model returned NaN or inf logits on adversarial inputs: its outputs are not usable "
                       "for a robustness evaluation (check its numerics, e.g. a log of zero)")
    return logits.argmax(1) != y


def require_positive_ints(attack: Any, *fields: str) -> None:
    """Raise a clear :class:`RbxError` unless each named parameter of ``attack`` is an int >= 1."""
    for name in fields:
        value = getattr(attack, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise RbxError(f"attack '{attack.name}': {name} must be a positive integer, got {value!r}")


def check_in_threat_model(name: str, x: Tensor, x_adv: Tensor, threat: ThreatModel) -> Tensor:
    """``x_adv`` as float32 after checking it is in ball ∩ box (norms accumulated in float64).

    A violation raises :class:`AttackContractError`: it is a bug in the attack named ``name``.
    """
    if not isinstance(x_adv, Tensor) or x_adv.shape != x.shape:
        raise AttackContractError(f"attack '{name}' returned shape {getattr(x_adv, 'shape', None)} for input {tuple(x.shape)}")
    x_adv = x_adv.detach().to(torch.float32)
    if not torch.isfinite(x_adv).all():
        raise AttackContractError(f"attack '{name}' returned NaN or inf pixels")
    if x_adv.numel() and (x_adv.min() < 0 or x_adv.max() > 1):
        raise AttackContractError(
            f"attack '{name}' left the [0, 1] box (range {x_adv.min().item():.4g}..{x_adv.max().item():.4g})"
        )
    geom = threat.geometry
    norms = geom.norm_of(x_adv.double() - x.double())
    bad = norms > geom.tolerance(threat.eps, x[0].numel())
    if bad.any():
        raise AttackContractError(
            f"attack '{name}' returned {int(bad.sum())} points outside the {threat.label} ball "
            f"(largest {threat.norm} norm {norms.max().item():.6g} > eps {threat.eps:.6g}): a bug in the attack"
        )
    return x_adv


def check_inputs(x: Tensor, y: Tensor) -> None:
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


# ---- the shared first-order loop -------------------------------------------------------------------
@dataclass(frozen=True)
class Pass:
    """One optimization run of an :class:`IterativeAttack` over the points not yet fooled.

    ``restart``: which restart it belongs to; ``round``: PMA's decomposition round; ``target_rank``:
    for targeted attacks, 0 = the most likely wrong class; ``eps_scale`` > 1: a large-eps warm-up stage
    whose fooled points do not count (Croce & Hein 2021); ``warm_start``: start from the previous
    pass's best point (projected onto this pass's ball) instead of a fresh start.
    """

    steps: int
    restart: int = 0
    round: int = 0
    target_rank: int | None = None
    eps_scale: float = 1.0
    warm_start: bool = False

    @property
    def counts(self) -> bool:
        """Whether points fooled in this pass are adversarial examples under the real eps."""
        return self.eps_scale == 1.0


@dataclass
class Track:
    """Per-sample best point of the running pass (highest objective), as checkpoint hooks see it."""

    loss: Tensor
    x: Tensor
    grad: Tensor | None  # None when the attack has no checkpoint hook (nothing reads it)


def _compact(keep: Tensor, *tensors: Tensor) -> list[Tensor]:
    return [t[keep] for t in tensors]


@dataclass(eq=False)
class IterativeAttack(Attack):
    """The shared first-order loop. Subclasses implement :meth:`objective` and :meth:`step_size`.

    Per pass (:meth:`passes`), only points not yet fooled are attacked; in a pass that counts, a
    point is frozen at the first iterate the model misclassifies -- as its logits without gradient
    tracking say, the values the contract verifies -- and costs nothing more (early stop; ``early_stop=False``, for training, keeps ascending and returns the highest-objective point). Each step evaluates the objective and its gradient, lets :meth:`checkpoint` send samples
    back to their best point, then moves ``step_size`` along the geometry's steepest-ascent
    direction, with heavy-ball :meth:`momentum`, and projects onto ball ∩ box. Points never fooled
    return their highest-objective point.
    """

    steps: int = 10
    restarts: int = 1
    random_start: bool = True
    l1_sparsity: float = DEFAULT_L1_SPARSITY
    #: Evaluation: freeze a point at the first iterate that fools the model (and stop paying for it).
    #: Training: False, keep ascending and return every point's highest-objective iterate.
    early_stop: bool = True

    def __post_init__(self) -> None:
        require_positive_ints(self, "steps", "restarts")
        if self.restarts > 1 and not self.random_start:
            raise RbxError(f"attack '{self.name}': restarts > 1 need random_start=true (else every restart is the same)")
        if not 0 < self.l1_sparsity <= 1:
            raise RbxError(f"attack '{self.name}': l1_sparsity must be in (0, 1], got {self.l1_sparsity!r}")

    # ---- hooks -------------------------------------------------------------------------------------
    def passes(self) -> list[Pass]:
        """The optimization runs, in order (default: one per restart)."""
        return [Pass(self.steps, restart=r) for r in range(self.restarts)]

    def start(self, ctx: AttackContext, x0: Tensor, eps: float, p: Pass) -> Tensor:
        """Starting point of a fresh pass (default: uniform in ball ∩ box, or the clean point)."""
        return ctx.geometry.random_init(x0, eps, ctx.generator) if self.random_start else x0.clone()

    def begin(self, ctx: AttackContext, x0: Tensor, y0: Tensor, x_start: Tensor, eps: float, p: Pass) -> dict[str, Any]:
        """Per-pass state; tensors with first dimension N are compacted with the points."""
        return {}

    @abstractmethod
    def objective(self, logits: Tensor, y: Tensor, step: int, state: dict[str, Any], p: Pass) -> Tensor:
        """Per-sample objective ``[N]`` to maximize at ``step`` (0-based)."""

    @abstractmethod
    def step_size(self, step: int, eps: float, state: dict[str, Any], p: Pass) -> float | Tensor:
        """Step length at ``step`` in the threat model's norm: a float or a per-sample ``[N]`` tensor."""

    def momentum(self, geometry: Geometry) -> float:
        """Weight of the previous displacement in the update (0: plain projected steps)."""
        return 0.0

    def sparsity(self, state: dict[str, Any]) -> float | Tensor:
        """Fraction of coordinates an L1 step moves (float or per-sample ``[N]``)."""
        return self.l1_sparsity

    def checkpoint(self, step: int, loss: Tensor, state: dict[str, Any], p: Pass, best: Track, x0: Tensor) -> Tensor | None:
        """After evaluating ``step``: a ``[N]`` bool mask of samples to send back to their best point, or None."""
        return None

    # ---- the loop ----------------------------------------------------------------------------------
    def run(self, ctx: AttackContext, x: Tensor, y: Tensor) -> Tensor:
        geom, n = ctx.geometry, x.shape[0]
        out = x.clone()
        out_loss = torch.full((n,), -math.inf, device=x.device)
        fooled = torch.zeros(n, dtype=torch.bool, device=x.device)
        warm: Tensor | None = None  # previous pass's best points (full size), for warm starts
        # Only attacks with a checkpoint hook (APGD) read the best point's gradient: skip the copy otherwise.
        keep_grad = type(self).checkpoint is not IterativeAttack.checkpoint
        passes = self.passes()
        total_steps, steps_done = max(sum(p.steps for p in passes), 1), 0
        for p in passes:
            idx = (~fooled).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            eps = ctx.eps * p.eps_scale
            x0, y0 = x[idx], y[idx]
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
            logits = ctx.logits(xk)
            loss = self.objective(logits, y0, step=p.steps, state=state, p=p).float()
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


# ---- cascades --------------------------------------------------------------------------------------
@dataclass(eq=False)
class Ensemble(Attack):
    """Attacks run one after another, each only on the points the previous ones left robust.

    The runner expands an ensemble into its components (so records say which component broke
    each point); called directly, :meth:`run` performs the same cascade.
    """

    @abstractmethod
    def components(self, threat: ThreatModel) -> list[Attack]:
        """The attacks of the cascade for ``threat``, in order."""

    def supports(self, threat: ThreatModel) -> bool:
        return threat.norm in self.norms and all(a.supports(threat) for a in self.components(threat))

    def run(self, ctx: AttackContext, x: Tensor, y: Tensor) -> Tensor:
        out = x.clone()
        robust = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        parts = self.components(ctx.threat)
        for i, attack in enumerate(parts):
            idx = robust.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            res = attack(ctx.model, x[idx], y[idx], ctx.threat, seed=ctx.spawn_seed(),
                         progress=ctx.sub_progress(i / len(parts), (i + 1) / len(parts)))
            out[idx] = res.x_adv
            robust[idx[res.success]] = False
        return out


# ---- several threat models at once -----------------------------------------------------------------
@dataclass(frozen=True)
class MultiThreatResult:
    """What a :class:`MultiThreatAttack` returns for a batch under T threat models.

    ``x_adv[t]``: ``[N, C, H, W]`` inside threat model t's ball ∩ box (checked); ``success``: ``[N, T]``
    bool from the model's predictions; ``loss``: ``[N, T]`` cross-entropy at each ``x_adv[t]``;
    ``worst``: ``[N]`` the threat model whose adversarial is worst for the model (a success if
    any, else the highest loss) -- what a MAX-style multi-norm training step uses.
    """

    x_adv: tuple[Tensor, ...]
    success: Tensor
    loss: Tensor
    worst: Tensor
    n_forward: int = 0
    n_backward: int = 0

    @property
    def union_success(self) -> Tensor:
        """``[N]``: broken under at least one threat model (not union-robust)."""
        return self.success.any(1)

    def x_worst(self) -> Tensor:
        """``[N, ...]``: each sample's adversarial under its worst threat model."""
        stacked = torch.stack(self.x_adv)  # [T, N, ...]
        return stacked[self.worst, torch.arange(stacked.shape[1], device=stacked.device)]


class MultiThreatAttack(ABC):
    """Base class of attacks that search several threat models at once; the contract is per threat model."""

    name: ClassVar[str] = "multi"
    smoke_params: ClassVar[dict[str, Any]] = {}

    def params(self) -> dict[str, Any]:
        return dataclasses.asdict(self) if dataclasses.is_dataclass(self) else {}

    @abstractmethod
    def run(self, model: CountingModel, x: Tensor, y: Tensor, threats: Sequence[ThreatModel],
            generator: torch.Generator) -> list[Tensor]:
        """Return one candidate ``[N, ...]`` per threat model, in order."""

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, threats: Sequence[ThreatModel], *,
                 seed: int = 0, progress: StepReport | None = None) -> MultiThreatResult:
        threats = list(threats)
        if not threats:
            raise RbxError(f"attack '{self.name}' needs at least one threat model")
        check_inputs(x, y)
        x = x.detach()
        counting = model if isinstance(model, CountingModel) else CountingModel(model)
        gen = torch.Generator(device=x.device).manual_seed(int(seed))
        cands = self.run(counting, x, y, threats, gen) if x.shape[0] else [x.clone() for _ in threats]
        if len(cands) != len(threats):
            raise AttackContractError(f"attack '{self.name}' returned {len(cands)} candidates for {len(threats)} threat models")
        x_adv = tuple(check_in_threat_model(self.name, x, c, t) for c, t in zip(cands, threats))
        success, losses = [], []
        with torch.no_grad():
            for xa in x_adv:
                logits = counting(xa)
                success.append(verified_success(logits, y))
                losses.append(nn.functional.cross_entropy(logits.float(), y, reduction="none"))
        success_t = torch.stack(success, 1) if x.shape[0] else torch.zeros((0, len(threats)), dtype=torch.bool, device=x.device)
        loss_t = torch.stack(losses, 1) if x.shape[0] else torch.zeros((0, len(threats)), device=x.device)
        # Worst threat model per sample: the first success, else the highest loss.
        score = loss_t.masked_fill(success_t, math.inf)
        worst = score.argmax(1) if x.shape[0] else torch.zeros(0, dtype=torch.long, device=x.device)
        return MultiThreatResult(x_adv, success_t, loss_t, worst, counting.n_forward, counting.n_backward)
