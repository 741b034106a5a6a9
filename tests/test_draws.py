"""Re-checks over draws: a randomized model's verdicts are majorities over R seeded fresh passes.

The test subject is a model whose randomness is controlled: each input carries (in one pixel) the
probability f that one pass misclassifies it, and every pass draws that event afresh from torch's global
RNG. No attack within 8/255 can change f, so the truth is known: a point is misclassified by majority iff
f > 1/2, and no attack really breaks a point; a single pass gets both wrong for some points.
"""

import json

import pytest
import torch

from robustbench_ext.evaluation.checks import check_draw_spread
from robustbench_ext.evaluation.majority import Draws, majority_wrong, wrong_counts
from robustbench_ext.errors import RbxError
from robustbench_ext.records.schema import RunRecord
from robustbench_ext.reporting.tables import format_table
from robustbench_ext import evaluate

LEVELS = torch.tensor([0.0, 0.1, 0.9, 1.0])  # misclassification probability per pass, by the level in pixel (0, 0, 0)


class CoinModel(torch.nn.Module):
    """Class 0 with probability 1 - f, else class 1; f = LEVELS[round(3 * x[:, 0, 0, 0])], fresh per pass."""

    def forward(self, x):
        f = LEVELS[(x[:, 0, 0, 0].detach() * 3).round().long().clamp(0, 3)]
        wrong = torch.rand(x.shape[0]) < f
        logits = torch.stack([torch.where(wrong, 0.0, 4.0), torch.where(wrong, 4.0, 0.0)], 1)
        return logits + 0.0 * x.flatten(1)[:, :1]  # a (zero) input gradient, so gradient attacks can run


def coin_data(n_per_level=10):
    """``n_per_level`` points of each level, label 0; the truth: misclassified by majority iff f > 1/2."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand((4 * n_per_level, 3, 4, 4), generator=g) * 0.5 + 0.25
    level = torch.arange(4).repeat_interleave(n_per_level)
    x[:, 0, 0, 0] = level / 3
    return x, torch.zeros(x.shape[0], dtype=torch.long), LEVELS[level]


def test_majority_over_seeded_draws_is_reproducible_and_leaves_the_rng_alone():
    x, y, f = coin_data()
    net = CoinModel()
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = wrong_counts(net, x, y, 11, seed=7)
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's stream is untouched
    assert torch.equal(a, wrong_counts(net, x, y, 11, seed=7))  # same seed, same draws
    assert torch.equal(a[f == 0], torch.zeros(10, dtype=torch.long)) and (a[f == 1] == 11).all()
    assert torch.equal(majority_wrong(net, x, y, 11, seed=7), f > 0.5)
    # a tie is not a majority: with 2 draws a point wrong once is not broken
    assert not majority_wrong(net, x[:1], y[:1], 2, 0).any()
    with pytest.raises(RbxError, match="positive integer"):
        Draws(0)


def test_majority_rule_removes_lucky_draws_in_a_run(tmp_path):
    x, y, f = coin_data()
    truth = f < 0.5  # correct by majority; no attack can change f, so also robust by majority
    torch.manual_seed(0)
    ev = evaluate(CoinModel(), (x, y), ["Linf:8/255"], attacks=["fgsm"], progress=False, randomized=True, draws=11,
                  draw_seed=5)
    assert ev.flags.clean_correct.tolist() == truth.tolist()
    assert ev.flags.robust[:, 0].tolist() == truth.tolist()  # no lucky "successes" on the f = 0.1 points
    assert ev.record.config["draws"] == {"r": 11, "seed": 5, "source": "declared", "rule": ev.record.config["draws"]["rule"]}
    assert "strict majority" in ev.record.config["draws"]["rule"]
    path = ev.write(tmp_path)
    again = RunRecord.from_dict(json.loads(path.read_text()))
    assert again.config["draws"]["r"] == 11
    assert "majority of 11 draws (seed 5, declared)" in format_table(again)
    # Single-pass verdicts (the rule off) get points wrong both ways on the same model and data.
    torch.manual_seed(0)
    plain = evaluate(CoinModel(), (x, y), ["Linf:8/255"], attacks=["fgsm"], progress=False, randomized=False)
    assert "draws" not in plain.record.config
    single = torch.as_tensor(plain.flags.robust[:, 0])
    assert (single != truth).any()
    # the same run seeded the same way gives the same majority verdicts
    torch.manual_seed(1)
    ev2 = evaluate(CoinModel(), (x, y), ["Linf:8/255"], attacks=["fgsm"], progress=False, randomized=True, draws=11,
                   draw_seed=5)
    assert (ev2.flags.robust == ev.flags.robust).all()


def test_randomized_model_is_detected_and_judged_by_majority():
    x, y, f = coin_data()
    ev = evaluate(CoinModel(), (x, y), ["Linf:8/255"], attacks=["fgsm"], progress=False, draws=9)
    assert ev.record.config["draws"]["source"] == "detected" and ev.record.config["draws"]["r"] == 9
    assert ev.flags.clean_correct.tolist() == (f < 0.5).tolist()


def test_deterministic_model_runs_as_before(small_cnn, cifar200):
    ev = evaluate(small_cnn, cifar200, ["Linf:8/255"], attacks=["fgsm"], n_examples=16, progress=False)
    assert "draws" not in ev.record.config
    assert "judged" not in format_table(ev.record)


def test_draw_spread_check():
    x, y, f = coin_data()
    res = check_draw_spread(CoinModel(), x, y, r=11, seed=0)
    assert not res.passed and res.name == "draw_spread"
    counts = wrong_counts(CoinModel(), x, y, 11, seed=0)  # the same seeded draws
    flips = (counts > 0) & (counts < 11)
    assert res.value == pytest.approx(float(flips.float().mean())) and res.value > 0.2
    assert not flips[(f == 0) | (f == 1)].any()  # only the f = 0.1 and 0.9 points can flip
    assert "flip between draws" in res.message
    fixed = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 10))
    assert check_draw_spread(fixed, x, y, r=5).passed


def test_cli_randomized_run_and_bad_draws(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from robustbench_ext.cli import cli

    monkeypatch.chdir(tmp_path)
    args = ["run", "--model", "noisy:cifar10-smallcnn-linf-at,sigma=0.05", "--dataset", "cifar10-1k", "--n-examples", "4",
            "--threat", "Linf:8/255", "--attack", "fgsm:eot=2", "--results-dir", str(tmp_path / "res"), "--no-progress"]
    res = CliRunner().invoke(cli, [*args, "--randomized", "--draws", "3"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "majority of 3 draws (seed 0, declared)" in res.output
    (path,) = (tmp_path / "res" / "records").glob("*.json")
    record = json.loads(path.read_text())
    assert record["config"]["draws"]["r"] == 3 and record["threats"][0]["attacks"][0]["params"]["eot"] == 2
    bad = CliRunner().invoke(cli, [*args, "--draws", "0"])
    assert bad.exit_code != 0 and "--draws must be a positive integer" in bad.output and "Traceback" not in bad.output


class _Biased(torch.nn.Module):
    """Misclassifies every point in each pass with probability q (fresh per pass): all points borderline."""

    def __init__(self, q):
        super().__init__()
        self.q = q

    def forward(self, x):
        wrong = torch.rand(x.shape[0]) < self.q
        return torch.stack([torch.where(wrong, 0.0, 4.0), torch.where(wrong, 4.0, 0.0)], 1) + 0.0 * x.flatten(1)[:, :1]


def test_per_stage_rechecks_err_toward_broken_as_documented():
    """majority.py's documented direction, with a known per-pass probability: q = 0.45 (robust in the limit of
    many draws) is called broken by one re-check of R = 11 with m(q) = P(Binomial(11, 0.45) >= 6) = 0.36688; a
    point re-checked by S stages (no attack can move it) stays robust with probability (1 - m)^S:
    S = 1: 0.63312, S = 3: 0.63312^3 = 0.25378."""
    from math import comb

    from robustbench_ext.attack.cascade import LabelledAttack
    from robustbench_ext.attack.threat import ThreatModel
    from robustbench_ext.evaluation.majority import majority_cascade
    from robustbench_ext.registry import ATTACKS

    m = sum(comb(11, k) * 0.45 ** k * 0.55 ** (11 - k) for k in range(6, 12))
    assert m == pytest.approx(0.36688, abs=1e-5)
    n = 1000
    x, y = torch.full((n, 3, 4, 4), 0.5), torch.zeros(n, dtype=torch.long)
    threat, draws = ThreatModel.parse("Linf:8/255"), Draws(11, 3)
    for stages, expected in ((1, 0.63312), (3, 0.25378)):
        cascade = [LabelledAttack("fgsm", ATTACKS.create("fgsm"))] * stages
        robust = majority_cascade(cascade, _Biased(0.45), x, y, threat, seeds=[0] * stages, draws=draws, key=(3, 0, 0))
        assert float(robust.float().mean()) == pytest.approx(expected, abs=0.05)  # 3.3 standard errors at n = 1000
