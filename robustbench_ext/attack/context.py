"""What an attack's search works with: the counting model wrapper (:class:`CountingModel`), the result
of one call (:class:`AttackResult`), per-sample seeds (:class:`SampleSeeds`) and the context
(:class:`AttackContext`: the model, threat model(s), seeded generator, EOT averaging, progress). The
contract that uses them is :mod:`robustbench_ext.attack.base`, which re-exports these names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from ..runtime import stream_seed
from .geometry import Geometry
from ..progress import StepReport
from .threat import ThreatModel
from .transforms import Transform


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
    :func:`robustbench_ext.records.curves.robust_accuracy_curve` turns it into robust accuracy at every eps.
    ``min_norm_points`` (minimum-norm attacks only): ``[N, C, H, W]`` float32, those closest points themselves
    (any radius, in the box), so that a randomized model's curve can re-check them by majority over draws
    (:func:`robustbench_ext.evaluation.majority.majority_min_norm`).
    """

    x_adv: Tensor
    success: Tensor
    n_forward: int = 0
    n_backward: int = 0
    loss_sum: tuple[float, ...] = ()
    loss_count: tuple[int, ...] = ()
    n_nonfinite: int = 0  # non-finite input-gradient entries the loop zeroed (the model's gradient, not the attack's)
    min_norm: Tensor | None = None
    min_norm_points: Tensor | None = None
    #: Non-lp threat models only (else None): the transformation's parameters ``[N, *param_shape]`` (float32,
    #: inside the budget box, checked); ``x_adv`` is the base class's rendering of them.
    params: Tensor | None = None

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
        return SampleSeeds(stream_seed(self.seed, "samples", int(i)), self.keys)


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
        #: The model's class count when the call learned it (attacks whose :meth:`~AttackBase.fit` needs it).
        self.num_classes: int | None = None
        self.rows: Tensor | None = None
        self._draws = 0
        self.model = model if isinstance(model, CountingModel) else CountingModel(model)
        self.eot = int(eot)
        self.threat = threat
        self.threats = tuple(threats) if threats else ((threat,) if threat is not None else ())
        self.geometry: Geometry | None = threat.geometry if threat is not None and threat.is_lp else None
        #: Non-lp threat models: their parametrized transformation (:mod:`robustbench_ext.attack.transforms`).
        self.transform: "Transform | None" = threat.transform if threat is not None and not threat.is_lp else None
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

    def value_and_grad(self, x: Tensor, loss_fn: Callable[[Tensor], Tensor], *,
                       render: Callable[[Tensor], Tensor] | None = None,
                       penalty: Callable[[Tensor], Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Logits ``[N, K]``, per-sample loss ``[N]`` and d(loss)/dx ``[N, ...]`` at ``x`` (all detached).

        Gradient entries that are NaN or inf (a model with ``sqrt`` at 0, say) are zeroed and counted:
        the step then ignores those pixels instead of turning the whole iterate into NaN. With
        ``eot`` = K > 1, each of the three is the mean over K passes (K draws of a randomized model's
        randomness; each draw's non-finite entries zeroed before averaging).
        """
        if self.eot > 1:
            draws = [self.value_and_grad_once(x, loss_fn, render=render, penalty=penalty) for _ in range(self.eot)]
            return tuple(_draw_mean([d[i] for d in draws]) for i in range(3))  # type: ignore[return-value]
        return self.value_and_grad_once(x, loss_fn, render=render, penalty=penalty)

    def value_and_grad_once(self, x: Tensor, loss_fn: Callable[[Tensor], Tensor], *,
                            render: Callable[[Tensor], Tensor] | None = None,
                            penalty: Callable[[Tensor], Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`value_and_grad` from one forward and one backward pass, whatever ``eot`` is.

        ``render`` (non-lp threat models): ``x`` are a transformation's parameters and the model sees
        ``render(x)``; the gradient is then with respect to the parameters. ``penalty(x)`` ``[N]``, if given,
        is subtracted from the loss (StAdv's flow smoothness)."""
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            logits = self.model(render(xg) if render is not None else xg)
            loss = loss_fn(logits)
            if penalty is not None:
                loss = loss - penalty(xg)
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
        gens = [torch.Generator(device=x0.device).manual_seed(stream_seed(self.samples.seed, "sample", int(key), k)) for key in keys]
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
