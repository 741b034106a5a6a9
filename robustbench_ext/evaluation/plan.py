"""The stage plan: a run compiled into one flat, typed list of stages, walked with one index by the runner.

Every main threat model's cascade (ensembles expanded into their parts), then the eps-sweep threat
models' cascades, then the union-stage attacks. Each :class:`Stage` names the flag columns it can
break points in, the ``broken_by`` value it writes there, and the key of its attack calls' seeds: the
runner needs nothing else to walk, save and resume a run (AutoAttack's flat loop over
``robust_flags``, made explicit).

Union-only plans (``rbx run --union-only``): when only union robust accuracy matters, a point broken
under any threat model needs no further attack. The main threat models' cascades then run in a given
order (the suite's measured ``union_order``: the threat model that breaks the most points per second
first) and every stage attacks only the points robust under ALL main threat models so far (its
``pool``). Every sample still meets every stage it would meet in a full run unless it is already
broken, and with per-sample seeds its outcome in a stage does not depend on its batch: the union
flags equal the full run's. Only the first threat model's robust accuracy is exact (it attacked every
clean-correct point); the others are not measured.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..attack.base import Attack, MultiThreatAttack
from ..errors import RbxError
from ..runtime import SEED_STREAMS
from .suites import AttackSpec, ThreatSpec, build_union
from ..attack.threat import ThreatModel

#: Seed key of the union stage (threat models use their column index): the ``union`` row of the seed table.
UNION_KEY = SEED_STREAMS["union"][0]


@dataclass(frozen=True)
class Stage:
    """One stage of a compiled run: an attack and the flag columns it can break points in.

    ``kind``: ``threat`` (a main threat model's cascade), ``sweep`` (an eps-sweep threat model's) or
    ``union`` (a multi-threat attack on the points robust under every main threat model). ``marks``:
    the ``broken_by`` value written per column (its position in that column's cascade; union stages
    count on after each threat's own cascade). ``seed_key``: with the batch index, the attack call's seed.
    """

    kind: str
    columns: tuple[int, ...]
    label: str
    attack: Attack | MultiThreatAttack
    marks: tuple[int, ...]
    seed_key: tuple[int, int]
    threat: ThreatModel | None = None
    pool: tuple[int, ...] = ()  # union-only: the columns a point must be robust in to be attacked (default: columns)

    @property
    def pool_columns(self) -> tuple[int, ...]:
        """The flag columns a point must still be robust in for this stage to attack it."""
        return self.pool or self.columns

    @property
    def what(self) -> str:
        """How progress lines name the stage's threat model."""
        return "union" if self.kind == "union" else self.threat.label  # type: ignore[union-attr]


@dataclass(frozen=True)
class RunPlan:
    """The whole run as one flat list of stages, with the threat models that own the flag columns."""

    threats: tuple[ThreatSpec, ...]  # main threat models, then eps-sweep ones: one flag column each
    n_main: int
    stages: tuple[Stage, ...]
    union_only: tuple[int, ...] = ()  # union-only: the main columns in the order they run (empty: a full run)

    @property
    def exact_columns(self) -> tuple[int, ...]:
        """Columns whose robust accuracy is exact: all in a full run, the first one run in a union-only run."""
        return self.union_only[:1] if self.union_only else tuple(range(len(self.threats)))

    def column_stages(self, column: int) -> list[int]:
        """Indices of the stages of ``column``'s own cascade (the union stage excluded)."""
        return [i for i, s in enumerate(self.stages) if s.kind != "union" and s.columns == (column,)]


def compile_plan(threats: Sequence[ThreatSpec], union: Sequence[AttackSpec] = (), eps_sweep: Sequence[float] = (),
                 union_only: bool = False, order: Sequence[str] = ()) -> RunPlan:
    """Compile threat models (with cascades), eps-sweep factors and union attacks into a :class:`RunPlan`.

    Every attack is built here, so bad names, parameters or norms fail before anything runs. With
    ``union_only``, the main threat models' stages run in ``order`` (threat labels; those it leaves out
    follow in their given order) and each attacks only points robust under every main threat model.
    """
    main = list(threats)
    if union_only:
        plan = compile_plan(threats, union, eps_sweep)
        if eps_sweep:
            raise RbxError("--union-only and --eps-sweep do not go together: a sweep measures each threat model on "
                           "every clean-correct point, which union-only skips")
        labels = [t.threat.label for t in main]
        unknown = [o for o in order if o not in labels]
        if unknown:
            raise RbxError(f"union_order names {', '.join(unknown)}, which the run does not evaluate; its threat "
                           f"models: {', '.join(labels)}")
        cols = [labels.index(o) for o in dict.fromkeys(order)] + [i for i, lab in enumerate(labels) if lab not in order]
        pool = tuple(range(len(main)))
        staged = [dataclasses.replace(s, pool=pool) for c in cols for s in plan.stages if s.kind != "union" and s.columns == (c,)]
        staged += [s for s in plan.stages if s.kind == "union"]
        return dataclasses.replace(plan, stages=tuple(staged), union_only=tuple(cols))
    columns = main + _sweep_specs(main, eps_sweep)
    stages: list[Stage] = []
    lengths = []
    for ti, spec in enumerate(columns):
        cascade = spec.build()
        lengths.append(len(cascade))
        kind = "threat" if ti < len(main) else "sweep"
        stages += [Stage(kind, (ti,), s.label, s.attack, (j,), (ti, j), spec.threat) for j, s in enumerate(cascade)]
    for j, (label, attack) in enumerate(build_union(tuple(union))):
        for t in main:
            attack.require(t.threat)  # a union attack must search every main threat model: refuse before running
        stages.append(Stage("union", tuple(range(len(main))), label, attack,
                                   tuple(lengths[ti] + j for ti in range(len(main))), (UNION_KEY, j)))
    return RunPlan(tuple(columns), len(main), tuple(stages))


def _sweep_specs(threats: Sequence[ThreatSpec], factors: Sequence[float]) -> list[ThreatSpec]:
    """Each threat model's cascade at ``eps * factor`` (skipping radii the main threat models already cover)."""
    bad = [f for f in factors if not (isinstance(f, (int, float)) and f > 0 and np.isfinite(f))]
    if bad:
        raise RbxError(f"--eps-sweep factors must be positive numbers, got {bad}")
    main = {t.threat.label for t in threats}
    out, seen = [], set()
    for t in threats:
        for f in sorted(set(float(f) for f in factors)):
            tm = t.threat.scaled(f)
            if f != 1.0 and tm.label not in main and tm.label not in seen:
                seen.add(tm.label)
                out.append(ThreatSpec(tm, t.attacks))
    return out


def fit_plan(plan: RunPlan, num_classes: int, input_shape: Sequence[int]) -> tuple[RunPlan, tuple[str, ...]]:
    """Every stage's attack fitted to the model and data, before any attack runs (:meth:`AttackBase.fit`).

    An attack that cannot run on a ``num_classes``-way model or on ``input_shape`` inputs raises here,
    naming itself; one that adapts (targeted attacks capped at K - 1 targets) is replaced, with a note for
    the record. The result is deterministic, so a resumed run fits the same plan.
    """
    stages, notes = [], []
    for s in plan.stages:
        s.attack.check_eot()
        attack = s.attack
        # a union stage's attack runs under every threat model of its columns: fitted under each
        for threat in ([s.threat] if s.kind != "union" else [plan.threats[c].threat for c in s.columns]):
            attack, note = attack.fit(num_classes, input_shape, threat)
            if note and note not in notes:
                notes.append(note)
        stages.append(s if attack is s.attack else dataclasses.replace(s, attack=attack))
    return dataclasses.replace(plan, stages=tuple(stages)), tuple(notes)


def stage_names(plan: RunPlan) -> list[str]:
    """How ``--skip-stage`` and failure messages name each stage: ``THREAT ATTACK`` (``union ATTACK``)."""
    return [f"{s.what} {s.label}" for s in plan.stages]
