"""The runner: cascade bookkeeping, the union rule, determinism, records and their round trip."""

import json

import numpy as np
import pytest

from robustbench_ext.records.schema import MISCLASSIFIED, ROBUST, Accuracy
from robustbench_ext.records.store import read_flags, read_record
from robustbench_ext.runtime import derive_seed
from robustbench_ext.records.schema import union_flags
from robustbench_ext import evaluate
from robustbench_ext.records.stats import wilson_interval
from robustbench_ext.evaluation.suites import AttackSpec, ThreatSpec, load_suite
from robustbench_ext.attack.threat import ThreatModel


def _specs(*items):
    return [ThreatSpec(ThreatModel.parse(t), tuple(AttackSpec.parse(a) for a in attacks)) for t, attacks in items]


def test_union_rule_on_constructed_flags():
    clean = np.array([1, 1, 1, 1, 0, 0], dtype=bool)
    robust = np.array([[1, 1, 1], [1, 0, 1], [0, 0, 0], [1, 1, 0], [1, 1, 1], [0, 0, 0]], dtype=bool)
    assert union_flags(clean, robust).tolist() == [True, False, False, False, False, False]
    assert union_flags(clean, robust[:, :0]).tolist() == clean.tolist()  # no threat: clean accuracy


@pytest.fixture(scope="module")
def union_run(small_cnn, cifar200):
    specs = _specs(("Linf:8/255", ["pgd:steps=2", "pgd:steps=10"]), ("L2:0.5", ["pgd:steps=10"]), ("L1:12", ["pgd:steps=10"]))
    return evaluate(small_cnn, cifar200, specs, seed=0, batch_size=64, progress=False)


def test_real_run_union_is_and_of_flags(union_run):
    rec, fl = union_run.record, union_run.flags
    assert np.array_equal(fl.union, fl.clean_correct & fl.robust.all(1))
    assert rec.union.count == int(fl.union.sum())
    assert rec.union.accuracy <= min(t.robust.accuracy for t in rec.threats)
    for ti, t in enumerate(rec.threats):
        assert t.robust.count == int(fl.robust[:, ti].sum())
        assert t.robust.accuracy <= rec.clean.accuracy
    assert rec.clean.count == int(fl.clean_correct.sum())


def test_cascade_bookkeeping(union_run):
    rec, fl = union_run.record, union_run.flags
    # broken_by: -2 exactly where the clean input is wrong, -1 exactly where robust, else the breaking attack.
    assert np.array_equal(fl.broken_by[:, 0] == MISCLASSIFIED, ~fl.clean_correct)
    for ti, t in enumerate(rec.threats):
        assert np.array_equal(fl.broken_by[:, ti] == ROBUST, fl.robust[:, ti])
        assert t.attacks[0].n_attacked == rec.clean.count
        for ai, stage in enumerate(t.attacks):
            assert stage.n_broken == int((fl.broken_by[:, ti] == ai).sum())
            assert stage.robust_after == stage.n_attacked - stage.n_broken
            assert len(stage.loss_curve) > 0 and stage.n_backward > 0
        # Each attack only sees the points still robust after the previous one.
        for prev, nxt in zip(t.attacks, t.attacks[1:]):
            assert nxt.n_attacked == prev.robust_after


def test_same_seed_same_flags(small_cnn, cifar200):
    specs = _specs(("Linf:8/255", ["pgd:steps=5"]), ("L1:12", ["pgd:steps=5"]))
    a = evaluate(small_cnn, cifar200, specs, seed=3, batch_size=50, progress=False)
    b = evaluate(small_cnn, cifar200, specs, seed=3, batch_size=50, progress=False)
    assert np.array_equal(a.flags.robust, b.flags.robust)
    assert np.array_equal(a.flags.broken_by, b.flags.broken_by)
    assert derive_seed(3, 0, 0, 0) != derive_seed(3, 0, 0, 1) != derive_seed(4, 0, 0, 1)


def test_record_round_trip(union_run, tmp_path):
    path = union_run.write(tmp_path)
    assert path.parent == tmp_path / "records" and path.suffix == ".json"
    rec = read_record(path)
    assert rec.flags_file and rec.flags_sha256
    assert rec == type(rec).from_dict(json.loads(rec.to_json()))
    assert rec.clean == union_run.record.clean and rec.threats == union_run.record.threats
    flags = read_flags(path)
    for field in ("clean_correct", "robust", "broken_by", "y"):
        assert np.array_equal(getattr(flags, field), getattr(union_run.flags, field))
    assert flags.threats == tuple(t.threat for t in rec.threats)
    d = json.loads(path.read_text())
    assert d["schema"] == "rbx.record/1"
    for key in ("rbx_version", "git_commit", "torch", "device_name", "seed", "started", "wall_seconds"):
        assert key in d["provenance"]
    assert len(d["dataset"]["sha256"]) == 64 and d["dataset"]["source"].startswith("CIFAR-10 test (JPEG copy)")
    assert all(a["seconds"] >= 0 and "params" in a for t in d["threats"] for a in t["attacks"])
    assert not list(tmp_path.rglob("*.tmp"))  # atomic writes leave no temp files


def test_tampered_flags_are_refused(union_run, tmp_path):
    path = union_run.write(tmp_path)
    rec = read_record(path)
    (path.parent / rec.flags_file).write_bytes(b"not the flags")
    with pytest.raises(Exception, match="sha256"):
        read_flags(path)


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    assert wilson_interval(0, 10) == (0.0, pytest.approx(0.2775, abs=1e-4))
    assert wilson_interval(10, 10)[1] == 1.0
    acc = Accuracy.from_flags(np.array([True, False, True, True]))
    assert acc.count == 3 and acc.n == 4 and acc.accuracy == 0.75


def test_suite_file_defines_the_default_union(tmp_path):
    suite = load_suite("cifar10-union")
    assert [t.threat.label for t in suite.threats] == ["Linf:8/255", "L2:0.5", "L1:12"]
    assert suite.dataset == "cifar10"
    custom = tmp_path / "mine.toml"
    custom.write_text('name = "mine"\n[[threats]]\nthreat = "L2:1.0"\nattacks = ["pgd:steps=3", {name = "pgd", loss = "margin"}]\n')
    s = load_suite(str(custom))
    assert s.name == "mine" and s.threats[0].attacks[1].params == {"loss": "margin"}
    assert s.threats[0].attacks[0].params == {"steps": 3}


def test_attacks_report_progress_per_step_so_small_runs_move(small_cnn, cifar200):
    """The bar counts points and moves with every step, not once per batch."""
    from robustbench_ext.registry import ATTACKS
    from robustbench_ext.attack.threat import ThreatModel

    seen = []
    ATTACKS.create("pgd", steps=6, early_stop=False)(small_cnn.module, cifar200.x[:4], cifar200.y[:4],
                                                    ThreatModel.parse("Linf:8/255"), seed=0, progress=seen.append)
    assert len(seen) >= 6 and seen == sorted(seen) and seen[-1] == 1.0 and 0 < seen[0] < 0.5


def test_stage_lines_on_stderr_without_a_terminal_and_quiet(in_tmp):
    from click.testing import CliRunner

    from robustbench_ext.cli import cli

    args = ["run", "--model", "cifar10-smallcnn-linf-at", "--dataset", "cifar10-1k", "--n-examples", "12",
            "--threat", "Linf:8/255", "--threat", "L1:12", "--attack", "pgd:steps=3", "--attack", "apgd-t:steps=3,n_targets=1"]
    res = CliRunner().invoke(cli, [*args, "--results-dir", str(in_tmp / "a")])  # CliRunner's stderr is not a terminal
    assert res.exit_code == 0, res.output
    lines = [line for line in res.stderr.splitlines() if line.startswith("rbx: ")]
    assert len(lines) == 4 and lines[0].startswith("rbx: Linf:8/255 pgd: broke ") and "ETA" in lines[0]
    assert lines[-1].startswith("rbx: L1:12 apgd-t: broke ") and "robust " in lines[-1] and "elapsed" in lines[-1]
    quiet = CliRunner().invoke(cli, [*args, "--quiet", "--results-dir", str(in_tmp / "b")])
    assert quiet.exit_code == 0 and quiet.stderr == ""
    assert "union" in quiet.stdout  # the table still prints
