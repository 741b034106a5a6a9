"""APGD: Auto-PGD with its step-size schedule (Croce & Hein, ICML 2020), for Linf, L2 and L1.

On the shared :class:`~robustbench_ext.attack.base.IterativeAttack` loop (:mod:`robustbench_ext.attack.iterative`), APGD contributes:

- start: the projection of ``x + N(0, I)`` onto ball ∩ box (for L1 this is a sparse start, as in
  Croce & Hein, ICCV 2021; for Linf/L2 a point near the ball's surface);
- step size: ``alpha * eps`` per sample (alpha = 2, or 1 for sparse-step geometries), halved at
  checkpoints; heavy-ball momentum 0.75 (weight 0.25 on the previous displacement), none for L1;
- checkpoints (Linf/L2) after 22% of the steps, then at gaps shrinking by 3% down to 6%: a sample's
  step is halved and it restarts from its best point if its loss rose in at most ``rho`` of the steps
  since the last checkpoint, or if its step was not reduced last time and its best loss did not improve;
- checkpoints (L1, "Mind the box", ICCV 2021) every 4% of the steps: the sparsity of the step is
  re-set to the L0 norm of the best perturbation / 1.5; if that fell below 95% of its previous value,
  the step is reset to its maximum and the sample restarts from its best point, else the step is
  divided by 1.5 (kept within [alpha*eps/10, alpha*eps]). The step keeps the top-k gradient
  coordinates and the projection onto L1-ball ∩ box is exact (the geometry's). k starts at
  ``init_sparsity`` (20%, AutoAttack's evaluation value) from a fresh start, and at the start's L0 norm / 1.5
  when the pass starts from a given point (a warm start, or a large-eps stage's random start);
- ``large_eps`` (L1): each restart runs 30% / 30% / 40% of the steps at 3x, 2x, 1x eps, each stage
  warm-started from the previous stage's best point; only the last stage's fooled points count.

Training settings (the RAMP authors' ``apgd_train``, ``is_train=True``, used for E-AT, MAX and RAMP):
``random_start=false`` (start at the clean point) and ``init_sparsity=0.05``; see
:data:`robustbench_ext.training.contract.TRAINING_APGD`. The defaults are AutoAttack's evaluation settings.

``apgd-t`` loops over the ``n_targets`` most likely wrong classes (by the clean logits), one run per
target, on the targeted DLR loss; every run only sees points still robust.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from robustbench_ext.attack.base import AttackContext, require_positive_ints
from robustbench_ext.attack.iterative import IterativeAttack, Segment, Track
from robustbench_ext.errors import RbxError
from robustbench_ext.attack.geometry import Geometry
from robustbench_ext.attack.losses import LOSSES, dlr_targeted
from robustbench_ext.registry import ATTACKS

#: Untargeted losses APGD can maximize (ce and dlr as in AutoAttack; pm and margin for comparisons).
UNTARGETED = ("ce", "dlr", "pm", "margin")


@ATTACKS.register("apgd", summary="APGD with a choice of loss: ce, dlr, pm (probability margin) or margin")
@dataclass(eq=False)
class APGD(IterativeAttack):
    """Auto-PGD on an untargeted loss (see the module docstring for the schedule)."""

    name: ClassVar[str] = "apgd"
    smoke_params: ClassVar[dict] = {"steps": 10}
    needs_best_grad: ClassVar[bool] = True  # the checkpoints restart from the best point with its gradient

    steps: int = 100
    loss: str = "ce"
    rho: float = 0.75
    large_eps: bool = False
    #: L1: fraction of coordinates the first steps of a fresh (random or clean) start move; APGD adapts it after.
    init_sparsity: float = 0.2

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss not in self._losses():
            raise RbxError(f"attack '{self.name}': unknown loss '{self.loss}'; known: {', '.join(self._losses())}")
        if not 0 < self.rho <= 1:
            raise RbxError(f"attack '{self.name}': rho must be in (0, 1], got {self.rho!r}")
        if not 0 < self.init_sparsity <= 1:
            raise RbxError(f"attack '{self.name}': init_sparsity must be in (0, 1], got {self.init_sparsity!r}")

    def _losses(self) -> tuple[str, ...]:
        return UNTARGETED

    # ---- segments ----------------------------------------------------------------------------------
    def _stages(self, **kw: Any) -> list[Segment]:
        """One run, or the large-eps schedule (3x, 2x, 1x eps over 30/30/40% of the steps)."""
        if not self.large_eps:
            return [Segment(self.steps, **kw)]
        first = max(math.ceil(0.3 * self.steps), 1)
        last = max(self.steps - 2 * first, 1)
        return [Segment(first, eps_scale=3.0, **kw), Segment(first, eps_scale=2.0, warm_start=True, **kw),
                Segment(last, eps_scale=1.0, warm_start=True, **kw)]

    def segments(self) -> list[Segment]:
        return [p for r in range(self.restarts) for p in self._stages(restart=r)]

    # ---- hooks -----------------------------------------------------------------------------------
    def start(self, ctx: AttackContext, x0: Tensor, eps: float, p: Segment) -> Tensor:
        if not self.random_start:
            return x0.clone()
        noise = ctx.per_sample(x0, lambda x, g: torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype))
        return ctx.geometry.project(x0, x0 + noise, eps)

    def begin(self, ctx, x0, y0, x_start, eps, p) -> dict[str, Any]:
        geom = ctx.geometry
        alpha_eps = (1.0 if geom.sparse_steps else 2.0) * eps
        n, n_fts = x0.shape[0], x0[0].numel()
        state: dict[str, Any] = {
            "eta": torch.full((n,), alpha_eps, device=x0.device),
            "alpha_eps": alpha_eps,
            "counter": 0,
            "prev": None,
            "inc": torch.zeros(n, device=x0.device),
        }
        if geom.sparse_steps:
            state["k"] = max(int(0.04 * p.steps), 1)
            # AutoAttack's L1 code derives the first sparsity from the start's L0 norm whenever it is
            # given a start (every large-eps stage: a random one, then the previous stage's best), and
            # starts at init_sparsity otherwise (a fresh random start; the training APGD's clean start).
            if p.warm_start or (p.eps_scale != 1.0 and self.random_start):
                l0 = _l0(x_start - x0)
                state["topk"] = (l0 / n_fts / 1.5).clamp(1.0 / n_fts, 1.0)
                state["sp_old"] = l0
            else:
                state["topk"] = torch.full((n,), float(self.init_sparsity), device=x0.device)
                state["sp_old"] = torch.full((n,), float(n_fts), device=x0.device)
        else:
            state["k"] = max(int(0.22 * p.steps), 1)
            state["size_decr"] = max(int(0.03 * p.steps), 1)
            state["k_min"] = max(int(0.06 * p.steps), 1)
            state["reduced_last"] = torch.ones(n, dtype=torch.bool, device=x0.device)
        return state

    def fit(self, num_classes, input_shape, threat):
        if self.loss == "dlr" and num_classes < 3:
            raise RbxError(f"attack '{self.name}' (DLR loss) needs a model with at least 3 classes; the model has "
                           f"{num_classes}: use loss=ce")
        return self, None

    def objective(self, logits: Tensor, y: Tensor, step: int, state: dict, p: Segment) -> Tensor:
        if self.loss == "dlr" and logits.shape[1] < 3:
            raise RbxError(f"attack '{self.name}': the DLR loss needs at least 3 classes (model has {logits.shape[1]})")
        return LOSSES[self.loss](logits, y)

    def step_size(self, step: int, eps: float, state: dict, p: Segment) -> Tensor:
        return state["eta"]

    def momentum(self, geometry: Geometry) -> float:
        return 0.0 if geometry.sparse_steps else 0.25

    def sparsity(self, state: dict) -> float | Tensor:
        return state.get("topk", self.l1_sparsity)

    def checkpoint(self, step: int, loss: Tensor, state: dict, p: Segment, best: Track, x0: Tensor) -> Tensor | None:
        if step == 0:  # the starting point's evaluation
            state["prev"] = loss
            state["best_last"] = best.loss.clone()
            return None
        state["inc"] = state["inc"] + (loss > state["prev"]).float()
        state["prev"] = loss
        state["counter"] += 1
        if state["counter"] < state["k"]:
            return None
        state["counter"] = 0
        if "topk" in state:
            return self._sparse_checkpoint(state, best, x0)
        oscillating = state["inc"] <= state["k"] * self.rho
        stalled = ~state["reduced_last"] & (state["best_last"] >= best.loss)
        reduce = oscillating | stalled
        state["eta"] = torch.where(reduce, state["eta"] / 2, state["eta"])
        state["reduced_last"] = reduce
        state["best_last"] = best.loss.clone()
        state["inc"] = torch.zeros_like(state["inc"])
        state["k"] = max(state["k"] - state["size_decr"], state["k_min"])
        return reduce

    @staticmethod
    def _sparse_checkpoint(state: dict, best: Track, x0: Tensor) -> Tensor:
        n_fts = x0[0].numel()
        sp = _l0(best.x - x0)
        shrunk = sp / state["sp_old"].clamp_min(1) < 0.95
        state["topk"] = (sp / n_fts / 1.5).clamp(1.0 / n_fts, 1.0)
        a = state["alpha_eps"]
        state["eta"] = torch.where(shrunk, torch.full_like(state["eta"], a), state["eta"] / 1.5).clamp(a / 10, a)
        state["sp_old"] = sp
        state["inc"] = torch.zeros_like(state["inc"])
        return shrunk


def _l0(delta: Tensor) -> Tensor:
    return (delta.reshape(delta.shape[0], -1) != 0).sum(1).float()


@ATTACKS.register("apgd-ce", summary="APGD on cross-entropy (AutoAttack's first attack)")
@dataclass(eq=False)
class APGDCE(APGD):
    """APGD on the cross-entropy loss."""

    name: ClassVar[str] = "apgd-ce"

    loss: str = "ce"


@ATTACKS.register("apgd-dlr", summary="APGD on the DLR loss (shift- and scale-invariant margin)")
@dataclass(eq=False)
class APGDDLR(APGD):
    """APGD on the difference-of-logits-ratio loss."""

    name: ClassVar[str] = "apgd-dlr"

    loss: str = "dlr"


@ATTACKS.register("apgd-t", summary="targeted APGD on the targeted DLR loss, over the top-k wrong classes")
@dataclass(eq=False)
class APGDT(APGD):
    """APGD-T: one targeted run per class among the ``n_targets`` most likely wrong ones."""

    name: ClassVar[str] = "apgd-t"
    smoke_params: ClassVar[dict] = {"steps": 10, "n_targets": 2}

    loss: str = "dlr-targeted"
    n_targets: int = 9

    def __post_init__(self) -> None:
        super().__post_init__()
        require_positive_ints(self, "n_targets")

    def _losses(self) -> tuple[str, ...]:
        return ("dlr-targeted",)

    def fit(self, num_classes, input_shape, threat):
        """Targeted DLR ranks the 4 largest logits: at least 4 classes; at most K - 1 targets exist."""
        if num_classes < 4:
            raise RbxError(f"attack '{self.name}' needs a model with at least 4 classes (targeted DLR ranks the four "
                           f"largest logits); the model has {num_classes}: drop it from the cascade or use apgd-ce")
        if self.n_targets > num_classes - 1:
            return (dataclasses.replace(self, n_targets=num_classes - 1),
                    f"{self.name}: n_targets={self.n_targets} asked, the model has {num_classes} classes: "
                    f"ran with {num_classes - 1} (every other class)")
        return self, None

    def segments(self) -> list[Segment]:
        return [p for t in range(self.n_targets) for r in range(self.restarts) for p in self._stages(restart=r, target_rank=t)]

    def begin(self, ctx, x0, y0, x_start, eps, p) -> dict[str, Any]:
        state = super().begin(ctx, x0, y0, x_start, eps, p)
        logits = ctx.logits(x0)
        k = logits.shape[1]
        if k < 4 or p.target_rank + 1 >= k:
            raise RbxError(f"attack 'apgd-t' needs at least 4 classes and n_targets <= {max(k - 1, 0)} here (model has {k})")
        # AutoAttack's targets: the (rank+2)-th largest clean logit (rank 0: the most likely wrong class).
        state["target"] = logits.sort(dim=1, descending=True).indices[:, p.target_rank + 1]
        return state

    def objective(self, logits: Tensor, y: Tensor, step: int, state: dict, p: Segment) -> Tensor:
        return dlr_targeted(logits, y, state["target"])
