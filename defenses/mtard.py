"""Adversarial distillation from robust teachers: MTARD (two teachers) and RSLAD (one), on the training engine.

MTARD (Zhao, Yu, Sun, Zhang & Wei, "Enhanced Accuracy and Robustness via Multi-Teacher Adversarial
Distillation", ECCV 2022; ../shared/research/defenses.md §e). Two frozen teachers: a naturally trained
one T_nat and an adversarially trained one T_adv. Per batch:

- x' = PGD on the student's own cross-entropy (10 steps of 2/255 in Linf 8/255, start x + 0.001 N(0, I));
- L_adv = KL(softmax(T_adv(x') / tau_adv) || softmax(S(x'))), L_nat = KL(softmax(T_nat(x) / tau_nat) || softmax(S(x))),
  each averaged over the batch AND the classes (the official code's ``torch.mean`` of the elementwise terms);
- normalization loss balance: relative losses r = L / L_initial against their values at the first batch,
  w_nat <- w_nat - eta * (w_nat - r_nat / (r_nat + r_adv)), w_adv = 1 - w_nat (weights start at 1/2, and
  are updated before the loss of the same batch is formed, as in the official code); loss = w_adv L_adv + w_nat L_nat.
- eta = 0.025, multiplied by 0.1 at each learning-rate decay in the official code (LR x0.1 at epochs 215,
  260, 285 of 300). With rbx's schedules, eta is multiplied by exactly the factor the trainer applies to
  the learning rate at that batch (:func:`robustbench_ext.training.engine.lr_factor`): on ``--schedule piecewise``
  that is the official x0.1 per decay; on ``onecycle`` eta also warms up and decays linearly with the LR.

Entropy-Based Balance (on by default; ``balance=false`` turns it off): the MTARD paper (ECCV 2022, and its
journal version, arXiv:2306.16170, v1 "... via Multi-Teacher Adversarial Distillation", later "Balanced
MTARD") makes it part of the method: the teachers' temperatures are adjusted so that their information
entropies agree. The ECCV code release fixes both temperatures at 1 and leaves it out; the authors'
extension code (zhaoshiji123/MTARD-extension) implements it, and rbx follows that code: per batch, with
H_adv = mean over the batch of the entropy of softmax(T_adv(x') / tau_adv) and H_nat the same for
softmax(T_nat(x) / tau_nat), both at the temperatures the batch's losses used,

    tau_adv <- clip(tau_adv - lr_tau * sign(H_adv / H_nat - 1), 1, 10)
    tau_nat <- clip(tau_nat - lr_tau * sign(H_nat / H_adv - 1), 1, 10)

so the teacher with the larger entropy is sharpened and the other softened, by lr_tau = 0.001 per batch,
decayed like eta; temperatures start at 1. (The authors' code averages p log p over batch AND classes and
adds 1e-5 inside the log; the ratio H_adv / H_nat, all that the sign reads, is the same up to that 1e-5.)
The updated temperatures take effect from the next batch. ``balance=false`` is MTARD as the ECCV code
runs it (fixed temperatures). ``balance_temperature``, the option's name in rbx 0.2.0 (off by default there), still works
with a DeprecationWarning.

The loss weights, the initial losses and the temperatures are state that survives checkpoint/resume
(:meth:`MTARD.state_dict`).

RSLAD (Zi, Zhao, Ma & Jiang, "Revisiting Adversarial Robustness Distillation: Robust Soft Labels Make
Student Better", ICCV 2021; zibojia/RSLAD), the single-teacher baseline: the robust teacher's prediction
on the CLEAN input, q = softmax(T_adv(x)), is the soft label for both terms,
loss = 5/6 KL(q || softmax(S(x'))) + 1/6 KL(q || softmax(S(x))) (same averaging), and x' maximizes
KL(q || softmax(S(x'))) by 10-step PGD (2/255 in Linf 8/255, start x + 0.001 N(0, I)).

Deviation common to both: rbx's training attacks return each point's highest-loss iterate, not the last one.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustbench_ext.attacks.pgd import PGD
from robustbench_ext.attack.iterative import Segment
from robustbench_ext.training.contract import Defense, build_attack
from robustbench_ext.errors import RbxError
from robustbench_ext.models.loading import load_model
from robustbench_ext.registry import DEFENSES
from robustbench_ext.attack.threat import ThreatModel
from robustbench_ext.training.engine import lr_factor

from .baselines import accuracy

#: The student's PGD in MTARD and RSLAD: 10 steps of 2/255 (= 0.25 eps at 8/255) from x + 0.001 N(0, I).
STUDENT_PGD = "pgd:steps=10,rel_step_size=0.25,start_std=0.001"
TEMPERATURE_RANGE = (1.0, 10.0)


# ---- pure pieces (tested by hand) ----------------------------------------------------------------------
def distill_kl(student_logits: Tensor, teacher_logits: Tensor, tau: float = 1.0) -> Tensor:
    """KL(softmax(teacher / tau) || softmax(student)), averaged over the batch and the classes (scalar).

    The mean over N * K elementwise terms q_k (log q_k - log p_k), as MTARD's and RSLAD's code take it
    (their ``torch.mean``; they also add 1e-5 inside log q, which is left out here). The teacher is
    not differentiated.
    """
    q = F.softmax(teacher_logits.detach().float() / tau, dim=1)
    log_p = F.log_softmax(student_logits.float(), dim=1)
    return (torch.xlogy(q, q) - q * log_p).mean()


def balance_step(w_nat: float, r_nat: float, r_adv: float, eta: float) -> float:
    """MTARD's normalization loss balance: the new w_nat from the relative losses (w_adv = 1 - w_nat).

    The weight moves a fraction ``eta`` of the way to r_nat / (r_nat + r_adv): the term whose loss fell
    less, relative to its first-batch value, gets more weight.
    """
    return w_nat - eta * (w_nat - r_nat / (r_nat + r_adv))


def mean_entropy(logits: Tensor, tau: float) -> float:
    """Mean over the batch of the entropy of softmax(logits / tau), in nats."""
    p = F.softmax(logits.detach().float() / tau, dim=1)
    return float(-(torch.xlogy(p, p)).sum(1).mean())


def temperature_step(tau_adv: float, tau_nat: float, h_adv: float, h_nat: float, lr: float) -> tuple[float, float]:
    """MTARD's Entropy-Based Balance: lower the temperature of the teacher with the larger entropy, raise the other's.

    Both stay in :data:`TEMPERATURE_RANGE`; with a zero entropy (a one-hot teacher) nothing changes.
    """
    if h_adv <= 0 or h_nat <= 0:
        return tau_adv, tau_nat
    lo, hi = TEMPERATURE_RANGE
    tau_adv = min(max(tau_adv - lr * _sign(h_adv / h_nat - 1), lo), hi)
    tau_nat = min(max(tau_nat - lr * _sign(h_nat / h_adv - 1), lo), hi)
    return tau_adv, tau_nat


def _sign(v: float) -> float:
    return 0.0 if v == 0 else math.copysign(1.0, v)


def _frozen_teacher(spec: str, device) -> nn.Module:
    teacher = load_model(spec).module.to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


class _Schedule:
    """The trainer's learning-rate factor at a batch, for hyperparameters that decay with the LR."""

    def __init__(self, trainer) -> None:
        cfg = getattr(trainer, "cfg", None)  # a bare test stand-in has no config: factor 1
        self.schedule = cfg.schedule if cfg is not None else "constant"
        self.steps_per_epoch = int(getattr(trainer, "steps_per_epoch", 1))
        self.total = max(self.steps_per_epoch * (cfg.epochs if cfg is not None else 1), 1)

    def factor(self, epoch: int, step: int) -> float:
        return lr_factor(self.schedule, (epoch * self.steps_per_epoch + step) / self.total)


# ---- MTARD ---------------------------------------------------------------------------------------------
@DEFENSES.register("mtard", summary="MTARD: distillation from a natural and a robust teacher, entropy-balanced temperatures, adaptive loss weights (Zhao et al. 2022)")
@dataclass(eq=False)
class MTARD(Defense):
    """See the module docstring."""

    name: ClassVar[str] = "mtard"
    trains_on: ClassVar[tuple[str, ...] | None] = ("threat",)
    # Both teachers are the embedded model (what a fresh clone has); the quick tests' student starts from that
    # same model, so the natural teacher is softened (tau_nat = 2) to give the student something to learn.
    smoke_params: ClassVar[dict] = {"attack": "pgd:steps=2", "tau_nat": 2.0,
                                    "nat_teacher": "cifar10-smallcnn-linf-at", "adv_teacher": "cifar10-smallcnn-linf-at"}

    nat_teacher: str = "trained:results/train/standard-smallcnn"
    adv_teacher: str = "cifar10-smallcnn-linf-at"
    threat: str = "Linf:8/255"
    attack: str = STUDENT_PGD
    eta: float = 0.025
    w_nat_init: float = 0.5
    tau_nat: float = 1.0  # the teachers' starting temperatures (1 in the authors' code)
    tau_adv: float = 1.0
    balance: bool = True  # the Entropy-Based Balance of the teachers' temperatures (module docstring)
    temperature_lr: float = 0.001
    balance_temperature: bool | None = None  # deprecated name of ``balance``

    def __post_init__(self) -> None:
        if not 0 < self.eta < 1 or not 0 <= self.w_nat_init <= 1 or not self.temperature_lr >= 0:
            raise RbxError("defense 'mtard': need 0 < eta < 1, 0 <= w_nat_init <= 1 and temperature_lr >= 0")
        if self.balance_temperature is not None:
            warnings.warn("defense 'mtard': balance_temperature is deprecated, write balance=true/false "
                          "(the Entropy-Based Balance is now on by default)", DeprecationWarning, stacklevel=3)
            self.balance, self.balance_temperature = self.balance_temperature, None
        if not isinstance(self.balance, bool):
            raise RbxError(f"defense 'mtard': balance must be true or false, got {self.balance!r}")
        if not (self.tau_nat > 0 and self.tau_adv > 0):
            raise RbxError(f"defense 'mtard': temperatures must be > 0, got tau_nat={self.tau_nat!r}, tau_adv={self.tau_adv!r}")
        self._threat = ThreatModel.parse(self.threat)
        self._attack = build_attack(self.attack, self.name)
        self._teachers: tuple[nn.Module, nn.Module] | None = None
        self._schedule: _Schedule | None = None
        self._w_nat = float(self.w_nat_init)
        self._initial: tuple[float, float] | None = None  # (L_nat, L_adv) at the first batch
        self._tau = (float(self.tau_nat), float(self.tau_adv))

    def setup(self, trainer) -> None:
        self._teachers = (_frozen_teacher(self.nat_teacher, trainer.device), _frozen_teacher(self.adv_teacher, trainer.device))
        self._schedule = _Schedule(trainer)

    def state_dict(self) -> dict[str, Any]:
        return {"w_nat": self._w_nat, "initial": None if self._initial is None else list(self._initial),
                "tau": list(self._tau)}

    def load_state_dict(self, state: dict[str, Any] | None, trainer=None) -> None:
        if not state:
            return
        self._w_nat = float(state["w_nat"])
        self._initial = None if state["initial"] is None else (float(state["initial"][0]), float(state["initial"][1]))
        self._tau = (float(state["tau"][0]), float(state["tau"][1]))

    @property
    def weights(self) -> tuple[float, float]:
        """The current (w_nat, w_adv)."""
        return self._w_nat, 1.0 - self._w_nat

    def loss(self, model, x, y, ctx):
        if self._teachers is None:
            raise RbxError("defense 'mtard' was not set up (no teachers loaded)")
        t_nat_net, t_adv_net = self._teachers
        x_adv = ctx.adversary(self._attack, model, x, y, self._threat)
        with torch.no_grad():
            t_nat, t_adv = t_nat_net(x), t_adv_net(x_adv)
        s_adv, s_nat = model(x_adv), model(x)
        tau_nat, tau_adv = self._tau
        l_adv, l_nat = distill_kl(s_adv, t_adv, tau_adv), distill_kl(s_nat, t_nat, tau_nat)
        la, ln = float(l_adv.detach()), float(l_nat.detach())  # the balance reads values, as the official .item()
        if self._initial is None:
            self._initial = (ln, la)
        decay = self._schedule.factor(ctx.epoch, ctx.step) if self._schedule is not None else 1.0
        self._w_nat = balance_step(self._w_nat, ln / self._initial[0], la / self._initial[1], self.eta * decay)
        if self.balance:
            h_adv, h_nat = mean_entropy(t_adv, tau_adv), mean_entropy(t_nat, tau_nat)
            new_adv, new_nat = temperature_step(tau_adv, tau_nat, h_adv, h_nat, self.temperature_lr * decay)
            self._tau = (new_nat, new_adv)
        w_nat, w_adv = self.weights
        stats = {"adv_acc": accuracy(s_adv, y), "clean_acc": accuracy(s_nat, y), "kl_adv": l_adv.detach(),
                 "kl_nat": l_nat.detach(), "w_nat": torch.tensor(w_nat)}
        if self.balance:
            stats.update(tau_nat=torch.tensor(self._tau[0]), tau_adv=torch.tensor(self._tau[1]))
        return w_adv * l_adv + w_nat * l_nat, stats


# ---- RSLAD ---------------------------------------------------------------------------------------------
@dataclass(eq=False)
class SoftLabelPGD(PGD):
    """PGD maximizing KL(q || softmax(z(x'))) for per-sample soft labels q ``[N, K]`` (RSLAD's inner maximization).

    Not registered (it needs the labels of a teacher): :meth:`targets` sets q for the next call, which
    must be on the same N points. Early stop is off (a training attack), so every pass sees all N points.
    """

    name: ClassVar[str] = "soft-label-pgd"

    steps: int = 10
    rel_step_size: float | None = 0.25
    start_std: float | None = 0.001
    early_stop: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        self._q: Tensor | None = None

    def targets(self, q: Tensor) -> "SoftLabelPGD":
        self._q = q.detach().float()
        return self

    def begin(self, ctx, x0, y0, x_start, eps, p: Segment) -> dict[str, Any]:
        if self._q is None or self._q.shape[0] != x0.shape[0] or self.early_stop:
            raise RbxError("soft-label-pgd: set the soft labels of exactly these points with targets(q), early stop off")
        return {"q": self._q}

    def objective(self, logits: Tensor, y: Tensor, step: int, state: dict, p: Segment) -> Tensor:
        q = state["q"]
        return (torch.xlogy(q, q) - q * F.log_softmax(logits.float(), dim=1)).sum(1)


@DEFENSES.register("rslad", summary="RSLAD: distillation from one robust teacher's clean soft labels (Zi et al. 2021)")
@dataclass(eq=False)
class RSLAD(Defense):
    """See the module docstring; ``attack`` None is RSLAD's own KL adversary, a spec replaces it (e.g. CE PGD)."""

    name: ClassVar[str] = "rslad"
    trains_on: ClassVar[tuple[str, ...] | None] = ("threat",)
    # The quick tests' student starts from the teacher itself: a softened teacher (tau = 2) leaves it something to learn.
    smoke_params: ClassVar[dict] = {"steps": 2, "teacher": "cifar10-smallcnn-linf-at", "tau": 2.0}

    teacher: str = "cifar10-smallcnn-linf-at"
    threat: str = "Linf:8/255"
    attack: str | None = None
    steps: int = 10  # of RSLAD's own adversary
    w_adv: float = 5 / 6
    tau: float = 1.0  # the teacher's temperature (1 in RSLAD)

    def __post_init__(self) -> None:
        if not 0 <= self.w_adv <= 1 or not self.tau > 0:
            raise RbxError(f"defense 'rslad': need w_adv in [0, 1] and tau > 0, got {self.w_adv!r}, {self.tau!r}")
        self._threat = ThreatModel.parse(self.threat)
        self._attack = SoftLabelPGD(steps=self.steps) if self.attack is None else build_attack(self.attack, self.name)
        self._teacher: nn.Module | None = None

    def setup(self, trainer) -> None:
        self._teacher = _frozen_teacher(self.teacher, trainer.device)

    def loss(self, model, x, y, ctx):
        if self._teacher is None:
            raise RbxError("defense 'rslad' was not set up (no teacher loaded)")
        with torch.no_grad():
            t_clean = self._teacher(x)
        q = F.softmax(t_clean.float() / self.tau, 1)
        attack = self._attack.targets(q) if isinstance(self._attack, SoftLabelPGD) else self._attack
        x_adv = ctx.adversary(attack, model, x, y, self._threat)
        s_adv, s_nat = model(x_adv), model(x)
        l_adv, l_nat = distill_kl(s_adv, t_clean, self.tau), distill_kl(s_nat, t_clean, self.tau)
        return self.w_adv * l_adv + (1 - self.w_adv) * l_nat, {"adv_acc": accuracy(s_adv, y), "clean_acc": accuracy(s_nat, y),
                                                               "kl_adv": l_adv.detach(), "kl_nat": l_nat.detach()}
