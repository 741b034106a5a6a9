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
  0): the attacks zero such entries and count them (the record's ``nonfinite_grads``).

Attack-based checks (:func:`full_checks`, ``rbx check``) need a threat model and attacks:

- ``eps_monotone``: robust accuracy must not rise as eps grows (a sweep over fractions of eps);
- ``unbounded``: with a radius that covers the whole [0, 1] box, robust accuracy must reach ~0%;
- ``black_box``: a black-box attack (Square) run after the white-box cascade must not break points
  the white-box attacks left robust;
- ``seed_spread``: the white-box cascade's robust accuracy must not vary much across attack seeds.

Each check gives a :class:`CheckResult` with a one-line message; ``passed`` False means "look here".
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
from ..runtime import stream_seed
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
                       "or wrap it to return log-probabilities)" if is_prob else "outputs are logits")


@torch.no_grad()
def check_deterministic(net: nn.Module, x: Tensor) -> CheckResult:
    """Flag a model whose logits differ between two passes on the same inputs."""
    a, b = net(x).float(), net(x).float()
    diff = float((a - b).abs().max())
    scale = float(a.abs().max()) or 1.0
    ok = diff <= 1e-5 * max(scale, 1.0)
    return CheckResult("deterministic", ok, diff,
                       "outputs are deterministic" if ok else
                       f"two passes on the same inputs differ by up to {diff:.3g}: a randomized model needs "
                       "EoT attacks (eot=K on rbx's attacks, or autoattack:version=rand) and single-run numbers are "
                       "optimistic; rbx run judges it by majority over draws (--draws)")


def _input_gradient(net: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    with torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        loss = F.cross_entropy(net(xg).float(), y, reduction="sum")
        (g,) = torch.autograd.grad(loss, xg)
    return g


def check_finite_gradients(g: Tensor) -> CheckResult:
    """Flag points whose input gradient has NaN or inf entries (the attacks zero them and count them)."""
    bad = (~torch.isfinite(g)).reshape(g.shape[0], -1).any(1).float().mean().item()
    ok = bad == 0
    return CheckResult("finite_gradients", ok, bad,
                       "input gradients are finite" if ok else
                       f"{100 * bad:.1f}% of points have NaN or inf input-gradient entries (e.g. sqrt or log at 0): the "
                       "attacks zero those entries and count them in the record; the model's gradients are unreliable there")


def check_zero_gradients(net: nn.Module, x: Tensor, y: Tensor, g: Tensor | None = None) -> CheckResult:
    """Flag points whose cross-entropy input gradient is exactly zero (a sign of masked gradients)."""
    g = _input_gradient(net, x, y) if g is None else g
    zero = (torch.nan_to_num(g).reshape(g.shape[0], -1).abs().sum(1) == 0).float().mean().item()
    ok = zero == 0
    return CheckResult("zero_gradients", ok, zero,
                       "input gradients are non-zero" if ok else
                       f"{100 * zero:.1f}% of points have an exactly zero input gradient: gradient masking "
                       "(quantization, thresholds?); white-box numbers cannot be trusted, use black-box or adaptive attacks")


def cheap_checks(net: nn.Module, x: Tensor, y: Tensor, label_only: bool = False) -> list[CheckResult]:
    """The checks the runner runs before every evaluation, on a small batch (model in eval mode).

    ``label_only``: the model answers with labels only; its outputs are no scores and no gradient is taken,
    so only the determinism check runs (the probability and gradient checks do not apply).
    """
    if label_only:
        return [check_deterministic(net, x)]
    with torch.no_grad():
        logits = net(x)
    g = _input_gradient(net, x, y)
    return [check_probabilities(logits), check_deterministic(net, x), check_zero_gradients(net, x, y, g),
            check_finite_gradients(g)]


# ---- attack-based checks ---------------------------------------------------------------------------
def _robust(net: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, attacks: Sequence, seed: int = 0) -> Tensor:
    """[N] bool: correct and robust after the cascade ``attacks`` (points misclassified clean count as broken)."""
    from ..attack.cascade import LabelledAttack, run_cascade

    with torch.no_grad():
        correct = net(x).argmax(1) == y
    stages = [LabelledAttack(a.name, a) for a in attacks]
    return run_cascade(stages, net, x, y, threat, seeds=[stream_seed(seed, "checks", 0, j) for j in range(len(stages))], robust=correct)[1]


def check_eps_monotone(net, x, y, threat: ThreatModel, attacks, fractions=(0.25, 0.5, 1.0, 2.0)) -> CheckResult:
    """Robust accuracy over eps * ``fractions`` must be non-increasing (one point of slack)."""
    accs = [_robust(net, x, y, threat.scaled(f), attacks).float().mean().item() for f in fractions]
    slack = 1.0 / len(y)
    ok = all(b <= a + slack + 1e-12 for a, b in zip(accs, accs[1:]))
    sweep = ", ".join(f"{f:g}x: {100 * a:.1f}%" for f, a in zip(fractions, accs))
    return CheckResult("eps_monotone", ok, max(b - a for a, b in zip(accs, accs[1:])),
                       f"robust accuracy falls with eps ({sweep})" if ok else
                       f"robust accuracy rises with eps ({sweep}): the attack is failing, likely gradient masking")


def check_unbounded(net, x, y, threat: ThreatModel, attacks, limit: float = 0.02) -> CheckResult:
    """With a radius covering the whole box, the attacks must break (almost) every point.

    Transformation threat models (spatial, colour, JPEG) have no radius that covers the box: the check does
    not apply to them and passes with a note saying so."""
    if not threat.is_lp:
        return CheckResult("unbounded", True, None, f"not applicable to {threat.norm}: no budget of a "
                           "transformation threat model reaches every image of the box")
    big = ThreatModel(threat.norm, box_diameter(threat.norm, tuple(x.shape[1:])))
    acc = _robust(net, x, y, big, attacks).float().mean().item()
    ok = acc <= limit
    return CheckResult("unbounded", ok, acc,
                       f"an unbounded {threat.norm} radius leaves {100 * acc:.1f}% robust" +
                       ("" if ok else ": it should be ~0%; the attack cannot follow the gradient (masking?)"))


def check_black_box(net, x, y, threat: ThreatModel, attacks, black_box) -> CheckResult:
    """The black-box attack, run after the white-box cascade, must not break further points."""
    robust = _robust(net, x, y, threat, attacks)
    idx = robust.nonzero().squeeze(1)
    extra = 0
    if idx.numel():
        extra = int(black_box(net, x[idx], y[idx], threat, seed=stream_seed(0, "checks", 1)).success.sum())
    ok = extra == 0
    return CheckResult("black_box", ok, float(extra),
                       "the black-box attack broke no point the white-box attacks left robust" if ok else
                       f"the black-box attack broke {extra} points the white-box attacks left robust: gradient masking")


def check_seed_spread(net, x, y, threat: ThreatModel, attacks, seeds=(0, 1, 2), limit: float = 0.05) -> CheckResult:
    """Robust accuracy of the white-box cascade across attack seeds must agree within ``limit``."""
    accs = [_robust(net, x, y, threat, attacks, seed=s).float().mean().item() for s in seeds]
    spread = max(accs) - min(accs)
    ok = spread <= limit
    return CheckResult("seed_spread", ok, spread,
                       f"robust accuracy across {len(seeds)} attack seeds: "
                       + ", ".join(f"{100 * a:.1f}%" for a in accs)
                       + ("" if ok else f"; a spread over {100 * limit:.0f} points means the attack is unreliable here"))


def full_checks(net: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, attacks, black_box,
                on_result: Callable[[CheckResult, float], None] | None = None, randomized: bool | None = None,
                draws: int | None = None, draw_seed: int = 0) -> list[CheckResult]:
    """Every check: the cheap ones, then those that run attacks.

    For a randomized model (``randomized`` True, or None and the determinism check failing), also
    ``draw_spread`` (:func:`check_draw_spread`): how many points flip between
    ``draws`` fresh passes. ``on_result(result, seconds)`` is called as each check finishes (the CLI
    prints a progress line).
    """

    def cheap() -> list[CheckResult]:
        out = cheap_checks(net, x, y)
        found = not next(r.passed for r in out if r.name == "deterministic")
        if randomized or (randomized is None and found):
            with torch.no_grad():
                out.append(check_draw_spread(net, x, y, draws or DEFAULT_DRAWS, draw_seed))
        return out

    steps = [cheap,
             lambda: [check_eps_monotone(net, x, y, threat, attacks)],
             lambda: [check_unbounded(net, x, y, threat, attacks)],
             lambda: [check_black_box(net, x, y, threat, attacks, black_box)],
             lambda: [check_seed_spread(net, x, y, threat, attacks)]]
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
                      limit: float = 0.0) -> CheckResult:
    """How far a single pass is from the majority over ``r`` draws, on clean inputs.

    Per point, the share of the ``r`` passes that misclassify it; a point *flips* when some draws
    classify it correctly and others do not. ``value``: the fraction of points that flip; it fails when
    that fraction exceeds ``limit`` (default 0: any flip means single-pass verdicts depend on luck).
    """
    wrong = wrong_counts(net, x, y, r, seed).float()
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
