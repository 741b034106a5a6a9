"""The attack contract (Foolbox 3's ``base.py``): one base for every attack, and the one cascade.

:class:`AttackBase` holds what every attack has: its registry name, its parameters (the dataclass
fields), the parameters of a quick real run, and the call preamble (input checks, a seeded generator,
counted passes). Two kinds share it:

- :class:`Attack` searches one threat model: ``attack(model, x, y, threat, seed=...)`` validates its
  input, calls the subclass's :meth:`Attack.run` (the search, nothing else), re-checks in float32 that
  every returned point lies in the eps-ball ∩ [0, 1] box and recomputes per-sample success from the
  model's own predictions. A subclass cannot report a success the model does not confirm, nor a point
  outside the threat model;
- :class:`MultiThreatAttack` searches several threat models at once (union / multi-lp attacks), under
  the same contract per threat model.

Every forward and backward pass through the model is counted (:class:`CountingModel`), also inside
foreign code. The shared first-order loop lives in :mod:`robustbench_ext.loop` (Foolbox's
``gradient_descent_base.py``), cascades and ensembles in :mod:`robustbench_ext.cascade`.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Sequence

import torch
from torch import Tensor, nn

from .devutils import derive_seed
from .errors import AttackContractError, RbxError, UnsupportedNormError
from .geometry import Geometry
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
    images passed forward / backward, the verification pass included. ``n_nonfinite``: input-gradient
    entries that were NaN or inf (zeroed, so that no attack returns NaN because of the model). ``loss_sum`` / ``loss_count``:
    per step (passes one after another), the summed loss over the points still being attacked
    and how many there were; ``loss_curve`` is their ratio.

    ``min_norm`` (minimum-norm attacks only, else None): ``[N]`` float64, per sample the norm, in the
    threat model's norm, of the closest misclassified point the search found, whatever eps is; the
    base class recomputes it from that point and the model's own prediction there. ``inf``: no
    misclassified point found; 0: the clean input is already misclassified.
    :func:`robustbench_ext.curves.robust_accuracy_curve` turns it into robust accuracy at every eps.
    """

    x_adv: Tensor
    success: Tensor
    n_forward: int = 0
    n_backward: int = 0
    loss_sum: tuple[float, ...] = ()
    loss_count: tuple[int, ...] = ()
    n_nonfinite: int = 0  # non-finite input-gradient entries the loop zeroed (the model's gradient, not the attack's)
    min_norm: Tensor | None = None

    @property
    def loss_curve(self) -> tuple[float, ...]:
        """Mean loss per step over the points still being attacked."""
        return tuple(s / max(c, 1) for s, c in zip(self.loss_sum, self.loss_count))


@dataclass(frozen=True)
class SampleSeeds:
    """Per-sample seeding: a seed and one integer key per sample of the batch (``keys`` ``[N]`` int64, CPU).

    With it, every random start an attack draws through :meth:`AttackContext.per_sample` comes from a
    generator seeded by (``seed``, the sample's key, the draw's number), so a sample's outcome does not
    depend on which other samples share its batch: the runner's key is the sample's index in the dataset.
    This is what makes a union-only run (fewer points per later stage) give the full run's flags.
    """

    seed: int
    keys: Tensor

    def subset(self, rows: Tensor) -> "SampleSeeds":
        """The keys of the samples at ``rows`` of this batch."""
        return SampleSeeds(self.seed, self.keys[rows.cpu()])

    def child(self, i: int) -> "SampleSeeds":
        """Seeds for the ``i``-th sub-attack (a cascade stage): same keys, a seed derived from ``i``."""
        return SampleSeeds(derive_seed(self.seed, 7919, int(i)), self.keys)


class AttackContext:
    """What an attack's search gets besides the data: the (counting) model, the threat model(s) with their
    geometry, a seeded generator, the progress callback and the loss curve.

    For a :class:`MultiThreatAttack`, ``threats`` holds every threat model and ``threat`` is None.

    ``eot`` (expectation over transformation, Athalye et al. 2018): the number of forward+backward passes
    :meth:`value_and_grad`, :meth:`value_and_grads` and :meth:`value` average over, so that for a
    randomized model the gradient and the objective are means over ``eot`` draws of its randomness. 1:
    one pass, exactly as without EOT.
    ``samples``: per-sample seeds (:class:`SampleSeeds`) or None (random draws then come from
    ``generator``, batch-wise); ``rows``: the loop sets it to the batch rows its next random start is for.
    """

    def __init__(self, model: nn.Module, threat: ThreatModel | None, generator: torch.Generator,
                 progress: StepReport | None = None, threats: Sequence[ThreatModel] = (),
                 samples: SampleSeeds | None = None, eot: int = 1) -> None:
        self.samples = samples
        self.rows: Tensor | None = None
        self._draws = 0
        self.model = model if isinstance(model, CountingModel) else CountingModel(model)
        self.eot = int(eot)
        self.threat = threat
        self.threats = tuple(threats) if threats else ((threat,) if threat is not None else ())
        self.geometry: Geometry | None = threat.geometry if threat is not None else None
        self.eps = threat.eps if threat is not None else None
        self.generator = generator
        self.progress = progress
        self._curve: list[tuple[Tensor, int]] = []
        self._seen: tuple[Tensor, Tensor] | None = None  # the last (inputs, logits) of :meth:`logits`
        self._nonfinite: Tensor | int = 0  # zeroed gradient entries, kept on the device (no sync per step)
        #: Minimum-norm attacks put here their closest adversarial points ``[N, ...]`` (any eps; in the
        #: box), the clean point where they found none; the base class verifies them into ``min_norm``.
        self.min_norm_points: Tensor | None = None

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
        """Logits ``[N, K]``, per-sample loss ``[N]`` and d(loss)/dx ``[N, ...]`` at ``x`` (all detached).

        Gradient entries that are NaN or inf (a model with ``sqrt`` at 0, say) are zeroed and counted:
        the step then ignores those pixels instead of turning the whole iterate into NaN. With
        ``eot`` = K > 1, each of the three is the mean over K passes (K draws of a randomized model's
        randomness; each draw's non-finite entries zeroed before averaging).
        """
        if self.eot > 1:
            draws = [self.value_and_grad_once(x, loss_fn) for _ in range(self.eot)]
            return tuple(_draw_mean([d[i] for d in draws]) for i in range(3))  # type: ignore[return-value]
        return self.value_and_grad_once(x, loss_fn)

    def value_and_grad_once(self, x: Tensor, loss_fn: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`value_and_grad` from one forward and one backward pass, whatever ``eot`` is."""
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            logits = self.model(xg)
            loss = loss_fn(logits)
            (grad,) = torch.autograd.grad(loss.sum(), xg)
        grad = grad.detach()
        bad = ~torch.isfinite(grad)
        self._nonfinite = self._nonfinite + bad.sum()
        return logits.detach(), loss.detach(), grad.masked_fill(bad, 0.0)

    @torch.no_grad()
    def value(self, x: Tensor, loss_fn: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor]:
        """Logits ``[N, K]`` and per-sample loss ``[N]`` at ``x`` without gradients: one :meth:`logits` pass,
        or with ``eot`` = K > 1 the means over K passes (the loss as the mean of the per-draw losses)."""
        if self.eot > 1:
            self._seen = None  # the contract's verification then makes a pass of its own
            draws = [self.model(x) for _ in range(self.eot)]
            return _draw_mean(draws), _draw_mean([loss_fn(z) for z in draws])
        logits = self.logits(x)
        return logits, loss_fn(logits)

    @property
    def n_nonfinite(self) -> int:
        """Non-finite gradient entries zeroed so far (one host sync)."""
        return int(self._nonfinite)

    def absorb(self, result: "AttackResult") -> None:
        """Count a sub-attack's zeroed gradient entries as this attack's (ensembles, union attacks)."""
        self._nonfinite = self._nonfinite + result.n_nonfinite

    def value_and_grads(self, x: Tensor, loss_fn: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """A vector objective and each component's input gradient, from one forward pass.

        ``loss_fn`` maps logits ``[N, K]`` to ``[N, M]``; returns logits ``[N, K]``, losses ``[N, M]`` and
        gradients ``[M, N, ...]`` (gradient m of sample i is d loss[i, m] / d x[i]); M backward passes.
        With ``eot`` = K > 1: means over K forward passes (K * M backward passes).
        """
        if self.eot > 1:
            draws = [self._value_and_grads_once(x, loss_fn) for _ in range(self.eot)]
            return tuple(_draw_mean([d[i] for d in draws]) for i in range(3))  # type: ignore[return-value]
        return self._value_and_grads_once(x, loss_fn)

    def _value_and_grads_once(self, x: Tensor, loss_fn: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            logits = self.model(xg)
            loss = loss_fn(logits)
            m = loss.shape[1]
            grads = [torch.autograd.grad(loss[:, j].sum(), xg, retain_graph=j + 1 < m)[0] for j in range(m)]
        g = torch.stack(grads).detach() if grads else x.new_zeros((0, *x.shape))
        bad = ~torch.isfinite(g)  # zeroed and counted, as in value_and_grad
        self._nonfinite = self._nonfinite + bad.sum()
        return logits.detach(), loss.detach(), g.masked_fill(bad, 0.0)

    def report(self, fraction: float) -> None:
        """Tell the caller's progress bar that ``fraction`` (0..1) of this attack's work is done."""
        if self.progress is not None:
            self.progress(fraction)

    def sub_progress(self, lo: float, hi: float) -> StepReport | None:
        """A callback for a sub-attack that covers the share ``[lo, hi]`` of this attack's work."""
        if self.progress is None:
            return None
        return lambda f: self.progress(lo + (hi - lo) * f)

    def per_sample(self, x0: Tensor, draw: Callable[[Tensor, torch.Generator], Tensor]) -> Tensor:
        """``draw(x0, generator)``: a random start (or any random draw shaped like ``x0`` ``[M, ...]``).

        Without per-sample seeds, one draw for the batch from the attack's generator. With them, each
        row from its own generator, seeded by (seed, the sample's key, the number of this draw within the
        call): a sample gets the same draws whatever else is in its batch, as long as it is attacked in
        the same segments (true of the loop: a segment draws for the points it attacks, in a fixed order).
        ``x0``'s rows are ``self.rows`` of the batch (all rows when None).
        """
        if self.samples is None:
            return draw(x0, self.generator)
        rows = self.rows if self.rows is not None else torch.arange(x0.shape[0])
        keys = self.samples.subset(rows).keys.tolist()
        k, self._draws = self._draws, self._draws + 1
        gens = [torch.Generator(device=x0.device).manual_seed(derive_seed(self.samples.seed, int(key), k)) for key in keys]
        return torch.cat([draw(x0[i:i + 1], g) for i, g in enumerate(gens)]) if keys else draw(x0, self.generator)

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


def _draw_mean(draws: Sequence[Tensor]) -> Tensor:
    """The element-wise mean of K same-shaped tensors (EOT's K draws), in their dtype."""
    return torch.stack(list(draws)).mean(0)


# ---- the contract ----------------------------------------------------------------------------------
@dataclass(eq=False)
class AttackBase(ABC):
    """What every attack has, single- or multi-threat. Subclasses are dataclasses whose fields are their parameters.

    Subclasses set ``name`` (the registry name), optionally ``norms`` (the norms they support) and
    ``smoke_params`` (parameters for a quick but real run: the contract tests use them).

    ``eot`` (every attack's setting, keyword only; ``pgd:eot=10``): expectation over transformation for
    randomized models -- every input gradient and every objective value the attack's search takes through
    its :class:`AttackContext` is the mean over ``eot`` forward(+backward) passes. 1 (the default) is the
    plain attack, bit for bit. Attacks whose search takes no gradient through the context (black-box
    ones, foreign code that cannot average) set ``eot_note`` to say why they refuse ``eot`` > 1.
    """

    eot: int = field(default=1, kw_only=True)
    #: None: the attack supports ``eot`` > 1; else the reason it does not (the error message says it).
    eot_note: ClassVar[str | None] = None

    name: ClassVar[str] = "attack"
    norms: ClassVar[tuple[str, ...]] = NORMS
    smoke_params: ClassVar[dict[str, Any]] = {}
    #: Whether the attack searches for the smallest adversarial perturbation and reports ``min_norm``
    #: (it must then set ``ctx.min_norm_points`` in :meth:`run`; see :mod:`robustbench_ext.min_norm`).
    minimum_norm: ClassVar[bool] = False

    def params(self) -> dict[str, Any]:
        """The attack's parameters, as written to result records (``eot`` only when it is not 1, so that records
        of plain runs read as before EOT existed)."""
        out = dataclasses.asdict(self) if dataclasses.is_dataclass(self) else {}
        if out.get("eot", 1) == 1:
            out.pop("eot", None)
        return out

    def check_eot(self) -> None:
        """Raise a clear :class:`RbxError` unless ``eot`` is a positive int this attack supports."""
        eot = getattr(self, "eot", 1)
        if isinstance(eot, bool) or not isinstance(eot, int) or eot < 1:
            raise RbxError(f"attack '{self.name}': eot must be a positive integer (passes averaged per gradient), got {eot!r}")
        note = self.eot_note_for() if eot > 1 else None  # (ensembles build their parts to answer: only when asked)
        if note:
            raise RbxError(f"attack '{self.name}' does not take eot={eot}: {note}")

    def eot_note_for(self) -> str | None:
        """Why this attack cannot average over ``eot`` draws (None: it can). Default: the class's ``eot_note``."""
        return self.eot_note

    def supports(self, threat: ThreatModel) -> bool:
        return threat.norm in self.norms

    def require(self, threat: ThreatModel) -> None:
        """Raise :class:`UnsupportedNormError` unless this attack supports ``threat``."""
        if not self.supports(threat):
            raise UnsupportedNormError(
                f"attack '{self.name}' does not support {threat.norm}; it supports: {', '.join(self.norms)}"
            )

    def fit(self, num_classes: int, input_shape: Sequence[int], threat: ThreatModel | None) -> tuple["AttackBase", str | None]:
        """This attack as it runs on a ``num_classes``-way model with ``input_shape`` inputs ``[C, H, W]``.

        Called before any attack of a run starts: an attack that cannot run there raises an
        :class:`RbxError` naming itself (so nothing is lost mid-run); one that must adapt (fewer target
        classes than asked) returns its adapted self and a note for the record. Default: runs as it is.
        """
        return self, None

    def _prepare(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """The call preamble both kinds share: input checks; ``x`` detached, labels cast to int64 at the boundary."""
        check_inputs(x, y)
        return x.detach(), y.long()

    def _context(self, model: nn.Module, x: Tensor, seed: int, progress: StepReport | None,
                 threat: ThreatModel | None = None, threats: Sequence[ThreatModel] = (),
                 samples: SampleSeeds | None = None) -> AttackContext:
        """A context with a generator seeded by ``seed``, the per-sample seeds (if any) and this attack's
        ``eot`` (checked here)."""
        self.check_eot()
        if samples is not None and len(samples.keys) != x.shape[0]:
            raise RbxError(f"per-sample seeds: {len(samples.keys)} keys for a batch of {x.shape[0]}")
        return AttackContext(model, threat, torch.Generator(device=x.device).manual_seed(int(seed)), progress, threats,
                             samples, eot=getattr(self, "eot", 1))


class Attack(AttackBase):
    """An attack under one threat model; implement :meth:`run`, call as ``attack(model, x, y, threat, seed=0)``."""

    @abstractmethod
    def run(self, ctx: AttackContext, x: Tensor, y: Tensor) -> Tensor:
        """Search for adversarial examples; return candidates ``[N, ...]`` (the base class checks them)."""

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, *, seed: int = 0,
                 progress: StepReport | None = None, samples: SampleSeeds | None = None) -> AttackResult:
        """Attack ``model`` at ``x`` ``[N, C, H, W]`` (values in [0, 1]) with labels ``y`` ``[N]`` under ``threat``.

        ``seed`` fixes every random choice of the attack: the same seed gives the same result on CPU.
        ``samples`` (per-sample seeds) makes the random starts each sample's own (:class:`SampleSeeds`).
        ``progress``, if given, is called with the fraction of the work done as the attack steps.
        """
        self.require(threat)
        x, y = self._prepare(x, y)
        if x.shape[0] == 0:
            empty = torch.zeros(0, dtype=torch.float64, device=x.device) if self.minimum_norm else None
            return AttackResult(x.float().clone(), torch.zeros(0, dtype=torch.bool, device=x.device), min_norm=empty)
        ctx = self._context(model, x, seed, progress, threat=threat, samples=samples)
        x_adv = check_in_threat_model(self.name, x, self.run(ctx, x, y), threat)
        min_norm = None
        if self.minimum_norm:
            if ctx.min_norm_points is None:
                raise AttackContractError(f"attack '{self.name}' is a minimum-norm attack but reported no points")
            min_norm = verified_min_norm(self.name, ctx, x, y, ctx.min_norm_points)
        success = verified_success(ctx.verification_logits(x_adv), y)
        ctx.report(1.0)
        return AttackResult(x_adv, success, ctx.n_forward, ctx.n_backward, *ctx.loss_trace(), n_nonfinite=ctx.n_nonfinite,
                            min_norm=min_norm)


def verified_success(logits: Tensor, y: Tensor) -> Tensor:
    """``[N]`` bool: the model's prediction differs from ``y``; NaN or inf logits are an error, not a success."""
    if not torch.isfinite(logits).all():
        raise RbxError("the model returned NaN or inf logits on adversarial inputs: its outputs are not usable "
                       "for a robustness evaluation (check its numerics, e.g. a log of zero)")
    return logits.argmax(1) != y


def verified_min_norm(name: str, ctx: AttackContext, x: Tensor, y: Tensor, x_min: Tensor) -> Tensor:
    """``[N]`` float64: ``||x_min - x||`` (the threat model's norm) where the model misclassifies ``x_min``, else inf.

    ``x_min`` must be finite and in the [0, 1] box (it may lie outside the eps-ball: it is the closest
    adversarial point found at any radius). Its logits go through ``ctx.logits``, so the verification
    of returned points identical to ``x_min`` (those inside the ball) reuses this forward pass.
    """
    if not isinstance(x_min, Tensor) or x_min.shape != x.shape:
        raise AttackContractError(f"attack '{name}' reported minimum-norm points of shape {getattr(x_min, 'shape', None)} "
                                  f"for input {tuple(x.shape)}")
    x_min = x_min.detach().to(torch.float32)
    if not torch.isfinite(x_min).all() or (x_min.numel() and (x_min.min() < 0 or x_min.max() > 1)):
        raise AttackContractError(f"attack '{name}' reported minimum-norm points that are not finite or leave the [0, 1] box")
    fooled = verified_success(ctx.logits(x_min), y)
    norms = ctx.geometry.norm_of(x_min.double() - x.double())
    return torch.where(fooled, norms, torch.full_like(norms, math.inf))


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
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise RbxError(f"labels must be integer class indices, got {y.dtype} (cast them with y.long())")


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
    n_nonfinite: int = 0

    @property
    def union_success(self) -> Tensor:
        """``[N]``: broken under at least one threat model (not union-robust)."""
        return self.success.any(1)

    def x_worst(self) -> Tensor:
        """``[N, ...]``: each sample's adversarial under its worst threat model."""
        stacked = torch.stack(self.x_adv)  # [T, N, ...]
        return stacked[self.worst, torch.arange(stacked.shape[1], device=stacked.device)]


class MultiThreatAttack(AttackBase):
    """An attack that searches several threat models at once; the contract holds per threat model.

    Implement :meth:`run`; ``ctx.threats`` are the threat models, ``ctx.model`` the counting model.
    """

    name: ClassVar[str] = "multi"

    @abstractmethod
    def run(self, ctx: AttackContext, x: Tensor, y: Tensor) -> list[Tensor]:
        """Return one candidate ``[N, ...]`` per threat model of ``ctx.threats``, in order."""

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, threats: Sequence[ThreatModel], *,
                 seed: int = 0, progress: StepReport | None = None, samples: SampleSeeds | None = None) -> MultiThreatResult:
        threats = list(threats)
        if not threats:
            raise RbxError(f"attack '{self.name}' needs at least one threat model")
        x, y = self._prepare(x, y)
        ctx = self._context(model, x, seed, progress, threats=threats, samples=samples)
        cands = self.run(ctx, x, y) if x.shape[0] else [x.clone() for _ in threats]
        if len(cands) != len(threats):
            raise AttackContractError(f"attack '{self.name}' returned {len(cands)} candidates for {len(threats)} threat models")
        x_adv = tuple(check_in_threat_model(self.name, x, c, t) for c, t in zip(cands, threats))
        success, losses = [], []
        with torch.no_grad():
            for xa in x_adv:
                logits = ctx.model(xa)
                success.append(verified_success(logits, y))
                losses.append(nn.functional.cross_entropy(logits.float(), y, reduction="none"))
        success_t = torch.stack(success, 1) if x.shape[0] else torch.zeros((0, len(threats)), dtype=torch.bool, device=x.device)
        loss_t = torch.stack(losses, 1) if x.shape[0] else torch.zeros((0, len(threats)), device=x.device)
        # Worst threat model per sample: the first success, else the highest loss.
        score = loss_t.masked_fill(success_t, math.inf)
        worst = score.argmax(1) if x.shape[0] else torch.zeros(0, dtype=torch.long, device=x.device)
        ctx.report(1.0)
        return MultiThreatResult(x_adv, success_t, loss_t, worst, ctx.n_forward, ctx.n_backward, ctx.n_nonfinite)
