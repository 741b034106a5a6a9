"""Gradient-masking checks: a deliberately masked model is flagged, the reference model passes."""

import json

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from robustbench_ext.evaluation.checks import (check_deterministic, check_probabilities, check_zero_gradients, cheap_checks,
                                    full_checks)
from robustbench_ext.cli import cli
from robustbench_ext.models.loading import LoadedModel
from robustbench_ext.registry import ATTACKS, MODELS
from robustbench_ext.runtime import frozen
from robustbench_ext import evaluate
from robustbench_ext.evaluation.suites import AttackSpec, ThreatSpec
from robustbench_ext.attack.threat import ThreatModel

N = 60


class Quantized(nn.Module):
    """Masks gradients: rounds its input to 8 levels before the real model (zero gradient almost everywhere)."""

    def __init__(self, base):
        super().__init__()
        self.base = base

    def forward(self, x):
        return self.base(torch.round(x * 7) / 7)


class Noisy(nn.Module):
    """A randomized defense: Gaussian noise on the input at every call."""

    def __init__(self, base):
        super().__init__()
        self.base = base

    def forward(self, x):
        return self.base(x + 0.05 * torch.randn_like(x))


def _white_box(steps=20):
    specs = (AttackSpec.parse(f"pma:steps={steps}"), AttackSpec.parse(f"apgd-t:steps={steps},n_targets=3"))
    return [s.attack for s in ThreatSpec(ThreatModel.parse("Linf:8/255"), specs).build()]


def _black_box(budget=0.2):
    return ATTACKS.create("aa-square", budget=budget)


@pytest.fixture(scope="module")
def batch(cifar200):
    return cifar200.x[:N], cifar200.y[:N]


def test_cheap_checks_on_constructed_models(small_cnn, batch):
    x, y = batch
    net = small_cnn.module
    with frozen(net):
        assert all(r.passed for r in cheap_checks(net, x, y))
        assert not check_probabilities(net(x).softmax(1)).passed
        assert not check_zero_gradients(Quantized(net), x, y).passed
        assert not check_deterministic(Noisy(net), x).passed


@pytest.mark.slow
def test_masked_model_is_flagged_by_every_attack_based_check(small_cnn, batch):
    x, y = batch[0][:30], batch[1][:30]
    net = Quantized(small_cnn.module).eval()
    with frozen(net):
        results = {r.name: r for r in full_checks(net, x, y, ThreatModel.parse("Linf:8/255"), _white_box(6),
                                                  _black_box(0.1))}
    assert not results["zero_gradients"].passed
    assert not results["unbounded"].passed  # white-box attacks cannot move: ~0% is out of reach
    assert not results["black_box"].passed  # Square finds what the gradient hides


@pytest.mark.slow
def test_reference_model_passes_every_check(small_cnn, batch):
    x, y = batch
    net = small_cnn.module
    with frozen(net):
        results = full_checks(net, x, y, ThreatModel.parse("Linf:8/255"), _white_box(), _black_box())
    failed = [f"{r.name}: {r.message}" for r in results if not r.passed]
    assert not failed, failed


def test_runner_stores_the_cheap_checks(small_cnn, cifar200):
    data = type(cifar200)(cifar200.name, cifar200.x[:20], cifar200.y[:20], cifar200.source, cifar200.location)
    spec = ThreatSpec(ThreatModel.parse("L2:0.5"), (AttackSpec.parse("pgd:steps=2"),))
    rec = evaluate(small_cnn, data, [spec], progress=False).record
    assert rec.checks["passed"] is True
    # the cheap checks, the batch-independence check and the unbounded probe (issue 26)
    assert {r["name"] for r in rec.checks["results"]} == {"probabilities", "deterministic", "zero_gradients", "finite_gradients",
                                                          "batch_independent", "unbounded"}
    masked = LoadedModel(Quantized(small_cnn.module).eval(), "quantized", "smallcnn+round", "test")
    rec = evaluate(masked, data, [spec], progress=False).record
    assert rec.checks["passed"] is False
    assert not next(r for r in rec.checks["results"] if r["name"] == "zero_gradients")["passed"]


@pytest.mark.slow
def test_rbx_check_cli_exit_codes(small_cnn):
    MODELS.register("test-quantized")(lambda arch_override=None, num_classes=10: LoadedModel(
        Quantized(small_cnn.module).eval(), "test-quantized", "smallcnn+round", "test"))
    try:
        fast = ["--dataset", "cifar10-1k", "--n-examples", "40", "--attack", "pma:steps=10", "--black-box", "aa-square:budget=0.1"]
        bad = CliRunner().invoke(cli, ["check", "--model", "test-quantized", *fast, "--json"])
        assert bad.exit_code == 1
        d = json.loads(bad.stdout)
        assert d["passed"] is False and any(r["name"] == "zero_gradients" and not r["passed"] for r in d["results"])
        good = CliRunner().invoke(cli, ["check", "--model", "cifar10-smallcnn-linf-at", *fast])
        assert good.exit_code == 0, good.output
        assert "FLAG" not in good.stdout and "eps_monotone" in good.stdout
    finally:
        MODELS.unregister("test-quantized")
