"""Issue 26: masking-aware escalation and the per-run strength audit (robustbench_ext.evaluation.escalation).

The models here are the reference small CNN behind the pathological wrappers a user may bring: an input
quantization (zero gradients), Gaussian input noise (randomness) and batch statistics (batch dependence).
Budgets are cut (Square and AutoAttack at a few percent of theirs) so the suite stays fast; what is tested is
that the right thing is added, recorded and counted, not the attacks' strength.
"""

from __future__ import annotations

import numpy as np
from pathlib import Path

import pytest
import torch
from torch import nn

import robustbench_ext.evaluation.escalation as escalation
from robustbench_ext import evaluate
from robustbench_ext.errors import RbxError
from robustbench_ext.evaluation.escalation import Escalation, decide, extend_plan, miss_rate_upper
from robustbench_ext.evaluation.plan import compile_plan
from robustbench_ext.evaluation.suites import AttackSpec, ThreatSpec
from robustbench_ext.attack.threat import ThreatModel
from robustbench_ext.reporting.tables import format_table

scipy_stats = pytest.importorskip("scipy.stats")


class Quantized(nn.Module):
    """8-level input quantization (the issue's case): the input gradient is exactly zero almost everywhere."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(torch.round(x * 7) / 7)


class BatchStats(nn.Module):
    """The model behind a BatchNorm2d that keeps using its batch's statistics (train mode): batch-dependent."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(3, affine=False, track_running_stats=False)
        self.net = net

    def forward(self, x):
        return self.net(self.bn(x) * 0.25 + 0.5)


class Noisy(nn.Module):
    def __init__(self, net: nn.Module, sigma: float = 0.1) -> None:
        super().__init__()
        self.net, self.sigma = net, sigma

    def forward(self, x):
        return self.net((x + self.sigma * torch.randn_like(x)).clamp(0, 1))


@pytest.fixture
def cheap_budgets(monkeypatch):
    """Square and AutoAttack at a few percent of their budgets (fast); the escalation logic is what is tested."""
    monkeypatch.setattr(escalation, "BLACK_BOXES", {"Linf": "square:queries=100", "L2": "square:queries=100",
                                                    "L1": "aa-square:budget=0.02"})
    monkeypatch.setattr(escalation, "AUDIT_ATTACK", "autoattack:budget=0.02")


# ---- the audit's statistics ---------------------------------------------------------------------------
@pytest.mark.parametrize("broken,sampled", [(0, 1), (0, 20), (1, 20), (3, 20), (7, 50), (19, 20)])
def test_miss_rate_upper_is_clopper_pearson(broken, sampled):
    """The one-sided 95% upper bound equals the Beta quantile Clopper-Pearson is (scipy, an independent code)."""
    assert miss_rate_upper(broken, sampled) == pytest.approx(scipy_stats.beta.ppf(0.95, broken + 1, sampled - broken),
                                                              abs=1e-6)


def test_miss_rate_upper_edges():
    assert miss_rate_upper(0, 0) == 1.0 and miss_rate_upper(5, 5) == 1.0
    assert miss_rate_upper(0, 20) == pytest.approx(1 - 0.05 ** (1 / 20))  # 13.9%: the rule of three's exact form
    with pytest.raises(RbxError):
        miss_rate_upper(3, 2)


# ---- deciding and planning ----------------------------------------------------------------------------
def _checks(**failed):
    names = ("probabilities", "deterministic", "zero_gradients", "finite_gradients", "batch_independent", "unbounded")
    return {"results": [{"name": n, "passed": n not in failed, "value": 0.0, "message": failed.get(n, "ok")} for n in names]}


def test_decide_maps_each_sign_to_its_action():
    assert not decide(_checks()).flagged
    esc = decide(_checks(zero_gradients="12% zero"))
    assert esc.black_box and not esc.eot and not esc.batch_size and esc.reasons[0]["evidence"] == "12% zero"
    assert decide(_checks(unbounded="40% left")).black_box
    assert decide(_checks(deterministic="differ")).eot == escalation.EOT_DRAWS
    assert decide(_checks(batch_independent="changes")).batch_size == 1
    off = decide(_checks(zero_gradients="z"), enabled=False)
    assert off.flagged and not off.active and off.describe()["enabled"] is False


def test_extend_plan_inserts_escalation_and_audit_and_renumbers_marks():
    threats = [ThreatSpec(ThreatModel.parse(t), (AttackSpec.parse("pgd:steps=2"), AttackSpec.parse("fgsm")))
               for t in ("Linf:8/255", "L2:0.5")]
    plan = compile_plan(threats, (AttackSpec.parse("union-worst:attack=pgd:steps=1"),))
    same, notes = extend_plan(plan, Escalation(), 0, 10, (3, 32, 32))
    assert same.stages == plan.stages and notes == ()  # nothing to add: the plan as compiled (marks unchanged)
    ext, _ = extend_plan(plan, Escalation(({"sign": "zero_gradients"},), black_box=True), 2, 10, (3, 32, 32))
    kinds = [(s.kind, s.columns, s.label, s.marks) for s in ext.stages]
    assert kinds == [
        ("threat", (0,), "pgd", (0,)), ("threat", (0,), "fgsm", (1,)), ("threat", (0,), "escalation/square", (2,)),
        ("threat", (1,), "pgd", (0,)), ("threat", (1,), "fgsm", (1,)), ("threat", (1,), "escalation/square", (2,)),
        ("union", (0, 1), "union-worst", (4, 4)),  # after each column's cascade, escalation AND audit
        ("audit", (0,), "audit/autoattack", (3,)), ("audit", (1,), "audit/autoattack", (3,))]
    # a column's own stages are ext.column_stages(c) in mark order: what records and the attribution plot read
    assert [ext.stages[i].marks[0] for i in ext.column_stages(0)] == [0, 1, 2, 3]


# ---- end to end ---------------------------------------------------------------------------------------
def test_quantized_model_escalates_to_a_black_box_stage(small_cnn, cifar200, cheap_budgets):
    data = cifar200.first(24)
    ev = evaluate(Quantized(small_cnn.module).eval(), data, "Linf:8/255", attacks=["pgd:steps=5"], progress=False)
    esc = ev.record.escalation
    assert esc["enabled"] and "zero_gradients" in [r["sign"] for r in esc["reasons"]]
    labels = [s.attack for s in ev.record.threats[0].attacks]
    assert labels == ["pgd", "escalation/square"]
    assert "escalated (zero_gradients)" in format_table(ev.record)
    # the black box found what the gradient could not: the quantized model's robust accuracy drops
    assert ev.record.threats[0].attacks[1].n_broken > 0
    off = evaluate(Quantized(small_cnn.module).eval(), data, "Linf:8/255", attacks=["pgd:steps=5"], progress=False,
                   escalate=False)
    assert off.record.escalation["enabled"] is False
    assert [s.attack for s in off.record.threats[0].attacks] == ["pgd"]
    assert "MASKING" in format_table(off.record) and "upper bound" in format_table(off.record)
    from robustbench_ext.reporting.boards import record_row
    signs = ", ".join(r["sign"] for r in esc["reasons"])
    assert record_row(Path("r.json"), ev.record)["escalation"] == signs and signs.startswith("zero_gradients")
    assert record_row(Path("r.json"), off.record)["escalation"] == f"{signs} (not escalated: upper bounds)"
    assert off.record.threats[0].robust.count > ev.record.threats[0].robust.count


def test_batch_dependent_model_is_judged_one_image_at_a_time(small_cnn, cifar200):
    """The issue's symptom: robust accuracy changed with --batch-size. Escalated, it no longer does."""
    data = cifar200.first(16)
    model = BatchStats(small_cnn.module).eval()
    runs = [evaluate(model, data, "Linf:8/255", attacks=["pgd:steps=3"], batch_size=b, progress=False) for b in (4, 16)]
    for ev in runs:
        assert ev.record.escalation["batch_size"] == 1
        assert "batch_independent" in [r["sign"] for r in ev.record.escalation["reasons"]]
    assert np.array_equal(runs[0].flags.clean_correct, runs[1].flags.clean_correct)
    assert np.array_equal(runs[0].flags.robust, runs[1].flags.robust)


def test_randomized_model_gets_eot_and_majority(small_cnn, cifar200, cheap_budgets):
    data = cifar200.first(8)
    ev = evaluate(Noisy(small_cnn.module).eval(), data, "Linf:8/255", attacks=["pgd:steps=2"], draws=3, progress=False)
    assert ev.record.escalation["eot"] == escalation.EOT_DRAWS
    assert ev.record.threats[0].attacks[0].params["eot"] == escalation.EOT_DRAWS
    assert ev.record.config["draws"]["source"] == "detected"


def test_a_clean_model_is_not_escalated(small_cnn, cifar200):
    ev = evaluate(small_cnn, cifar200.first(16), "Linf:8/255", attacks=["pgd:steps=3"], progress=False)
    assert not ev.record.escalation and "escalation" not in ev.record.to_dict()
    names = [r["name"] for r in ev.record.checks["results"]]
    assert "batch_independent" in names and "unbounded" in names and ev.record.checks["passed"]


def test_audit_counts_what_autoattack_breaks_and_bounds_the_miss_rate(small_cnn, cifar200, monkeypatch):
    """A deliberately weak cascade (FGSM): AutoAttack (at a fifth of its budget) breaks part of its sample; those
    points count as broken."""
    monkeypatch.setattr(escalation, "AUDIT_ATTACK", "autoattack:budget=0.2")
    data = cifar200.first(40)
    plain = evaluate(small_cnn, data, ["Linf:8/255", "L2:0.5"], attacks=["fgsm"], progress=False)
    ev = evaluate(small_cnn, data, ["Linf:8/255", "L2:0.5"], attacks=["fgsm"], audit=10, progress=False)
    for ti, (a, t0, t1) in enumerate(zip(ev.record.audit, plain.record.threats, ev.record.threats)):
        assert a["population"] == t0.robust.count and a["sampled"] == min(10, a["population"])
        assert t1.robust.count == t0.robust.count - a["broken"]  # the audit's hits are counted
        assert a["miss_rate_upper95"] == pytest.approx(miss_rate_upper(a["broken"], a["sampled"]), abs=1e-6)
        assert t1.attacks[-1].attack == "audit/autoattack" and t1.attacks[-1].population == a["population"]
        audited = ev.flags.broken_by[:, ti] == len(t1.attacks) - 1
        assert int(audited.sum()) == a["broken"]
    assert sum(a["broken"] for a in ev.record.audit) > 0, "AutoAttack should beat plain FGSM somewhere"
    assert np.array_equal(ev.flags.union, ev.flags.clean_correct & ev.flags.robust.all(1))
    table = format_table(ev.record)
    assert "audit Linf:8/255: AutoAttack standard broke" in table
    assert ev.record.config["audit"] == 10
    # boards and exports show it: the row's worst bound over threat models, and the RobustBench footnote
    from robustbench_ext.reporting.boards import record_row
    from robustbench_ext.reporting.export import entries
    row = record_row(Path("r.json"), ev.record)
    assert row["audit_miss_upper95"] == pytest.approx(max(a["miss_rate_upper95"] for a in ev.record.audit), abs=1e-4)
    assert row["audit"].startswith("Linf:8/255: AA broke ")
    assert row["escalation"] is None  # a clean model: nothing escalated
    linf = ev.record.audit[0]
    assert f"AutoAttack standard broke {linf['broken']} of {linf['sampled']}" in entries(ev.record)["Linf"]["footnote"]


def test_audit_default_is_on_for_leaderboard_sized_runs():
    assert escalation.resolve_audit(None, 999) == 0
    assert escalation.resolve_audit(None, 1000) == escalation.AUDIT_AUTO_K
    assert escalation.resolve_audit(0, 10_000) == 0 and escalation.resolve_audit(5, 10) == 5
    with pytest.raises(RbxError, match="--audit"):
        evaluate("cifar10-smallcnn-linf-at", "cifar10-1k", audit=-1)


# ---- every threat model: escalation and audit either add their stage or say why not --------------------
#: One threat model per norm rbx knows (a new norm must be added here, and so decided for).
EXAMPLE_THREATS = {"Linf": "Linf:8/255", "L2": "L2:0.5", "L1": "L1:12", "L0": "L0:20", "L0c": "L0c:20",
                   "spatial-rt": "spatial-rt:30,3", "stadv": "stadv:0.05", "color": "color:0.1",
                   "recolor": "recolor:0.06", "jpeg-linf": "jpeg-linf:1/255"}


def test_example_threats_cover_every_norm():
    from robustbench_ext.attack.threat import NORMS
    assert set(EXAMPLE_THREATS) == set(NORMS)


def _first_attack_for(threat: ThreatModel) -> str:
    from robustbench_ext.registry import ATTACKS
    for name in ATTACKS.names():
        try:
            if ATTACKS.create(name).supports(threat):
                return name
        except RbxError:
            continue
    raise AssertionError(f"no registered attack supports {threat.label}")


@pytest.mark.parametrize("norm", sorted(EXAMPLE_THREATS))
def test_escalation_and_audit_under_every_norm(norm):
    """Issue 30/31 follow-up: a flagged model or an audited run under L0 or a transformation threat model crashed
    (AutoAttack's assertion on the norm; a KeyError in the black-box table). Each norm now gets its black box and
    audit reference where rbx has one, and a note saying it has none otherwise."""
    threat = ThreatModel.parse(EXAMPLE_THREATS[norm])
    plan = compile_plan([ThreatSpec(threat, (AttackSpec.parse(_first_attack_for(threat)),))], ())
    flagged = Escalation(({"sign": "zero_gradients"},), black_box=True)
    ext, notes = extend_plan(plan, flagged, 5, 10, (3, 32, 32))
    labels = [s.label for s in ext.stages]
    box, ref = escalation.black_box_for(threat), escalation.audit_reference_for(threat)
    if box is None:
        assert not any(l.startswith("escalation/") for l in labels)
        assert any("no black-box attack for " + threat.label in n for n in notes)
    else:
        assert sum(l.startswith("escalation/") for l in labels) == 1
    if ref is None:
        assert not any(s.kind == "audit" for s in ext.stages)
        assert any("not audited" in n for n in notes)
    else:
        audits = [s for s in ext.stages if s.kind == "audit"]
        assert len(audits) == 1 and audits[0].attack.supports(threat)
    assert norm not in ("Linf", "L2", "L1", "L0", "L0c") or (box and ref)  # lp and L0 always have both
    assert ref is not None  # every threat model is audited (transformations by a stronger rbx attack, noted as such)
    assert (norm in escalation.AUDIT_NOT_INDEPENDENT) == any("not an independent implementation" in n for n in notes)


def test_black_box_check_without_a_black_box_flags_no_evidence(small_cnn, cifar200):
    from robustbench_ext.evaluation.checks import check_black_box
    r = check_black_box(small_cnn, cifar200.x[:8], cifar200.y[:8], ThreatModel.parse("stadv:0.05"), [], None)
    assert not r.passed and "no black-box attack for stadv" in r.message
