"""PMA: the probability-margin attack (Xie, Zheng, Huang, Ye, Ma, "Towards Million-Scale Adversarial
Robustness Evaluation With Stronger Individual Attacks", CVPR 2025), and MD, its logit-margin parent
(Ma et al., "Imbalanced gradients: a subtle cause of overestimated adversarial robustness").

Loss: ``p_max - p_y`` on softmax outputs (``md``: ``z_max - z_y`` on logits), optimized with MD's
two-round schedule, as in the official code (xieyong0/PMA ``attacks/MD.py``):

- each restart runs two rounds of K steps, each from a fresh random start in the ball;
- step 0 ascends ``+p_y`` (a warm-up step kept from the official code);
- steps 1 .. K/2 - 1 ascend a decomposed term: ``-p_y`` in round 0, ``+p_max`` in round 1;
- steps >= K/2 ascend the full margin ``p_max - p_y``;
- the step length follows a cosine that restarts at K/2: ``eps * (1 + cos(pi * t / (K/2)))`` with t
  counted from the start of each half, so each half starts near 2 eps and decays to about 0;
- per-step early stop: a fooled point is frozen at the iterate that fooled the model.

Beyond Linf (the official code is Linf-only, sign steps and clipping): the same schedule runs on the
threat model's geometry. The step length is still ``eps * (1 + cos(...))`` in that norm; the
direction is the geometry's steepest ascent (normalized gradient for L2; for L1 the sign of the top
``l1_sparsity`` fraction of gradient coordinates, skipping coordinates pinned on the box, L1-normalized);
the random start is uniform in the ball; and every step is projected exactly onto ball ∩ box.
Cost: 2 x ``steps`` forward+backward passes per restart for a point that stays robust.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from robustbench_ext.attack.iterative import IterativeAttack, Segment
from robustbench_ext.errors import RbxError
from robustbench_ext.attack.losses import logits_true_and_best_other, probabilities_true_and_best_other
from robustbench_ext.registry import ATTACKS


@ATTACKS.register("pma", summary="probability-margin attack p_max - p_y with MD's two-round cosine schedule (Xie et al. 2025)")
@dataclass(eq=False)
class PMA(IterativeAttack):
    """PMA: ``steps`` steps in each of two rounds per restart (see the module docstring)."""

    name: ClassVar[str] = "pma"
    smoke_params: ClassVar[dict] = {"steps": 10}

    steps: int = 100
    loss: str = "pm"
    odi_steps: bool = False  # the official option: the first 2 steps have length eps
    warmup: bool = True  # step 0 ascends +p_y, as the official code does

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss not in ("pm", "margin"):
            raise RbxError(f"attack '{self.name}': loss must be pm or margin, got '{self.loss}'")
        if self.steps < 2:
            raise RbxError(f"attack '{self.name}': steps must be >= 2 (two halves), got {self.steps}")

    def segments(self) -> list[Segment]:
        return [Segment(self.steps, restart=r, round=k) for r in range(self.restarts) for k in (0, 1)]

    def objective(self, logits: Tensor, y: Tensor, step: int, state: dict, p: Segment) -> Tensor:
        pair = probabilities_true_and_best_other if self.loss == "pm" else logits_true_and_best_other
        v_y, v_max = pair(logits, y)
        change = p.steps / 2
        if step == 0 and self.warmup:
            return v_y
        if step < change:
            return -v_y if p.round == 0 else v_max
        return v_max - v_y

    def step_size(self, step: int, eps: float, state: dict, p: Segment) -> float:
        if self.odi_steps and step < 2:
            return eps
        change = p.steps / 2
        t = step - change - 1 if step > change else step - 1
        return eps * (1 + math.cos(math.pi * t / (p.steps - change)))


@ATTACKS.register("md", summary="MD: the logit-margin attack with the two-round schedule PMA inherits (Ma et al.)")
@dataclass(eq=False)
class MD(PMA):
    """MD: PMA's schedule on the logit margin ``z_max - z_y``."""

    name: ClassVar[str] = "md"

    loss: str = "margin"
