"""Issue 30: L0 in runs and records, rbx's own FAB and Square against pyautoattack, label-only runs.

The contract and property tests cover the new attacks through the registry; here: what is specific to them.
"""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from conftest import DATA, tiny_batch, tiny_model
from robustbench_ext import evaluate
from robustbench_ext.attack.threat import ThreatModel
from robustbench_ext.errors import RbxError
from robustbench_ext.models.adapter import LabelOnly, is_label_only
from robustbench_ext.models.loading import load_model
from robustbench_ext.registry import ATTACKS, DATASETS


def _x_y(n=16):
    model = tiny_model()
    x = tiny_batch(n)
    return model, x, model(x).argmax(1)


# ---- FAB and Square against pyautoattack -------------------------------------------------------------
@pytest.mark.parametrize("norm", ["Linf", "L2", "L1"])
@pytest.mark.parametrize("targeted", [False, True])
def test_fab_matches_pyautoattack_per_sample(norm, targeted):
    """One restart draws no random number: rbx's FAB follows pyautoattack's FABAttack_PT step for step."""
    fab_pt = pytest.importorskip("pyautoattack.fab_pt")
    model, x, y = _x_y()
    eps = {"Linf": 0.1, "L2": 1.0, "L1": 5.0}[norm]
    ref = fab_pt.FABAttack_PT(model, norm=norm, n_iter=10, n_restarts=1, eps=eps, targeted=targeted, device="cpu")
    if targeted:
        ref.target_class = 2
    x_ref = ref.attack_single_run(x, y, use_rand_start=False, is_targeted=targeted)
    geom = ThreatModel(norm, eps).geometry
    with torch.no_grad():
        fooled = model(x_ref).argmax(1) != y
    ref_norm = torch.where(fooled, geom.norm_of((x_ref - x).double()), torch.tensor(float("inf"), dtype=torch.float64))
    ours = ATTACKS.create("fab-t" if targeted else "fab", steps=10, **({"n_targets": 1} if targeted else {}))
    res = ours(model, x, y, ThreatModel(norm, eps), seed=0)
    assert fooled.any()
    assert torch.equal(torch.isfinite(res.min_norm), torch.isfinite(ref_norm))  # the same points broken
    both = torch.isfinite(ref_norm)
    assert torch.allclose(res.min_norm[both], ref_norm[both], rtol=1e-3, atol=1e-6)  # the same minimal norms


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_square_with_shared_draws_reproduces_pyautoattack(norm):
    """draws=batch draws what pyautoattack's SquareAttack draws, in its order: the same points on CPU."""
    square = pytest.importorskip("pyautoattack.square")
    model, x, y = _x_y()
    eps = {"Linf": 0.05, "L2": 0.5}[norm]
    x_ref = square.SquareAttack(model, norm=norm, eps=eps, n_queries=60, seed=3, resc_schedule=False).perturb(x, y)
    res = ATTACKS.create("square", queries=60, draws="batch")(model, x, y, ThreatModel(norm, eps), seed=3)
    with torch.no_grad():
        ref_success = model(x_ref).argmax(1) != y
    assert torch.equal(res.success, ref_success)
    assert torch.allclose(res.x_adv[ref_success], x_ref[ref_success], atol=1e-6)


def test_square_takes_no_gradient_and_counts_queries():
    model, x, y = _x_y()
    res = ATTACKS.create("square", queries=50)(model, x, y, ThreatModel("Linf", 0.05), seed=0)
    assert res.n_backward == 0 and res.n_forward <= len(y) * (1 + 50) + 2 * len(y)


# ---- L0 ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["sparse-pgd", "sparse-rs"])
def test_l0_attacks_change_at_most_k_pixels_and_respect_the_convention(name):
    model, x, y = _x_y()
    attack = ATTACKS.create(name, **ATTACKS.get(name).factory.smoke_params)
    pix = attack(model, x, y, ThreatModel("L0", 3), seed=0)
    changed_pixels = ((pix.x_adv - x) != 0).any(1).flatten(1).sum(1)
    assert (changed_pixels <= 3).all() and changed_pixels.max() > 0
    coord = attack(model, x, y, ThreatModel("L0c", 3), seed=0)
    assert (((coord.x_adv - x) != 0).flatten(1).sum(1) <= 3).all()
    with pytest.raises(RbxError, match="does not support L2"):
        attack(model, x, y, ThreatModel("L2", 0.5))


def test_l0_union_run_records_and_tables():
    """An L0 threat model goes through a run like any norm: flags, union, the record and its table."""
    loaded = load_model("cifar10-smallcnn-linf-at")
    data = DATASETS.create(DATA, n_examples=12)
    ev = evaluate(loaded, data, ["L0:5"], attacks=["sparse-pgd:steps=10", "sparse-rs:queries=40"], device="cpu",
                  progress=False)
    rec = ev.record
    assert [t.threat for t in rec.threats] == ["L0:5"] and rec.threats[0].norm == "L0"
    flags = ev.flags
    assert (flags.union == (flags.clean_correct & flags.robust[:, 0])).all()
    stages = rec.threats[0].attacks
    assert stages[0].queries is None and stages[1].queries == stages[1].n_forward > 0  # gradient vs black-box
    assert "L0:5" in str(ev)


def test_union_l0_suite_plans():
    from robustbench_ext.evaluation.request import RunRequest

    req = RunRequest(model="cifar10-smallcnn-linf-at", suite="cifar10-union-l0", data=DATA)
    labels = [t.threat.label for t in req.planned.bench.threats]
    assert labels == ["Linf:8/255", "L2:0.5", "L1:12", "L0:20"]


# ---- label-only -------------------------------------------------------------------------------------
class _NoBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("backward called on a label-only model")


class _Guarded(nn.Module):
    """The small CNN behind a layer whose backward raises: any gradient taken through it fails loudly."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(_NoBackward.apply(x))


def test_label_only_model_answers_one_hot_labels():
    loaded = load_model("labels:cifar10-smallcnn-linf-at")
    plain = load_model("cifar10-smallcnn-linf-at").module
    x = DATASETS.create(DATA, n_examples=6).x
    out = loaded.module(x.requires_grad_(True))
    assert is_label_only(loaded.module) and not out.requires_grad
    assert torch.equal(out.sum(1), torch.ones(6)) and set(out.unique().tolist()) <= {0.0, 1.0}
    with torch.no_grad():
        assert torch.equal(out.argmax(1), plain(x).argmax(1))


def test_label_only_run_never_calls_backward():
    guarded = _Guarded(load_model("cifar10-smallcnn-linf-at").module)
    data = DATASETS.create(DATA, n_examples=8)
    with pytest.raises(Exception, match="backward called"):  # the guard works: a normal run's pre-checks take gradients
        evaluate(guarded, data, ["Linf:8/255"], attacks=["rays:queries=30"], device="cpu", progress=False)
    ev = evaluate(guarded, data, ["Linf:8/255"], attacks=["rays:queries=60", "hsj:steps=2,queries=200,init_evals=10"],
                  device="cpu", progress=False, label_only=True)
    rec = ev.record
    for stage in rec.threats[0].attacks:
        assert stage.n_backward == 0 and stage.queries == stage.n_forward
    assert rec.config.get("label_only") is True
    # no score or gradient check: determinism, and (deterministic) batch independence (issue 26)
    assert [c["name"] for c in rec.checks["results"]] == ["deterministic", "batch_independent"]


def test_label_only_run_refuses_score_attacks():
    with pytest.raises(RbxError, match="label-only run: attack 'pgd' reads scores or gradients"):
        evaluate("labels:cifar10-smallcnn-linf-at", DATA, ["Linf:8/255"], attacks=["pgd"], n_examples=4, device="cpu")
    with pytest.raises(RbxError, match="label-only"):
        evaluate("cifar10-smallcnn-linf-at", DATA, ["Linf:8/255"], attacks=["square"], n_examples=4, device="cpu",
                 label_only=True)  # score-based black-box is not decision-based
    with pytest.raises(RbxError, match="--curve"):
        evaluate("cifar10-smallcnn-linf-at", DATA, ["Linf:8/255"], attacks=["rays"], n_examples=4, device="cpu",
                 label_only=True, curve=True)


def test_cli_label_only_error_is_one_line(tmp_path):
    from robustbench_ext.cli import cli

    res = CliRunner().invoke(cli, ["run", "--model", "cifar10-smallcnn-linf-at", "--dataset", DATA, "--n-examples", "4",
                                    "--threat", "Linf:8/255", "--attack", "apgd-ce", "--label-only", "--results-dir",
                                    str(tmp_path), "--quiet"])
    assert res.exit_code != 0
    lines = [ln for ln in res.output.strip().splitlines() if ln]
    assert len(lines) == 1 and lines[0].startswith("rbx: error: label-only run: attack 'apgd-ce'")
    assert not any(tmp_path.iterdir())


def test_label_only_suite_allows_only_decision_attacks():
    from robustbench_ext.evaluation.request import RunRequest

    req = RunRequest(model="labels:cifar10-smallcnn-linf-at", suite="cifar10-labelonly", data=DATA)
    assert req.is_label_only
    assert all(st.attack.label_only for st in req.planned.plan.stages)
    assert isinstance(LabelOnly(nn.Identity()), nn.Module)


def test_a_norm_without_a_cascade_in_the_suite_takes_another_suites():
    from robustbench_ext.evaluation.suites import plan_benchmark

    bench = plan_benchmark(None, ["L0:10", "L0c:30"])
    for spec in bench.threats:
        assert [a.name for a in spec.attacks] == ["sparse-pgd", "sparse-pgd", "sparse-rs"]
        assert all(st.attack.supports(spec.threat) for st in spec.build())


def test_label_only_run_defaults_to_the_label_only_suite():
    from robustbench_ext.evaluation.request import RunRequest

    req = RunRequest(model="cifar10-smallcnn-linf-at", data=DATA, label_only=True)
    assert req.planned.bench.suite == "cifar10-labelonly"
    req = RunRequest(model="labels:cifar10-smallcnn-linf-at", data=DATA, threats=("L2:0.5",))
    assert [a.name for a in req.planned.bench.threats[0].attacks] == ["hsj"]


def test_check_refuses_a_label_only_model():
    from robustbench_ext.evaluation.api import check

    with pytest.raises(RbxError, match="label-only model gives neither"):
        check("labels:cifar10-smallcnn-linf-at", DATA, "Linf:8/255", attacks=["rays"], n_examples=4, device="cpu")


def test_reference_compare_query_budget_counts_queries_and_reads_iterates_only():
    """benchmarks/reference_compare.py's hsj section reads both HopSkipJumps through one wrapper: every image passed
    forward is a query, the run ends at the budget (mid-batch too), and only iterates (not gradient probes) count
    as the closest misclassified point."""
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("reference_compare", REPO / "benchmarks" / "reference_compare.py")
    rc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rc)
    net = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        net.weight.copy_(torch.eye(2))  # class = the larger coordinate
    x0, y0 = torch.tensor([[1.0, 0.0]]), torch.tensor([0])
    w = rc._QueryBudget(net, x0, y0, budget=5)
    w(torch.tensor([[0.0, 3.0]]))  # misclassified at L2 sqrt(10)
    assert w.queries == 1 and w.best == pytest.approx(10 ** 0.5)
    w.probe(w)(torch.tensor([[0.5, 0.6]]))  # closer and misclassified, but a probe: counted, not read
    assert w.queries == 2 and w.best == pytest.approx(10 ** 0.5)
    with pytest.raises(rc._BudgetSpent):  # 3 of these 4 fit the budget: read, then the run ends
        w(torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.9, 0.0], [0.6, 0.7]]))
    assert w.queries == 5 and w.best == pytest.approx(2 ** 0.5)  # the 4th (L2 0.81, closer) was past the budget
    with pytest.raises(rc._BudgetSpent):
        w(x0)
    assert w.queries == 5


def test_attacks_guide_hsj_table_is_the_committed_comparison():
    """The HopSkipJump-vs-foolbox table of docs/guide/attacks.md states what results/attacks30/reference_compare_hsj
    holds (rounded as shown), so an edited figure or a rerun without the page fails here."""
    import json

    from conftest import REPO

    run = json.loads((REPO / "results/attacks30/reference_compare_hsj/reference_compare.json").read_text())
    guide = (REPO / "docs/guide/attacks.md").read_text()
    rows = {r["comparison"]: r for r in run["rows"]}
    budgets = sorted({int(c.split("(")[1].split(" ")[0]) for c in rows})
    for b in budgets:
        eps = next(r for c, r in rows.items() if c.startswith(f"hsj L2 ({b} queries") and "at eps" in c)
        found = next(r for c, r in rows.items() if c.startswith(f"hsj L2 ({b} queries") and "any radius" in c)
        same = " (same {})".format(found["both"]) if found["both"] == found["rbx"] == found["reference"] else ""
        line = (f"| {b:,} | {found['rbx']} / {found['reference']}{same} | {eps['rbx']} / {eps['reference']} | "
                f"{eps['median_l2_rbx']:.2f} / {eps['median_l2_reference']:.2f} | {eps['median_ratio_rbx_over_reference']:.3f} | "
                f"{eps['rbx_closer']} / {eps['reference_closer']} | {eps['cpu_s_rbx']:.1f} / {eps['cpu_s_reference']:.1f} |")
        assert line in guide, line
    assert run["command"] in " ".join(guide.replace("\\\n", " ").split()).replace("python ", "")


def _spgd_guide_lines(rows):
    """The lines of docs/guide/attacks.md's sparse-PGD table for the merged family's ``sparse-pgd`` rows."""
    import re

    lines = []
    for r in rows:
        m = re.fullmatch(r"sparse-pgd L0:20 (\w+) seed=(\d+) \(300 steps; reference (\S+)\)", r["comparison"])
        assert m, r["comparison"]
        lines.append(f"| {m[1]} | {m[2]} | {m[3]} | {r['rbx']} | {r['reference']} | {r['both']} | {r['only_rbx']} | "
                     f"{r['only_reference']} | {r['p_holm']:.3g} | {r['cpu_s_rbx']:.1f} / {r['cpu_s_reference']:.1f} |")
    return lines


def test_attacks_guide_spgd_table_is_the_committed_comparison():
    """The sparse-PGD-vs-authors table of docs/guide/attacks.md states what results/attacks30/reference_compare_spgd
    holds, with the Holm-adjusted p of the merged family results/attacks30/reference_compare (which holds those rows
    unchanged); the diagnostic figures quoted there are diag.json's."""
    import json

    from conftest import REPO

    res = REPO / "results/attacks30"
    own = json.loads((res / "reference_compare_spgd/reference_compare.json").read_text())
    family = json.loads((res / "reference_compare/reference_compare.json").read_text())
    merged = [r for r in family["rows"] if r["comparison"].startswith("sparse-pgd")]
    assert [{k: v for k, v in r.items() if k != "p_holm"} for r in merged] == \
        [{k: v for k, v in r.items() if k != "p_holm"} for r in own["rows"]]
    assert len(family["rows"]) == 29 and own["command"] in family["command"]
    guide = (REPO / "docs/guide/attacks.md").read_text()
    flat = " ".join(guide.replace("\\\n", " ").split())
    for line in _spgd_guide_lines(merged):
        assert line in guide, line
    assert own["command"] in flat.replace("python ", "")
    diag = json.loads((res / "reference_compare_spgd/diag.json").read_text())
    assert diag["command"] in flat.replace("python ", "")
    for rec in diag["single_image_breaks"]:
        line = (f"| {rec['image']} | {rec['variant']} | {rec['rbx']} | {rec['a356d0c']} | {rec['a356d0c-consecutive']} | "
                f"{rec['head']} |")
        assert line in guide, line
