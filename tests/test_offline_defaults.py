"""Offline defaults (issue 28): without the reference ResNet-18 (a fresh clone or install, nothing beside it), a
bare ``rbx run`` (and ``rbx check``) evaluates the embedded small CNN on the embedded CIFAR-10 slice and says so in
one line; with the ResNet-18 at hand, the default is unchanged."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

import robustbench_ext.models.loading as loading
from robustbench_ext.cli import cli
from robustbench_ext.evaluation.request import DEFAULT_MODEL, default_model
from robustbench_ext.paths import ASSETS
from robustbench_ext.records.store import read_record

FAST = ["--n-examples", "8", "--threat", "Linf:8/255", "--attack", "pgd:steps=1", "--batch-size", "8", "--quiet"]


@pytest.fixture()
def fresh_clone(monkeypatch, tmp_path):
    """Model files are looked for where a fresh clone has them: only in the package's embedded assets."""
    monkeypatch.setattr(loading, "model_dirs", lambda: [tmp_path / "models", ASSETS])
    monkeypatch.delenv("RBX_MODELS", raising=False)
    return tmp_path


def test_the_default_model_without_the_reference_files(fresh_clone):
    model, data, note = default_model(None)
    assert (model, data) == ("cifar10-smallcnn-linf-at", "cifar10-1k")
    assert "cifar10_resnet18_linf_at.pt does not ship with rbx" in note and "embedded 1,000-image CIFAR-10 slice" in note
    assert default_model("cifar100")[:2] == ("cifar10-smallcnn-linf-at", "cifar100")  # a named dataset is kept
    assert default_model(None, streamed=True)[1] is None  # shards replace the dataset


def test_the_default_model_with_the_reference_files(tmp_path, monkeypatch):
    (tmp_path / "cifar10_resnet18_linf_at.pt").write_bytes(b"x")  # only its presence is looked at
    monkeypatch.setattr(loading, "model_dirs", lambda: [tmp_path, ASSETS])
    assert default_model(None) == (DEFAULT_MODEL, None, None)


def test_rbx_run_without_model_runs_the_embedded_model_and_says_so(fresh_clone):
    res = CliRunner().invoke(cli, ["run", *FAST, "--results-dir", str(fresh_clone / "res")])
    assert res.exit_code == 0, res.output
    notes = [line for line in res.stderr.splitlines() if line.startswith("rbx: ")]
    assert len(notes) == 1 and "running the embedded cifar10-smallcnn-linf-at on the embedded 1,000-image" in notes[0]
    (path,) = (fresh_clone / "res" / "records").glob("*.json")
    rec = read_record(path)
    assert rec.model["name"] == "cifar10-smallcnn-linf-at" and rec.dataset["name"] == "cifar10-1k"
    assert rec.model["source"].startswith(str(ASSETS))


def test_an_explicit_model_is_never_replaced(fresh_clone):
    res = CliRunner().invoke(cli, ["run", "--model", DEFAULT_MODEL, *FAST, "--results-dir", str(fresh_clone / "res")])
    assert res.exit_code == 2 and "model file cifar10_resnet18_linf_at.pt not found" in res.stderr
    assert "running the embedded" not in res.stderr


@pytest.mark.slow
def test_a_bare_rbx_run_works_on_a_fresh_clone(fresh_clone, monkeypatch):
    """Literally ``rbx run``: the default suite on all 1,000 embedded images, into ./results."""
    monkeypatch.chdir(fresh_clone)
    res = CliRunner().invoke(cli, ["run"])
    assert res.exit_code == 0, res.output
    (path,) = (fresh_clone / "results" / "records").glob("*.json")
    rec = read_record(path)
    assert rec.n == 1000 and rec.suite_label == "cifar10-union" and rec.model["name"] == "cifar10-smallcnn-linf-at"
    assert "union" in res.stdout
    # 1,000 images is leaderboard-sized: the run is audited by default (AutoAttack on 20 sampled robust points per
    # threat model), and the table says what the audit found
    assert rec.config["audit"] == 20 and [a["threat"] for a in rec.audit] == [t.threat for t in rec.threats]
    assert "audit Linf:8/255: AutoAttack standard broke" in res.stdout


@pytest.mark.slow
def test_a_bare_rbx_check_works_on_a_fresh_clone(fresh_clone):
    res = CliRunner().invoke(cli, ["check", "--n-examples", "16", "--json"])
    assert res.exit_code in (0, 1), res.output  # 1: a check flagged something; either way it ran
    assert "running the embedded cifar10-smallcnn-linf-at" in res.stderr and '"model": "cifar10-smallcnn-linf-at"' in res.stdout
