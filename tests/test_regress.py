"""The regression gate: exact McNemar on constructed flips, Holm correction, refusals, and the CLI exit codes."""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from robustbench_ext.cli import cli
from robustbench_ext.reporting.regress import UnusableInput, compare, holm, mcnemar_exact
from robustbench_ext import evaluate
from robustbench_ext.evaluation.suites import AttackSpec, ThreatSpec
from robustbench_ext.attack.threat import ThreatModel


@pytest.mark.parametrize("drops, rises, p", [
    (0, 0, 1.0), (1, 0, 1.0), (5, 0, 0.0625), (6, 0, 0.03125), (0, 10, 2 / 1024), (7, 3, 0.34375), (10, 10, 1.0),
])
def test_exact_mcnemar_on_constructed_flip_counts(drops, rises, p):
    assert mcnemar_exact(drops, rises) == pytest.approx(p)
    assert mcnemar_exact(rises, drops) == pytest.approx(p)  # two-sided


def test_holm():
    assert holm([0.01, 0.04, 0.03, 0.5], 0.05) == [True, False, False, False]  # 0.03 > 0.05 / 3
    assert holm([0.001, 0.012, 0.02], 0.05) == [True, True, True]
    assert holm([0.2, 0.3], 0.05) == [False, False]


@pytest.fixture(scope="module")
def base_record(tmp_path_factory, small_cnn, cifar200):
    out = tmp_path_factory.mktemp("base")
    data = type(cifar200)(cifar200.name, cifar200.x[:120], cifar200.y[:120], cifar200.source, cifar200.location)
    specs = [ThreatSpec(ThreatModel.parse(t), (AttackSpec.parse("pgd:steps=5"),)) for t in ("Linf:8/255", "L2:0.5")]
    return evaluate(small_cnn, data, specs, progress=False).write(out)


def _variant(base: Path, out: Path, flip_down: int = 0, flip_up: int = 0, column: int = 0, sha: str | None = None) -> Path:
    """A copy of a record whose flags have ``flip_down`` robust points broken and ``flip_up`` broken points robust."""
    out.mkdir(parents=True, exist_ok=True)
    rec = json.loads(base.read_text())
    with np.load(base.parent / rec["flags_file"]) as z:
        arrays = {k: z[k].copy() for k in z.files}
    robust = arrays["robust"]
    ok = arrays["clean_correct"]
    down = np.flatnonzero(robust[:, column])[:flip_down]
    up = np.flatnonzero(ok & ~robust[:, column])[:flip_up]
    robust[down, column] = False
    robust[up, column] = True
    arrays["union"] = ok & robust.all(1)
    npz = out / (base.stem + ".npz")
    np.savez_compressed(npz, **arrays)
    rec["flags_file"] = npz.name
    rec["flags_sha256"] = hashlib.sha256(npz.read_bytes()).hexdigest()
    if sha:
        rec["dataset"]["sha256"] = sha
    path = out / base.name
    path.write_text(json.dumps(rec))
    return path


def test_identical_runs_pass(base_record, tmp_path):
    res = compare(base_record, _variant(base_record, tmp_path / "same"))
    assert not res.failed and all(c.drops == c.rises == 0 and c.p_value == 1.0 for c in res.comparisons)
    assert [c.name for c in res.comparisons] == ["Linf:8/255", "L2:0.5", "union"]


def test_a_significant_drop_fails_and_a_small_one_does_not(base_record, tmp_path):
    big = compare(base_record, _variant(base_record, tmp_path / "big", flip_down=10, column=1))
    l2 = next(c for c in big.comparisons if c.name == "L2:0.5")
    assert big.failed and l2.verdict == "DROP" and l2.drops == 10 and l2.p_value == pytest.approx(2 / 1024)
    small = compare(base_record, _variant(base_record, tmp_path / "small", flip_down=3, column=1))
    assert not small.failed


def test_a_significant_rise_fails_too(base_record, tmp_path):
    res = compare(base_record, _variant(base_record, tmp_path / "rise", flip_up=12, column=0))
    linf = next(c for c in res.comparisons if c.name == "Linf:8/255")
    assert res.failed and linf.verdict == "RISE"
    assert "attack got weaker" in res.report()
    # the gate reports raw and Holm-adjusted p; a comparison is significant iff its adjusted p <= alpha
    from robustbench_ext.reporting.regress import holm_adjust
    assert [c.p_holm for c in res.comparisons] == pytest.approx(holm_adjust([c.p_value for c in res.comparisons]))
    assert all(c.significant == (c.p_holm <= res.alpha) for c in res.comparisons)
    assert f"(Holm {linf.p_holm:.3g})" in res.report()


def test_refuses_different_images(base_record, tmp_path):
    with pytest.raises(UnusableInput, match="different images"):
        compare(base_record, _variant(base_record, tmp_path / "other", sha="0" * 64))


def test_cli_exit_codes(base_record, tmp_path):
    runner = CliRunner()
    ok = runner.invoke(cli, ["regress", "--baseline", str(base_record), "--candidate", str(_variant(base_record, tmp_path / "a"))])
    assert ok.exit_code == 0 and "PASS" in ok.stdout
    bad = runner.invoke(cli, ["regress", "--baseline", str(base_record),
                              "--candidate", str(_variant(base_record, tmp_path / "b", flip_down=15))])
    assert bad.exit_code == 1 and "FAIL" in bad.stdout and "DROP" in bad.stdout
    unusable = runner.invoke(cli, ["regress", "--baseline", str(base_record),
                                   "--candidate", str(_variant(base_record, tmp_path / "c", sha="1" * 64))])
    assert unusable.exit_code == 2 and unusable.stderr.startswith("rbx: error: the runs evaluated different images")
    missing = runner.invoke(cli, ["regress", "--baseline", str(base_record), "--candidate", str(tmp_path / "nope.json")])
    assert missing.exit_code == 2
    # Directories: the newest record per (model, suite, images) is paired.
    d1, d2 = tmp_path / "d1" / "records", tmp_path / "d2" / "records"
    d1.mkdir(parents=True)
    shutil.copy(base_record, d1)
    shutil.copy(base_record.with_suffix(".npz"), d1)
    _variant(base_record, d2, flip_down=15)
    res = runner.invoke(cli, ["regress", "--baseline", str(tmp_path / "d1"), "--candidate", str(tmp_path / "d2"), "--json"])
    assert res.exit_code == 1 and json.loads(res.stdout)[0]["failed"] is True


def test_paired_mcnemar_between_two_arms_on_constructed_flags():
    from robustbench_ext.records.schema import SampleFlags
    from robustbench_ext.reporting.regress import paired_mcnemar

    n = 20
    idx, y = np.arange(n), np.arange(n) % 10
    clean = np.ones(n, bool)
    ra = np.zeros((n, 2), bool)
    rb = np.zeros((n, 2), bool)
    ra[:6, 0] = True  # a right on 6 Linf points where b is wrong
    rb[10:11, 0] = True  # b right on 1 where a is wrong
    ra[:, 1] = rb[:, 1] = True
    fa = SampleFlags(idx, y, clean, ra, np.full((n, 2), -1, np.int16), ("Linf", "L2"))
    fb = SampleFlags(idx, y, clean, rb, np.full((n, 2), -1, np.int16), ("Linf", "L2"))
    out = paired_mcnemar(fa, fb)
    assert list(out) == ["clean", "Linf", "L2", "union"]
    assert (out["Linf"]["a_only"], out["Linf"]["b_only"]) == (6, 1)
    assert out["Linf"]["p_value"] == pytest.approx(mcnemar_exact(6, 1)) == pytest.approx(16 / 128)
    assert out["L2"]["p_value"] == 1.0 and out["clean"]["a_only"] == out["clean"]["b_only"] == 0
    assert (out["union"]["a_only"], out["union"]["b_only"]) == (6, 1)
    # Holm within the comparison's 4 metrics: Linf and union p = 16/128 = 0.125, x4 = 0.5 and x3 = 0.375 -> 0.5
    assert [out[m]["p_holm"] for m in ("clean", "Linf", "L2", "union")] == pytest.approx([1.0, 0.5, 1.0, 0.5])
    with pytest.raises(UnusableInput):
        paired_mcnemar(fa, SampleFlags(idx + 1, y, clean, rb, fb.broken_by, fb.threats))
