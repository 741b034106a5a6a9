"""Training baselines on the shared engine: standard training, PGD-k AT, TRADES, and for multiple
norms E-AT and MAX.

- ``pgd-at`` (Madry et al., ICLR 2018): cross-entropy on PGD adversarial examples.
- ``trades`` (Zhang et al., ICML 2019): CE(f(x), y) + beta * KL(p(x) || p(x')), x' maximizing that KL.
- ``e-at`` (Croce & Hein, ICML 2022): each batch is trained against one threat model, drawn at random
  from ``threats`` (Linf or L1 for CIFAR-10). The official code draws with weights from running
  per-norm statistics; here the draw is uniform (seeded per batch).
- ``max`` (Tramèr & Boneh, NeurIPS 2019): per sample, the largest cross-entropy over the threat models'
  adversarial examples; by default Linf 8/255, L2 0.5 and L1 12, as in the paper and the RAMP code's
  ``MAX.py`` (``--l_norms 'Linf L1 L2'``).

The multi-norm adversaries are the RAMP authors' training APGD (:data:`~robustbench_ext.training.contract.TRAINING_APGD`:
10 APGD-CE steps from the clean point, L1 steps starting at 5% sparsity), not the evaluation APGD.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from robustbench_ext.training.contract import TRAINING_APGD, Defense, build_attack, threat_list
from robustbench_ext.errors import RbxError
from robustbench_ext.attack.losses import accuracy
from robustbench_ext.registry import DEFENSES
from robustbench_ext.attack.threat import ThreatModel


def trades_kl(logits_clean: Tensor, logits_adv: Tensor) -> Tensor:
    """TRADES' robust term: KL(p(x) || p(x')) summed over classes, averaged over the batch."""
    return F.kl_div(F.log_softmax(logits_adv.float(), 1), F.softmax(logits_clean.float(), 1), reduction="batchmean")


def default_base_attack(base: str) -> str:
    """The training adversary of a defense built on AT (PGD-10 on CE) or TRADES (PGD-10 on the KL), e.g. LTD, SOVR."""
    return "pgd:steps=10" if base == "at" else "trades-pgd:steps=10"


@DEFENSES.register("standard", summary="standard (non-robust) training: cross-entropy on clean inputs")
@dataclass(eq=False)
class Standard(Defense):
    """Cross-entropy on the clean (augmented) inputs: the accurate base model of a mixer, and a control."""

    name: ClassVar[str] = "standard"
    trains_on: ClassVar[tuple[str, ...] | None] = ()

    def loss(self, model, x, y, ctx):
        logits = model(x)
        return F.cross_entropy(logits.float(), y), {"clean_acc": accuracy(logits, y)}


@DEFENSES.register("pgd-at", summary="PGD adversarial training: cross-entropy on PGD-k examples (Madry et al. 2018)")
@dataclass(eq=False)
class PGDAT(Defense):
    """Cross-entropy on ``attack``'s adversarial examples under ``threat``."""

    name: ClassVar[str] = "pgd-at"
    trains_on: ClassVar[tuple[str, ...] | None] = ("threat",)
    smoke_params: ClassVar[dict] = {"attack": "pgd:steps=2"}

    threat: str = "Linf:8/255"
    attack: str = "pgd:steps=10"

    def __post_init__(self) -> None:
        self._threat = ThreatModel.parse(self.threat)
        self._attack = build_attack(self.attack, self.name)

    def loss(self, model, x, y, ctx):
        logits = model(ctx.adversary(self._attack, model, x, y, self._threat))
        return F.cross_entropy(logits.float(), y), {"adv_acc": accuracy(logits, y)}


@DEFENSES.register("trades", summary="TRADES: CE on clean inputs + beta * KL(p(x) || p(x')) (Zhang et al. 2019)")
@dataclass(eq=False)
class TRADES(Defense):
    """TRADES with its KL adversary (``trades-pgd``)."""

    name: ClassVar[str] = "trades"
    trains_on: ClassVar[tuple[str, ...] | None] = ("threat",)
    smoke_params: ClassVar[dict] = {"attack": "trades-pgd:steps=2"}

    threat: str = "Linf:8/255"
    attack: str = "trades-pgd:steps=10"
    beta: float = 6.0

    def __post_init__(self) -> None:
        self._threat = ThreatModel.parse(self.threat)
        self._attack = build_attack(self.attack, self.name)

    def loss(self, model, x, y, ctx):
        x_adv = ctx.adversary(self._attack, model, x, y, self._threat)
        clean, adv = model(x), model(x_adv)
        loss = F.cross_entropy(clean.float(), y) + self.beta * trades_kl(clean, adv)
        return loss, {"clean_acc": accuracy(clean, y), "adv_acc": accuracy(adv, y)}


@dataclass(eq=False)
class _MultiNorm(Defense):
    threats: list[str] = field(default_factory=lambda: ["Linf:8/255", "L1:12"])
    attack: str = TRAINING_APGD

    def __post_init__(self) -> None:
        self._threats = threat_list(self.threats, self.name)
        if len(self._threats) < 2:
            raise RbxError(f"defense '{self.name}' needs at least two threat models")
        self._attack = build_attack(self.attack, self.name)


@DEFENSES.register("e-at", summary="E-AT: each batch against one threat model drawn at random (Croce & Hein 2022)")
@dataclass(eq=False)
class EAT(_MultiNorm):
    """Extreme-norm AT: one threat model per batch (uniform draw), cross-entropy on its adversarial examples."""

    name: ClassVar[str] = "e-at"
    trains_on: ClassVar[tuple[str, ...] | None] = ("threats",)
    smoke_params: ClassVar[dict] = {"attack": "apgd-ce:steps=2"}

    def loss(self, model, x, y, ctx):
        k = int(torch.randint(len(self._threats), (1,), generator=ctx.generator))
        logits = model(ctx.adversary(self._attack, model, x, y, self._threats[k]))
        return F.cross_entropy(logits.float(), y), {"adv_acc": accuracy(logits, y), f"share_{self._threats[k].norm}": torch.tensor(1.0)}


@DEFENSES.register("max", summary="MAX: per sample, the worst cross-entropy over the threat models (Tramèr & Boneh 2019)")
@dataclass(eq=False)
class MAX(_MultiNorm):
    """Per-sample maximum of the cross-entropies at each threat model's adversarial example."""

    name: ClassVar[str] = "max"
    trains_on: ClassVar[tuple[str, ...] | None] = ("threats",)
    smoke_params: ClassVar[dict] = {"attack": "apgd-ce:steps=2"}

    threats: list[str] = field(default_factory=lambda: ["Linf:8/255", "L2:0.5", "L1:12"])

    def loss(self, model, x, y, ctx):
        logits = [model(ctx.adversary(self._attack, model, x, y, t)) for t in self._threats]
        ce = torch.stack([F.cross_entropy(z.float(), y, reduction="none") for z in logits])
        correct = torch.stack([z.argmax(1) == y for z in logits]).all(0)  # robust under every threat model
        return ce.max(0).values.mean(), {"adv_acc": correct.float().mean()}
