"""Masking-aware escalation and the per-run strength audit: what a run adds to its plan by itself.

**Escalation.** A fast gradient-based cascade is only as good as the model's gradients. When the pre-checks
(:func:`robustbench_ext.evaluation.checks.cheap_checks`, stored in the record) find a sign that gradients
cannot be trusted, the run adds what does work, without being asked, and the record and the table say what
was added and why (Athalye et al., ICML 2018; Croce & Hein, ICML 2020; Pintor et al., NeurIPS 2022):

========================================  ===================================================================
sign (pre-check)                          what the run adds
========================================  ===================================================================
zero or non-finite input gradients,       a black-box stage per threat model after its cascade: Square
an unbounded attack that does not reach   (Andriushchenko et al., ECCV 2020) at AutoAttack's budget (5,000
~0% (``zero_gradients``,                  queries, ``aa-square``), which needs no gradient
``finite_gradients``, ``unbounded``)
randomness (``deterministic``)            EOT: every attack that supports it averages ``eot`` = 20 gradient
                                          draws (AutoAttack's ``rand`` setting), and every verdict is the
                                          majority over draws (:mod:`robustbench_ext.evaluation.majority`)
batch dependence (``batch_independent``)  batch-independent evaluation: every pass on one image at a time
                                          (batch size 1), so no point is judged in another's company
========================================  ===================================================================

``escalate=False`` (``rbx run --no-escalate``) keeps the plan as asked; a flagged model then carries
``masking_unescalated`` in its record and its table says its numbers are upper bounds. A flagged model
never gets a bare number without one or the other.

**Audit.** With ``audit=K``, after every other stage, AutoAttack standard (pyautoattack, every component)
attacks a seeded random sample of K of the points the run left robust, per threat model. What it breaks is
counted as broken, and the record stores, per threat model, the sample, what AutoAttack broke and a
one-sided 95% Clopper-Pearson upper bound on the share of the run's robust points that the cascade misses
(:func:`miss_rate_upper`). No other tool reports how much its fast number can be trusted, per run.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Sequence

from ..attack.base import Attack
from ..attack.threat import LP_NORMS
from ..errors import RbxError
from ..registry import ATTACKS
from .plan import RunPlan, Stage

#: The black-box attack escalation adds, per norm: Square at AutoAttack's budget (5,000 queries): rbx's own batched
#: Square for Linf and L2, pyautoattack's for L1 (rbx's Square has no L1 version); Sparse-RS for L0; Engstrom et
#: al.'s gradient-free grid for rotations and translations. The other transformation threat models (stadv, color,
#: recolor, jpeg-linf) have no gradient-free attack in rbx: a flagged model's numbers there are marked as upper bounds.
BLACK_BOXES = {"Linf": "square:queries=5000", "L2": "square:queries=5000", "L1": "aa-square",
               "L0": "sparse-rs:queries=5000", "L0c": "sparse-rs:queries=5000", "spatial-rt": "spatial-grid"}
#: The Linf/L2 one (kept for callers of the first version of this module).
BLACK_BOX = BLACK_BOXES["Linf"]
#: Gradient draws per step for randomized models (AutoAttack's ``rand`` version uses 20).
EOT_DRAWS = 20
#: The checks whose failure means gradients cannot be trusted (-> black box).
GRADIENT_SIGNS = ("zero_gradients", "finite_gradients", "unbounded")
#: What the audit runs on its sample: AutoAttack standard, every component (Linf, L2, L1).
AUDIT_ATTACK = "autoattack"
#: The audit's reference for the threat models AutoAttack does not cover. L0: Sparse-RS at the budget of its paper's
#: L0 evaluations (10,000 queries; Croce et al., AAAI 2022). The transformation threat models have no independent
#: implementation to audit with, so their reference is rbx's own first-order attack on the parameters run far past
#: the suite's cascade (5-10 random restarts of 100-200 steps, against at most 2 x 50 in
#: ``cifar10-union-extended``) and with another loss than the cascade's: a stronger reference, not an independent
#: one, which the record's notes say (:data:`AUDIT_NOT_INDEPENDENT`).
AUDIT_REFERENCES = {"L0": "sparse-rs:queries=10000", "L0c": "sparse-rs:queries=10000",
                    "spatial-rt": "transform-pgd:steps=100,restarts=10,loss=margin",
                    "stadv": "transform-pgd:steps=200,restarts=5,loss=margin",
                    "color": "transform-pgd:steps=100,restarts=10,loss=margin",
                    "recolor": "transform-pgd:steps=200,restarts=5,loss=margin",
                    "jpeg-linf": "transform-pgd:steps=200,restarts=5,loss=ce"}
#: Threat models whose audit reference is a stronger configuration of rbx's own attacks.
AUDIT_NOT_INDEPENDENT = ("spatial-rt", "stadv", "color", "recolor", "jpeg-linf")


def black_box_for(threat) -> str | None:
    """The black-box attack escalation adds under ``threat`` (None: rbx has none for it)."""
    return BLACK_BOXES.get(threat.norm)


def audit_reference_for(threat) -> str | None:
    """The attack the audit runs under ``threat``: AutoAttack standard for lp norms, else the reference of
    :data:`AUDIT_REFERENCES` (None: no independent reference, not audited)."""
    if threat.norm in LP_NORMS:
        return AUDIT_ATTACK
    return AUDIT_REFERENCES.get(threat.norm)
#: Default audit size per threat model when a run has at least AUDIT_AUTO_N images (``audit=None``).
AUDIT_AUTO_K = 20
AUDIT_AUTO_N = 1000


@dataclass(frozen=True)
class Escalation:
    """What a run adds because of masking signs: ``reasons`` (one dict per sign: the check, its evidence and
    the action), a black-box stage per threat model, EOT draws for the attacks, a batch size of 1."""

    reasons: tuple[dict[str, str], ...] = ()
    black_box: bool = False
    eot: int | None = None
    batch_size: int | None = None
    enabled: bool = True

    @property
    def flagged(self) -> bool:
        return bool(self.reasons)

    @property
    def active(self) -> bool:
        return self.flagged and self.enabled

    def describe(self) -> dict[str, Any]:
        """The record's ``escalation`` block."""
        return {"enabled": self.enabled, "reasons": [dict(r) for r in self.reasons],
                **({"black_box": dict(BLACK_BOXES)} if self.black_box and self.enabled else {}),
                **({"eot": self.eot} if self.eot and self.enabled else {}),
                **({"batch_size": self.batch_size} if self.batch_size and self.enabled else {})}


def decide(checks: dict[str, Any] | None, enabled: bool = True) -> Escalation:
    """The escalation the pre-checks call for (deterministic: a resumed run decides the same from its saved checks)."""
    failed = {r["name"]: r for r in (checks or {}).get("results", []) if not r["passed"]}
    reasons, black_box, eot, batch_size = [], False, None, None
    for name in GRADIENT_SIGNS:
        if name in failed:
            black_box = True
            reasons.append({"sign": name, "evidence": failed[name]["message"],
                            "action": "a black-box stage (Square, 5,000 queries; Sparse-RS for L0) after each threat model's "
                                      "cascade"})
    if "deterministic" in failed:
        eot = EOT_DRAWS
        reasons.append({"sign": "deterministic", "evidence": failed["deterministic"]["message"],
                        "action": f"EOT with {EOT_DRAWS} gradient draws on every attack that supports it; verdicts by "
                                  "majority over draws"})
    if "batch_independent" in failed:
        batch_size = 1
        reasons.append({"sign": "batch_independent", "evidence": failed["batch_independent"]["message"],
                        "action": "batch-independent evaluation: every forward and attack pass on one image at a time"})
    return Escalation(tuple(reasons), black_box, eot, batch_size, enabled)


# ---- the plan, extended ----------------------------------------------------------------------------
def extend_plan(plan: RunPlan, escalation: Escalation, audit: int, num_classes: int,
                input_shape: Sequence[int]) -> tuple[RunPlan, tuple[str, ...]]:
    """``plan`` with the escalation's stages after each main threat model's cascade and, with ``audit`` > 0, one
    audit stage per main threat model after everything else. ``broken_by`` marks are renumbered so that a
    column's marks index its own stages in order (cascade, escalation, audit) and union stages come after.
    Returns the plan and notes for the record (attacks that could not take EOT, e.g.)."""
    notes: list[str] = []
    stages = list(plan.stages)
    n_main = plan.n_main
    if escalation.active and escalation.eot:
        stages, eot_notes = _with_eot(stages, escalation.eot)
        notes += eot_notes
    extra: dict[int, list[Stage]] = {c: [] for c in range(n_main)}
    if escalation.active and escalation.black_box:
        for c in range(n_main):
            threat = plan.threats[c].threat
            spec = black_box_for(threat)
            if spec is None:
                notes.append(f"masking signs, but rbx has no black-box attack for {threat.label}: its robust accuracy is "
                             "an upper bound that only gradient-based attacks measured")
                continue
            attack, note = ATTACKS.create(spec).fit(num_classes, input_shape, threat)
            if note:
                notes.append(note)
            extra[c].append(Stage("threat", (c,), f"escalation/{ATTACKS.parse(spec).name}", attack, (0,), (c, 0), threat,
                                  _pool(plan, c)))
    audits = []
    if audit:
        for c in range(n_main):
            threat = plan.threats[c].threat
            spec = audit_reference_for(threat)
            if spec is None:
                notes.append(f"audit: rbx has no independent reference attack for {threat.label}; it was not audited")
                continue
            attack, note = ATTACKS.create(spec).fit(num_classes, input_shape, threat)
            if note and note not in notes:
                notes.append(note)
            if threat.norm in AUDIT_NOT_INDEPENDENT:
                notes.append(f"audit: {threat.label} is audited by {spec}, rbx's own attack run far past the cascade: a "
                             "stronger reference, not an independent implementation (none exists in rbx for it)")
            audits.append(Stage("audit", (c,), f"audit/{ATTACKS.parse(spec).name}", attack, (0,), (c, 0), threat,
                                _pool(plan, c)))
    # insert each column's extra stages after its last own stage; audits after everything
    out: list[Stage] = []
    last = {c: max((i for i, s in enumerate(stages) if s.kind == "threat" and s.columns == (c,)), default=-1)
            for c in range(n_main)}
    for i, s in enumerate(stages):
        out.append(s)
        for c in range(n_main):
            if i == last[c]:
                out += extra[c]
    out += audits
    return dataclasses.replace(plan, stages=tuple(_renumber(out, plan))), tuple(notes)


def _pool(plan: RunPlan, column: int) -> tuple[int, ...]:
    """A new stage's pool: its own column, or in a union-only run every main column (as its other stages)."""
    return tuple(range(plan.n_main)) if plan.union_only else ()


def _renumber(stages: list[Stage], plan: RunPlan) -> list[Stage]:
    """Marks and seed keys: a column's own stages (threat, escalation, audit) count 0, 1, ... in plan order; union
    stages continue after each column's own; a stage's seed key is (column, position) as in compile_plan."""
    own: dict[int, int] = {}
    out = []
    for s in stages:
        if s.kind in ("threat", "sweep", "audit"):
            c = s.columns[0]
            j = own.get(c, 0)
            own[c] = j + 1
            key = s.seed_key if s.kind != "audit" and not s.label.startswith("escalation/") else (c, j)
            out.append(dataclasses.replace(s, marks=(j,), seed_key=key))
        else:
            out.append(s)
    union = [i for i, s in enumerate(out) if s.kind == "union"]
    for k, i in enumerate(union):
        s = out[i]
        out[i] = dataclasses.replace(s, marks=tuple(own.get(c, 0) + k for c in s.columns))
    return out


def _with_eot(stages: list[Stage], eot: int) -> tuple[list[Stage], list[str]]:
    """Every threat-model stage's attack with ``eot`` draws where it takes them; notes name the ones that do not.
    An attack given its own ``eot`` (> 1: the user already averages draws) keeps it, and a note says so."""
    out, notes = [], []
    for s in stages:
        attack = s.attack
        if s.kind in ("threat", "sweep") and isinstance(attack, Attack) and getattr(attack, "eot", 1) > 1:
            notes.append(f"escalation: {s.label} keeps the eot={attack.eot} it was given")
        elif s.kind in ("threat", "sweep") and isinstance(attack, Attack) and hasattr(attack, "eot"):
            candidate = dataclasses.replace(attack, eot=eot)
            why = candidate.eot_note_for()
            if why:
                notes.append(f"escalation: {s.label} runs without EOT ({why})")
            else:
                attack = candidate
        out.append(dataclasses.replace(s, attack=attack))
    return out, notes


# ---- the audit's statistics -------------------------------------------------------------------------
def miss_rate_upper(broken: int, sampled: int, confidence: float = 0.95) -> float:
    """One-sided Clopper-Pearson upper bound on a proportion: ``broken`` of ``sampled`` (Clopper & Pearson, 1934).

    The p at which seeing at most ``broken`` successes in ``sampled`` trials has probability 1 - ``confidence``;
    1.0 when nothing was sampled. For ``broken`` = 0 it is 1 - (1 - confidence) ** (1 / sampled).
    """
    if sampled < 0 or not 0 <= broken <= sampled:
        raise RbxError(f"audit counts must satisfy 0 <= broken <= sampled, got {broken} of {sampled}")
    if sampled == 0 or broken == sampled:
        return 1.0
    alpha = 1.0 - confidence
    if broken == 0:
        return 1.0 - alpha ** (1.0 / sampled)
    lo, hi = broken / sampled, 1.0
    for _ in range(100):  # bisection: binom_cdf(broken; sampled, p) falls as p rises
        mid = (lo + hi) / 2
        if _binom_cdf(broken, sampled, mid) > alpha:
            lo = mid
        else:
            hi = mid
    return hi


def _binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed in log space (exact for the audit's sample sizes)."""
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 1.0 if k >= n else 0.0
    lp, lq = math.log(p), math.log1p(-p)
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq for i in range(k + 1)]
    m = max(terms)
    return min(1.0, math.exp(m) * sum(math.exp(t - m) for t in terms))


def audit_block(threat: str, population: int, sampled: int, broken: int, n: int,
                attack: str = AUDIT_ATTACK) -> dict[str, Any]:
    """The record's audit entry for one threat model: the sample, what AutoAttack broke, the 95% upper bound on
    the share of the cascade's robust points it misses, and the lower bound on robust accuracy that follows."""
    upper = miss_rate_upper(broken, sampled)
    robust_after = population - broken  # the broken sample points are counted as broken
    unsampled = population - sampled
    lower = max(0.0, (robust_after - upper * unsampled) / n) if n else 0.0
    return {"threat": threat, "attack": attack.partition(":")[0], "population": population, "sampled": sampled,
            "broken": broken, "miss_rate_upper95": round(upper, 6), "robust_lower95": round(lower, 6)}


def resolve_audit(audit: int | None, n: int) -> int:
    """The audit size of a run: ``audit`` if given, else :data:`AUDIT_AUTO_K` for runs of at least
    :data:`AUDIT_AUTO_N` images (leaderboard-sized) and 0 for smaller ones (demos, CI gates stay fast)."""
    if audit is None:
        return AUDIT_AUTO_K if n >= AUDIT_AUTO_N else 0
    return int(audit)
