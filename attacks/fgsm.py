"""FGSM (Goodfellow, Shlens & Szegedy, "Explaining and Harnessing Adversarial Examples", ICLR 2015) and its
random-start variant FGSM-RS (Wong, Rice & Kolter, "Fast is better than free: revisiting adversarial
training", ICLR 2020), for Linf, L2 and L1, as one step of the shared :class:`IterativeAttack` loop.

The step is the threat model's steepest-ascent direction (the geometry's: sign for Linf, the normalized
gradient for L2, sparse signs for L1) times ``rel_step_size * eps``, projected onto ball ∩ box:

- ``fgsm``: from the clean point, a step of eps (Goodfellow et al.);
- ``fgsm-rs``: from a uniform random point of ball ∩ box, a step of 1.25 eps (Wong et al.'s alpha).

For sparse-step geometries (L1) a single step must spread its length over enough coordinates for the
[0, 1] box (width 1) to absorb it, so the step moves at least ``ceil(eps)`` coordinates (and at least
``l1_sparsity`` of them). As everywhere on the loop, a point that is not fooled returns the better
(higher-loss) of its start and its step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor

from robustbench_ext.attack.base import AttackContext
from robustbench_ext.attack.iterative import IterativeAttack, Segment
from robustbench_ext.errors import RbxError
from robustbench_ext.attack.losses import LOSSES
from robustbench_ext.registry import ATTACKS


@ATTACKS.register("fgsm", summary="FGSM: one steepest-ascent step of eps (Goodfellow et al. 2015); random_start=true for FGSM-RS")
@dataclass(eq=False)
class FGSM(IterativeAttack):
    """One step of ``rel_step_size * eps`` along the threat model's steepest-ascent direction of ``loss``."""

    name: ClassVar[str] = "fgsm"
    smoke_params: ClassVar[dict] = {}

    steps: int = 1
    random_start: bool = False
    loss: str = "ce"
    rel_step_size: float | None = None  # None: 1 from the clean point, 1.25 from a random start (Wong et al. 2020)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.steps != 1:
            raise RbxError(f"attack '{self.name}' takes exactly one step (got steps={self.steps}); use pgd for more")
        if self.loss not in LOSSES:
            raise RbxError(f"attack '{self.name}': unknown loss '{self.loss}'; known: {', '.join(LOSSES)}")
        if self.rel_step_size is not None and not self.rel_step_size > 0:
            raise RbxError(f"attack '{self.name}': rel_step_size must be > 0, got {self.rel_step_size!r}")

    def begin(self, ctx: AttackContext, x0: Tensor, y0: Tensor, x_start: Tensor, eps: float, p: Segment) -> dict[str, Any]:
        n_features = x0[0].numel()
        return {"sparsity": min(1.0, max(self.l1_sparsity, math.ceil(eps) / n_features))}

    def objective(self, logits: Tensor, y: Tensor, step: int, state: dict, p: Segment) -> Tensor:
        return LOSSES[self.loss](logits, y)

    def step_size(self, step: int, eps: float, state: dict, p: Segment) -> float:
        rel = self.rel_step_size if self.rel_step_size is not None else (1.25 if self.random_start else 1.0)
        return rel * eps

    def sparsity(self, state: dict) -> float:
        return state["sparsity"]


@ATTACKS.register("fgsm-rs", summary="FGSM-RS: uniform random start in the ball, then one step of 1.25 eps (Wong et al. 2020)")
@dataclass(eq=False)
class FGSMRS(FGSM):
    """FGSM from a uniform random point of ball ∩ box with step 1.25 eps (``restarts`` > 1 draws several starts)."""

    name: ClassVar[str] = "fgsm-rs"

    random_start: bool = True
