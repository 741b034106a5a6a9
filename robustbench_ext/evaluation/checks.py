"""Gradient-masking and sanity checks (after AutoAttack's ``checks.py``, Croce & Hein 2020, and the
"indicators of attack failure" of Pintor et al., NeurIPS 2022).

Cheap checks (:func:`cheap_checks`) run before every evaluation and are stored in the record:

- ``probabilities``: the model returns probabilities (rows in [0, 1] summing to 1) instead of logits.
  Cross-entropy attacks then see squashed gradients; the runner refuses such a model.
- ``deterministic``: two forward passes on the same inputs give the same logits (else the model is
  randomized and needs EoT attacks; every single-run number is optimistic).
- ``zero_gradients``: the input gradient of the cross-entropy is exactly zero for some points
  (quantized inputs, hard thresholds, non-differentiable pre-processing);
- ``finite_gradients``: the input gradient has NaN or inf entries for some points (``sqrt`` or ``log`` at
  0): the attacks zero such entries and count them (the record's ``nonfinite_grads``);
- ``batch_independent``: an image's logits do not depend on the other images in its batch (a model using
  batch statistics, e.g. BatchNorm left in train mode, fails: its robust accuracy would change with the
  batch size). Checked only on a deterministic model (randomness would look like batch dependence).

Before a run, the runner adds a cheap ``unbounded`` probe (PGD-10 at a radius covering the box on the check
batch). A failed ``zero_gradients``, ``finite_gradients``, ``unbounded``, ``deterministic`` or
``batch_independent`` makes the run escalate (:mod:`robustbench_ext.evaluation.escalation`).

Attack-based checks (:func:`full_checks`, ``rbx check``) need a threat model and attacks:

- ``eps_monotone``: robust accuracy must fall as eps grows (a sweep over 0.25x..2x eps); a rise is flagged,
  and so is a curve that stays flat above 0% ("does not fall": the attack makes no progress as the ball grows);
- ``unbounded``: with a radius that covers the whole [0, 1] box, robust accuracy must reach ~0%;
- ``black_box``: a black-box attack (Square) run after the white-box cascade must not break points
  the white-box attacks left robust;
- ``seed_spread``: the white-box cascade's robust accuracy must not vary much across attack seeds.

Each check gives a :class:`CheckResult` with a one-line message; ``passed`` False means "look here". A check
passes only on the evidence it names, and its message says what was seen: a flat eps sweep "does not fall"
(flagged: the attack makes no progress as the radius grows), and a check with nothing to look at (no point
classified correctly, so no point to attack) is flagged as such instead of passing vacuously.

Resource limits: every check takes ``batch_size`` and never passes more images than that through the model at
once (the cheap checks and the attacks run batch by batch, the seeds keyed by the batch after the first).
"""

from __future__ import annotations

import math

import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .majority import DEFAULT_DRAWS, wrong_counts
from ..runtime import autograd_on, stream_seed
from ..attack.threat import ThreatModel, box_diameter


@dataclass(frozen=True)
class CheckResult:
    """Outcome of one check: ``passed`` False flags a problem; ``value`` is the measured quantity."""

    name: str
    passed: bool
    value: float | None
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- cheap checks ----------------------------------------------------------------------------------
@torch.no_grad()
def check_probabilities(logits: Tensor) -> CheckResult:
    """Flag outputs that are probabilities: every entry in [0, 1] and every row summing to 1."""
    z = logits.float()
    sums = z.sum(1)
    is_prob = bool((z.min() >= 0) & (z.max() <= 1) & ((sums - 1).abs().max() < 1e-3))
    return CheckResult("probabilities", not is_prob, float((sums - 1).abs().max()),
                       "the model returns probabilities, not logits: return logits (e.g. drop the final softmax, "
                       "or wrap it to return log-probabilities)" if is_prob else
                       f"outputs are not probabilities (on {z.shape[0]} images, not every row lies in [0, 1] summing to 1)")


@torch.no_grad()
def check_deterministic(net: nn.Module, x: Tensor, batch_size: int | None = None) -> CheckResult:
    """Flag a model whose logits differ between two passes on the same inputs (``batch_size`` images at a time)."""
    a, b = _logits(net, x, batch_size), _logits(net, x, batch_size)
    diff = float((a - b).abs().max())
    scale = float(a.abs().max()) or 1.0
    ok = diff <= 1e-5 * max(scale, 1.0)
    return CheckResult("deterministic", ok, diff,
                       f"two passes on the same {x.shape[0]} images gave the same logits" if ok else
                       f"two passes on the same inputs differ by up to {diff:.3g}: a randomized model needs "
                       "EoT attacks (eot=K on rbx's attacks, or autoattack:version=rand) and single-run numbers are "
                       "optimistic; rbx run judges it by majority over draws (--draws)")


def _chunks(n: int, batch_size: int | None) -> list[slice]:
    """Row ranges of at most ``batch_size`` (None: all at once)."""
    step = n if not batch_size else int(batch_size)
    return [slice(i, i + step) for i in range(0, n, max(step, 1))]


@torch.no_grad()
def _logits(net: nn.Module, x: Tensor, batch_size: int | None = None) -> Tensor:
    """``net``'s float logits ``[N, K]`` on ``x``, ``batch_size`` images at a time."""
    return torch.cat([net(x[sl]).float() for sl in _chunks(x.shape[0], batch_size)])


def _input_gradient(net: nn.Module, x: Tensor, y: Tensor, batch_size: int | None = None) -> Tensor:
    """d(summed cross-entropy)/dx ``[N, ...]``, ``batch_size`` images at a time (gradients on whatever the caller's mode)."""
    grads = []
    with autograd_on():
        for sl in _chunks(x.shape[0], batch_size):
            xg = x[sl].detach().clone().requires_grad_(True)
            loss = F.cross_entropy(net(xg).float(), y[sl], reduction="sum")
            grads.append(torch.autograd.grad(loss, xg)[0])
    return torch.cat(grads)


def check_finite_gradients(g: Tensor) -> CheckResult:
    """Flag points whose input gradient has NaN or inf entries (the attacks zero them and count them)."""
    bad = (~torch.isfinite(g)).reshape(g.shape[0], -1).any(1).float().mean().item()
    ok = bad == 0
    return CheckResult("finite_gradients", ok, bad,
                       f"input gradients are finite on all {g.shape[0]} images" if ok else
                       f"{100 * bad:.1f}% of points have NaN or inf input-gradient entries (e.g. sqrt or log at 0): the "
                       "attacks zero those entries and count them in the record; the model's gradients are unreliable there")


def check_zero_gradients(net: nn.Module, x: Tensor, y: Tensor, g: Tensor | None = None,
                         batch_size: int | None = None) -> CheckResult:
    """Flag points whose cross-entropy input gradient is exactly zero (a sign of masked gradients)."""
    g = _input_gradient(net, x, y, batch_size) if g is None else g
    zero = (torch.nan_to_num(g).reshape(g.shape[0], -1).abs().sum(1) == 0).float().mean().item()
    ok = zero == 0
    return CheckResult("zero_gradients", ok, zero,
                       f"no image of {g.shape[0]} has an exactly zero input gradient" if ok else
                       f"{100 * zero:.1f}% of points have an exactly zero input gradient: gradient masking "
                       "(quantization, thresholds?); white-box numbers cannot be trusted, use black-box or adaptive attacks")


@torch.no_grad()
def check_batch_independent(net: nn.Module, x: Tensor, probes: int = 4, batch_size: int | None = None) -> CheckResult:
    """Flag a model whose logits for an image change with the batch around it: ``x`` in one batch (at most
    ``batch_size`` images: the first ``batch_size`` of ``x``), in reversed order, and its first ``probes`` images one
    at a time must give the same logits (up to float noise)."""
    if batch_size is not None:
        x = x[:max(int(batch_size), 1)]
    together = net(x).float()
    reverse = net(x.flip(0)).float().flip(0)
    k = min(probes, x.shape[0])
    alone = torch.cat([net(x[i:i + 1]).float() for i in range(k)])
    diff = max(float((together - reverse).abs().max()), float((together[:k] - alone).abs().max()))
    scale = max(float(together.abs().max()), 1.0)
    ok = diff <= 1e-3 * scale
    return CheckResult("batch_independent", ok, diff,
                       "an image's logits do not depend on its batch" if ok else
                       f"an image's logits change by up to {diff:.3g} with the other images in its batch (batch "
                       "statistics, e.g. BatchNorm in train mode?): robust accuracy would depend on --batch-size; rbx "
                       "evaluates such a model one image at a time")


def cheap_checks(net: nn.Module, x: Tensor, y: Tensor, batch_size: int | None = None,
                 label_only: bool = False) -> list[CheckResult]:
    """The checks the runner runs before every evaluation, on a small batch (model in eval mode), passing at most
    ``batch_size`` images through the model at once (None: all of ``x``).

    ``label_only``: the model answers with labels only; its outputs are no scores and no gradient is taken,
    so only the determinism and batch-independence checks run (the probability and gradient checks do not apply).
    A deterministic model is also checked for batch dependence (:func:`check_batch_independent`).
    """
    deterministic = check_deterministic(net, x, batch_size)
    if label_only:
        out = [deterministic]
    else:
        logits = _logits(net, x, batch_size)
        g = _input_gradient(net, x, y, batch_size)
        out = [check_probabilities(logits), deterministic, check_zero_gradients(net, x, y, g), check_finite_gradients(g)]
    if deterministic.passed:
        out.append(check_batch_independent(net, x, batch_size=batch_size))
    return out


# ---- attack-based checks ---------------------------------------------------------------------------
def _robust(net: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, attacks: Sequence, seed: int = 0,
            batch_size: int | None = None) -> Tensor:
    """[N] bool: correct and robust after the cascade ``attacks`` (points misclassified clean count as broken),
    ``batch_size`` images at a time (stage j of batch b > 0 seeded by (checks, 0, j, b); batch 0 by (checks, 0, j))."""
    from ..attack.cascade import LabelledAttack, run_cascade

    stages = [LabelledAttack(a.name, a) for a in attacks]
    out = []
    for b, sl in enumerate(_chunks(x.shape[0], batch_size)):
        xb, yb = x[sl], y[sl]
        with torch.no_grad():
            correct = net(xb).argmax(1) == yb
        keys = [(0, j) if b == 0 else (0, j, b) for j in range(len(stages))]
        out.append(run_cascade(stages, net, xb, yb, threat, seeds=[stream_seed(seed, "checks", *k) for k in keys],
                               robust=correct)[1])
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool, device=x.device)


def _no_evidence(name: str, n: int) -> CheckResult:
    """A check that had nothing to look at: no image of ``n`` is classified correctly, so there is no point to attack."""
    return CheckResult(name, False, None, f"no image of the {n} is classified correctly, so there is nothing to attack "
                                          "and the check has no evidence: is this the model's dataset and input scaling?")


def check_eps_monotone(net, x, y, threat: ThreatModel, attacks, fractions=(0.25, 0.5, 1.0, 2.0),
                       batch_size: int | None = None) -> CheckResult:
    """Robust accuracy over eps * ``fractions`` must fall as eps grows (one point of slack per step).

    Passes when no step rises by more than the slack AND the curve falls overall, or is 0% from the smallest
    radius on (nothing left to fall). Flags a rise (the attack fails at a larger radius: masking) and a flat
    curve above 0% (the attack makes no progress as the ball grows: it does not fall).
    """
    if not _any_correct(net, x, y, batch_size):
        return _no_evidence("eps_monotone", len(y))
    accs = [_robust(net, x, y, threat.scaled(f), attacks, batch_size=batch_size).float().mean().item()
            for f in fractions]
    slack = 1.0 / len(y)
    rises = max(b - a for a, b in zip(accs, accs[1:]))
    sweep = ", ".join(f"{f:g}x: {100 * a:.1f}%" for f, a in zip(fractions, accs))
    if rises > slack + 1e-12:
        return CheckResult("eps_monotone", False, rises,
                           f"robust accuracy rises with eps ({sweep}): the attack is failing, likely gradient masking")
    if accs[0] == 0:
        return CheckResult("eps_monotone", True, rises, f"robust accuracy is 0% from the smallest radius on ({sweep}): "
                                                        "nothing left to fall")
    if accs[0] - accs[-1] <= slack + 1e-12:
        return CheckResult("eps_monotone", False, rises,
                           f"robust accuracy does not fall with eps ({sweep}): an attack that makes no progress as the "
                           f"ball grows {fractions[-1] / fractions[0]:g}-fold is failing (gradient masking, or a broken attack)")
    return CheckResult("eps_monotone", True, rises, f"robust accuracy falls with eps ({sweep})")


def _any_correct(net: nn.Module, x: Tensor, y: Tensor, batch_size: int | None) -> bool:
    """Whether the model classifies at least one image of ``x`` correctly (else the attack-based checks have no evidence)."""
    return bool((_logits(net, x, batch_size).argmax(1) == y).any()) if len(y) else False


def check_unbounded(net, x, y, threat: ThreatModel, attacks, limit: float = 0.02, batch_size: int | None = None) -> CheckResult:
    """With a radius covering the whole box, the attacks must break (almost) every point that was correct.

    Transformation threat models (spatial, colour, JPEG) have no radius that covers the box: the check does
    not apply to them and passes with a note saying so."""
    if not threat.is_lp:
        return CheckResult("unbounded", True, None, f"not applicable to {threat.norm}: no budget of a "
                           "transformation threat model reaches every image of the box")
    if not _any_correct(net, x, y, batch_size):
        return _no_evidence("unbounded", len(y))
    big = ThreatModel(threat.norm, box_diameter(threat.norm, tuple(x.shape[1:])))
    acc = _robust(net, x, y, big, attacks, batch_size=batch_size).float().mean().item()
    ok = acc <= limit
    return CheckResult("unbounded", ok, acc,
                       f"an unbounded {threat.norm} radius leaves {100 * acc:.1f}% robust" +
                       ("" if ok else ": it should be ~0%; the attack cannot follow the gradient (masking?)"))


def check_black_box(net, x, y, threat: ThreatModel, attacks, black_box, batch_size: int | None = None) -> CheckResult:
    """The black-box attack, run after the white-box cascade, must not break further points. ``black_box`` None:
    rbx has no black-box attack for the threat model, and the check flags that it has no evidence."""
    if black_box is None:
        return CheckResult("black_box", False, None, f"rbx has no black-box attack for {threat.label}, so nothing "
                                                     "checked the white-box attacks from outside: pass --black-box ATTACK")
    if not _any_correct(net, x, y, batch_size):
        return _no_evidence("black_box", len(y))
    robust = _robust(net, x, y, threat, attacks, batch_size=batch_size)
    idx = robust.nonzero().squeeze(1)
    if idx.numel() == 0:
        return CheckResult("black_box", True, 0.0, "the white-box attacks left no point robust: there is nothing the "
                                                   "black-box attack could break that they missed")
    extra = 0
    for b, sl in enumerate(_chunks(idx.numel(), batch_size)):
        rows = idx[sl]
        key = (1,) if b == 0 else (1, b)
        extra += int(black_box(net, x[rows], y[rows], threat, seed=stream_seed(0, "checks", *key)).success.sum())
    ok = extra == 0
    return CheckResult("black_box", ok, float(extra),
                       f"the black-box attack broke none of the {idx.numel()} points the white-box attacks left robust" if ok else
                       f"the black-box attack broke {extra} points the white-box attacks left robust: gradient masking")


def check_seed_spread(net, x, y, threat: ThreatModel, attacks, seeds=(0, 1, 2), limit: float = 0.05,
                      batch_size: int | None = None) -> CheckResult:
    """Robust accuracy of the white-box cascade across attack seeds must agree within ``limit``."""
    if not _any_correct(net, x, y, batch_size):
        return _no_evidence("seed_spread", len(y))
    flags = [_robust(net, x, y, threat, attacks, seed=s, batch_size=batch_size) for s in seeds]
    accs = [f.float().mean().item() for f in flags]
    spread = max(accs) - min(accs)
    ok = spread <= limit
    same = all(torch.equal(f, flags[0]) for f in flags[1:])
    return CheckResult("seed_spread", ok, spread,
                       f"robust accuracy across {len(seeds)} attack seeds: "
                       + ", ".join(f"{100 * a:.1f}%" for a in accs)
                       + (" (the same points robust under every seed)" if same else "")
                       + ("" if ok else f"; a spread over {100 * limit:.0f} points means the attack is unreliable here"))


def full_checks(net: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, attacks, black_box,
                on_result: Callable[[CheckResult, float], None] | None = None, randomized: bool | None = None,
                draws: int | None = None, draw_seed: int = 0, batch_size: int | None = None) -> list[CheckResult]:
    """Every check: the cheap ones, then those that run attacks, each passing at most ``batch_size`` images
    through the model at once (None: all of ``x``).

    For a randomized model (``randomized`` True, or None and the determinism check failing), also
    ``draw_spread`` (:func:`check_draw_spread`): how many points flip between
    ``draws`` fresh passes. ``on_result(result, seconds)`` is called as each check finishes (the CLI
    prints a progress line).
    """

    def cheap() -> list[CheckResult]:
        out = cheap_checks(net, x, y, batch_size)
        found = not next(r.passed for r in out if r.name == "deterministic")
        if randomized or (randomized is None and found):
            with torch.no_grad():
                out.append(check_draw_spread(net, x, y, draws or DEFAULT_DRAWS, draw_seed, batch_size=batch_size))
        return out

    steps = [cheap,
             lambda: [check_eps_monotone(net, x, y, threat, attacks, batch_size=batch_size)],
             lambda: [check_unbounded(net, x, y, threat, attacks, batch_size=batch_size)],
             lambda: [check_black_box(net, x, y, threat, attacks, black_box, batch_size=batch_size)],
             lambda: [check_seed_spread(net, x, y, threat, attacks, batch_size=batch_size)]]
    out: list[CheckResult] = []
    for step in steps:
        t0 = time.perf_counter()
        results = step()
        for r in results:
            if on_result is not None:
                on_result(r, (time.perf_counter() - t0) / len(results))
        out += results
    return out


def summarize(results: Sequence[CheckResult]) -> dict[str, Any]:
    """The record's ``checks`` block."""
    return {"passed": all(r.passed for r in results), "results": [r.to_dict() for r in results]}


def check_draw_spread(net: nn.Module, x: Tensor, y: Tensor, r: int = DEFAULT_DRAWS, seed: int = 0,
                      limit: float = 0.0, batch_size: int | None = None) -> CheckResult:
    """How far a single pass is from the majority over ``r`` draws, on clean inputs (``batch_size`` images at a time:
    batch 0 seeded by ``seed``, batch b > 0 by (checks, 2, b)).

    Per point, the share of the ``r`` passes that misclassify it; a point *flips* when some draws
    classify it correctly and others do not. ``value``: the fraction of points that flip; it fails when
    that fraction exceeds ``limit`` (default 0: any flip means single-pass verdicts depend on luck).
    """
    wrong = torch.cat([wrong_counts(net, x[sl], y[sl], r, seed if b == 0 else stream_seed(seed, "checks", 2, b))
                       for b, sl in enumerate(_chunks(x.shape[0], batch_size))]).float()
    share = wrong / r
    flips = ((wrong > 0) & (wrong < r)).float().mean().item()
    majority = (2 * wrong > r).float().mean().item()
    single = share.mean().item()  # expected error of one pass
    ok = flips <= limit
    return CheckResult(
        "draw_spread", ok, flips,
        f"over {r} draws: {100 * flips:.1f}% of points flip between draws; misclassifying share per point: mean "
        f"{share.mean().item():.3f}, max over flipping points {_max_or_zero(share[(wrong > 0) & (wrong < r)]):.3f}; "
        f"clean error {100 * single:.1f}% for one pass, {100 * majority:.1f}% by majority"
        + ("" if ok else ": the model is randomized, judge it by majority over draws (rbx run --randomized)"))


def _max_or_zero(t: Tensor) -> float:
    return float(t.max()) if t.numel() else 0.0
