"""Multi-lp attacks: search several threat models at once (:class:`MultiThreatAttack`).

- ``union-worst``: per sample, run an attack under every threat model of the suite and report each
  norm's adversarial, plus the worst one per sample (a success if any, else the highest
  cross-entropy). This is what union evaluation needs (a point is union-robust only if no threat
  model breaks it) and what MAX-style multi-norm training uses (Tramèr & Boneh, NeurIPS 2019).
- ``msd``: multi steepest descent (Maini, Wong & Kolter, "Adversarial robustness against the union
  of multiple perturbation models", ICML 2020): each step takes one steepest-ascent step per threat
  model from the current point, projects each onto its own ball ∩ box, and keeps, per sample, the
  candidate with the highest loss. One gradient and T forward passes per step; the result lies in
  the ball of the threat model chosen last. Meant for adversarial training; ``x_adv[t]`` is the MSD
  point where it lies in ball t and the clean point elsewhere.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from robustbench_ext.attack.base import AttackContext, MultiThreatAttack, require_positive_ints
from robustbench_ext.errors import RbxError
from robustbench_ext.attack.losses import cross_entropy
from robustbench_ext.registry import ATTACKS


@ATTACKS.register("union-worst", summary="multi-lp: run an attack under every threat model; report each norm's adversarial and the worst")
@dataclass(eq=False)
class UnionWorst(MultiThreatAttack):
    """Runs ``attack`` (an attack spec such as ``apgd-ce`` or ``pma:steps=50``) under each threat model."""

    name: ClassVar[str] = "union-worst"
    smoke_params: ClassVar[dict] = {"attack": "apgd-ce:steps=5"}

    attack: str = "apgd-ce"

    def __post_init__(self) -> None:
        super().__post_init__()
        self._inner()  # fail fast on a bad spec

    def _inner(self):
        """The inner attack; this attack's ``eot`` > 1 reaches it (``union-worst:eot=10`` = EOT under every norm)."""
        inner = ATTACKS.create(self.attack)
        return dataclasses.replace(inner, eot=self.eot) if self.eot != 1 else inner

    def fit(self, num_classes, input_shape, threat):
        inner = self._inner()
        _, note = inner.fit(num_classes, input_shape, threat)  # raises where the inner attack cannot run
        if note:
            raise RbxError(f"attack '{self.name}': its inner attack would have to change ({note}); give it explicitly, "
                           f"e.g. {self.name}:attack=\"{inner.name}:n_targets={num_classes - 1}\"")
        return self, None

    def run(self, ctx: AttackContext, x: Tensor, y: Tensor) -> list[Tensor]:
        inner = self._inner()
        for t in ctx.threats:
            inner.require(t)
        n, out = len(ctx.threats), []
        for i, t in enumerate(ctx.threats):
            res = inner(ctx.model, x, y, t, seed=ctx.spawn_seed(), progress=ctx.sub_progress(i / n, (i + 1) / n),
                        samples=None if ctx.samples is None else ctx.samples.child(i))
            ctx.absorb(res)
            out.append(res.x_adv)
        return out


@ATTACKS.register("msd", summary="multi-lp: multi steepest descent (Maini et al. 2020), one step per norm, keep the best; for training")
@dataclass(eq=False)
class MSD(MultiThreatAttack):
    """MSD with ``steps`` steps of ``rel_step_size * eps_t`` per threat model t."""

    name: ClassVar[str] = "msd"
    smoke_params: ClassVar[dict] = {"steps": 5}

    steps: int = 50
    rel_step_size: float = 0.1
    l1_sparsity: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        require_positive_ints(self, "steps")
        if not self.rel_step_size > 0:
            raise RbxError(f"attack 'msd': rel_step_size must be > 0, got {self.rel_step_size!r}")

    def run(self, ctx: AttackContext, x: Tensor, y: Tensor) -> list[Tensor]:
        xk = x.clone()
        ball = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        for step in range(self.steps):
            _, _, grad = ctx.value_and_grad(xk, lambda logits: cross_entropy(logits, y))
            cands, losses = [], []
            for t in ctx.threats:
                geom = t.geometry
                c = geom.project(x, xk + self.rel_step_size * t.eps * geom.step_direction(grad, xk, sparsity=self.l1_sparsity), t.eps)
                losses.append(cross_entropy(ctx.logits(c), y))
                cands.append(c)
            ball = torch.stack(losses, 1).argmax(1)
            xk = torch.stack(cands)[ball, torch.arange(x.shape[0], device=x.device)]
            ctx.report((step + 1) / self.steps)
        return [torch.where((ball == i).reshape(-1, *([1] * (x.ndim - 1))), xk, x) for i in range(len(ctx.threats))]
