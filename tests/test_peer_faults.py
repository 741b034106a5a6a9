"""Faults users reported against AutoAttack, RobustBench, torchattacks, foolbox and ART, as small inputs to rbx.

Each kind is handled on every path where it can happen; the right behaviour is the assertion (issue 16).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from robustbench_ext.cli import cli
from robustbench_ext.errors import RbxError
from robustbench_ext.models.loading import LoadedModel
from robustbench_ext.records.store import read_flags, read_record
from robustbench_ext.registry import ARCHITECTURES, ATTACKS, MODELS
from robustbench_ext import evaluate
from robustbench_ext.attack.threat import ThreatModel

from conftest import DATA


def _files(d: Path) -> list[Path]:
    return sorted(p for p in d.rglob("*") if p.is_file()) if d.exists() else []


def _one_line(res) -> str:
    lines = [line for line in res.stderr.strip().splitlines() if line.startswith("rbx: error")]
    assert len(lines) == 1 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    return lines[0]


def _k_class_data(tmp: Path, k: int, n: int = 12) -> str:
    rng = np.random.default_rng(k)
    np.savez(tmp / f"k{k}.npz", x=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), y=np.arange(n) % k,
             classes=np.array([f"c{i}" for i in range(k)]))
    return f"npz:{tmp / f'k{k}.npz'}"


def _k_class_ckpt(tmp: Path, k: int) -> Path:
    torch.manual_seed(k)
    path = tmp / f"m{k}.pt"
    torch.save(ARCHITECTURES.create("smallcnn", num_classes=k).state_dict(), path)
    return path


# ---- 1. targeted attacks on models with few classes -----------------------------------------------------
@pytest.mark.parametrize("k", [5, 3, 2])
@pytest.mark.parametrize("attack", ["autoattack:budget=0.02", "apgd-t:steps=2,n_targets=9"])
def test_targeted_attacks_on_few_classes_are_capped_or_refused_up_front(k, attack, tmp_path):
    args = ["run", "--model", f"file:{_k_class_ckpt(tmp_path, k)}", "--arch", "smallcnn", "--dataset", _k_class_data(tmp_path, k),
            "--threat", "Linf:8/255", "--attack", attack, "--quiet", "--results-dir", str(tmp_path / "res")]
    res = CliRunner().invoke(cli, args)
    if k >= 4:  # every other class is a target: capped at K - 1, with a note in the record
        assert res.exit_code == 0, res.output
        rec = read_record(next((tmp_path / "res" / "records").glob("*.json")))
        notes = " ".join(rec.config["notes"])
        assert f"ran with {k - 1}" in notes
        targeted = [a for a in rec.threats[0].attacks if a.attack.endswith(("apgd-t", "fab-t"))]
        assert targeted and all(a.params["n_targets"] == k - 1 for a in targeted)
    else:  # targeted DLR ranks 4 logits: refused before ANY attack runs, naming the attack; nothing written
        assert res.exit_code == 2
        line = _one_line(res)
        assert "apgd-t' needs a model with at least 4 classes" in line and f"has {k}" in line
        assert not _files(tmp_path / "res")  # no record, no evaluation state left behind


# ---- 2. model outputs that are not a logits tensor -------------------------------------------------------
class _Out:
    def __init__(self, logits):
        self.logits = logits


class _Structured(nn.Module):
    def __init__(self, base, kind):
        super().__init__()
        self.base, self.kind = base, kind

    def forward(self, x):
        z = self.base(x)
        return {"tuple": lambda: (z, x.flatten(1)), "dict": lambda: {"features": x.flatten(1), "logits": z},
                "object": lambda: _Out(z), "list": lambda: [z], "string": lambda: "not logits"}[self.kind]()


@pytest.mark.parametrize("kind", ["tuple", "dict", "object", "list"])
def test_structured_outputs_go_through_the_one_adapter(kind, small_cnn, cifar200):
    model = _Structured(small_cnn.module, kind).eval()
    ev = evaluate(model, (cifar200.x[:10], cifar200.y[:10]), "Linf:8/255", attacks=["pgd:steps=3", "apgd-t:steps=2,n_targets=2"],
                  progress=False)
    ref = evaluate(small_cnn, cifar200.first(10), "Linf:8/255", attacks=["pgd:steps=3", "apgd-t:steps=2,n_targets=2"],
                   progress=False)
    assert np.array_equal(ev.flags.robust, ref.flags.robust) and np.array_equal(ev.flags.clean_correct, ref.flags.clean_correct)


def test_unusable_output_is_a_clear_message_and_a_selector_picks_another(small_cnn, cifar200):
    with pytest.raises(RbxError, match="returned a str, not logits .* --output"):
        evaluate(_Structured(small_cnn.module, "string").eval(), (cifar200.x[:4], cifar200.y[:4]), "Linf:8/255",
                 attacks=["pgd:steps=1"], progress=False)
    with pytest.raises(RbxError, match="has no output 'nope'"):
        evaluate(_Structured(small_cnn.module, "dict").eval(), (cifar200.x[:4], cifar200.y[:4]), "Linf:8/255",
                 attacks=["pgd:steps=1"], progress=False, output="nope")
    ev = evaluate(_Structured(small_cnn.module, "tuple").eval(), (cifar200.x[:4], cifar200.y[:4]), "Linf:8/255",
                  attacks=["pgd:steps=1"], progress=False, output=0)
    assert ev.record.n == 4


# ---- 3. labels of other integer dtypes ----------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8])
@pytest.mark.parametrize("attack", ["pgd:steps=2", "apgd:steps=4", "pma:steps=4", "apgd-t:steps=4,n_targets=2"])
def test_labels_of_any_integer_dtype_are_cast_at_the_boundary(dtype, attack, small_cnn, cifar200):
    x, y = cifar200.x[:8], cifar200.y[:8]
    a = ATTACKS.create(attack)
    got = a(small_cnn.module, x, y.to(dtype), ThreatModel.parse("Linf:8/255"), seed=0)
    ref = a(small_cnn.module, x, y, ThreatModel.parse("Linf:8/255"), seed=0)
    assert torch.equal(got.success, ref.success) and torch.equal(got.x_adv, ref.x_adv)


def test_non_integer_labels_are_a_clear_error(small_cnn, cifar200):
    with pytest.raises(RbxError, match="labels must be integer class indices, got torch.float32"):
        ATTACKS.create("pgd", steps=1)(small_cnn.module, cifar200.x[:2], cifar200.y[:2].float(), ThreatModel.parse("L2:0.5"))


# ---- 4. non-finite input gradients ------------------------------------------------------------------------
class _Sqrt(nn.Module):
    """Finite outputs, infinite input gradient at pixels that are exactly 0 (d sqrt(x)/dx at 0)."""

    def __init__(self, base):
        super().__init__()
        self.base = base

    def forward(self, x):
        return self.base(x.sqrt())


def test_infinite_gradients_are_zeroed_counted_and_never_give_nan(small_cnn, cifar200):
    x = cifar200.x[:12].clone()
    x[:, :, :4, :4] = 0.0  # pixels exactly 0
    model = _Sqrt(small_cnn.module).eval()
    for attack in ("pgd:steps=3", "apgd-ce:steps=4", "pma:steps=4", "fgsm", "deepfool:steps=3"):
        for threat in ("L2:0.5", "Linf:8/255", "L1:12"):
            a = ATTACKS.create(attack)
            if not a.supports(ThreatModel.parse(threat)):
                continue
            res = a(model, x, cifar200.y[:12], ThreatModel.parse(threat), seed=0)
            assert torch.isfinite(res.x_adv).all(), (attack, threat)
            if attack != "deepfool:steps=3" or threat != "L1:12":
                assert res.n_nonfinite > 0, (attack, threat)
    ev = evaluate(model, (x, cifar200.y[:12]), "L2:0.5", attacks=["pgd:steps=3"], progress=False)
    assert ev.record.threats[0].attacks[0].nonfinite_grads > 0  # the count is in the record
    check = next(r for r in ev.record.checks["results"] if r["name"] == "finite_gradients")
    assert check["passed"] is False  # the pre-checks report it


# ---- 5. a foreign attack's limits ------------------------------------------------------------------------
def test_square_on_non_square_images_is_refused_before_the_run(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "wide.npz", x=rng.integers(0, 256, (6, 24, 40, 3), dtype=np.uint8), y=np.arange(6) % 10)
    data = f"npz:{tmp_path / 'wide.npz'}"
    wide = MODELS.register("test-wide", replace=True)(lambda arch_override=None, num_classes=None: LoadedModel(
        nn.Sequential(nn.Flatten(), nn.Linear(3 * 24 * 40, 10)).eval(), "test-wide", "linear", "test"))
    try:
        res = CliRunner().invoke(cli, ["run", "--model", "test-wide", "--dataset", data, "--threat", "L2:0.5",
                                       "--attack", "pgd:steps=2", "--attack", "aa-square:budget=0.01", "--quiet",
                                       "--results-dir", str(tmp_path / "res")])
        assert res.exit_code == 2 and "needs square images under L2; the data's are 24x40" in _one_line(res)
        assert not _files(tmp_path / "res")
        chk = CliRunner().invoke(cli, ["check", "--model", "test-wide", "--dataset", data, "--threat", "L1:12",
                                       "--n-examples", "6", "--attack", "pgd:steps=2", "--quiet"])
        assert chk.exit_code == 2 and "needs square images under L1" in _one_line(chk)  # rbx check's black-box stage
    finally:
        MODELS.unregister("test-wide")
    del wide


# ---- 6. one failing stage must not lose a long run --------------------------------------------------------
def test_a_failing_stage_keeps_the_finished_ones_and_says_how_to_go_on(tmp_path, monkeypatch):
    from robustbench_ext.attacks.pma import PMA

    real = PMA.run

    def broken(self, ctx, x, y):
        if ctx.threat.norm == "L2":
            raise RuntimeError("simulated crash inside an attack")
        return real(self, ctx, x, y)

    args = ["run", "--model", "cifar10-smallcnn-linf-at", "--dataset", DATA, "--n-examples", "12", "--threat", "Linf:8/255",
            "--threat", "L2:0.5", "--attack", "pma:steps=4", "--quiet", "--results-dir", str(tmp_path / "res")]
    monkeypatch.setattr(PMA, "run", broken)
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 1  # rbx's (or a plugin's) bug, not the user's: exit 1, but one line and nothing lost
    line = _one_line(res)
    assert "stage 2 of 2 (L2:0.5 pma) failed: internal error RuntimeError: simulated crash" in line
    assert "--skip-stage 'L2:0.5 pma'" in line and "the 1 finished stages are kept" in line
    assert list((tmp_path / "res" / ".rbx-partial").glob("*.npz")) and not list((tmp_path / "res").glob("records/*"))
    # The same command without the stage finishes, resuming (Linf is not attacked again), and says so.
    done = CliRunner().invoke(cli, [*args, "--skip-stage", "L2:0.5 pma"])
    assert done.exit_code == 0, done.output
    rec = read_record(next((tmp_path / "res" / "records").glob("*.json")))
    assert rec.threats[1].attacks[0].skipped and not rec.threats[0].attacks[0].skipped
    assert any("skipped on request" in n for n in rec.config["notes"])
    assert rec.threats[0].attacks[0].n_broken > 0  # the finished stage's work is in the record
    bad = CliRunner().invoke(cli, [*args, "--skip-stage", "L7:1 nope"])
    assert bad.exit_code == 2 and "names no stage of this run; its stages: Linf:8/255 pma; L2:0.5 pma" in _one_line(bad)


# ---- 7. broken downloads, for every checkpoint source ----------------------------------------------------
BROKEN = {"html": b"<!DOCTYPE html><html><body>Google Drive - Virus scan warning</body></html>",
          "empty": b"", "truncated": None}


def _broken(path: Path, kind: str, good: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(BROKEN[kind] if BROKEN[kind] is not None else good.read_bytes()[:5000])


@pytest.mark.parametrize("kind", list(BROKEN))
@pytest.mark.parametrize("source", ["file", "trained", "robustbench", "mix", "embedded"])
def test_broken_checkpoints_are_one_line_never_unpickling_advice_never_130(kind, source, tmp_path, monkeypatch, small_cnn):
    good = tmp_path / "good.pt"
    torch.save(small_cnn.module.state_dict(), good)
    if source == "file":
        spec, path = [f"file:{tmp_path / 'bad.pt'}", "--arch", "smallcnn"], tmp_path / "bad.pt"
    elif source in ("trained", "mix"):  # mix: a composite whose standard part is a (broken) trained model
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "model.json").write_text(json.dumps({"architecture": "smallcnn", "name": "t"}))
        path = tmp_path / "run" / "model.pt"
        spec = ([f"trained:{tmp_path / 'run'}"] if source == "trained"
                else [f"mix:trained:{tmp_path / 'run'}+cifar10-smallcnn-linf-at,alpha=0.5"])
    elif source == "robustbench":
        monkeypatch.setenv("RBX_ROBUSTBENCH_DIR", str(tmp_path / "zoo"))
        spec = ["robustbench:Addepalli2021Towards_RN18"]
        path = tmp_path / "zoo" / "cifar10" / "Linf" / "Addepalli2021Towards_RN18.pt"
    else:  # the package's own model, as a broken install would leave it
        import robustbench_ext.models.loading as models_mod

        monkeypatch.setattr(models_mod, "model_dirs", lambda: [tmp_path / "assets"])
        spec, path = ["cifar10-smallcnn-linf-at"], tmp_path / "assets" / "cifar10_smallcnn_linf_at.pt"
    _broken(path, kind, good)
    res = CliRunner().invoke(cli, ["run", "--model", *spec, "--dataset", DATA, "--n-examples", "4", "--threat",
                                   "Linf:8/255", "--attack", "pgd:steps=1", "--quiet", "--results-dir", str(tmp_path / "res")])
    assert res.exit_code == 2, (res.exit_code, res.output)
    msg = _one_line(res)
    assert not _files(tmp_path / "res")
    what = {"html": "an HTML page", "empty": "an empty file", "truncated": "truncated or corrupt"}[kind]
    assert str(path) in msg and what in msg and "delete it and download it again" in msg, msg
    assert "weights_only" not in msg and "unpickl" not in msg.lower()


def test_mix_parts_are_read_through_the_same_checkpoint_reader(tmp_path, small_cnn):
    (tmp_path / "bad.pt").write_bytes(b"")
    torch.save(small_cnn.module.state_dict(), tmp_path / "good.pt")
    with pytest.raises(RbxError, match="is an empty file: delete it and download it again"):
        MODELS.create(f"mix:cifar10-smallcnn-linf-at+cifar10-smallcnn-linf-at,mixnet={tmp_path / 'bad.pt'}")


# ---- 8. a user's mismatch is the user's error, naming the shapes -----------------------------------------
def test_an_exception_inside_the_users_model_names_the_model_and_the_input_shape(small_cnn, cifar200):
    class Picky(nn.Module):
        def forward(self, x):
            raise ValueError("my model only takes batches of 7")

    with pytest.raises(RbxError) as info:
        evaluate(Picky(), (cifar200.x[:4], cifar200.y[:4]), "Linf:8/255", attacks=["pgd:steps=1"], progress=False)
    assert "model 'Picky' failed on inputs of shape [2, 3, 32, 32] (ValueError: my model only takes batches of 7)" in str(info.value)
    assert info.value.exit_code == 2


# ---- records and reports tell the truth --------------------------------------------------------------------
def test_streamed_record_has_the_users_seed_and_the_packed_datasets_name(tmp_path):
    from robustbench_ext.registry import DATASETS
    from robustbench_ext.data.shards import pack_shards

    pack_shards(DATASETS.create(DATA, n_examples=20), tmp_path / "shards", 10)
    common = ["--model", "cifar10-smallcnn-linf-at", "--threat", "Linf:8/255", "--attack", "pgd:steps=2", "--quiet"]
    streamed = CliRunner().invoke(cli, ["run", *common, "--shards", str(tmp_path / "shards"), "--results-dir", str(tmp_path / "s")])
    plain = CliRunner().invoke(cli, ["run", *common, "--dataset", DATA, "--n-examples", "20", "--results-dir", str(tmp_path / "p")])
    assert streamed.exit_code == 0 and plain.exit_code == 0, streamed.output + plain.output
    s = read_record(next((tmp_path / "s" / "records").glob("*.json")))
    p = read_record(next((tmp_path / "p" / "records").glob("*.json")))
    assert s.config["seed"] == 0 and s.provenance["seed"] == 0
    assert s.dataset["name"] == DATA and s.dataset["source"] == p.dataset["source"] and s.dataset["selection"] == "first 20"
    assert s.dataset["sha256"] == p.dataset["sha256"]  # the same images: the same board, and regress pairs them


def test_intervals_round_once_the_same_everywhere(tmp_path, small_cnn, cifar200):
    from robustbench_ext.reporting.boards import write_all
    from robustbench_ext.reporting.tables import format_table
    from robustbench_ext.records.stats import interval, percent

    assert percent(0.3215) == "32.2" and percent(0.32149) == "32.1" and percent(1 / 8, 2) == "12.50"
    ev = evaluate(small_cnn, cifar200.first(37), "Linf:8/255", attacks=["pgd:steps=2"], progress=False)
    ev.write(tmp_path)
    write_all(tmp_path)
    ci = interval(ev.record.clean.ci95)
    lo, hi = ci.split("–")
    assert f"[{lo:>5}, {hi:>5}]" in format_table(ev.record)
    assert f"({ci})" in (tmp_path / "leaderboard.md").read_text() and ci in (tmp_path / "leaderboard.html").read_text()
    csv = (tmp_path / "leaderboard.csv").read_text()
    assert f"{float(percent(ev.record.clean.ci95[0], 2))}" in csv


def test_regress_refuses_runs_made_by_different_attacks(tmp_path, small_cnn, cifar200):
    data = cifar200.first(20)
    a = evaluate(small_cnn, data, "Linf:8/255", attacks=["pgd:steps=10"], progress=False).write(tmp_path / "a")
    b = evaluate(small_cnn, data, "Linf:8/255", attacks=["pgd:steps=1"], progress=False).write(tmp_path / "b")
    res = CliRunner().invoke(cli, ["regress", "--baseline", str(a), "--candidate", str(b)])
    assert res.exit_code == 2 and "not produced by the same attacks" in res.stderr and "steps=10" in res.stderr
    forced = CliRunner().invoke(cli, ["regress", "--baseline", str(a), "--candidate", str(b), "--allow-different-attacks"])
    assert forced.exit_code in (0, 1) and "WARNING: different evaluations" in forced.stdout


def test_export_reported_only_from_metadata_and_says_what_it_leaves_out(tmp_path, small_cnn, cifar200):
    path = evaluate(small_cnn, cifar200.first(10), ["Linf:8/255", "L1:12"], attacks=["pgd:steps=1"], progress=False).write(tmp_path)
    res = CliRunner().invoke(cli, ["export", str(path), "--model-id", "Me2026_x", "--out", str(tmp_path / "mi")])
    assert res.exit_code == 0, res.output
    entry = json.loads(next((tmp_path / "mi").rglob("*.json")).read_text())
    assert entry["reported"] is None  # rbx's number is never passed off as the paper's
    assert "not in the export" in res.stderr and "L1:12" in res.stderr and "union" in res.stderr and "'reported'" in res.stderr


def test_report_prints_the_table_and_keeps_its_plots_in_its_own_folder(tmp_path, small_cnn, cifar200):
    path = evaluate(small_cnn, cifar200.first(10), "Linf:8/255", attacks=["pgd:steps=1"], progress=False).write(tmp_path)
    res = CliRunner().invoke(cli, ["report", str(path)])
    assert res.exit_code == 0 and "union" in res.stdout and "Linf:8/255" in res.stdout
    assert not list(path.parent.glob("*.png"))  # nothing beside the records
    assert list((tmp_path / "reports" / path.stem).glob("*.png")) and list((tmp_path / "reports" / path.stem).glob("*_report.md"))


def test_box_covering_threat_warns_suggests_255_and_marks_the_record(tmp_path, small_cnn, cifar200):
    from robustbench_ext.reporting.boards import leaderboard_markdown

    res = CliRunner().invoke(cli, ["run", "--model", "cifar10-smallcnn-linf-at", "--dataset", DATA, "--n-examples", "6",
                                   "--threat", "Linf:8", "--attack", "pgd:steps=1", "--allow-meaningless-eps",
                                   "--results-dir", str(tmp_path)])
    assert res.exit_code == 0 and "did you mean Linf:8/255?" in res.stderr and "meaningless" in res.stderr
    rec = read_record(next((tmp_path / "records").glob("*.json")))
    assert rec.config["meaningless"] == ["Linf:8"]
    text = leaderboard_markdown(tmp_path)
    assert "Left out: 1 record" in text and "## " not in text  # no board shows it
    assert read_flags(next((tmp_path / "records").glob("*.json"))).robust.shape == (6, 1)


def test_a_train_mode_model_is_evaluated_in_eval_mode_and_given_back_in_train_mode():
    """Own audit: the boundary wrapper must mirror the user's model mode, or frozen() (which restores the mode
    of what it is given) leaves the user's model in eval mode, or evaluates a second call in train mode."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 30 * 30, 10)).train()
    modes = []
    net[1].register_forward_hook(lambda mod, inp, out: modes.append(mod.training))
    x, y = torch.rand(4, 3, 32, 32), torch.arange(4)
    for _ in range(2):
        evaluate(net, (x, y), "Linf:8/255", attacks=["pgd:steps=2"], batch_size=4)
        assert net.training  # given back as it came
    assert modes and not any(modes)  # every forward pass in eval mode (BatchNorm running statistics), both calls
