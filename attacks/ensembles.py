"""Attack ensembles: cascades where each attack only sees the points the previous ones left robust.

Costs are in forward+backward passes per point that stays robust to the end (a point that is broken
early costs less: every component stops spending on a point the moment it is fooled).

==========  ==========================================================  =====================================
ensemble    components                                                  passes per robust point (defaults)
==========  ==========================================================  =====================================
``pma+``    PMA (2 rounds x ``steps``), APGD-T (``n_targets`` x steps)  2*100 + 9*100 = 1,100
``pma+aa``  ``pma+`` then AutoAttack's FAB-T and Square (5,000 queries)  1,100 + FAB-T 9*100 (each ~2 bwd) + 5,000 fwd
==========  ==========================================================  =====================================

``pma+`` is the official PMA+ (xieyong0/PMA ``attack_handler.py``: PMA then APGD-T; the official code
runs its APGD-T with 2 iterations of 100 EoT gradients each, which for a deterministic model is 2
steps at the price of 200; here APGD-T runs ``steps`` iterations, as the paper describes). ``pma+aa``
is in the spirit of the paper's second ensemble: PMA in place of APGD-CE, followed by AutoAttack's
other components. For sparse-step norms (L1), APGD-T uses AutoAttack's large-eps warm start.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from robustbench_ext.attack.base import Attack, require_positive_ints
from robustbench_ext.attack.cascade import Ensemble
from robustbench_ext.registry import ATTACKS
from robustbench_ext.attack.threat import ThreatModel

from .apgd import APGDT
from .pma import PMA


@ATTACKS.register("pma+", summary="PMA then APGD-T (the official PMA+ ensemble)")
@dataclass(eq=False)
class PMAPlus(Ensemble):
    """PMA followed by targeted APGD on the points PMA left robust."""

    name: ClassVar[str] = "pma+"
    smoke_params: ClassVar[dict] = {"steps": 10, "n_targets": 2}

    steps: int = 100
    n_targets: int = 9
    early_stop: bool = True  # False (training): every component returns its highest-loss point

    def __post_init__(self) -> None:
        super().__post_init__()
        require_positive_ints(self, "steps", "n_targets")

    def components(self, threat: ThreatModel) -> list[Attack]:
        return [PMA(steps=self.steps),
                APGDT(steps=self.steps, n_targets=self.n_targets, large_eps=threat.geometry.sparse_steps)]


@ATTACKS.register("pma+aa", summary="PMA, APGD-T, then AutoAttack's FAB-T and Square (strongest, slowest)")
@dataclass(eq=False)
class PMAPlusAA(PMAPlus):
    """``pma+`` followed by AutoAttack's FAB-T and Square (standard settings)."""

    name: ClassVar[str] = "pma+aa"
    smoke_params: ClassVar[dict] = {"steps": 10, "n_targets": 2, "aa_budget": 0.05}

    aa_budget: float = 1.0  # scales FAB-T's iterations and Square's queries (1 = AutoAttack's)

    def components(self, threat: ThreatModel) -> list[Attack]:
        return super().components(threat) + [ATTACKS.create("aa-fab-t", budget=self.aa_budget),
                                             ATTACKS.create("aa-square", budget=self.aa_budget)]
