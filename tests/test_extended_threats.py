"""Threat models beyond lp (issue 31): grammar, the transformations' math, the contract, the union over lp and
non-lp threat models (per-sample seeds, union-only) and MultiRobustBench's metrics (hand-computed)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import Tensor

from conftest import DATA, tiny_batch, tiny_model
from robustbench_ext import evaluate
from robustbench_ext.attack.base import Attack
from robustbench_ext.attack.threat import ThreatModel
from robustbench_ext.attack.transforms import ColorHSB, JpegLinf, ReColor, StAdvFlow, get_transform
from robustbench_ext.cli import cli as rbx
from robustbench_ext.errors import AttackContractError, RbxError, ThreatModelError, UnsupportedNormError
from robustbench_ext.evaluation.plan import compile_plan
from robustbench_ext.evaluation.suites import AttackSpec, ThreatSpec, load_suite
from robustbench_ext.records.multirobust import StrengthCurve, multirobust_metrics
from robustbench_ext.registry import ATTACKS, DATASETS


# ---- grammar -----------------------------------------------------------------------------------------
def test_grammar_round_trips_and_scales():
    t = ThreatModel.parse("spatial-rt:30,3")
    assert (t.norm, t.eps, t.eps2, t.label) == ("spatial-rt", 30.0, 3.0, "spatial-rt:30,3")
    assert ThreatModel.parse(t.label) == t and not t.is_lp
    assert ThreatModel.parse("spatial:20").eps2 == 2.0  # Engstrom et al.'s CIFAR ratio by default
    assert t.scaled(0.5).label == "spatial-rt:15,1.5"
    for text, norm in [("stadv:0.05", "stadv"), ("colour:0.1", "color"), ("recoloradv:0.06", "recolor"),
                       ("jpeg-linf:1/255", "jpeg-linf")]:
        tm = ThreatModel.parse(text)
        assert tm.norm == norm and ThreatModel.parse(tm.label) == tm and tm.eps2 is None
    assert ThreatModel.parse("Linf:8/255").is_lp and ThreatModel.parse("Linf:8/255").eps2 is None
    for bad in ["stadv:0.05,2", "spatial-rt:30,3,1", "color:-1", "spatial-rt:30,nan", "jpeg-linf:0", "recolor:0.06,2",
                "recolor:0"]:
        with pytest.raises(ThreatModelError):
            ThreatModel.parse(bad)
    with pytest.raises(ThreatModelError, match="not an lp ball"):
        ThreatModel.parse("color:0.1").geometry


# ---- the transformations -----------------------------------------------------------------------------
def _images(n=4, h=16, w=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, 3, h, w), generator=g) * 0.6 + 0.2


@pytest.mark.parametrize("kind, budget", [("spatial-rt", "30,3"), ("stadv", "0.05"), ("color", "0.1"), ("recolor", "0.06"),
                                          ("jpeg-linf", "0.01")])
def test_identity_and_budget(kind, budget):
    threat = ThreatModel.parse(f"{kind}:{budget}")
    tf, x = threat.transform, _images()
    p0 = tf.identity(x)
    assert torch.allclose(tf.apply(x, p0), x, atol=1e-6)
    assert (tf.budget_used(p0, threat) == 0).all()
    p = tf.random_init(x, threat, torch.Generator().manual_seed(1))
    assert (tf.budget_used(p, threat) <= 1).all() and (tf.budget_used(p, threat) > 0).all()
    assert torch.equal(tf.project(p * 3, threat).abs() <= tf.bounds(threat, p) * (1 + 1e-6), torch.ones_like(p, dtype=torch.bool))
    assert torch.allclose(tf.budget_used(tf.project(p * 100, threat), threat), torch.ones(len(x), dtype=torch.float64))


def test_spatial_quarter_turn_and_whole_pixel_shift_are_exact():
    tf, x = get_transform("spatial-rt"), _images(2, 8, 8)
    rot = tf.apply(x, torch.tensor([[90.0, 0.0, 0.0]] * 2))
    assert torch.allclose(rot, torch.rot90(x, k=1, dims=(2, 3)), atol=1e-5) or torch.allclose(rot, torch.rot90(x, k=-1, dims=(2, 3)), atol=1e-5)
    shifted = tf.apply(x, torch.tensor([[0.0, 2.0, 0.0]] * 2))  # two pixels along the width, zero padding
    assert torch.allclose(shifted[..., 2:], x[..., :-2], atol=1e-5) and (shifted[..., :2] == 0).all()


def test_color_hue_keeps_grey_and_channel_mean():
    tf, x = ColorHSB(), _images()
    y = tf.apply(x, torch.tensor([[0.25, 0.0, 0.0]] * 4))
    assert torch.allclose(y.mean(1), x.mean(1), atol=1e-5)  # a rotation about the grey axis, then no clamp needed here
    grey = x.mean(1, keepdim=True).expand_as(x).contiguous()
    assert torch.allclose(tf.apply(grey, torch.tensor([[0.3, 0.0, 0.0]] * 4)), grey, atol=1e-5)
    third = tf.apply(x, torch.tensor([[1 / 3, 0.0, 0.0]] * 4))  # a third of a turn permutes R -> G -> B
    assert torch.allclose(third, x[:, [2, 0, 1]], atol=1e-5)
    assert torch.allclose(tf.apply(x, torch.tensor([[0.0, 0.0, 0.1]] * 4)), (1.1 * x).clamp(0, 1), atol=1e-6)


def test_jpeg_dct_is_orthonormal_and_linear():
    x = _images()
    c = JpegLinf.coefficients(x)
    tf, d = JpegLinf(), torch.zeros_like(x)
    d[0, 0, 0, 0] = 0.01  # the DC coefficient of the first luma block: a constant 0.01/8 on that block's Y
    y = tf.apply(x, d)
    ycc = JpegLinf.coefficients(y) - c
    assert torch.allclose(ycc, d, atol=1e-5)
    assert torch.allclose((y - x)[0, :, :8, :8], torch.full((3, 8, 8), 0.01 / 8), atol=1e-6)
    with pytest.raises(ThreatModelError, match="multiples of 8"):
        tf.check_input((3, 12, 12))


def _grid_colours(g: int) -> Tensor:
    """``[3, g, g, g]``: the colour of every recolor grid point (red along the first grid axis)."""
    axis = torch.linspace(0, 1, g)
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"))


def test_recolor_identity_is_exact_and_a_constant_offset_shifts_every_pixel():
    tf, x = ReColor(), _images()
    x[0, :, 0, 0] = torch.tensor([0.0, 1.0, 0.5])  # colours on the cube's faces too
    assert tf.param_shape(x.shape[1:]) == (3, 16, 16, 16)
    assert torch.equal(tf.apply(x, tf.identity(x)), x)  # bit for bit, not merely close
    d = torch.tensor([0.05, -0.03, 0.02])
    p = d.reshape(1, 3, 1, 1, 1).expand(len(x), 3, 16, 16, 16)
    assert torch.allclose(tf.apply(x, p), (x + d.reshape(1, 3, 1, 1)).clamp(0, 1), atol=1e-6)
    with pytest.raises(ThreatModelError, match="3 channels"):
        tf.check_input((1, 8, 8))


def test_recolor_interpolates_an_affine_colour_map_exactly():
    """Trilinear interpolation reproduces affine functions: offsets ``A c + d`` on the grid give ``f(c) = c + A c + d``
    at every colour, which also pins the grid's axis order (red, green, blue) against grid_sample's (W, H, D)."""
    tf, x = ReColor(), _images()
    a = torch.tensor([[0.10, 0.02, -0.03], [0.00, -0.05, 0.04], [0.03, 0.01, 0.02]])
    d = torch.tensor([0.01, -0.02, 0.03])
    p = torch.einsum("ij,jabc->iabc", a, _grid_colours(16)) + d.reshape(3, 1, 1, 1)
    want = x + torch.einsum("ij,njhw->nihw", a, x) + d.reshape(1, 3, 1, 1)
    assert torch.allclose(tf.apply(x, p.expand(len(x), -1, -1, -1, -1)), want.clamp(0, 1), atol=1e-6)


def test_recolor_is_one_colour_function_inside_the_linf_ball():
    threat = ThreatModel.parse("recolor:0.06")
    tf, x = threat.transform, _images()
    x[:, :, 0, 1] = x[:, :, 0, 0]  # two pixels of one colour
    p = tf.random_init(x, threat, torch.Generator().manual_seed(3))
    y = tf.apply(x, p)
    assert (y - x).abs().max() <= 0.06 + 1e-6  # a convex combination of offsets within the box
    assert torch.equal(y[:, :, 0, 1], y[:, :, 0, 0])  # same colour in, same colour out
    used = tf.budget_used(p, threat)
    assert ((used > 0.9) & (used <= 1)).all()  # 12,288 uniform draws: the largest is near the bound
    p[0, 1, 3, 4, 5] = 0.09
    assert math.isclose(tf.budget_used(p, threat)[0].item(), 1.5, rel_tol=1e-5)
    assert torch.allclose(tf.budget_used(tf.project(p, threat), threat)[0], torch.tensor(1.0, dtype=torch.float64))


def test_recolor_smoothness_counts_neighbouring_offset_differences():
    p = torch.full((1, 3, 4, 4, 4), 0.02)
    assert ReColor.smoothness(p, tiny=0.0).item() == 0.0  # a constant shift is perfectly smooth
    p[0, :, 1, 2, 3] = torch.tensor([0.02 + 0.03, 0.02 + 0.04, 0.02])  # one grid point off by (0.03, 0.04, 0)
    # it has 5 neighbours (one axis ends at its face): 5 pairs differ by a vector of length 0.05
    assert math.isclose(ReColor.smoothness(p, tiny=0.0).item(), 5 * 0.05, rel_tol=1e-5)


def test_stadv_smoothness_is_zero_for_a_constant_flow():
    flow = torch.full((1, 2, 6, 6), 0.03)
    assert StAdvFlow.smoothness(flow, tiny=0.0).item() == 0.0
    flow[0, 0, 2, 2] = 0.0  # one pixel off: 4 neighbour pairs differ by 0.03
    assert math.isclose(StAdvFlow.smoothness(flow, tiny=0.0).item(), 4 * 0.03, rel_tol=1e-5)


# ---- the contract ------------------------------------------------------------------------------------
@dataclass(eq=False)
class _OverBudget(Attack):
    name: ClassVar[str] = "over-budget"
    norms: ClassVar[tuple[str, ...]] = ("color",)

    def run(self, ctx, x, y):
        return ctx.transform.identity(x) + 2 * ctx.eps


@dataclass(eq=False)
class _ImageNotParams(Attack):
    name: ClassVar[str] = "image-not-params"
    norms: ClassVar[tuple[str, ...]] = ("color",)

    def run(self, ctx, x, y):
        return x.clone()


def test_contract_refuses_parameters_outside_the_budget_and_images():
    model, x = tiny_model(), tiny_batch()
    y = model(x).argmax(1)
    with pytest.raises(AttackContractError, match="outside the color:0.1 budget"):
        _OverBudget()(model, x, y, ThreatModel.parse("color:0.1"))
    with pytest.raises(AttackContractError, match="returns its parameters"):
        _ImageNotParams()(model, x, y, ThreatModel.parse("color:0.1"))


@pytest.mark.parametrize("name", ["pgd", "apgd-ce", "autoattack", "square", "fab"])
def test_lp_attacks_refuse_non_lp_threats_in_one_line(name):
    with pytest.raises(UnsupportedNormError) as err:
        ThreatSpec(ThreatModel.parse("stadv:0.05"), (AttackSpec.parse(name),)).build()
    assert "\n" not in str(err.value) and "stadv" in str(err.value)
    result = CliRunner().invoke(rbx, ["run", "--model", "cifar10-smallcnn-linf-at", "--dataset", DATA, "--n-examples", "4",
                                      "--threat", "stadv:0.05", "--attack", name, "--no-progress"])
    assert result.exit_code != 0 and "rbx: error:" in result.output and "Traceback" not in result.output


def test_union_attacks_must_cover_every_threat():
    specs = [ThreatSpec(ThreatModel.parse("Linf:8/255"), (AttackSpec.parse("pgd"),)),
             ThreatSpec(ThreatModel.parse("color:0.1"), (AttackSpec.parse("transform-pgd"),))]
    with pytest.raises(UnsupportedNormError, match="color"):
        compile_plan(specs, union=(AttackSpec.parse("union-worst:attack=apgd-ce"),))


def test_per_sample_seeds_make_a_sample_independent_of_its_batch():
    from robustbench_ext.attack.context import SampleSeeds

    model, x = tiny_model(), tiny_batch()
    y = model(x).argmax(1)
    threat, attack = ThreatModel.parse("stadv:0.05"), ATTACKS.create("stadv", steps=5)
    keys = torch.arange(100, 100 + len(x))
    full = attack(model, x, y, threat, seed=4, samples=SampleSeeds(4, keys))
    part = attack(model, x[3:9], y[3:9], threat, seed=4, samples=SampleSeeds(4, keys[3:9]))
    assert torch.equal(full.params[3:9], part.params)


def test_grid_finds_what_a_denser_search_of_the_same_grid_finds():
    """The grid attack keeps, per sample, the highest-margin grid point: checked against brute force."""
    model, x = tiny_model(), tiny_batch()
    y = model(x).argmax(1)
    threat = ThreatModel.parse("spatial-rt:40,2")
    attack = ATTACKS.create("spatial-grid", rotations=5, translations=3)
    res = attack(model, x, y, threat)
    tf = threat.transform
    grid = torch.cartesian_prod(torch.linspace(-40, 40, 5), torch.linspace(-2, 2, 3), torch.linspace(-2, 2, 3))
    with torch.no_grad():
        any_fool = torch.stack([model(tf.apply(x, g.expand(len(x), 3))).argmax(1) != y for g in grid]).any(0)
    assert torch.equal(res.success, any_fool) and any_fool.any()


@pytest.mark.parametrize("spec", ["transform-pgd:steps=10", "recolor:steps=10"])
def test_recolor_attacks_break_the_tiny_model(spec):
    model, x = tiny_model(), tiny_batch()
    y = model(x).argmax(1)  # every point starts correctly classified
    threat = ThreatModel.parse("recolor:0.1")
    res = ATTACKS.create(spec)(model, x, y, threat, seed=0)
    assert res.success.sum() >= len(x) // 2
    assert (threat.transform.budget_used(res.params, threat) <= 1 + 1e-5).all()
    with torch.no_grad():
        assert torch.equal(res.success, model(threat.transform.apply(x, res.params)).argmax(1) != y)


def test_recolor_attack_checks_tau():
    with pytest.raises(RbxError, match="tau"):
        ATTACKS.create("recolor:tau=-1")


def test_recolor_in_a_union_with_linf(small_cnn):
    """The union flag is the AND of the per-threat flags with recolor in it, and a union-only run gives the same."""
    data = DATASETS.create(DATA, n_examples=8)
    specs = [ThreatSpec(ThreatModel.parse("Linf:8/255"), (AttackSpec.parse("pgd:steps=5"),)),
             ThreatSpec(ThreatModel.parse("recolor:0.06"), tuple(AttackSpec.parse(a) for a in
                                                                  ("transform-pgd:steps=5", "recolor:steps=5"))),
             ThreatSpec(ThreatModel.parse("color:0.1"), (AttackSpec.parse("transform-pgd:steps=3"),))]
    kw = dict(suite="test-recolor", seed=5, progress=False)
    full = evaluate(small_cnn, data, specs, batch_size=8, **kw)
    f = full.flags
    assert [t.threat for t in full.record.threats] == ["Linf:8/255", "recolor:0.06", "color:0.1"]
    np.testing.assert_array_equal(f.union, f.clean_correct & f.robust.all(1))
    assert f.union.sum() <= min(f.robust[:, k].sum() for k in range(3))
    assert (f.clean_correct & ~f.robust[:, 1]).any()  # recolor breaks something
    only = evaluate(small_cnn, data, specs, batch_size=3, union_only=True, union_order=["recolor:0.06"], **kw)
    np.testing.assert_array_equal(only.flags.union, f.union)


# ---- the extended union: a tiny run (8 images, few steps) ---------------------------------------------
def _tiny_specs() -> list[ThreatSpec]:
    def spec(threat, *attacks):
        return ThreatSpec(ThreatModel.parse(threat), tuple(AttackSpec.parse(a) for a in attacks))
    return [spec("Linf:8/255", "pgd:steps=5"), spec("spatial-rt:30,3", "spatial-grid:rotations=5,translations=3", "transform-pgd:steps=3"),
            spec("stadv:0.05", "stadv:steps=4"), spec("color:0.1", "transform-pgd:steps=3"),
            spec("jpeg-linf:1/255", "transform-pgd:steps=4")]


def test_suite_file_parses_with_every_threat():
    s = load_suite("cifar10-union-extended")
    assert [t.threat.label for t in s.threats] == ["Linf:8/255", "L2:0.5", "L1:12", "spatial-rt:30,3", "stadv:0.05",
                                                    "color:0.1", "jpeg-linf:1/255"]
    compile_plan(s.threats)  # every attack built against its threat model


@pytest.fixture(scope="module")
def tiny_runs(small_cnn):
    data = DATASETS.create(DATA, n_examples=8)
    kw = dict(suite="test-extended", seed=5, progress=False)
    full = evaluate(small_cnn, data, _tiny_specs(), batch_size=8, **kw)
    only = evaluate(small_cnn, data, _tiny_specs(), batch_size=3, union_only=True,
                    union_order=["color:0.1", "spatial-rt:30,3"], **kw)
    return data, full, only


def test_extended_union_is_the_and_of_every_threat(tiny_runs):
    _, full, _ = tiny_runs
    f = full.flags
    assert f.robust.shape[1] == 5
    np.testing.assert_array_equal(f.union, f.clean_correct & f.robust.all(1))
    assert f.union.sum() < f.clean_correct.sum()  # something breaks
    labels = [t.threat for t in full.record.threats]
    assert labels == ["Linf:8/255", "spatial-rt:30,3", "stadv:0.05", "color:0.1", "jpeg-linf:1/255"]


def test_union_only_gives_the_full_runs_union_flags(tiny_runs):
    _, full, only = tiny_runs
    np.testing.assert_array_equal(only.flags.union, full.flags.union)
    measured = [t.threat for t in only.record.threats if t.robust is not None]
    assert measured == ["color:0.1"]


def test_an_audited_extended_run_audits_every_transformation_threat(small_cnn, monkeypatch):
    """Issue 31, item 3 (the audit): every transformation threat model is audited by its reference (rbx's own
    first-order attack run past the cascade; here cut down to stay fast), its hits count as broken, the bound is
    stored, and the notes say the reference is not independent."""
    from robustbench_ext.evaluation import escalation
    from robustbench_ext.evaluation.escalation import miss_rate_upper
    from robustbench_ext.reporting.tables import format_table
    cheap = {k: "transform-pgd:steps=8,restarts=2,loss=margin" for k in escalation.AUDIT_NOT_INDEPENDENT}
    monkeypatch.setattr(escalation, "AUDIT_REFERENCES", {**escalation.AUDIT_REFERENCES, **cheap})
    data = DATASETS.create(DATA, n_examples=12)
    weak = [ThreatSpec(ThreatModel.parse(t), (AttackSpec.parse("transform-pgd:steps=1,random_start=false"),))
            for t in ("spatial-rt:30,3", "stadv:0.05", "color:0.1", "recolor:0.06", "jpeg-linf:2/255")]
    kw = dict(suite="test-extended-audit", seed=3, progress=False, batch_size=12)
    plain = evaluate(small_cnn, data, weak, **kw)
    ev = evaluate(small_cnn, data, weak, audit=4, **kw)
    assert [a["threat"] for a in ev.record.audit] == [t.threat for t in plain.record.threats]
    for a, t0, t1 in zip(ev.record.audit, plain.record.threats, ev.record.threats):
        assert a["attack"] == "transform-pgd" and a["population"] == t0.robust.count
        assert a["sampled"] == min(4, a["population"]) and t1.robust.count == t0.robust.count - a["broken"]
        assert a["miss_rate_upper95"] == pytest.approx(miss_rate_upper(a["broken"], a["sampled"]), abs=1e-6)
    assert sum(a["broken"] for a in ev.record.audit) > 0, "the reference should beat a 1-step attack somewhere"
    np.testing.assert_array_equal(ev.flags.union, ev.flags.clean_correct & ev.flags.robust.all(1))
    notes = " ".join(ev.record.config.get("notes", []))
    assert "not audited" not in notes and notes.count("not an independent implementation") == 5
    assert "audit stadv:0.05: transform-pgd broke" in format_table(ev.record)


# ---- MultiRobustBench metrics: hand-computed -----------------------------------------------------------
def test_metrics_by_hand():
    curves = {"Linf": StrengthCurve("Linf", (0.01, 0.02), (0.6, 0.4)), "stadv": StrengthCurve("stadv", (0.05,), (0.5,))}
    m = multirobust_metrics(0.8, curves)
    # Ratios with a perfect reference: clean 0.8, Linf 0.6, 0.4, stadv 0.5 -> mean 0.575, min 0.4.
    assert math.isclose(m.cr_avg, 57.5) and math.isclose(m.cr_worst, 40.0) and m.worst_at == "Linf@0.02"
    assert math.isclose(m.per_type["Linf"], 100 * (0.8 + 0.6 + 0.4) / 3) and math.isclose(m.per_type["stadv"], 65.0)
    # rbx's steepest drop: Linf steps 0 -> 0.01 (0.5 of its top) drop 0.2 -> 0.4; 0.01 -> 0.02 drop 0.2 -> 0.4;
    # stadv 0 -> 0.05 (the whole range) drop 0.3 -> 0.3. Max 0.4. MultiRobustBench's SC needs a reference: none.
    assert math.isclose(m.steepest_drop, 0.4) and m.stability is None and "reference" in m.stability_note
    ref = {"Linf": StrengthCurve("Linf", (0.01, 0.02), (0.75, 0.5)), "stadv": StrengthCurve("stadv", (0.05,), (1.0,))}
    r = multirobust_metrics(0.8, curves, 1.0, ref, "ind")
    # Ratios: clean 0.8, Linf 0.8, 0.8, stadv 0.5 -> mean 0.725, min 0.5 at stadv.
    assert math.isclose(r.cr_avg, 72.5) and math.isclose(r.cr_worst, 50.0) and r.worst_at == "stadv@0.05"
    assert r.reference == "ind"
    with pytest.raises(ValueError, match="lacks strengths"):
        multirobust_metrics(0.8, curves, 1.0, {**ref, "Linf": StrengthCurve("Linf", (0.01,), (0.75,))})


def test_metrics_from_a_real_record_and_the_cli(tiny_runs, tmp_path):
    _, full, _ = tiny_runs
    from robustbench_ext.records.multirobust import record_metrics

    m = record_metrics(full.record)
    accs = [float(full.record.clean.accuracy)] + [float(t.robust.accuracy) for t in full.record.threats]
    assert math.isclose(m.cr_avg, 100 * sum(accs) / len(accs)) and math.isclose(m.cr_worst, 100 * min(accs))
    path = full.write(tmp_path)
    record = next(tmp_path.rglob("*.json")) if not str(path).endswith(".json") else path
    res = CliRunner().invoke(rbx, ["report", str(record), "--multirobust", "--out", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    assert "CR_ind-avg" in res.output and (tmp_path / "rep" / "strength_curves.png").is_file()


# ---- resume: a transformation suite interrupted after a stage ----------------------------------------------
class _StopAfterStage(torch.nn.Module):
    """The small CNN, which raises KeyboardInterrupt (as Ctrl-C would) once the saved state shows that ``stage``
    of the plan has started, i.e. the stages before it are finished; disarmed, it is the small CNN itself."""

    def __init__(self, net: torch.nn.Module, state_dir, stage: int):
        super().__init__()
        self.net, self.state_dir, self.stage, self.armed, self.fired = net, state_dir, stage, True, 0

    def forward(self, x):
        if self.armed:
            for f in self.state_dir.glob("*.npz"):
                try:
                    with np.load(f, allow_pickle=False) as z:
                        at = json.loads(str(z["meta"]))["stage"]
                except Exception:  # being replaced right now
                    continue
                if at >= self.stage:
                    self.armed, self.fired = False, self.fired + 1
                    raise KeyboardInterrupt
        return self.net(x)


def test_an_interrupted_transformation_suite_resumes_to_the_same_flags(tmp_path, small_cnn, caplog):
    data = DATASETS.create(DATA, n_examples=6)
    specs = [ThreatSpec(ThreatModel.parse(t), tuple(AttackSpec.parse(a) for a in attacks)) for t, attacks in [
        ("spatial-rt:20,2", ["spatial-grid:rotations=3,translations=3", "transform-pgd:steps=2"]),
        ("stadv:0.05", ["stadv:steps=2"]), ("color:0.1", ["transform-pgd:steps=2"])]]
    kw = dict(seed=7, batch_size=2, progress=False)
    straight = evaluate(small_cnn.module, data, specs, **kw)
    state = tmp_path / "state"
    net = _StopAfterStage(small_cnn.module, state, stage=2)  # after spatial-rt's two stages, before stadv's
    with pytest.raises(KeyboardInterrupt):
        evaluate(net, data, specs, state_dir=state, **kw)
    assert net.fired == 1 and len(list(state.glob("*.npz"))) == 1  # it did stop, and kept its state
    net.stage, net.armed = 3, True  # once more, in color's stage
    with caplog.at_level("WARNING"), pytest.raises(KeyboardInterrupt):
        evaluate(net, data, specs, state_dir=state, resume=True, **kw)
    assert net.fired == 2 and "resuming from" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        resumed = evaluate(net, data, specs, state_dir=state, resume=True, **kw)
    assert "resuming from" in caplog.text and not list(state.glob("*.npz"))
    a, b = straight.flags, resumed.flags
    for name in ("clean_correct", "robust", "broken_by", "union"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert [t.robust for t in straight.record.threats] == [t.robust for t in resumed.record.threats]
    assert straight.record.union == resumed.record.union
    assert [[(s.attack, s.n_attacked, s.n_broken) for s in t.attacks] for t in straight.record.threats] == \
        [[(s.attack, s.n_attacked, s.n_broken) for s in t.attacks] for t in resumed.record.threats]
