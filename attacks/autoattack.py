"""AutoAttack (Croce & Hein, ICML 2020) as a reference attack, through the ``pyautoattack`` package.

``autoattack`` is an :class:`~robustbench_ext.attack.base.Ensemble` of AutoAttack's own components, in
the order the chosen ``version`` runs them, so that the runner's cascade and per-sample records say
which component broke each point. Each component (``aa-apgd-ce``, ``aa-apgd-t``, ``aa-fab-t``,
``aa-square``, ``aa-apgd-dlr``, ``aa-fab``) is pyautoattack's ``AutoAttack`` configured by that version
for the threat model's norm and eps, restricted to that one component, and run on the points it gets
(which are the points still robust). So:

- ``standard``: APGD-CE, APGD-T, FAB-T, Square. For Linf/L2: 1 restart of APGD-CE, 9 target classes.
  For L1, AutoAttack's L1 settings: APGD-CE with 5 restarts and APGD-T with 5 targets, both with the
  large-eps warm start (3x, 2x, 1x eps);
- ``plus``: APGD-CE, APGD-DLR, FAB, Square, APGD-T, FAB-T with 5 restarts;
- ``rand``: APGD-CE, APGD-DLR with 20 EoT iterations (randomized defenses);
- ``custom``: the components in ``attacks``, with pyautoattack's default settings.

Inputs are passed as contiguous float32 tensors (pyautoattack's L2 code fails on non-contiguous ones).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor, nn

from robustbench_ext._compat import import_pyautoattack
from robustbench_ext.attack.base import Attack, AttackContext, check_param_types
from robustbench_ext.attack.cascade import Ensemble
from robustbench_ext.errors import AttackContractError, RbxError
from robustbench_ext.registry import ATTACKS
from robustbench_ext.attack.threat import ThreatModel

VERSIONS = ("standard", "plus", "rand", "custom")
COMPONENTS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")


def _build(model: nn.Module, threat: ThreatModel, version: str, attacks: list[str] | None, seed: int, device):
    aa_mod = import_pyautoattack()
    kw = {"attacks": list(attacks)} if version == "custom" else {}
    aa = aa_mod.AutoAttack(model, norm=threat.norm, eps=threat.eps, version=version, seed=seed, device=device, **kw)
    aa.verbose = False
    aa.logger.setLevel(logging.WARNING)
    return aa


def version_components(threat: ThreatModel, version: str, attacks: list[str] | None = None) -> list[str]:
    """The components AutoAttack ``version`` runs under ``threat``, in order (read from pyautoattack itself)."""
    return list(_build(nn.Identity(), threat, version, attacks, 0, "cpu").attacks_to_run)


def _check_budget(name: str, budget: float) -> None:
    """``budget`` scales AutoAttack's iterations and queries: a finite number > 0 (pyautoattack's loops take ints)."""
    if not (isinstance(budget, (int, float)) and not isinstance(budget, bool) and math.isfinite(budget) and budget > 0):
        raise RbxError(f"attack '{name}': budget must be a finite number > 0 (1 = AutoAttack's own iterations), got {budget!r}")


def _check_version(version: str, attacks: list[str] | None) -> None:
    if version not in VERSIONS:
        raise RbxError(f"autoattack: unknown version '{version}'; known: {', '.join(VERSIONS)}")
    if version == "custom":
        if not attacks:
            raise RbxError(f"autoattack: version custom needs attacks, a list from: {', '.join(COMPONENTS)}")
        bad = [a for a in attacks if a not in COMPONENTS]
        if bad:
            raise RbxError(f"autoattack: unknown components {bad}; known: {', '.join(COMPONENTS)}")
    elif attacks:
        raise RbxError("autoattack: attacks is only for version custom (AutoAttack itself refuses both)")


@dataclass(eq=False)
class AAComponent(Attack):
    """One AutoAttack component with the settings ``version`` gives it for the threat model's norm."""

    name: ClassVar[str] = "aa-component"
    smoke_params: ClassVar[dict] = {"budget": 0.05}
    component: ClassVar[str] = ""

    version: str = "standard"
    attacks: list[str] | None = None  # version custom: the full component list it was configured with
    budget: float = 1.0  # scales iterations (APGD, FAB: 100) and Square's queries (5,000); 1 = AutoAttack's
    n_targets: int | None = None  # APGD-T / FAB-T target classes (None: the version's: 9, APGD-T's 5 under L1); capped at K - 1 by fit()

    def __post_init__(self) -> None:
        super().__post_init__()  # types: budget a finite number, n_targets an int or unset, ...
        _check_version(self.version, self.attacks)
        _check_budget(self.name, self.budget)
        if self.n_targets is not None and self.n_targets < 1:
            raise RbxError(f"attack '{self.name}': n_targets must be a positive integer, got {self.n_targets!r}")

    def eot_note_for(self) -> str | None:
        if self.component.startswith("apgd"):
            return None
        return (f"pyautoattack's {self.component} has no EOT; for randomized models use autoattack:version=rand "
                "(APGD-CE and APGD-DLR with 20 EOT iterations) or rbx's own attacks with eot=K")

    def fit(self, num_classes, input_shape, threat):
        """pyautoattack's limits, checked before the run (and on every direct call): what its code would crash on
        mid-run is refused here, naming the attack; targets beyond K - 1 are capped with a note."""
        c = self.component
        if c in ("apgd-t", "apgd-dlr", "fab-t"):
            need = {"apgd-t": 4, "apgd-dlr": 3, "fab-t": 2}[c]
            if num_classes < need:
                raise RbxError(f"attack '{self.name}' needs a model with at least {need} classes (its DLR loss ranks "
                               f"{need - 1} other classes); the model has {num_classes}: drop it from the cascade "
                               "(e.g. --attack autoattack:version=custom,attacks=[\"apgd-ce\",\"square\"])")
        if c == "square" and len(input_shape) == 3:
            h, w = int(input_shape[1]), int(input_shape[2])
            if threat is not None and threat.norm in ("L2", "L1") and h != w:
                raise RbxError(f"attack '{self.name}' (pyautoattack's Square) needs square images under {threat.norm}; "
                               f"the data's are {h}x{w}: resize them, or use another black-box attack")
            if min(h, w) < 8:
                raise RbxError(f"attack '{self.name}' (pyautoattack's Square) needs images of at least 8x8 pixels; "
                               f"the data's are {h}x{w}")
        if threat is None:
            return self, None
        aa = self._configured(threat)
        if c.startswith("apgd"):
            apgd = aa.apgd_targeted if c == "apgd-t" else aa.apgd
            if apgd.use_largereps:  # AutoAttack's L1 schedule: ceil(30%), ceil(30%), the rest at 3x, 2x, 1x eps
                n = int(apgd.n_iter_orig)
                first = 2 * math.ceil(0.3 * n)
                if n - first < 1:
                    raise RbxError(f"attack '{self.name}': budget={self.budget:g} gives APGD {n} iteration{'s' * (n != 1)}; "
                                   f"under {threat.norm} AutoAttack runs them at 3x, 2x and then 1x eps (ceil(30%), "
                                   f"ceil(30%), the rest), which leaves {n - first} at the threat's eps: use budget >= 0.05")
        if c in ("apgd-t", "fab-t"):
            want = int((aa.apgd_targeted if c == "apgd-t" else aa.fab).n_target_classes)
            if want > num_classes - 1:
                fitted = dataclasses.replace(self, n_targets=num_classes - 1)
                return fitted, (f"{self.name}: {want} target classes asked, the model has {num_classes} classes: "
                                f"ran with {num_classes - 1} (every other class)")
        return self, None

    def _configured(self, threat: ThreatModel):
        """pyautoattack's AutoAttack as :meth:`run` configures it for ``threat`` (on a stand-in model): its settings."""
        attacks = (self.attacks or [self.component]) if self.version == "custom" else None
        aa = _build(nn.Identity(), threat, self.version, attacks, 0, "cpu")
        if self.budget != 1.0:
            _scale_budget(aa, self.budget)
        if self.n_targets is not None:
            aa.apgd_targeted.n_target_classes = aa.fab.n_target_classes = self.n_targets
        return aa

    def run(self, ctx: AttackContext, x: Tensor, y: Tensor) -> Tensor:
        seed = ctx.spawn_seed() % (2**31)
        attacks = (self.attacks or [self.component]) if self.version == "custom" else None
        aa = _build(ctx.model, ctx.threat, self.version, attacks, seed, x.device)
        aa.attacks_to_run = [self.component]
        if self.budget != 1.0:
            _scale_budget(aa, self.budget)
        if self.n_targets is not None:
            aa.apgd_targeted.n_target_classes = aa.fab.n_target_classes = self.n_targets
        if self.eot > 1:  # pyautoattack's own EOT (what version rand sets to 20): APGD averages eot_iter gradients
            aa.apgd.eot_iter = aa.apgd_targeted.eot_iter = self.eot
        cpu_state = torch.random.get_rng_state()  # pyautoattack reseeds torch's global RNG; leave it as it was
        try:
            x_adv, _ = aa.run_standard_evaluation(x.contiguous().float(), y.contiguous(), batch_size=max(x.shape[0], 1))
        except RbxError:
            raise  # the user's model failed (named by the model boundary): not pyautoattack's fault
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise AttackContractError(f"pyautoattack's {self.component} failed on inputs of shape {tuple(x.shape)} "
                                      f"({type(exc).__name__}: {first})") from exc
        finally:
            torch.random.set_rng_state(cpu_state)
        # pyautoattack can return points a rounding error outside the box (seen: Square under L1), and NaN
        # where the model's gradient is not finite: the clean point stands in for NaN pixels, the projection
        # puts the rest back, and the base class then re-checks and recomputes success honestly.
        x_adv = x_adv.to(x.dtype)
        return ctx.geometry.project(x, torch.where(torch.isfinite(x_adv), x_adv, x), ctx.eps)


def _scale_budget(aa, budget: float) -> None:
    """Scale every component's iterations (and APGD's derived checkpoint schedule) by ``budget``."""
    for apgd in (aa.apgd, aa.apgd_targeted):
        n = max(int(round(apgd.n_iter * budget)), 1)
        apgd.n_iter = apgd.n_iter_orig = n
        apgd.n_iter_2, apgd.n_iter_min, apgd.size_decr = max(int(0.22 * n), 1), max(int(0.06 * n), 1), max(int(0.03 * n), 1)
    aa.fab.n_iter = max(int(round(aa.fab.n_iter * budget)), 1)
    aa.square.n_queries = max(int(round(aa.square.n_queries * budget)), 1)


def _register_component(component: str) -> None:
    cls = type(
        f"AA_{component.replace('-', '_')}",
        (AAComponent,),
        {"name": f"aa-{component}", "component": component, "__doc__": f"AutoAttack's {component} (pyautoattack)."},
    )
    cls = dataclass(eq=False)(cls)
    ATTACKS.register(cls.name, summary=f"AutoAttack's {component} through pyautoattack, with a version's settings")(cls)


for _c in COMPONENTS:
    _register_component(_c)


@ATTACKS.register("autoattack", summary="AutoAttack (pyautoattack): standard, plus, rand or custom, as a cascade of its components")
@dataclass(eq=False)
class AutoAttack(Ensemble):
    """AutoAttack's components for ``version`` as a cascade (see the module docstring)."""

    name: ClassVar[str] = "autoattack"
    smoke_params: ClassVar[dict] = {"budget": 0.05}

    version: str = "standard"
    attacks: list[str] | None = field(default=None)
    budget: float = 1.0

    def __post_init__(self) -> None:
        check_param_types(self)
        _check_version(self.version, self.attacks)
        _check_budget(self.name, self.budget)
        super().__post_init__()  # every component built under every norm (each checks its own options)

    def components(self, threat: ThreatModel) -> list[Attack]:
        return [ATTACKS.create(f"aa-{c}", version=self.version, attacks=self.attacks, budget=self.budget)
                for c in version_components(threat, self.version, self.attacks)]
