"""Re-checks over draws: how a randomized model's clean and adversarial predictions are judged.

A randomized model (random noise, random resizing, stochastic activations) gives a different prediction
at each forward pass, so one pass decides a point by luck: an adversarial point may fool one draw and not
the next, a clean point may be misclassified by one unlucky draw. rbx judges such a model by majority:

    a point is broken (or, clean, misclassified) only if the model misclassifies it in a strict
    majority of R fresh forward passes; a tie is not a majority.

The R passes are seeded (torch's global RNG, forked so that the caller's stream is left as it was) by a
fixed seed that the record keeps, derived per (stage, batch), so the same run gives the same verdicts on
CPU. This is the evaluation side of AutoAttack's ``rand`` version (Croce & Hein, ICML 2020: APGD-CE and
APGD-DLR with EOT over 20 draws against randomized defenses), whose repository discusses that a single
pass at the end of the attack over- or under-counts successes on randomized defenses
(https://github.com/fra31/auto-attack/issues). The attacks themselves average gradients over draws with
``eot=K`` (:class:`robustbench_ext.attack.base.AttackContext`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..runtime import check_seed, stream_seed
from ..errors import RbxError

#: Default number of fresh passes per re-check (odd: a strict majority always exists).
DEFAULT_DRAWS = 11
#: The rule as the record states it.
RULE = "broken (clean: misclassified) iff misclassified in a strict majority of R fresh forward passes"


@dataclass(frozen=True)
class Draws:
    """The re-check setting of a run on a randomized model: ``r`` passes per point, seeded by ``seed``.

    ``source``: why the run re-checks (``declared``: the user said the model is randomized; ``detected``:
    the determinism pre-check found two passes that differ).
    """

    r: int = DEFAULT_DRAWS
    seed: int = 0
    source: str = "declared"

    def __post_init__(self) -> None:
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise RbxError(f"draws must be a positive integer (fresh forward passes per re-check), got {self.r!r}")
        check_seed(self.seed, "draw seed")  # distinct seeds, distinct draws: nothing outside [0, 2**32) is cut down

    def describe(self) -> dict[str, Any]:
        """The record's ``draws`` block."""
        return {"r": self.r, "seed": self.seed, "rule": RULE, "source": self.source}


@torch.no_grad()
def wrong_counts(net: nn.Module, x: Tensor, y: Tensor, r: int, seed: int) -> Tensor:
    """``[N]`` int64: in how many of ``r`` fresh passes ``net`` misclassifies each row of ``x`` ``[N, ...]``.

    torch's global RNG (CPU, and the CUDA device of ``x``) is forked and seeded by ``seed`` for the ``r``
    passes, so the draws are reproducible and the caller's random stream is unchanged afterwards.
    """
    devices = [x.device] if x.device.type == "cuda" else []
    wrong = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        for _ in range(r):
            wrong += (net(x).argmax(1) != y).long()
    return wrong


def majority_wrong(net: nn.Module, x: Tensor, y: Tensor, r: int, seed: int) -> Tensor:
    """``[N]`` bool: misclassified in a strict majority of ``r`` seeded fresh passes (:func:`wrong_counts`)."""
    return 2 * wrong_counts(net, x, y, r, seed) > r


def batch_seed(draws: Draws, *key: Any) -> int:
    """The draws' seed for one re-check (a stage and batch, or the clean pass), from the run's draw seed."""
    return stream_seed(draws.seed, "draws", *key)
