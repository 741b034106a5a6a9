"""Attack losses: pure functions of logits ``[N, K]`` and labels ``[N]`` returning per-sample ``[N]``.

Every loss here is one the attacker *maximizes*; each is computed in float32 whatever the logits' dtype.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    """Per-sample cross-entropy ``-log softmax(z)_y``."""
    return F.cross_entropy(logits.float(), y, reduction="none")


def _true_and_best_other(values: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """``v_y`` and ``max_{j != y} v_j`` per sample."""
    v_y = values.gather(1, y[:, None]).squeeze(1)
    v_other = values.scatter(1, y[:, None], float("-inf")).amax(1)
    return v_y, v_other


def logits_true_and_best_other(logits: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """``z_y`` and ``z_max = max_{j != y} z_j`` of the logits (in float32)."""
    return _true_and_best_other(logits.float(), y)


def logit_margin(logits: Tensor, y: Tensor) -> Tensor:
    """C&W margin ``max_{j != y} z_j - z_y``: positive exactly when the point is misclassified."""
    z_y, z_other = logits_true_and_best_other(logits, y)
    return z_other - z_y


def cw_margin(logits: Tensor, y: Tensor, kappa: float = 0.0) -> Tensor:
    """Carlini & Wagner's (2017) margin, capped at the confidence ``kappa``: ``min(max_{j!=y} z_j - z_y, kappa)``.

    The attacker maximizes it; C&W minimize its negative, ``max(z_y - max_{j!=y} z_j, -kappa)``: once the
    point is misclassified by a margin ``kappa``, the term stops pulling and only the distance counts.
    """
    return logit_margin(logits, y).clamp_max(kappa)


def dlr(logits: Tensor, y: Tensor) -> Tensor:
    """Difference of logits ratio (Croce & Hein 2020): ``-(z_y - max_{j!=y} z_j) / (z_pi1 - z_pi3)``.

    Invariant to shifting and rescaling the logits; needs at least 3 classes.
    """
    z = logits.float()
    z_sorted = z.sort(dim=1, descending=True).values
    z_y, z_other = _true_and_best_other(z, y)
    return -(z_y - z_other) / (z_sorted[:, 0] - z_sorted[:, 2] + 1e-12)


def dlr_targeted(logits: Tensor, y: Tensor, target: Tensor) -> Tensor:
    """Targeted DLR (Croce & Hein 2020): ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)``; needs >= 4 classes."""
    z = logits.float()
    z_sorted = z.sort(dim=1, descending=True).values
    z_y = z.gather(1, y[:, None]).squeeze(1)
    z_t = z.gather(1, target[:, None]).squeeze(1)
    return -(z_y - z_t) / (z_sorted[:, 0] - 0.5 * (z_sorted[:, 2] + z_sorted[:, 3]) + 1e-12)


def probabilities_true_and_best_other(logits: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """``p_y`` and ``p_max = max_{j != y} p_j`` of ``softmax(z)``."""
    return _true_and_best_other(logits.float().softmax(dim=1), y)


def probability_margin(logits: Tensor, y: Tensor) -> Tensor:
    """PMA's probability margin ``p_max - p_y`` in [-1, 1] (Xie et al., CVPR 2025): > 0 iff misclassified."""
    p_y, p_other = probabilities_true_and_best_other(logits, y)
    return p_other - p_y


def accuracy(logits: Tensor, y: Tensor) -> Tensor:
    """Share of rows whose argmax is the label (a 0-d float tensor: no host sync)."""
    return (logits.argmax(1) == y).float().mean()


LOSSES = {"ce": cross_entropy, "margin": logit_margin, "dlr": dlr, "pm": probability_margin}
