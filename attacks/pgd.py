"""Projected gradient descent (Madry et al., "Towards Deep Learning Models Resistant to Adversarial
Attacks", ICLR 2018) for Linf, L2 and L1, on the shared :class:`IterativeAttack` loop.

Steps follow the threat model's steepest-ascent direction (sign for Linf, normalized gradient for
L2, sparse top-k signs for L1) and are projected exactly onto ball ∩ box. The default step length
is Madry's rule, 2.5 * eps / steps, so the iterate can cross the ball in a fraction of the budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from robustbench_ext.errors import RbxError
from robustbench_ext.attack.losses import LOSSES
from robustbench_ext.attack.base import AttackContext
from robustbench_ext.attack.iterative import IterativeAttack, Segment, madry_step
from robustbench_ext.registry import ATTACKS


@ATTACKS.register("pgd", summary="PGD with random start and restarts (Madry et al. 2018); loss ce or margin")
@dataclass(eq=False)
class PGD(IterativeAttack):
    """PGD: ``steps`` projected steepest-ascent steps of ``rel_step_size * eps`` on the ``loss``."""

    name: ClassVar[str] = "pgd"
    smoke_params: ClassVar[dict] = {"steps": 5}

    steps: int = 20
    loss: str = "ce"
    rel_step_size: float | None = None  # None: 2.5 / steps (Madry et al. 2018)
    #: None: the random start is uniform in ball ∩ box; a number s: x + s * N(0, I), projected onto ball ∩ box
    #: (the small Gaussian start of TRADES, RSLAD and MTARD's training attacks: 0.001).
    start_std: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss not in LOSSES:
            raise RbxError(f"attack 'pgd': unknown loss '{self.loss}'; known: {', '.join(LOSSES)}")
        if self.rel_step_size is not None and not self.rel_step_size > 0:
            raise RbxError(f"attack 'pgd': rel_step_size must be > 0, got {self.rel_step_size!r}")
        if self.start_std is not None and not self.start_std > 0:
            raise RbxError(f"attack 'pgd': start_std must be > 0, got {self.start_std!r}")

    def start(self, ctx: AttackContext, x0: Tensor, eps: float, p: Segment) -> Tensor:
        if not self.random_start or self.start_std is None:
            return super().start(ctx, x0, eps, p)
        noise = ctx.per_sample(x0, lambda x, g: torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype))
        return ctx.geometry.project(x0, x0 + self.start_std * noise, eps)

    def objective(self, logits: Tensor, y: Tensor, step: int, state: dict, p: Segment) -> Tensor:
        return LOSSES[self.loss](logits, y)

    def step_size(self, step: int, eps: float, state: dict, p: Segment) -> float:
        return madry_step(self.rel_step_size, self.steps, eps)


@ATTACKS.register("trades-pgd", summary="PGD on KL(p(x) || p(x')), the adversary of TRADES (Zhang et al. 2019)")
@dataclass(eq=False)
class TradesPGD(IterativeAttack):
    """PGD maximizing the KL divergence from the clean prediction (TRADES' inner maximization).

    Its objective does not use the label: it pushes the prediction away from the clean one.
    """

    name: ClassVar[str] = "trades-pgd"
    smoke_params: ClassVar[dict] = {"steps": 5}

    steps: int = 10
    rel_step_size: float | None = None  # None: 2.5 / steps

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rel_step_size is not None and not self.rel_step_size > 0:
            raise RbxError(f"attack '{self.name}': rel_step_size must be > 0, got {self.rel_step_size!r}")

    def begin(self, ctx, x0, y0, x_start, eps, p) -> dict:
        return {"log_p_clean": ctx.logits(x0).float().log_softmax(1)}

    def objective(self, logits: Tensor, y: Tensor, step: int, state: dict, p: Segment) -> Tensor:
        lp = state["log_p_clean"]
        return (lp.exp() * (lp - logits.float().log_softmax(1))).sum(1)

    def step_size(self, step: int, eps: float, state: dict, p: Segment) -> float:
        return madry_step(self.rel_step_size, self.steps, eps)
