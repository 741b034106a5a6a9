"""SOVR: the switching one-vs-the-rest loss (Kanai et al., arXiv 2207.10283), with AT or TRADES.

Per batch, the samples are ranked by the logit margin ``z_y(x') - max_{k != y} z_k(x')`` of their
adversarial examples (no gradient). The fraction ``M`` with the smallest margins (the "important"
samples) get ``lbd * OVR``, the rest cross-entropy:

    L = (1/|B|) [ sum_{i not in I} CE(z_i, y_i) + lbd * sum_{i in I} OVR(z_i, y_i) ],
    OVR(z, y) = softplus(-z_y) + sum_{k != y} softplus(z_k),

where z are the adversarial logits for AT, and for TRADES the clean logits of its CE term (plus TRADES'
beta * KL term). M = 0 is exactly CE-AT (or TRADES). Defaults M = 0.4, lbd = 1 (the paper's values are
not confirmed: see ../shared/research/defenses.md §d).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from robustbench_ext.training.contract import Defense, build_attack
from robustbench_ext.errors import RbxError
from robustbench_ext.registry import DEFENSES
from robustbench_ext.attack.threat import ThreatModel

from robustbench_ext.attack.losses import accuracy

from .baselines import default_base_attack, trades_kl


def ovr_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Per-sample one-vs-the-rest loss: ``softplus(-z_y) + sum_{k != y} softplus(z_k)``."""
    z = logits.float()
    onehot = F.one_hot(y, z.shape[1]).bool()
    return torch.where(onehot, F.softplus(-z), F.softplus(z)).sum(1)


def logit_margin(logits: Tensor, y: Tensor) -> Tensor:
    """``z_y - max_{k != y} z_k`` (negative when misclassified)."""
    z = logits.float()
    return z.gather(1, y[:, None]).squeeze(1) - z.scatter(1, y[:, None], float("-inf")).amax(1)


def switching_loss(z: Tensor, y: Tensor, margins: Tensor, fraction: float, lbd: float) -> tuple[Tensor, Tensor]:
    """The SOVR loss on logits ``z`` with the important set chosen by ``margins``; also returns the mask."""
    n = z.shape[0]
    k = int(round(fraction * n))
    important = torch.zeros(n, dtype=torch.bool, device=z.device)
    if k > 0:
        important[margins.detach().argsort()[:k]] = True
    per = torch.where(important, lbd * ovr_loss(z, y), F.cross_entropy(z.float(), y, reduction="none"))
    return per.mean(), important


@DEFENSES.register("sovr", summary="SOVR: one-vs-the-rest loss on the M smallest-margin samples, CE on the rest (Kanai et al.)")
@dataclass(eq=False)
class SOVR(Defense):
    """See the module docstring."""

    name: ClassVar[str] = "sovr"
    trains_on: ClassVar[tuple[str, ...] | None] = ("threat",)
    smoke_params: ClassVar[dict] = {"attack": "pgd:steps=2"}

    M: float = 0.4
    lbd: float = 1.0
    base: str = "at"
    threat: str = "Linf:8/255"
    attack: str | None = None  # default: pgd:steps=10 for at, trades-pgd:steps=10 for trades
    beta: float = 6.0

    def __post_init__(self) -> None:
        if not 0 <= self.M <= 1 or self.lbd < 0:
            raise RbxError("defense 'sovr': M must be in [0, 1] and lbd >= 0")
        if self.base not in ("at", "trades"):
            raise RbxError(f"defense 'sovr': base must be at or trades, got '{self.base}'")
        self._threat = ThreatModel.parse(self.threat)
        if self.attack is None:
            self.attack = default_base_attack(self.base)
        self._attack = build_attack(self.attack, self.name)

    def loss(self, model, x, y, ctx):
        x_adv = ctx.adversary(self._attack, model, x, y, self._threat)
        adv = model(x_adv)
        margins = logit_margin(adv, y).detach()
        if self.base == "at":
            loss, imp = switching_loss(adv, y, margins, self.M, self.lbd)
            return loss, {"adv_acc": accuracy(adv, y), "ovr_share": imp.float().mean(),
                          "margin": margins.mean()}
        clean = model(x)
        loss, imp = switching_loss(clean, y, margins, self.M, self.lbd)
        return loss + self.beta * trades_kl(clean, adv), {"clean_acc": accuracy(clean, y), "adv_acc": accuracy(adv, y),
                                                           "ovr_share": imp.float().mean(), "margin": margins.mean()}
