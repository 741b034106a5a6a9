"""``rbx run --attack fmn --curve``: robust accuracy vs eps from one minimum-norm run, in the record and the
plots, checked against the fixed-eps cascade at each threat model's eps; on a randomized model, judged by the
majority over draws like the fixed-eps flags."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import DATA
from test_draws import LEVELS, coin_data
from robustbench_ext.reporting import plots
from robustbench_ext.cli import cli
from robustbench_ext.errors import RbxError
from robustbench_ext.records.schema import RunRecord
from robustbench_ext.reporting.tables import format_table
from robustbench_ext import evaluate

EPS8 = 8 / 255


def test_curve_from_one_fmn_run_checked_against_the_run_cascade(small_cnn, cifar200, tmp_path):
    ev = evaluate(small_cnn, cifar200, ["Linf:8/255", "Linf:4/255"], attacks=["fmn:steps=20", "apgd-ce:steps=10"],
                  n_examples=12, progress=False, curve=True)
    (cv,) = ev.record.curves
    assert cv["norm"] == "Linf" and cv["attack"] == "fmn" and cv["n"] == 12
    assert cv["source"] == "the run's own stage"  # fmn ran first, on every clean-correct point: no extra run
    assert EPS8 in cv["eps"] and 4 / 255 in cv["eps"] and cv["eps"][0] == 0 and max(cv["eps"]) == pytest.approx(2 * EPS8)
    acc = cv["robust_accuracy"]
    assert all(b <= a for a, b in zip(acc, acc[1:]))  # robust accuracy never rises with eps
    assert acc[0] == pytest.approx(ev.record.clean.accuracy)  # at eps 0: the clean-correct points
    for ch in cv["checks"]:
        col = [t.threat for t in ev.record.threats].index(ch["threat"])
        assert ch["cascade"] == pytest.approx(ev.record.threats[col].robust.accuracy)
        assert ch["curve"] == pytest.approx(acc[cv["eps"].index(ch["eps"])])
        # fmn is the cascade's first stage, so the cascade breaks everything the curve counts broken
        assert ch["found_only_by_curve"] == 0 and ch["curve"] >= ch["cascade"]
        assert ch["curve_above"] == (ch["curve"] > ch["cascade"])
        assert ch["missed_by_curve"] == round((ch["curve"] - ch["cascade"]) * 12)
        assert "this run's cascade: fmn, apgd-ce" == ch["reference"]
    again = RunRecord.from_dict(json.loads(ev.write(tmp_path).read_text()))
    assert again.curves == ev.record.curves
    assert "curve Linf (fmn" in format_table(again)
    png = plots.min_norm_curves(again)
    assert png is not None and png[:4] == b"\x89PNG"
    plain = evaluate(small_cnn, cifar200, ["Linf:8/255"], attacks=["fgsm"], n_examples=4, progress=False)
    assert plain.record.curves == () and "curves" not in plain.record.to_dict() and plots.min_norm_curves(plain.record) is None


def test_curve_alone_is_checked_against_the_suite_cascade(small_cnn, cifar200):
    ev = evaluate(small_cnn, cifar200, ["L2:0.5"], attacks=["fmn:steps=20"], n_examples=8, progress=False, curve=True)
    (ch,) = ev.record.curves[0]["checks"]
    assert ch["reference"].startswith("the suite's cascade: ")  # cifar10-union's L2 cascade, run on the clean-correct points
    assert "fmn" not in ch["reference"]
    curve_robust_points = round(ch["curve"] * 8)
    assert curve_robust_points - ch["missed_by_curve"] + ch["found_only_by_curve"] == round(ch["cascade"] * 8)


@pytest.mark.parametrize("spec", ["fab:steps=10", "fab-t:steps=10,n_targets=2"])
def test_curve_from_one_fab_run_agrees_with_the_fixed_eps_check(small_cnn, cifar200, spec):
    """FAB is a minimum-norm attack like FMN: --curve takes it, its curve is monotone, and at each threat model's
    eps it agrees with fab's own fixed-eps verdicts (the points with min_norm <= eps are broken at eps)."""
    n, threats = 10, ["Linf:8/255", "Linf:2/255"]
    ev = evaluate(small_cnn, cifar200, threats, attacks=[spec], n_examples=n, progress=False, curve=True)
    (cv,) = ev.record.curves
    assert cv["attack"] == spec.partition(":")[0] and cv["source"] == "the run's own stage" and cv["n"] == n
    acc = cv["robust_accuracy"]
    assert all(b <= a for a, b in zip(acc, acc[1:]))
    assert acc[0] == pytest.approx(ev.record.clean.accuracy)
    assert acc[-1] < acc[0]  # fab broke something within twice 8/255: the curve is not flat
    # the same attack run directly: its minimal norms give the curve at each eps, and the run's flags
    x, y = cifar200.x[:n], cifar200.y[:n]
    from robustbench_ext.registry import ATTACKS
    from robustbench_ext.attack.threat import ThreatModel

    direct = ATTACKS.create(spec)(small_cnn.module, x, y, ThreatModel.parse(threats[0]), seed=0)
    for ch in cv["checks"]:
        assert ch["curve"] == pytest.approx(acc[cv["eps"].index(ch["eps"])])
        assert ch["curve"] == pytest.approx((direct.min_norm > ch["eps"]).double().mean().item())
        # fab alone is the cascade: every point its minimal norm breaks, the fixed-eps run breaks too
        assert ch["found_only_by_curve"] == 0 and ch["curve"] >= ch["cascade"]
        col = [t.threat for t in ev.record.threats].index(ch["threat"])
        assert ch["cascade"] == pytest.approx(ev.record.threats[col].robust.accuracy)
        assert ch["missed_by_curve"] == round((ch["curve"] - ch["cascade"]) * n)


def test_curve_needs_a_minimum_norm_attack(small_cnn, cifar200):
    from robustbench_ext.attack.min_norm import minimum_norm_attacks

    names = minimum_norm_attacks()
    assert {"fmn", "cw", "deepfool", "fab", "fab-t"} <= set(names) and "fgsm" not in names and "aa-fab" not in names
    with pytest.raises(RbxError, match="minimum-norm attack") as err:
        evaluate(small_cnn, cifar200, ["Linf:8/255"], attacks=["fgsm"], n_examples=4, progress=False, curve=True)
    assert all(name in str(err.value) for name in names)  # the message lists the registry's, not a hand list


def test_curve_help_and_guide_list_the_registered_minimum_norm_attacks():
    from robustbench_ext.attack.min_norm import minimum_norm_attacks
    from conftest import REPO

    # wide enough that click does not wrap (it would break fab-t at its hyphen)
    help_text = " ".join(CliRunner().invoke(cli, ["run", "--help"], terminal_width=2000, max_content_width=2000).output.split())
    assert "With a minimum-norm attack (" + ", ".join(minimum_norm_attacks()) + ")" in help_text
    guide = (REPO / "docs" / "guide" / "curves.md").read_text()
    assert all(f"`{name}`" in guide for name in minimum_norm_attacks())


def test_cli_run_curve_and_leaderboard_plot(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(cli, ["run", "--model", "cifar10-smallcnn-linf-at", "--dataset", DATA, "--n-examples", "6",
                                   "--threat", "Linf:8/255", "--attack", "fmn:steps=10", "--attack", "fgsm", "--curve",
                                   "--results-dir", str(tmp_path / "res"), "--no-progress"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "curve Linf (fmn" in res.output and "at Linf:8/255: curve" in res.output
    lb = CliRunner().invoke(cli, ["leaderboard", "--results-dir", str(tmp_path / "res")], catch_exceptions=False)
    assert lb.exit_code == 0, lb.output
    assert list((tmp_path / "res" / "plots").glob("*_curve.png"))
    bad = CliRunner().invoke(cli, ["run", "--model", "cifar10-smallcnn-linf-at", "--dataset", DATA, "--n-examples", "2",
                                   "--threat", "Linf:8/255", "--attack", "fgsm", "--curve", "--results-dir",
                                   str(tmp_path / "res2")])
    assert bad.exit_code != 0 and "minimum-norm attack" in bad.output and "Traceback" not in bad.output
    assert np.all([not p.exists() for p in (tmp_path / "res2" / "records").glob("*.json")])


class _Coin4(torch.nn.Module):
    """A randomized 4-class toy (the coin model of tests/test_draws.py): each pass misclassifies a point (as
    class 1) with probability f = LEVELS[level in pixel (0, 0, 0)], drawn afresh from torch's global RNG.
    Within Linf 8/255 no attack can change the level, so the truth at every eps is known: a point is robust by
    majority iff f < 1/2, and a single pass breaks some f = 0.1 points by luck."""

    def forward(self, x):
        f = LEVELS[(x[:, 0, 0, 0].detach() * 3).round().long().clamp(0, 3)]
        wrong = torch.rand(x.shape[0]) < f
        logits = torch.tensor([0.0, 0.0, -1.0, -2.0]).repeat(x.shape[0], 1)
        logits[:, 0] = torch.where(wrong, 0.0, 4.0)
        logits[:, 1] = torch.where(wrong, 4.0, 0.0)
        return logits + 0.0 * x.flatten(1)[:, :1]


def test_randomized_curve_is_judged_by_majority_like_the_flags():
    x, y, f = coin_data()
    truth = float((f < 0.5).float().mean())  # 0.5: the f = 0 and f = 0.1 points, at every eps
    torch.manual_seed(0)
    # (the toy has zero input gradients, so a default run escalates to a black-box stage; this test is about the
    # majority rule of the curve, so it keeps the plan as asked)
    ev = evaluate(_Coin4(), (x, y), ["Linf:8/255"], attacks=["fmn:steps=5"], progress=False, randomized=True, draws=11,
                  draw_seed=5, curve=True, escalate=False)
    (cv,) = ev.record.curves
    assert cv["source"] == "the run's own stage" and cv["judged"].startswith("majority of 11 draws")
    assert ev.flags.clean_correct.mean() == truth and ev.flags.robust[:, 0].mean() == truth
    assert cv["robust_accuracy"] == [truth] * len(cv["eps"])  # no lucky single-pass break at any eps
    (ch,) = cv["checks"]
    # the reference: the suite's Linf cascade (PMA, APGD-T) on the clean-correct points, re-checked stage by stage
    assert ch["reference"].startswith("the suite's cascade")
    assert ch["curve"] == ch["cascade"] == truth and ch["missed_by_curve"] == ch["found_only_by_curve"] == 0
    # the same run judged by one pass: lucky successes on the f = 0.1 points pull the curve below the truth
    torch.manual_seed(0)
    single = evaluate(_Coin4(), (x, y), ["Linf:8/255"], attacks=["fmn:steps=5"], progress=False, randomized=False,
                      curve=True, escalate=False)
    assert single.record.curves[0]["judged"] == "single pass"
    assert min(single.record.curves[0]["robust_accuracy"]) < truth and single.record.curves[0]["checks"][0]["cascade"] < truth


def test_curve_extra_run_and_reference_cascade_by_majority():
    """The two paths of a curve that do not come from the run's own stage, on the randomized toy."""
    from robustbench_ext.attack.cascade import LabelledAttack
    from robustbench_ext.attack.threat import ThreatModel
    from robustbench_ext.evaluation.curves import _run_min_norm, _run_reference
    from robustbench_ext.evaluation.majority import Draws
    from robustbench_ext.registry import ATTACKS

    x, y, f = coin_data()
    data = SimpleNamespace(x=x, y=y, n=x.shape[0])
    clean = (f < 0.5).numpy()  # the majority's clean-correct points
    threat, dev, draws = ThreatModel.parse("Linf:8/255"), torch.device("cpu"), Draws(11, 5)
    fmn = ATTACKS.create("fmn:steps=5")
    torch.manual_seed(0)
    norms = _run_min_norm(fmn, _Coin4(), data, np.flatnonzero(clean), threat, 0, 16, dev, draws)
    assert np.isinf(norms).all()  # no closest point is misclassified by majority: never broken
    torch.manual_seed(0)
    lucky = _run_min_norm(fmn, _Coin4(), data, np.flatnonzero(clean), threat, 0, 16, dev, None)
    assert np.isfinite(lucky).any()  # one pass: some f = 0.1 points "broken" at a tiny norm
    stages = [LabelledAttack("fgsm", ATTACKS.create("fgsm")), LabelledAttack("fgsm", ATTACKS.create("fgsm"))]
    torch.manual_seed(0)
    assert (_run_reference(stages, _Coin4(), data, clean, threat, 0, 0, 16, dev, draws) == clean).all()
    torch.manual_seed(0)
    assert (_run_reference(stages, _Coin4(), data, clean, threat, 0, 0, 16, dev, None) != clean).any()
