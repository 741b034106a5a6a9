"""RAMP (Jiang & Singh, "RAMP: Boosting Adversarial Robustness Against Multiple lp Perturbations",
NeurIPS 2024) on the shared engine.

Per batch (attacks with the model in eval mode): APGD adversaries under the ``source`` (Linf) and
``target`` (L1) threat models, ``steps`` = 10; the loss is

    L = mean_i max(CE(z(x'_src,i), y_i), CE(z(x'_tgt,i), y_i))  +  lbd * KL(p(x'_src) || p(x'_tgt)),

the KL taken over the samples whose source adversarial example is classified correctly (the mask is
detached, both sides keep their gradients; :func:`ramp_kl`). With ``gp``, once per epoch, a copy of the
model trains one clean epoch from the epoch's starting weights, and the two updates are combined layer
by layer (:func:`gradient_projection`): theta_old + (1 - beta) g_adv + beta max(0, cos(g_adv, g_nat)) g_nat.
Modes: ``finetune`` (lbd 1.5, no GP: the official fine-tuning setting) and ``scratch`` (lbd 5, GP on).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from robustbench_ext.defense import Defense, build_attack
from robustbench_ext.errors import RbxError
from robustbench_ext.losses import accuracy
from robustbench_ext.registry import DEFENSES
from robustbench_ext.threat import ThreatModel

MODES = {"finetune": {"lbd": 1.5, "gp": False}, "scratch": {"lbd": 5.0, "gp": True}}


def ramp_kl(z_source: Tensor, z_target: Tensor, y: Tensor) -> Tensor:
    """KL(p_source || p_target) averaged over the samples whose source logits are correct (mask detached)."""
    keep = (z_source.argmax(1) == y).detach()
    if not keep.any():
        return z_source.sum() * 0.0
    kl = F.kl_div(F.log_softmax(z_target.float(), 1), F.softmax(z_source.float(), 1), reduction="none").sum(1)
    return (kl * keep).sum() / keep.sum()


def gradient_projection(old: dict[str, Tensor], adv: dict[str, Tensor], nat: dict[str, Tensor],
                        beta: float = 0.5) -> dict[str, Tensor]:
    """RAMP's layer-wise combination of an adversarial and a natural update from the same start.

    For each floating tensor: ``old + (1 - beta) g_adv + beta * max(0, cos(g_adv, g_nat)) * g_nat`` with
    ``g = theta - old`` (BN running statistics included); other buffers are taken from ``adv``.
    """
    out = {}
    for k, a in adv.items():
        if not a.is_floating_point():
            out[k] = a.clone()
            continue
        g_adv, g_nat = (a - old[k]).flatten().double(), (nat[k] - old[k]).flatten().double()
        denom = g_adv.norm() * g_nat.norm()
        cos = float(g_adv @ g_nat / denom) if denom > 0 else 0.0
        new = old[k].double() + (1 - beta) * (a.double() - old[k].double()) + beta * max(0.0, cos) * (nat[k].double() - old[k].double())
        out[k] = new.to(a.dtype)
    return out


@DEFENSES.register("ramp", summary="RAMP: MAX over Linf/L1 APGD + lbd * KL logit pairing, optional gradient projection (Jiang & Singh 2024)")
@dataclass(eq=False)
class RAMP(Defense):
    """See the module docstring; ``lbd``/``gp`` left as None take the ``mode``'s values."""

    name: ClassVar[str] = "ramp"
    smoke_params: ClassVar[dict] = {"attack": "apgd-ce:steps=2"}

    source: str = "Linf:8/255"
    target: str = "L1:12"
    attack: str = "apgd-ce:steps=10"
    mode: str = "finetune"
    lbd: float | None = None
    gp: bool | None = None
    beta: float = 0.5
    max_loss: bool = True

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise RbxError(f"defense 'ramp': unknown mode '{self.mode}'; known: {', '.join(MODES)}")
        self.lbd = MODES[self.mode]["lbd"] if self.lbd is None else float(self.lbd)
        self.gp = MODES[self.mode]["gp"] if self.gp is None else bool(self.gp)
        if self.lbd < 0 or not 0 <= self.beta <= 1:
            raise RbxError("defense 'ramp': lbd must be >= 0 and beta in [0, 1]")
        self._src, self._tgt = ThreatModel.parse(self.source), ThreatModel.parse(self.target)
        self._attack = build_attack(self.attack, self.name)
        self._old = self._nat = None

    def loss(self, model, x, y, ctx):
        z_s = model(ctx.adversary(self._attack, model, x, y, self._src))
        z_t = model(ctx.adversary(self._attack, model, x, y, self._tgt))
        ce_s = F.cross_entropy(z_s.float(), y, reduction="none")
        ce_t = F.cross_entropy(z_t.float(), y, reduction="none")
        ce = torch.maximum(ce_s, ce_t).mean() if self.max_loss else ce_s.mean()
        kl = ramp_kl(z_s, z_t, y)
        return ce + self.lbd * kl, {"kl": kl.detach(), "adv_acc": ((z_s.argmax(1) == y) & (z_t.argmax(1) == y)).float().mean(),
                                    f"acc_{self._src.norm}": accuracy(z_s, y), f"acc_{self._tgt.norm}": accuracy(z_t, y)}

    # ---- gradient projection, once per epoch -----------------------------------------------------------
    def epoch_start(self, trainer, epoch):
        if not self.gp:
            return
        self._old = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        nat = copy.deepcopy(trainer.model)
        lr = trainer.sched.get_last_lr()[0] if trainer.sched is not None else trainer.cfg.lr
        opt = torch.optim.SGD(nat.parameters(), lr=max(lr, 1e-8), momentum=trainer.cfg.momentum,
                              weight_decay=trainer.cfg.weight_decay)

        def clean(model, x, y, ctx):
            return F.cross_entropy(model(x).float(), y), {}

        trainer.run_epoch(epoch, nat, opt, None, clean, f"epoch {epoch + 1} natural (GP)")
        self._nat = {k: v.detach().clone() for k, v in nat.state_dict().items()}

    def epoch_end(self, trainer, epoch):
        if not self.gp or self._old is None:
            return
        adv = {k: v.detach() for k, v in trainer.model.state_dict().items()}
        trainer.model.load_state_dict(gradient_projection(self._old, adv, self._nat, self.beta))
        self._old = self._nat = None
