"""``rbx run --attack fmn --curve``: robust accuracy vs eps from one minimum-norm run, in the record and the
plots, checked against the fixed-eps cascade at each threat model's eps."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import DATA
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


def test_curve_needs_a_minimum_norm_attack(small_cnn, cifar200):
    with pytest.raises(RbxError, match="minimum-norm attack"):
        evaluate(small_cnn, cifar200, ["Linf:8/255"], attacks=["fgsm"], n_examples=4, progress=False, curve=True)


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
