"""MultiRobustBench's metrics in records, tables and boards (issue 31): CR_ind-avg, CR_ind-worst and the stability
constant computed on tiny hand-made records and checked by hand, the run's table line, the boards' columns and the
per-model strength plot."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest

from conftest import DATA
from robustbench_ext import evaluate
from robustbench_ext.records.accuracies import Accuracy
from robustbench_ext.records.multirobust import StrengthCurve, multirobust_metrics, stability_constant, strength_curves
from robustbench_ext.records.schema import RunRecord, ThreatResult
from robustbench_ext.records.stats import wilson_interval
from robustbench_ext.registry import DATASETS
from robustbench_ext.reporting.boards import write_all
from robustbench_ext.reporting.tables import format_table


def _acc(k: int, n: int = 10) -> Accuracy:
    return Accuracy(k / n, k, n, wilson_interval(k, n))


def _threat(label: str, norm: str, eps: float, k: int | None) -> ThreatResult:
    return ThreatResult(label, norm, eps, None if k is None else _acc(k), (), 1.0,
                        None if k is not None else "union-only run")


def _record(threats, clean: int = 8, sweeps=(), curves=()) -> RunRecord:
    """A hand-made record of 10 images: counts, not measurements."""
    return RunRecord(run_id="hand", suite="hand", model={"name": "hand-model", "architecture": "none"},
                     dataset={"name": "hand", "source": "hand", "n": 10}, n=10, clean=_acc(clean),
                     threats=tuple(threats), union=_acc(2), config={"seed": 0},
                     provenance={"wall_seconds": 1.0, "device_name": "cpu", "seed": 0, "started": "2026-12-05T00:00:00"},
                     sweeps=tuple(sweeps), curves=tuple(curves))


HAND = [_threat("Linf:0.01", "Linf", 0.01, 6), _threat("Linf:0.02", "Linf", 0.02, 4), _threat("stadv:0.05", "stadv", 0.05, 5)]


def test_a_hand_made_records_metrics_are_computed_when_built_and_read():
    rec = _record(HAND)
    m = rec.multirobust
    # No reference: ratios are the accuracies. S = clean 0.8, Linf 0.6 and 0.4, stadv 0.5.
    assert math.isclose(m["cr_ind_avg"], 100 * (0.8 + 0.6 + 0.4 + 0.5) / 4)
    assert math.isclose(m["cr_ind_worst"], 40.0) and m["worst_at"] == "Linf@0.02"
    assert m["stability_constant"] is None and "reference" in m["stability_note"]
    # rbx's steepest drop: Linf 0 -> 0.01 is half its range and drops 0.2: 0.4; 0.01 -> 0.02 likewise; stadv 0.3.
    assert math.isclose(m["rbx_steepest_drop"], 0.4)
    assert m["strengths"] == {"Linf": [0.01, 0.02], "stadv": [0.05]}
    # In the JSON; on read recomputed from the accuracies, never taken from the file.
    d = json.loads(rec.to_json())
    assert math.isclose(d["multirobust"]["cr_ind_avg"], m["cr_ind_avg"])
    d["multirobust"]["cr_ind_avg"] = 99.0
    d["threats"][1]["robust"] = dataclasses.asdict(_acc(2))  # Linf:0.02 now 0.2
    back = RunRecord.from_dict(d)
    assert math.isclose(back.multirobust["cr_ind_avg"], 100 * (0.8 + 0.6 + 0.2 + 0.5) / 4)
    assert math.isclose(back.multirobust["cr_ind_worst"], 20.0)


def test_no_strength_curve_no_block():
    rec = _record([HAND[0], HAND[2]])  # one strength per type: nothing to draw a curve from
    assert rec.multirobust is None and "multirobust" not in rec.to_dict()
    assert not any(line.startswith("MultiRobustBench") for line in format_table(rec).splitlines())
    # a union-only run's unmeasured threat model is not a point
    assert _record([HAND[0], _threat("Linf:0.02", "Linf", 0.02, None)]).multirobust is None


def test_curves_come_from_sweeps_and_minimum_norm_runs():
    sweep = {"threat": "Linf:0.01", "norm": "Linf", "points": [
        {"eps": 0.005, "label": "Linf:0.005", "factor": 0.5, "robust": dataclasses.asdict(_acc(7)), "seconds": 1.0},
        {"eps": 0.01, "label": "Linf:0.01", "factor": 1.0, "robust": dataclasses.asdict(_acc(6)), "seconds": 1.0}]}
    rec = _record([HAND[0]], sweeps=[sweep])
    assert strength_curves(rec)["Linf"] == StrengthCurve("Linf", (0.005, 0.01), (0.7, 0.6))
    assert math.isclose(rec.multirobust["cr_ind_avg"], 100 * (0.8 + 0.7 + 0.6) / 3)
    # A minimum-norm curve adds its points at strengths > 0 that no fixed-eps cascade measured; at 0.01 the
    # cascade's 0.6 wins over the curve's 0.9.
    curve = {"norm": "L2", "eps": [0.0, 0.5, 1.0], "robust_accuracy": [0.8, 0.5, 0.3], "checks": []}
    both = {"norm": "Linf", "eps": [0.0, 0.01, 0.03], "robust_accuracy": [0.8, 0.9, 0.1], "checks": []}
    rec = _record([HAND[0]], curves=[curve, both])
    c = strength_curves(rec)
    assert c["L2"] == StrengthCurve("L2", (0.5, 1.0), (0.5, 0.3))
    assert c["Linf"] == StrengthCurve("Linf", (0.01, 0.03), (0.6, 0.1))
    assert math.isclose(rec.multirobust["cr_ind_avg"], 100 * (0.8 + 0.6 + 0.1 + 0.5 + 0.3) / 5)
    assert rec.multirobust["worst_at"] == "Linf@0.03"


def test_stability_constant_by_hand():
    # acc / acc* (reference): clean 0.80 / 0.90; Linf 0.01: 0.70 / 0.88; Linf 0.02: 0.40 / 0.86; stadv 0.05: 0.50 / 0.60.
    curves = {"Linf": StrengthCurve("Linf", (0.01, 0.02), (0.70, 0.40)), "stadv": StrengthCurve("stadv", (0.05,), (0.50,))}
    ref = {"Linf": StrengthCurve("Linf", (0.01, 0.02), (0.88, 0.86)), "stadv": StrengthCurve("stadv", (0.05,), (0.60,))}
    # Only clean seen: pairs within 0.03 of clean's 0.90 are Linf@0.01 (0.88): |0.80 - 0.70| / 0.02 = 5.
    m = multirobust_metrics(0.80, curves, 0.90, ref, "ind")
    assert math.isclose(m.stability, 5.0)
    # Trained on Linf 0.01: also Linf@0.01 vs Linf@0.02 (0.86): |0.70 - 0.40| / 0.02 = 15.
    m = multirobust_metrics(0.80, curves, 0.90, ref, "ind", seen={"Linf": 0.01})
    assert math.isclose(m.stability, 15.0)
    # The competitive ratios against the reference, by hand.
    ratios = [0.80 / 0.90, 0.70 / 0.88, 0.40 / 0.86, 0.50 / 0.60]
    assert math.isclose(m.cr_avg, 100 * sum(ratios) / 4) and math.isclose(m.cr_worst, 100 * 0.40 / 0.86)
    # A locality of 0.01: no pair is that close, SC 0; everything seen: undefined.
    assert multirobust_metrics(0.80, curves, 0.90, ref, "ind", alpha=0.01).stability == 0.0
    every = multirobust_metrics(0.80, curves, 0.90, ref, "ind", seen={"Linf": 0.02, "stadv": 0.05})
    assert every.stability is None and "trained on" in every.stability_note
    # pairs with equal reference accuracies are skipped (no division by zero)
    assert stability_constant([("clean", 0.9, 0.9, True), ("a@1", 0.5, 0.9, False)]) == 0.0


def test_the_runs_table_shows_one_line():
    lines = [line for line in format_table(_record(HAND)).splitlines() if line.startswith("MultiRobustBench")]
    assert len(lines) == 1
    line = lines[0]
    assert "CR_ind-avg 57.5" in line and "CR_ind-worst 40.0 (at Linf@0.02)" in line and "SC n/a" in line
    assert "2 types, 3 strengths" in line and "ratios are the accuracies themselves" in line


def test_boards_show_the_metrics_and_a_strength_plot(tmp_path, small_cnn):
    data = DATASETS.create(DATA, n_examples=6)
    swept = evaluate(small_cnn, data, "Linf:8/255", attacks=["fgsm"], eps_sweep=[0.5], seed=1, progress=False)
    plain = evaluate(small_cnn, data, "Linf:8/255", attacks=["fgsm"], seed=1, progress=False)
    swept.write(tmp_path)
    # the plain record is the same model on the same board: give it its own model name
    plain_rec = dataclasses.replace(plain.record, model={**plain.record.model, "name": "plain-copy"})
    from robustbench_ext.records.store import write_run

    write_run(plain_rec, plain.flags, tmp_path, "plain")
    rec = swept.record
    pts = rec.sweeps[0]["points"]
    accs = [float(rec.clean.accuracy)] + [p["robust"]["accuracy"] for p in pts]
    assert math.isclose(rec.multirobust["cr_ind_avg"], 100 * sum(accs) / len(accs))
    assert plain_rec.multirobust is None

    write_all(tmp_path)
    md = (tmp_path / "leaderboard.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("|") and "CR_ind-avg" in line)
    assert "CR_ind-worst" in header and "| SC" in header
    row = next(line for line in md.splitlines() if line.startswith("|") and f"{rec.model['name']}" in line
               and "plain-copy" not in line)
    assert f"{rec.multirobust['cr_ind_avg']:.1f}" in row and "n/a" in row
    csv = pd.read_csv(tmp_path / "leaderboard.csv")
    got = csv.set_index("model").loc[rec.model["name"]]
    assert math.isclose(got["cr_ind_avg"], round(rec.multirobust["cr_ind_avg"], 4))
    assert math.isclose(got["cr_ind_worst"], round(rec.multirobust["cr_ind_worst"], 4))
    assert np.isnan(csv.set_index("model").loc["plain-copy"]["cr_ind_avg"])
    html = (tmp_path / "leaderboard.html").read_text()
    assert ">CR_ind-avg</th>" in html and f">{rec.multirobust['cr_ind_avg']:.1f}</td>" in html
    plots = list((tmp_path / "plots").glob("*_strength.png"))
    assert len(plots) == 1 and plots[0].stat().st_size > 0 and f"plots/{plots[0].name}" in md


def test_report_cli_with_a_reference_and_seen_threats(tmp_path, small_cnn):
    from click.testing import CliRunner

    from robustbench_ext.cli import cli as rbx

    data = DATASETS.create(DATA, n_examples=6)
    path = evaluate(small_cnn, data, "Linf:8/255", attacks=["fgsm"], eps_sweep=[0.5], seed=1, progress=False).write(tmp_path)
    # The record as its own reference: every ratio is 1 (CR 100); accuracies of 6 images differ by 1/6 or more, so
    # no pair is within the locality (0.03) of another: SC 0.
    res = CliRunner().invoke(rbx, ["report", str(path), "--multirobust", "--reference", str(path), "--seen", "Linf:4/255",
                                   "--out", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    assert "CR_ind-avg 100.0" in res.output and "CR_ind-worst 100.0" in res.output and "SC 0 " in res.output
    for args, says in [(["--seen", "Linf:8/255"], "--seen needs --multirobust --reference"),
                       (["--multirobust", "--reference", str(path), "--seen", "Linf:abc"], "cannot parse eps 'abc'")]:
        res = CliRunner().invoke(rbx, ["report", str(path), *args, "--out", str(tmp_path / "rep2")])
        assert res.exit_code != 0 and says in res.output and "Traceback" not in res.output, res.output
        assert len([line for line in res.output.strip().splitlines() if line.strip()]) == 1, res.output


# --- SC on the boards (rbx leaderboard --reference REC --seen MODEL=THREAT) -------------------------------------

def _acc_n(k: int, n: int) -> Accuracy:
    return Accuracy(k / n, k, n, wilson_interval(k, n))


def _hand_reference():
    """Individually trained models, n = 50: clean 0.90; Linf 0.01: 0.88, 0.02: 0.86; stadv 0.05: 0.60."""
    threats = [ThreatResult(f"Linf:{e}", "Linf", e, _acc_n(k, 50), (), 1.0, None) for e, k in ((0.01, 44), (0.02, 43))]
    threats.append(ThreatResult("stadv:0.05", "stadv", 0.05, _acc_n(30, 50), (), 1.0, None))
    return dataclasses.replace(_record(threats), model={"name": "individual-at", "architecture": "none"}, n=50,
                               clean=_acc_n(45, 50), union=_acc_n(10, 50))


def _hand_board(tmp_path, reference_threats=None):
    """Three models of the accuracies of ``test_stability_constant_by_hand`` on one board: one the record says
    nothing of, one `rbx train` made with pgd-at on Linf:0.01 from scratch, one fine-tuned (init)."""
    from robustbench_ext.records.store import read_record  # noqa: F401 -- records are read back by the boards

    (tmp_path / "results").mkdir()
    recs = {"plain-model": {"name": "plain-model", "architecture": "none"},
            "trained-model": {"name": "trained-model", "architecture": "none",
                              "trained": {"defense": "pgd-at", "defense_params": {"threat": "Linf:0.01", "attack": "pgd"},
                                          "init": None, "epochs": 1, "wrapper": None}},
            "finetuned-model": {"name": "finetuned-model", "architecture": "none",
                                "trained": {"defense": "pgd-at", "defense_params": {"threat": "Linf:0.01"},
                                            "init": "cifar10-smallcnn-linf-at", "epochs": 1, "wrapper": None}}}
    threats = [_threat("Linf:0.01", "Linf", 0.01, 7), _threat("Linf:0.02", "Linf", 0.02, 4), HAND[2]]
    for i, (name, model) in enumerate(recs.items()):
        rec = dataclasses.replace(_record(threats), run_id=name, model=model)
        (tmp_path / "results" / f"{name}.json").write_text(rec.to_json())
    ref = tmp_path / "reference.json"
    ref.write_text(_hand_reference().to_json())
    return tmp_path / "results", ref


def test_boards_show_sc_against_a_reference(tmp_path):
    from robustbench_ext.reporting.boards import (MultiRobustReference, build_boards, leaderboard_csv,
                                                  leaderboard_markdown, render_html)

    results, ref = _hand_board(tmp_path)
    # Without a reference: SC n/a, and the note says to give one.
    md = leaderboard_markdown(results, boards=build_boards(results))
    assert "n/a (no reference models" in md and "rbx leaderboard --reference" in md
    boards = build_boards(results, multirobust=MultiRobustReference.read(ref, ["plain-model=clean"]))
    rows = boards[0].rows.set_index("model")
    # By hand (test_stability_constant_by_hand): only clean seen -> 5; trained on Linf 0.01 (the record) -> 15.
    assert math.isclose(rows.loc["plain-model", "stability_constant"], 5.0)
    assert math.isclose(rows.loc["trained-model", "stability_constant"], 15.0)
    assert rows.loc["finetuned-model", "stability_constant"] is None
    assert "fine-tuned from cifar10-smallcnn-linf-at" in rows.loc["finetuned-model", "stability_note"]
    ratios = [0.80 / 0.90, 0.70 / 0.88, 0.40 / 0.86, 0.50 / 0.60]
    assert math.isclose(rows.loc["plain-model", "cr_ind_avg"], 100 * sum(ratios) / 4)
    assert math.isclose(rows.loc["plain-model", "cr_ind_worst"], 100 * 0.40 / 0.86)
    md = leaderboard_markdown(results, boards=boards)
    line = {m: next(x for x in md.splitlines() if x.startswith("|") and f" {m} " in x) for m in rows.index}
    assert "| 5 " in line["plain-model"] and "| 15 " in line["trained-model"]
    assert "n/a (training threat models unknown: give --seen (fine-tuned" in line["finetuned-model"]
    assert "against the reference models of individual-at (reference.json, n = 50, clean 90.0%)" in md
    csv = pd.read_csv(__import__("io").StringIO(leaderboard_csv(boards))).set_index("model")
    assert csv.loc["trained-model", "stability_constant"] == 15.0 and csv.loc["plain-model", "stability_constant"] == 5.0
    assert "fine-tuned" in csv.loc["finetuned-model", "stability_note"]
    assert csv.loc["plain-model", "multirobust_reference"].startswith("individual-at (reference.json")
    html = render_html(boards, 3)
    assert ">15</td>" in html and ">5</td>" in html and "SC n/a: training threat models unknown" in html  # the reason in the cell's tooltip
    assert "against the reference models of individual-at" in html
    # without --seen, the plain model's record says nothing: n/a with the reason
    rows = build_boards(results, multirobust=MultiRobustReference.read(ref)).pop().rows.set_index("model")
    assert rows.loc["plain-model", "stability_constant"] is None
    assert "does not say what the model was trained on" in rows.loc["plain-model", "stability_note"]


def test_leaderboard_cli_sc_equals_the_report(tmp_path, small_cnn):
    from click.testing import CliRunner

    from robustbench_ext.cli import cli as rbx

    data = DATASETS.create(DATA, n_examples=6)
    path = evaluate(small_cnn, data, "Linf:8/255", attacks=["fgsm"], eps_sweep=[0.5], seed=1, progress=False).write(tmp_path / "results")
    rec = __import__("robustbench_ext.records.store", fromlist=["read_record"]).read_record(path)
    curve = strength_curves(rec)["Linf"]
    # A reference with accuracies 0.02 apart (n = 50), so that pairs fall within the locality (0.03).
    ref_threats = [ThreatResult(f"Linf:{e}", "Linf", e, _acc_n(k, 50), (), 1.0, None) for e, k in zip(curve.eps, (44, 43))]
    ref = tmp_path / "ref.json"
    ref.write_text(dataclasses.replace(_record(ref_threats), model={"name": "ind"}, n=50, clean=_acc_n(45, 50)).to_json())
    a = [float(rec.clean.accuracy), *curve.accuracy]
    # seen: clean and Linf <= 4/255: pairs (clean, e1) and (e1, e2), each 0.02 apart in the reference
    hand = max(abs(a[0] - a[1]), abs(a[1] - a[2])) / 0.02
    model = rec.model["name"]
    res = CliRunner().invoke(rbx, ["leaderboard", "--results-dir", str(tmp_path / "results"), "--reference", str(ref),
                                   "--seen", f"{model}=Linf:4/255"])
    assert res.exit_code == 0, res.output
    csv = pd.read_csv(tmp_path / "results" / "leaderboard.csv").set_index("model")
    assert math.isclose(csv.loc[model, "stability_constant"], round(hand, 4), abs_tol=1e-4)
    rep = CliRunner().invoke(rbx, ["report", str(path), "--multirobust", "--reference", str(ref), "--seen", "Linf:4/255",
                                   "--out", str(tmp_path / "rep")])
    assert rep.exit_code == 0, rep.output
    assert f"SC {hand:.3g} " in rep.output
    assert f"| {hand:.3g} |" in (tmp_path / "results" / "leaderboard.md").read_text()
    assert "reference models of ind (ref.json" in (tmp_path / "results" / "leaderboard.md").read_text()


def test_leaderboard_cli_errors(tmp_path):
    from click.testing import CliRunner

    from robustbench_ext.cli import cli as rbx

    results, ref = _hand_board(tmp_path)
    short = tmp_path / "short.json"  # a reference without stadv
    short.write_text(dataclasses.replace(_hand_reference(), threats=_hand_reference().threats[:2]).to_json())
    for args, says in [(["--reference", str(tmp_path / "missing.json")], "--reference: no such record"),
                       (["--seen", "plain-model=Linf:0.01"], "--seen needs --reference"),
                       (["--reference", str(ref), "--seen", "nobody=Linf:0.01"], "no model 'nobody' on the boards"),
                       (["--reference", str(ref), "--seen", "plain-model"], "--seen needs MODEL=THREAT"),
                       (["--reference", str(ref), "--seen", "plain-model=Linf:abc"], "cannot parse eps 'abc'"),
                       (["--reference", str(short)], "the reference has no curve for stadv")]:
        res = CliRunner().invoke(rbx, ["leaderboard", "--results-dir", str(results), *args])
        assert res.exit_code != 0 and says in res.output and "Traceback" not in res.output, (args, res.output)
        assert len([x for x in res.output.strip().splitlines() if x.strip()]) == 1, res.output
