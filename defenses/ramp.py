"""RAMP (Jiang & Singh, "RAMP: Boosting Adversarial Robustness Against Multiple lp Perturbations",
NeurIPS 2024) on the shared engine.

Per batch (attacks with the model in eval mode): APGD adversaries under the ``source`` (Linf) and
``target`` (L1) threat models, ``steps`` = 10; the loss is

    L = mean_i max(CE(z(x'_src,i), y_i), CE(z(x'_tgt,i), y_i))  +  lbd * KL(p(x'_src) || p(x'_tgt)),

the KL taken over the samples whose source adversarial example is classified correctly (the mask is
detached, both sides keep their gradients; :func:`ramp_kl`). The adversaries are the authors' training
APGD (:data:`~robustbench_ext.training.contract.TRAINING_APGD`). With ``gp``, once per epoch, a natural model
trains one clean epoch from the epoch's starting weights, and the two updates are combined layer by layer
(:func:`gradient_projection`): theta_old + (1 - beta) g_adv + beta max(0, cos(g_adv, g_nat)) g_nat.
As in the official ``RAMP.py``, the natural model has ONE optimizer for the whole run (its momentum
carries over from epoch to epoch), built like the adversarial one (the engine's optimizer, no weight decay
on biases and BatchNorm), and its learning rate follows the run's schedule batch by batch: its epoch e
runs at the same rates as the adversarial epoch e. Its state is part of the training checkpoint.
Modes: ``finetune`` (lbd 1.5, no GP: the official fine-tuning setting) and ``scratch`` (lbd 5, GP on).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from robustbench_ext.training.contract import TRAINING_APGD, Defense, build_attack
from robustbench_ext.errors import RbxError
from robustbench_ext.attack.losses import accuracy
from robustbench_ext.registry import DEFENSES
from robustbench_ext.attack.threat import ThreatModel

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
    trains_on: ClassVar[tuple[str, ...] | None] = ("source", "target")
    smoke_params: ClassVar[dict] = {"attack": "apgd-ce:steps=2"}

    source: str = "Linf:8/255"
    target: str = "L1:12"
    attack: str = TRAINING_APGD
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
        self._nat_model = self._nat_opt = self._nat_sched = None

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
    def setup(self, trainer):
        if not self.gp:
            return
        from robustbench_ext.training.engine import make_optimizer

        # One natural model, optimizer and schedule for the whole run (the weights are reset every epoch).
        self._nat_model = copy.deepcopy(trainer.model)
        self._nat_opt = make_optimizer(self._nat_model, trainer.cfg)
        self._nat_sched = trainer.make_schedule(self._nat_opt)

    def state_dict(self):
        if not self.gp:
            return None
        return {"nat_opt": self._nat_opt.state_dict(), "nat_sched": self._nat_sched.state_dict()}

    def load_state_dict(self, state, trainer):
        if not self.gp:
            return
        if state is None:
            raise RbxError(f"the checkpoint in {trainer.out} has no state of RAMP's natural-training optimizer "
                           "(written by an older rbx): restart the run with --no-resume")
        self._nat_opt.load_state_dict(state["nat_opt"])
        self._nat_sched.load_state_dict(state["nat_sched"])

    def epoch_start(self, trainer, epoch):
        if not self.gp:
            return
        self._old = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        self._nat_model.load_state_dict(trainer.model.state_dict())

        def clean(model, x, y, ctx):
            return F.cross_entropy(model(x).float(), y), {}

        trainer.run_epoch(epoch, self._nat_model, self._nat_opt, self._nat_sched, clean, f"epoch {epoch + 1} natural (GP)")
        self._nat = {k: v.detach().clone() for k, v in self._nat_model.state_dict().items()}

    def epoch_end(self, trainer, epoch):
        if not self.gp or self._old is None:
            return None
        adv = {k: v.detach() for k, v in trainer.model.state_dict().items()}
        trainer.model.load_state_dict(gradient_projection(self._old, adv, self._nat, self.beta))
        params = [k for k, _ in trainer.model.named_parameters()]
        stats = {"gp_nat_update": round(_update_norm(self._old, self._nat, params), 6),
                 "gp_adv_update": round(_update_norm(self._old, adv, params), 6)}
        self._old = self._nat = None
        return stats


def _update_norm(old: dict[str, Tensor], new: dict[str, Tensor], keys: list[str]) -> float:
    """L2 norm of ``new - old`` over the tensors ``keys`` (the parameters: how far an epoch's optimizer moved them;
    BN running statistics, which move even at a zero learning rate, are left out)."""
    return sum(float((new[k].double() - old[k].double()).pow(2).sum()) for k in keys) ** 0.5
