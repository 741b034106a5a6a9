"""Union-only runs (``rbx run --union-only``): the same union flags as the full run, honest per-norm numbers.

A full run and a union-only run of the same threat models, images and seed must give identical union
flags (per sample): each later threat model only attacks points still robust under all earlier ones, and
random starts are seeded per sample, so a sample's outcome does not depend on which points share its
batch. Only the first threat model's robust accuracy is exact; the others are recorded as not measured
(None), shown as "n/m" in tables, boards and CSV, and refused by per-norm regression gates.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from robustbench_ext.cli import cli as rbx
from robustbench_ext.errors import RbxError
from robustbench_ext.reporting.boards import write_all
from robustbench_ext.records.schema import NOT_MEASURED
from robustbench_ext.records.store import read_flags, read_record
from robustbench_ext.reporting.regress import UnusableInput, compare
from robustbench_ext.registry import DATASETS
from robustbench_ext.reporting.tables import format_table
from robustbench_ext import evaluate
from robustbench_ext.evaluation.suites import AttackSpec, ThreatSpec, read_suite
from robustbench_ext.attack.threat import ThreatModel

from conftest import DATA

N = 60
ORDER = ["L1:12", "Linf:8/255"]  # L2 follows: the order a union-only run uses when it lists only some


def _specs() -> list[ThreatSpec]:
    """The default suite's cascades (PMA > APGD-T; L1 with the large-eps start) at test-sized budgets."""
    def spec(threat: str, extra: str = "") -> ThreatSpec:
        return ThreatSpec(ThreatModel.parse(threat), (AttackSpec.parse("pma:steps=6"),
                                                      AttackSpec.parse("apgd-t:steps=6,n_targets=2" + extra)))
    return [spec("Linf:8/255"), spec("L2:0.5"), spec("L1:12", ",large_eps=true")]


@pytest.fixture(scope="module")
def runs(small_cnn):
    data = DATASETS.create(DATA, n_examples=N)
    kw = dict(suite="test-union", seed=3, progress=False)
    full = evaluate(small_cnn, data, _specs(), batch_size=32, **kw)
    only = evaluate(small_cnn, data, _specs(), batch_size=32, union_only=True, union_order=ORDER, **kw)
    # Another batch size: batches of other points around each sample; per-sample seeds make that irrelevant.
    only_b = evaluate(small_cnn, data, _specs(), batch_size=13, union_only=True, union_order=ORDER, **kw)
    return full, only, only_b


def test_union_flags_identical_to_the_full_run(runs):
    full, only, only_b = runs
    assert 0 < full.flags.union.sum() < full.flags.clean_correct.sum()  # the test means something: some broken, some not
    np.testing.assert_array_equal(only.flags.union, full.flags.union)
    np.testing.assert_array_equal(only_b.flags.union, full.flags.union)
    assert only.record.union == full.record.union
    np.testing.assert_array_equal(only.flags.clean_correct, full.flags.clean_correct)


def test_union_only_attacks_fewer_points_and_keeps_the_first_threat_exact(runs):
    full, only, _ = runs
    l1 = [t.threat for t in full.record.threats].index("L1:12")
    # The first threat model run attacked every clean-correct point: its flags and accuracy are the full run's.
    np.testing.assert_array_equal(only.flags.robust[:, l1], full.flags.robust[:, l1])
    assert only.record.threats[l1].robust == full.record.threats[l1].robust
    attacked = lambda ev: sum(a.n_attacked for t in ev.record.threats for a in t.attacks)  # noqa: E731
    assert attacked(only) < attacked(full)
    assert only.record.config["union_only"] == {"order": ["L1:12", "Linf:8/255", "L2:0.5"], "exact": ["L1:12"]}
    # Later threat models attack only points robust under all earlier ones (L1, then Linf, then L2).
    labels = [t.threat for t in only.record.threats]
    lin, l2 = labels.index("Linf:8/255"), labels.index("L2:0.5")
    ok = only.flags.clean_correct & only.flags.robust[:, l1]
    assert only.record.threats[lin].attacks[0].n_attacked == int(ok.sum())
    assert only.record.threats[l2].attacks[0].n_attacked == int((ok & only.flags.robust[:, lin]).sum())
    assert only.record.threats[lin].robust is None and only.record.threats[l2].robust is None


def test_not_measured_in_record_flags_and_table(runs, tmp_path):
    _, only, _ = runs
    path = only.write(tmp_path)
    raw = json.loads(path.read_text())
    by = {t["threat"]: t for t in raw["threats"]}
    assert by["L1:12"]["robust"]["accuracy"] == pytest.approx(only.record.threats[2].robust.accuracy)
    assert "not_measured" not in by["L1:12"]
    for label in ("Linf:8/255", "L2:0.5"):
        assert by[label]["robust"] is None
        assert "union-only" in by[label]["not_measured"]
    rec = read_record(path)
    assert [t.measured for t in rec.threats] == [False, False, True]
    flags = read_flags(path, rec)
    assert list(flags.measured) == [False, False, True]
    assert not flags.is_measured("L2:0.5") and flags.is_measured("L1:12")
    table = format_table(rec).splitlines()
    rows = {line.split()[0]: line for line in table if line.split() and line.split()[0] in ("Linf:8/255", "L2:0.5", "L1:12")}
    assert rows["Linf:8/255"].split()[1] == NOT_MEASURED and rows["L2:0.5"].split()[1] == NOT_MEASURED
    assert rows["L1:12"].split()[1] != NOT_MEASURED


def test_not_measured_on_the_leaderboard(runs, tmp_path):
    full, only, _ = runs
    full.write(tmp_path)
    only.write(tmp_path)
    md, csv, html, *_ = write_all(tmp_path)
    text = md.read_text()
    assert "test-union (union-only)" in text  # a board of its own: never replaces the full run's per-norm numbers
    board = text.split("## test-union (union-only)")[1]  # the board itself, not its table-of-contents entry
    row = next(line for line in board.splitlines() if "cifar10-smallcnn-linf-at" in line)
    cells = [c.strip() for c in row.split("|")]
    assert cells.count(NOT_MEASURED) == 2
    lines = csv.read_text().splitlines()
    header = lines[0].split(",")
    uo = next(line.split(",") for line in lines[1:] if line.startswith("test-union (union-only)"))
    assert uo[header.index("Linf:8/255")] == NOT_MEASURED and uo[header.index("L2:0.5_lo")] == NOT_MEASURED
    assert uo[header.index("L1:12")] != NOT_MEASURED
    assert NOT_MEASURED in html.read_text()


def test_regress_accepts_union_only_for_union_gates(runs, tmp_path):
    full, only, _ = runs
    b, c = full.write(tmp_path / "b"), only.write(tmp_path / "c")
    gate = compare(b, c)
    names = [x.name for x in gate.comparisons]
    assert names == ["L1:12", "union"]  # the threat model measured in both, and the union
    assert not gate.failed and gate.comparisons[-1].drops == gate.comparisons[-1].rises == 0
    assert any("not measured" in n and "L2:0.5" in n for n in gate.notes)
    assert [x.name for x in compare(b, c, only=["union"]).comparisons] == ["union"]
    with pytest.raises(UnusableInput, match="not measured in the union-only run"):
        compare(b, c, only=["L2:0.5"])
    res = CliRunner().invoke(rbx, ["regress", "--baseline", str(b), "--candidate", str(c), "--only", "Linf:8/255"])
    assert res.exit_code == 2 and "not measured in the union-only run" in res.output
    res = CliRunner().invoke(rbx, ["regress", "--baseline", str(c), "--candidate", str(c), "--only", "union"])
    assert res.exit_code == 0 and "PASS" in res.output


def test_suite_option_and_bad_order(tmp_path, small_cnn):
    toml = tmp_path / "gate.toml"
    toml.write_text('name = "gate"\nunion_only = true\nunion_order = ["L2:0.5"]\n'
                    '[[threats]]\nthreat = "Linf:8/255"\nattacks = ["pgd:steps=2"]\n'
                    '[[threats]]\nthreat = "L2:0.5"\nattacks = ["pgd:steps=2"]\n')
    suite = read_suite(toml)
    assert suite.union_only and suite.union_order == ("L2:0.5",)
    ev = evaluate(small_cnn, DATA, suite=str(toml), n_examples=16, progress=False, batch_size=16)
    assert ev.record.config["union_only"]["order"] == ["L2:0.5", "Linf:8/255"]
    assert ev.record.threats[0].robust is None and ev.record.threats[1].robust is not None
    # union_only=False overrides the suite
    assert "union_only" not in evaluate(small_cnn, DATA, suite=str(toml), n_examples=16, progress=False,
                                        union_only=False).record.config
    bad = tmp_path / "bad.toml"
    bad.write_text(toml.read_text().replace('["L2:0.5"]', '["L1:12"]'))
    with pytest.raises(RbxError, match="union_order names 'L1:12'"):
        read_suite(bad)
    with pytest.raises(RbxError, match="--eps-sweep"):
        evaluate(small_cnn, DATA, ["Linf:8/255"], attacks=["pgd:steps=2"], n_examples=8, union_only=True, eps_sweep=[0.5])


def test_cli_union_only(tmp_path):
    res = CliRunner().invoke(rbx, ["run", "--model", "cifar10-smallcnn-linf-at", "--dataset", DATA, "--n-examples", "16",
                                   "--threat", "Linf:8/255", "--threat", "L2:0.5",
                                   "--attack", "pgd:steps=2", "--union-only", "--results-dir", str(tmp_path), "-q"])
    assert res.exit_code == 0, res.output
    lines = {line.split()[0]: line for line in res.output.splitlines() if line.split()}
    assert lines["L2:0.5"].split()[1] == NOT_MEASURED and lines["Linf:8/255"].split()[1] != NOT_MEASURED
    res = CliRunner().invoke(rbx, ["run", "--union-only", "--eps-sweep", "0.5", "--results-dir", str(tmp_path)])
    assert res.exit_code != 0 and "--union-only" in res.output
