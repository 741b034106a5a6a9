"""The one cascade: each attack only sees the points the attacks before it left robust (AutoAttack's rule).

:func:`cascade_stages` expands an attack into its stages (an :class:`Ensemble` into its parts, so records
say which part broke each point) and checks each against the threat model's norm; :func:`run_cascade`
runs stages in memory (:class:`Ensemble` itself and the attack-based checks use it); the runner walks the
same stages batch by batch with resumable state (:mod:`robustbench_ext.evaluation.plan`).
"""

from __future__ import annotations

import dataclasses
from abc import abstractmethod
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

from .base import Attack, AttackContext
from ..errors import RbxError, UnsupportedNormError
from ..progress import StepReport
from .threat import ThreatModel


@dataclass(frozen=True)
class LabelledAttack:
    """One attack of a cascade: its label in records (``pma+/apgd-t`` for an ensemble's part) and the attack."""

    label: str
    attack: Attack


@dataclass(eq=False)
class Ensemble(Attack):
    """Attacks run one after another, each only on the points the previous ones left robust.

    Subclasses implement :meth:`components`. ``early_stop`` (a setting, for training) and ``eot`` reach
    every component that has them. The runner expands an ensemble into its stages (:func:`cascade_stages`, so
    records say which component broke each point); called directly, :meth:`run` performs the same cascade.
    """

    def __post_init__(self) -> None:
        """The ensemble's own parameter types, then every component built under every norm it supports, so that a
        bad option fails when the ensemble is built (naming the component), not when that component's turn comes."""
        super().__post_init__()
        for norm in self.norms:
            try:
                self.parts(ThreatModel(norm, 1.0))
            except UnsupportedNormError:
                continue
            except RbxError as exc:
                raise RbxError(f"attack '{self.name}': {exc}") from None

    @abstractmethod
    def components(self, threat: ThreatModel) -> list[Attack]:
        """The attacks of the cascade for ``threat``, in order."""

    def fit(self, num_classes, input_shape, threat):
        """Every component fitted (:meth:`AttackBase.fit`): one that cannot run refuses the ensemble, naming itself;
        the notes of those that adapt (targets capped) are the ensemble's. :meth:`run` runs the fitted components."""
        if threat is None:
            return self, None
        notes = [note for part in self.parts(threat) for note in [part.fit(num_classes, input_shape, threat)[1]] if note]
        return self, "; ".join(notes) or None

    def parts(self, threat: ThreatModel) -> list[Attack]:
        """:meth:`components` with this ensemble's settings passed on (validated by each component)."""
        settings = {k: getattr(self, k) for k in ("early_stop", "eot") if hasattr(self, k)}
        return [dataclasses.replace(a, **{k: v for k, v in settings.items() if hasattr(a, k)}) for a in self.components(threat)]

    def supports(self, threat: ThreatModel) -> bool:
        return threat.norm in self.norms and all(a.supports(threat) for a in self.parts(threat))

    def eot_note_for(self) -> str | None:
        """The first component that refuses ``eot`` > 1 says why (probed under the ensemble's first norm;
        the runner checks every stage under its real threat model again before a run)."""
        probe = ThreatModel(self.norms[0], 1.0)
        for part in self.components(probe):
            note = part.eot_note_for()
            if note:
                return f"its component '{part.name}': {note}"
        return None

    def run(self, ctx: AttackContext, x: Tensor, y: Tensor) -> Tensor:
        parts = self.parts(ctx.threat)
        if ctx.num_classes is not None:
            parts = [a.fit(ctx.num_classes, tuple(x.shape[1:]), ctx.threat)[0] for a in parts]
        stages = [LabelledAttack(a.name, a) for a in parts]
        return run_cascade(stages, ctx.model, x, y, ctx.threat, seeds=[ctx.spawn_seed() for _ in stages],
                           progress=ctx.progress, ctx=ctx)[0]


def cascade_stages(label: str, attack: Attack, threat: ThreatModel) -> list[LabelledAttack]:
    """The stages an attack contributes to a cascade: itself, or an ensemble's parts (recursively), each
    checked against ``threat``'s norm (an error names the part that does not support it)."""
    if isinstance(attack, Ensemble):
        if threat.norm not in attack.norms:  # before building parts: a component may not even construct for it
            raise UnsupportedNormError(f"attack '{label}' does not support {threat.norm} (threat {threat.label}); "
                                       f"it supports: {', '.join(attack.norms)}")
        return [s for part in attack.parts(threat) for s in cascade_stages(f"{label}/{part.name}", part, threat)]
    if not attack.supports(threat):
        raise UnsupportedNormError(f"attack '{label}' does not support {threat.norm} (threat {threat.label}); "
                                   f"it supports: {', '.join(attack.norms)}")
    return [LabelledAttack(label, attack)]


def run_cascade(stages: Sequence[LabelledAttack], model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, *,
                seeds: Sequence[int], robust: Tensor | None = None, progress: StepReport | None = None,
                ctx: AttackContext | None = None) -> tuple[Tensor, Tensor]:
    """Run ``stages`` in order, each on the points still robust; return (x_adv ``[N, ...]``, robust ``[N]`` bool).

    ``robust`` (default: every point) marks the points to attack; points already broken keep ``x``.
    ``ctx``: the calling attack's context, which takes on the stages' counters (zeroed gradient entries).
    """
    out = x.clone()
    robust = torch.ones(x.shape[0], dtype=torch.bool, device=x.device) if robust is None else robust.clone()
    for i, (stage, seed) in enumerate(zip(stages, seeds)):
        idx = robust.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        sub = None if progress is None else (lambda f, i=i: progress((i + f) / len(stages)))
        samples = None if ctx is None or ctx.samples is None else ctx.samples.child(i).subset(idx)
        res = stage.attack(model, x[idx], y[idx], threat, seed=seed, progress=sub, samples=samples)
        if ctx is not None:
            ctx.absorb(res)
        out[idx] = res.x_adv
        robust[idx[res.success]] = False
    return out, robust
