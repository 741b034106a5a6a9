"""Attack losses: pure functions of logits ``[N, K]`` and labels ``[N]`` returning per-sample ``[N]``.

Every loss here is one the attacker *maximizes*.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    """Per-sample cross-entropy ``-log softmax(z)_y`` (float32 even under reduced-precision logits)."""
    return F.cross_entropy(logits.float(), y, reduction="none")


def logit_margin(logits: Tensor, y: Tensor) -> Tensor:
    """C&W margin ``max_{j != y} z_j - z_y``: positive exactly when the point is misclassified."""
    z = logits.float()
    z_y = z.gather(1, y[:, None]).squeeze(1)
    z_other = z.scatter(1, y[:, None], float("-inf")).amax(1)
    return z_other - z_y


LOSSES = {"ce": cross_entropy, "margin": logit_margin}
