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

from dataclasses import dataclass
from typing import ClassVar, Sequence

import torch
from torch import Tensor

from robustbench_ext.attack import CountingModel, MultiThreatAttack, require_positive_ints
from robustbench_ext.errors import RbxError
from robustbench_ext.losses import cross_entropy
from robustbench_ext.registry import ATTACKS
from robustbench_ext.threat import ThreatModel


@ATTACKS.register("union-worst", summary="multi-lp: run an attack under every threat model; report each norm's adversarial and the worst")
@dataclass(eq=False)
class UnionWorst(MultiThreatAttack):
    """Runs ``attack`` (an attack spec such as ``apgd-ce`` or ``pma:steps=50``) under each threat model."""

    name: ClassVar[str] = "union-worst"
    smoke_params: ClassVar[dict] = {"attack": "apgd-ce:steps=5"}

    attack: str = "apgd-ce"

    def __post_init__(self) -> None:
        self._inner()  # fail fast on a bad spec

    def _inner(self):
        from robustbench_ext.suites import AttackSpec

        return AttackSpec.parse(self.attack).build()

    def run(self, model: CountingModel, x: Tensor, y: Tensor, threats: Sequence[ThreatModel],
            generator: torch.Generator) -> list[Tensor]:
        inner = self._inner()
        for t in threats:
            inner.require(t)
        out = []
        for t in threats:
            seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
            out.append(inner(model, x, y, t, seed=seed).x_adv)
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
        require_positive_ints(self, "steps")
        if not self.rel_step_size > 0:
            raise RbxError(f"attack 'msd': rel_step_size must be > 0, got {self.rel_step_size!r}")

    def run(self, model: CountingModel, x: Tensor, y: Tensor, threats: Sequence[ThreatModel],
            generator: torch.Generator) -> list[Tensor]:
        xk = x.clone()
        ball = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        for _ in range(self.steps):
            with torch.enable_grad():
                xg = xk.detach().requires_grad_(True)
                (grad,) = torch.autograd.grad(cross_entropy(model(xg), y).sum(), xg)
            cands, losses = [], []
            for t in threats:
                geom = t.geometry
                step = self.rel_step_size * t.eps * geom.step_direction(grad, xk, sparsity=self.l1_sparsity)
                c = geom.project(x, xk + step, t.eps)
                with torch.no_grad():
                    losses.append(cross_entropy(model(c), y))
                cands.append(c)
            ball = torch.stack(losses, 1).argmax(1)
            xk = torch.stack(cands)[ball, torch.arange(x.shape[0], device=x.device)]
        return [torch.where((ball == i).reshape(-1, *([1] * (x.ndim - 1))), xk, x) for i in range(len(threats))]
