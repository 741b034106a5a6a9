"""Faults by kind, round three (issue 27): each kind is fixed on every path where it can happen, and tested here.

1. every path checks what the runner checks (the attack's own fit, on direct calls too; option ranges at construction);
2. the caller's autograd context (``torch.no_grad()``, ``torch.inference_mode()``) never breaks an attack;
3. advice is derived from what was seen (a normalized range is called normalized, never "0..255");
4. no forward pass is larger than the batch size the user set;
5. seeds that would alias are refused wherever a seed enters;
6. a check passes only on the evidence it names;
7. Ctrl-C and SIGTERM: one line and a resumable state from the ``rbx`` command, a KeyboardInterrupt for host programs;
8. messages that point the right way (did you mean file:...? no records in DIR; a meaningless eps is refused).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from robustbench_ext import check, evaluate
from robustbench_ext.attack.base import _allowed, _field_types
from robustbench_ext.attack.threat import ThreatModel, box_advice
from robustbench_ext.cli import cli
from robustbench_ext.data.datasets import EvalData, as_eval_data, check_labels_fit, read_npz
from robustbench_ext.errors import DataError, RbxError
from robustbench_ext.evaluation import checks as C
from robustbench_ext.models.loading import LoadedModel, read_state_dict
from robustbench_ext.records.store import read_record
from robustbench_ext.registry import ATTACKS, DATASETS, MODELS
from robustbench_ext.runtime import check_seed, seed_arg

from conftest import DATA, tiny_batch, tiny_model

L2, L1, LINF = ThreatModel.parse("L2:0.5"), ThreatModel.parse("L1:12"), ThreatModel.parse("Linf:8/255")


def _one_line(res) -> str:
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rbx: error: "), res.stderr
    return lines[0]


def _files(d: Path) -> list[Path]:
    return sorted(p for p in d.rglob("*") if p.is_file()) if d.exists() else []


class _Counting(nn.Module):
    """A model that counts the images it sees (and the largest batch)."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base, self.seen, self.largest = base, 0, 0

    def forward(self, x):
        self.seen += x.shape[0]
        self.largest = max(self.largest, x.shape[0])
        return self.base(x)


def _conv_model(k: int = 10, seed: int = 0) -> nn.Module:
    """A tiny convolutional model that takes images of any size."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(32, k)).eval()


# ==== 1. every path checks what the runner checks ==========================================================
def test_direct_calls_refuse_what_the_runner_refuses_before_any_search():
    model = _Counting(_conv_model())
    x = torch.rand(6, 3, 24, 40)
    y = torch.arange(6) % 10
    with pytest.raises(RbxError, match=r"needs square images under L2; the data's are 24x40") as info:
        ATTACKS.create("aa-square")(model, x, y, L2)
    assert "\n" not in str(info.value)
    assert model.seen <= 1  # at most the one image that told the call the class count: no search ran
    x32 = torch.rand(6, 3, 32, 32)
    for name in ("aa-apgd-ce", "aa-apgd-dlr", "aa-apgd-t"):
        model.seen = 0
        with pytest.raises(RbxError, match=r"budget=0.01 gives APGD 1 iteration; under L1 .* use budget >= 0.05"):
            ATTACKS.create(name, budget=0.01)(model, x32, y, L1)
        assert model.seen <= 1
    # the same attack at a budget that leaves the 1x-eps phase its iterations runs
    res = ATTACKS.create("aa-apgd-ce", budget=0.05)(_conv_model(), x32, y, L1)
    assert res.x_adv.shape == x32.shape


def test_rbx_run_refuses_an_impossible_stage_before_any_stage_runs(tmp_path):
    res = CliRunner().invoke(cli, ["run", "--model", "cifar10-smallcnn-linf-at", "--dataset", DATA, "--n-examples", "4",
                                   "--threat", "L1:12", "--attack", "pgd:steps=1", "--attack", "aa-apgd-ce:budget=0.01",
                                   "--no-progress", "--results-dir", str(tmp_path / "res")])
    assert res.exit_code == 2
    assert "aa-apgd-ce': budget=0.01 gives APGD 1 iteration" in _one_line(res)
    assert not _files(tmp_path / "res")  # refused before the first stage (pgd) saved anything


def _bad_values(tp) -> list:
    kinds, _ = _allowed(tp)
    if bool in kinds and len(kinds) == 1:
        return ["yes", 2]
    if int in kinds and float not in kinds:
        return [2.5, True, "3"]
    if float in kinds:
        return [math.nan, math.inf, -math.inf, True, "0.1"]
    if str in kinds:
        return [3]
    return []


@pytest.mark.parametrize("name", [e.name for e in ATTACKS.entries() if dataclasses.is_dataclass(e.factory)])
def test_every_registered_attack_refuses_bad_parameter_types_when_built(name):
    """Contract over the registry: a parameter of the wrong type (NaN and inf included) fails when the attack is
    built, as one RbxError naming the attack -- never later, inside the search."""
    factory = ATTACKS.get(name).factory
    base = dict(factory.smoke_params)
    ATTACKS.create(name, **base)  # the smoke parameters themselves are fine
    tried = 0
    for field, tp in _field_types(factory).items():
        for bad in _bad_values(tp):
            with pytest.raises(RbxError) as info:
                ATTACKS.create(name, **{**base, field: bad})
            msg = str(info.value)
            assert "\n" not in msg and name in msg, msg  # one line that names the attack
            tried += 1
    assert tried  # every attack has at least eot


def test_ensembles_refuse_a_bad_component_option_when_built():
    with pytest.raises(RbxError, match=r"attack 'pma\+': attack 'pma': steps must be >= 2"):
        ATTACKS.create("pma+", steps=1)
    with pytest.raises(RbxError, match=r"attack 'pma\+aa': .*budget must be a finite number > 0"):
        ATTACKS.create("pma+aa", aa_budget=0)
    with pytest.raises(RbxError, match=r"attack 'autoattack': budget must be a finite number"):
        ATTACKS.create("autoattack", budget=math.inf)


def test_direct_calls_cap_targets_at_k_minus_1_like_the_runner(caplog, monkeypatch):
    import robustbench_ext.attack.base as base

    monkeypatch.setattr(base, "_NOTED", set())  # (each note is logged once per process)
    model = _conv_model(k=5)
    x = torch.rand(4, 3, 16, 16)
    y = torch.arange(4)
    with caplog.at_level(logging.WARNING, logger="robustbench_ext"):
        res = ATTACKS.create("apgd-t", steps=2, n_targets=9)(model, x, y, LINF)
    assert res.x_adv.shape == x.shape
    assert "n_targets=9 asked, the model has 5 classes: ran with 4" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="robustbench_ext"):  # an ensemble's component is capped the same way
        ATTACKS.create("pma+", steps=4, n_targets=9)(_conv_model(k=6), x, y, LINF)
        ATTACKS.create("pma+", steps=4, n_targets=9)(_conv_model(k=6), x, y, LINF)
    assert caplog.text.count("the model has 6 classes: ran with 5") == 1  # once, not once per call
    with pytest.raises(RbxError, match="needs a model with at least 4 classes"):
        ATTACKS.create("apgd-t", steps=2)(_conv_model(k=3), x, y % 3, LINF)


def test_autoattack_target_counts_are_the_versions_own():
    """APGD-T under L1 (standard) runs 5 targets, not 9: a 7-class model needs no cap there, but does under Linf."""
    a = ATTACKS.create("aa-apgd-t")
    assert a.fit(7, (3, 32, 32), L1) == (a, None)
    fitted, note = a.fit(7, (3, 32, 32), LINF)
    assert fitted.n_targets == 6 and "9 target classes asked" in note


# ==== 2. the caller's autograd context ======================================================================
@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
@pytest.mark.parametrize("name", ["pgd", "apgd-ce", "pma", "fmn", "deepfool", "aa-apgd-ce", "pma+"])
def test_direct_attack_calls_work_in_any_autograd_context(name, mode):
    model = tiny_model()
    x = tiny_batch(6)
    y = model(x).argmax(1)
    attack = ATTACKS.create(name, **ATTACKS.get(name).factory.smoke_params)
    ref = attack(model, x, y, LINF, seed=0)
    ctx = torch.no_grad() if mode == "no_grad" else torch.inference_mode()
    with ctx:
        xi, yi = x.clone(), y.clone()  # under inference_mode: inference tensors
        got = attack(model, xi, yi, LINF, seed=0)
    assert torch.equal(got.x_adv, ref.x_adv) and torch.equal(got.success, ref.success)
    assert not got.x_adv.is_inference()


def test_multi_threat_attacks_work_under_inference_mode():
    model = tiny_model()
    x = tiny_batch(4)
    y = model(x).argmax(1)
    with torch.inference_mode():
        res = ATTACKS.create("union-worst", attack="apgd-ce:steps=3")(model, x.clone(), y.clone(), [LINF, L2])
    assert res.success.shape == (4, 2)


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_evaluate_and_check_work_in_any_autograd_context(mode, small_cnn, cifar200):
    ref = evaluate(small_cnn, cifar200.first(8), "Linf:8/255", attacks=["pgd:steps=2"], progress=False)
    ctx = torch.no_grad() if mode == "no_grad" else torch.inference_mode()
    with ctx:
        x, y = cifar200.x[:8].clone(), cifar200.y[:8].clone()
        ev = evaluate(small_cnn, (x, y), "Linf:8/255", attacks=["pgd:steps=2"], progress=False)
        report = check(small_cnn, (x, y), "Linf:8/255", attacks=["pgd:steps=2"], black_box="aa-square:budget=0.002",
                       n_examples=8)
    assert np.array_equal(ev.flags.robust, ref.flags.robust) and np.array_equal(ev.flags.clean_correct, ref.flags.clean_correct)
    assert {r.name for r in report.results} >= {"zero_gradients", "eps_monotone", "black_box"}


def test_the_training_adversary_and_training_work_in_any_autograd_context(tmp_path):
    from robustbench_ext.training.contract import StepContext
    from robustbench_ext.training.engine import TrainConfig, Trainer

    model = tiny_model()
    x = tiny_batch(4)
    y = model(x).argmax(1)
    with torch.inference_mode():
        x_adv = StepContext(seed=1, epoch=0, step=0).adversary(ATTACKS.create("pgd", steps=2), model, x.clone(), y.clone(), L2)
    assert x_adv.shape == x.shape and not x_adv.is_inference()
    cfg = TrainConfig(defense="pgd-at:attack=pgd:steps=1", out=str(tmp_path / "run"), arch="smallcnn", n_train=16,
                      dataset=DATA, epochs=1, batch_size=16, lr=0.05, seed=0, device="cpu")
    with torch.no_grad():
        result = Trainer(cfg).run()
    assert result.model_path.is_file()


def test_a_model_built_under_inference_mode_is_one_clear_line(cifar200):
    with torch.inference_mode():
        model = tiny_model(in_shape=(3, 32, 32))
    with pytest.raises(RbxError, match=r"inference tensors.*outside inference_mode .*copy.deepcopy") as info:
        ATTACKS.create("pgd", steps=1)(model, cifar200.x[:2], cifar200.y[:2], LINF)
    assert "\n" not in str(info.value)
    with pytest.raises(RbxError, match=r"holds weights created under torch.inference_mode"):
        evaluate(model, cifar200.first(4), "Linf:8/255", attacks=["pgd:steps=1"], progress=False)


# ==== 3. advice derived from what was seen ==================================================================
CIFAR_MEAN, CIFAR_STD = torch.tensor([0.4914, 0.4822, 0.4465]), torch.tensor([0.2471, 0.2435, 0.2616])


def _normalized(x: torch.Tensor) -> torch.Tensor:
    return (x - CIFAR_MEAN[:, None, None]) / CIFAR_STD[:, None, None]


def test_normalized_data_is_called_normalized_on_every_path(tmp_path, cifar200):
    x = _normalized(cifar200.x[:20])
    lo, hi = float(x.min()), float(x.max())
    np.savez(tmp_path / "norm.npz", x=x.numpy(), y=cifar200.y[:20].numpy())
    messages = []
    for call in (lambda: read_npz(tmp_path / "norm.npz", None, "norm"),
                 lambda: as_eval_data((x, cifar200.y[:20])),
                 lambda: ATTACKS.create("pgd", steps=1)(tiny_model(in_shape=(3, 32, 32)), x, cifar200.y[:20], LINF)):
        with pytest.raises(RbxError) as info:
            call()
        messages.append(str(info.value))
    for msg in messages:
        assert f"looks normalized (range {lo:.3g}..{hi:.3g}): pass [0, 1] images and put the normalization in the model" in msg
        assert "0..255" not in msg and "\n" not in msg
    assert "--normalize" in messages[0] and "Normalize(model, mean, std)" in messages[2]


@pytest.mark.parametrize("lo, hi, says, never", [
    (0.0, 255.0, "looks like 0..255", "normalized"),
    (-1.0, 1.0, "looks like [-1, 1] images", "0..255"),
    (-1.99, 2.13, "looks normalized (range -1.99..2.13)", "0..255"),
    (-0.01, 1.02, "clip them", "0..255"),
    (0.0, 4095.0, "16-bit", "0..255"),
    (-300.0, 900.0, "", "0..255"),  # looks like nothing known: no advice at all
])
def test_range_advice_follows_the_range(lo, hi, says, never):
    advice = box_advice(lo, hi)
    assert (says in advice) if says else advice == ""
    assert never not in advice


def test_label_advice_follows_the_labels():
    with pytest.raises(DataError, match="look 1-based: subtract 1"):
        check_labels_fit(torch.arange(1, 11), 10)
    with pytest.raises(DataError) as info:
        check_labels_fit(torch.tensor([0, 3, 12]), 10)
    assert "1-based" not in str(info.value) and "label 12" in str(info.value)
    with pytest.raises(RbxError) as info:
        ATTACKS.create("pgd", steps=1)(tiny_model(), tiny_batch(2), torch.tensor([0.3, 0.7]), LINF)
    assert "y.long()" not in str(info.value) and "class index" in str(info.value)
    with pytest.raises(RbxError, match=r"whole numbers: cast them with y.long\(\)"):
        ATTACKS.create("pgd", steps=1)(tiny_model(), tiny_batch(2), torch.tensor([1.0, 2.0]), LINF)


def test_agreement_hints_follow_the_evidence(small_cnn):
    from robustbench_ext.models.adapter import ModelAdapter, ModelError, check_agreement

    gray = EvalData("gray", torch.rand(4, 1, 32, 32), torch.zeros(4, dtype=torch.int64), "gray", "mem")
    with pytest.raises(ModelError, match=r"the data is grayscale: repeat its channel"):
        check_agreement(ModelAdapter(small_cnn.module, "m"), small_cnn, gray, torch.device("cpu"))

    class Broken(nn.Module):
        def forward(self, x):
            raise ValueError("the weights were never loaded")

    data = EvalData("d", torch.rand(4, 3, 32, 32), torch.zeros(4, dtype=torch.int64), "d", "mem")
    with pytest.raises(ModelError) as info:
        check_agreement(ModelAdapter(Broken(), "broken"), LoadedModel(Broken(), "broken", "x", "x"), data, torch.device("cpu"))
    assert "never loaded" in str(info.value) and "size it was made for" not in str(info.value)


def test_checkpoint_advice_follows_what_the_file_is(tmp_path):
    whole = tmp_path / "whole.pt"
    torch.save(nn.Linear(2, 2), whole)  # a pickled module, not a state dict
    with pytest.raises(RbxError) as info:
        read_state_dict(whole)
    assert "whole pickled nn.Module" in str(info.value) and "download it again" not in str(info.value)
    nested = tmp_path / "nested.pt"
    torch.save({"epoch": 3, "net": nn.Linear(2, 2).state_dict()}, nested)
    assert set(read_state_dict(nested)) == {"weight", "bias"}  # 'net' is one of the keys rbx looks under
    odd = tmp_path / "odd.pt"
    torch.save({"epoch": 3, "weights_ema": nn.Linear(2, 2).state_dict()}, odd)
    with pytest.raises(RbxError, match=r"its key 'weights_ema' holds one"):
        read_state_dict(odd)
    from safetensors.torch import save_file

    st = tmp_path / "w.safetensors"
    save_file(nn.Linear(2, 2).state_dict(), str(st))
    assert set(read_state_dict(st)) == {"weight", "bias"}  # what the file: hint suggests for .safetensors works


def test_download_advice_says_offline_only_for_network_errors():
    from robustbench_ext.models.sources import _why_download_failed

    assert "offline" in _why_download_failed(ConnectionError("no route"))
    assert "offline" not in _why_download_failed(RuntimeError("invalid load key, '<'")) 


# ==== 4. resource limits ====================================================================================
class _Limited(nn.Module):
    """A model that refuses any batch larger than ``limit`` (as a GPU out of memory would)."""

    def __init__(self, base: nn.Module, limit: int) -> None:
        super().__init__()
        self.base, self.limit = base, limit

    def forward(self, x):
        if x.shape[0] > self.limit:
            raise MemoryError(f"batch of {x.shape[0]} > {self.limit}")
        return self.base(x)


def test_no_forward_pass_exceeds_the_batch_size(small_cnn, cifar200):
    model = _Limited(small_cnn.module, 3).eval()
    data = cifar200.first(10)
    ev = evaluate(model, data, "Linf:8/255", attacks=["pgd:steps=2"], union_attacks=["union-worst:attack=pgd:steps=1"],
                  batch_size=3, progress=False)
    assert ev.record.n == 10 and ev.record.checks["results"]  # the pre-evaluation checks ran, in batches of 3
    report = check(model, data, "Linf:8/255", attacks=["pgd:steps=2"], black_box="aa-square:budget=0.002",
                   n_examples=10, batch_size=3)
    assert len(report.results) == 9  # 5 cheap checks (batch independence included) and 4 attack-based ones
    with pytest.raises(RbxError, match="MemoryError"):  # the model does enforce its limit
        evaluate(model, data, "Linf:8/255", attacks=["pgd:steps=1"], batch_size=4, progress=False)


def test_rbx_check_has_a_batch_size_and_respects_it(small_cnn):
    MODELS.register("test-limited-3")(lambda arch_override=None, num_classes=None: LoadedModel(
        _Limited(small_cnn.module, 3).eval(), "test-limited-3", "smallcnn", "test"))
    try:
        args = ["check", "--model", "test-limited-3", "--dataset", DATA, "--n-examples", "6", "--attack", "pgd:steps=1",
                "--black-box", "aa-square:budget=0.002", "--quiet", "--json"]
        res = CliRunner().invoke(cli, [*args, "--batch-size", "3"])
        assert res.exit_code in (0, 1), res.output  # 1: a check flagged something; never a crash
        assert len(json.loads(res.stdout)["results"]) == 9
        res = CliRunner().invoke(cli, args)  # default 256: the model refuses, one line
        assert res.exit_code == 2 and "MemoryError" in _one_line(res)
    finally:
        MODELS.unregister("test-limited-3")


def test_the_train_evaluation_hook_keeps_the_training_batch_size(tmp_path, monkeypatch):
    import robustbench_ext.evaluation.api as api

    seen = {}
    real = api.evaluate

    def spy(model, *a, **kw):
        seen["batch_size"] = kw.get("batch_size")
        return real(model, *a, **kw)

    monkeypatch.setattr(api, "evaluate", spy)
    suite = tmp_path / "tiny.toml"
    suite.write_text('name = "tiny"\ndescription = "test"\ndataset = "cifar10-1k"\n'
                     '[[threats]]\nthreat = "Linf:8/255"\nattacks = [{ name = "pgd", steps = 1 }]\n')
    res = CliRunner().invoke(cli, ["train", "--defense", "pgd-at:attack=pgd:steps=1", "--arch", "smallcnn", "--n-train", "8",
                                   "--dataset", DATA, "--batch-size", "4", "--eval-n", "4", "--eval-suite", str(suite),
                                   "--results-dir", str(tmp_path), "--no-progress", "--quiet"])
    assert res.exit_code == 0, res.output
    assert seen["batch_size"] == 4


# ==== 5. seeds that alias ===================================================================================
@pytest.mark.parametrize("seed", [-1, 2**32, 2**32 + 1, True, 1.5])
def test_seeds_outside_32_bits_are_refused_wherever_a_seed_enters(seed, tmp_path):
    from robustbench_ext.defenses.randomized import GaussianNoiseInput
    from robustbench_ext.data.corrupted import generated_from, image_seed
    from robustbench_ext.evaluation.majority import Draws
    from robustbench_ext.evaluation.request import RunRequest

    def refused(call):
        with pytest.raises(RbxError):
            call()

    refused(lambda: check_seed(seed))
    refused(lambda: RunRequest(seed=seed))
    refused(lambda: RunRequest(draw_seed=seed))
    refused(lambda: Draws(11, seed))
    refused(lambda: image_seed(seed, "fog", 3, 0))
    refused(lambda: generated_from(DATASETS.create(DATA, n_examples=2), seed))
    refused(lambda: DATASETS.create(f"cifar10-c:source=generated,seed={seed}", n_examples=2))
    refused(lambda: GaussianNoiseInput(nn.Identity(), 0.1, seed))
    if isinstance(seed, int) and not isinstance(seed, bool):
        refused(lambda: MODELS.create(f"noisy:cifar10-smallcnn-linf-at,seed={seed}"))
        with pytest.raises(argparse.ArgumentTypeError):  # the benchmarks' --seed and --draw-seed
            seed_arg(str(seed))
        res = CliRunner().invoke(cli, ["train", "--defense", "pgd-at", "--arch", "smallcnn", "--seed", str(seed),
                                       "--out", str(tmp_path / "t"), "--eval-n", "0"])
        assert res.exit_code == 2 and "--seed must be an integer from 0 to 4294967295" in _one_line(res)
        assert not (tmp_path / "t").exists()
    assert seed_arg("4294967295") == 2**32 - 1


def test_every_benchmark_seed_flag_goes_through_seed_arg():
    """Scripts added after the seed check (trust.py, aa_flags.py, recheck_direction.py) took --seed as a plain
    int, so 2**32 aliased 0 there: every seed flag of every benchmark script goes through seed_arg."""
    import re
    scripts = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))
    found = []
    for script in scripts:
        for m in re.finditer(r'add_argument\(\s*"(--[a-z-]*seed)"[^)]*\)', script.read_text()):
            found.append(script.name)
            assert "type=seed_arg" in m.group(0), (script.name, m.group(0))
    assert {"trust.py", "aa_flags.py", "recheck_direction.py", "perf.py"} <= set(found)


def test_attack_call_seeds_never_wrap():
    model, x = tiny_model(), tiny_batch(2)
    y = model(x).argmax(1)
    for seed in (-1, 2**64, True):
        with pytest.raises(RbxError, match="seed must be an integer from 0 to 2"):
            ATTACKS.create("pgd", steps=1)(model, x, y, LINF, seed=seed)
    ATTACKS.create("pgd", steps=1)(model, x, y, LINF, seed=2**64 - 1)  # the runner's derived 63-bit seeds are fine


# ==== 6. a check passes only on the evidence it names =======================================================
class _Constant(nn.Module):
    """Logits that ignore the input: class 0 always wins (no attack can change a prediction)."""

    def forward(self, x):
        out = torch.zeros(x.shape[0], 10, device=x.device) + 0.0 * x.flatten(1)[:, :1]
        out[:, 0] = 5.0
        return out


def test_a_flat_eps_curve_does_not_fall_and_is_flagged(cifar200):
    x, y = cifar200.x[:20], cifar200.y[:20]
    attacks = [ATTACKS.create("pgd", steps=2)]
    r = C.check_eps_monotone(_Constant(), x, y, LINF, attacks, batch_size=8)
    assert not r.passed and "does not fall with eps" in r.message and "falls with eps (" not in r.message
    assert "10.0%" in r.message  # the two class-0 images stay robust at every radius


def test_a_check_with_nothing_to_look_at_is_flagged_not_passed(cifar200):
    x, y = cifar200.x[:20], cifar200.y[:20]
    wrong = torch.full_like(y, 1)
    wrong[y == 1] = 2  # no image's label is class 0, the only class the model predicts
    attacks = [ATTACKS.create("pgd", steps=1)]
    for r in (C.check_eps_monotone(_Constant(), x, wrong, LINF, attacks), C.check_unbounded(_Constant(), x, wrong, LINF, attacks),
              C.check_black_box(_Constant(), x, wrong, LINF, attacks, ATTACKS.create("aa-square", budget=0.002)),
              C.check_seed_spread(_Constant(), x, wrong, LINF, attacks)):
        assert not r.passed and "nothing to attack" in r.message and r.value is None, r


def test_checks_that_pass_say_what_they_saw(small_cnn, cifar200):
    x, y = cifar200.x[:12], cifar200.y[:12]
    attacks = [ATTACKS.create("pgd", steps=5)]
    r = C.check_eps_monotone(small_cnn.module, x, y, LINF, attacks, fractions=(0.25, 4.0), batch_size=5)
    assert r.passed and "falls with eps" in r.message
    bb = C.check_black_box(small_cnn.module, x, y, ThreatModel("Linf", 1.0), attacks, ATTACKS.create("aa-square", budget=0.002))
    assert bb.passed and "left no point robust" in bb.message  # not "broke no point": there was none to break
    cheap = {r.name: r for r in C.cheap_checks(small_cnn.module, x, y, batch_size=5)}
    assert cheap["deterministic"].message.startswith("two passes on the same 12 images")
    assert cheap["probabilities"].message.startswith("outputs are not probabilities")


def test_chunked_checks_equal_the_one_batch_checks(small_cnn, cifar200):
    """Batching (item 4) changes nothing a check reports when every batch fits."""
    x, y = cifar200.x[:12], cifar200.y[:12]
    one = [r.to_dict() for r in C.cheap_checks(small_cnn.module, x, y)]
    many = [r.to_dict() for r in C.cheap_checks(small_cnn.module, x, y, batch_size=5)]
    for a, b in zip(one, many):
        assert a["passed"] == b["passed"] and a["message"] == b["message"]


# ==== 7. signals ============================================================================================
def _rbx() -> str:
    exe = shutil.which("rbx") or str(Path(sys.executable).parent / "rbx")
    assert Path(exe).exists()
    return exe


RUN = ["run", "--model", "cifar10-smallcnn-linf-at", "--dataset", DATA, "--n-examples", "24", "--batch-size", "4",
       "--threat", "Linf:8/255", "--attack", "pgd:steps=60", "--no-progress", "--seed", "5"]


def _signal_run(results: Path, sig: int, when: str, timeout: float = 300.0) -> subprocess.CompletedProcess:
    # (a test run in the background inherits SIGINT ignored, which Python then keeps: give the child the default, as
    # a terminal would)
    proc = subprocess.Popen([_rbx(), *RUN, "--results-dir", str(results)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    t0 = time.time()
    if when == "start-up":
        time.sleep(1.0)  # the entry point's handlers are in place; torch is still loading
    else:
        while not list((results / ".rbx-partial").glob("*.npz")):
            if proc.poll() is not None or time.time() - t0 > timeout:
                proc.kill()
                pytest.fail("no saved evaluation state before the run ended")
            time.sleep(0.05)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "interrupted (Ctrl-C)"),
                                             (signal.SIGTERM, 143, "terminated (SIGTERM)")], ids=["SIGINT", "SIGTERM"])
def test_a_signal_at_start_up_is_one_line_and_its_exit_code(tmp_path, sig, code, word):
    done = _signal_run(tmp_path / "res", sig, "start-up")
    assert done.returncode == code, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"rbx: {word}") and "Traceback" not in done.stderr, done.stderr
    assert "run the command again" in lines[0] or "resume" in lines[0]


@pytest.mark.parametrize("sig, code, word", [(signal.SIGTERM, 143, "terminated (SIGTERM)"),
                                             (signal.SIGINT, 130, "interrupted (Ctrl-C)")], ids=["SIGTERM", "SIGINT"])
def test_a_signal_mid_run_keeps_the_state_and_says_how_to_resume(tmp_path, sig, code, word):
    results = tmp_path / "res"
    done = _signal_run(results, sig, "mid-run")
    assert done.returncode == code, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    (state,) = list((results / ".rbx-partial").glob("*.npz"))
    assert lines[0] == f"rbx: {word}; the evaluation state is kept in {state}: run the same command again to resume"
    assert not list(results.glob("records/*.json"))
    if sig == signal.SIGTERM:  # and the same command does resume from it
        fin = subprocess.run([_rbx(), *RUN, "--results-dir", str(results)], capture_output=True, text=True, timeout=600)
        assert fin.returncode == 0 and "resuming from" in fin.stderr, fin.stderr
        assert list(results.glob("records/*.json")) and not list((results / ".rbx-partial").glob("*.npz"))


def test_host_programs_get_the_keyboard_interrupt_and_no_handlers(small_cnn, cifar200):
    """In-process (pytest, a notebook): Ctrl-C is the host's. CliRunner re-raises it; evaluate() never swallows it;
    no library call installs a signal handler."""
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)

    class Interrupting(nn.Module):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            if self.calls > 3:  # after the agreement check and the clean pass: mid-run
                raise KeyboardInterrupt
            return small_cnn.module(x)

    with pytest.raises(KeyboardInterrupt):
        evaluate(Interrupting().eval(), cifar200.first(4), "Linf:8/255", attacks=["pgd:steps=2"], progress=False)
    MODELS.register("test-interrupting")(lambda arch_override=None, num_classes=None: LoadedModel(
        Interrupting().eval(), "test-interrupting", "smallcnn", "test"))
    try:
        with pytest.raises(KeyboardInterrupt):
            CliRunner().invoke(cli, ["run", "--model", "test-interrupting", "--dataset", DATA, "--n-examples", "4",
                                     "--threat", "Linf:8/255", "--attack", "pgd:steps=2", "--no-progress"])
    finally:
        MODELS.unregister("test-interrupting")
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers


# ==== 8. messages that point the right way ==================================================================
def test_a_path_given_as_a_name_gets_its_spec(in_tmp, small_cnn):
    torch.save(small_cnn.module.state_dict(), in_tmp / "mymodel.pt")
    np.savez(in_tmp / "x.npz", x=np.zeros((2, 32, 32, 3), np.uint8), y=np.zeros(2, np.int64))
    (in_tmp / "suites").mkdir()
    (in_tmp / "suites" / "mine.toml").write_text('name = "mine"\n')
    cases = {("--model", "./mymodel.pt"): "unknown model './mymodel.pt'; did you mean file:./mymodel.pt?",
             ("--model", "./other.safetensors"): "did you mean file:./other.safetensors?",
             ("--dataset", "x.npz"): "unknown dataset 'x.npz'; did you mean npz:x.npz?",
             ("--suite", "suites/mine"): "unknown suite 'suites/mine'; did you mean suites/mine.toml?"}
    for args, expected in cases.items():
        res = CliRunner().invoke(cli, ["run", *args, "--results-dir", str(in_tmp / "res")])
        line = _one_line(res)
        assert res.exit_code == 2 and expected in line and "known:" not in line, line
    res = CliRunner().invoke(cli, ["run", "--model", "cifar10-smallcnn", "--results-dir", str(in_tmp / "res")])
    assert "did you mean" not in _one_line(res) or "cifar10-smallcnn-linf-at" in _one_line(res)
    res = CliRunner().invoke(cli, ["run", "--attack", "pgdd", "--results-dir", str(in_tmp / "res")])
    assert "known: " in _one_line(res) and "did you mean pgd" in _one_line(res)
    res = CliRunner().invoke(cli, ["run", "--model", "nonsense", "--results-dir", str(in_tmp / "res")])
    assert "did you mean" not in _one_line(res)  # no evidence, no guess


def test_regress_against_an_empty_folder_says_no_records(tmp_path, small_cnn, cifar200):
    evaluate(small_cnn, cifar200.first(4), "Linf:8/255", attacks=["pgd:steps=1"], progress=False).write(tmp_path / "base")
    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(cli, ["regress", "--baseline", str(tmp_path / "base"), "--candidate", str(tmp_path / "empty")])
    assert res.exit_code == 2 and f"no records in {tmp_path / 'empty'}" in _one_line(res)


def test_a_meaningless_eps_is_refused_unless_allowed_and_then_marked(tmp_path):
    args = ["run", "--model", "cifar10-smallcnn-linf-at", "--dataset", DATA, "--n-examples", "4", "--threat", "Linf:8",
            "--threat", "L2:0.5", "--attack", "pgd:steps=1", "--no-progress", "--results-dir", str(tmp_path)]
    res = CliRunner().invoke(cli, args)
    line = _one_line(res)
    assert res.exit_code == 2 and "Linf:8: the ball contains the whole [0, 1] box" in line
    assert "did you mean Linf:8/255?" in line and "--allow-meaningless-eps" in line
    assert not _files(tmp_path)
    res = CliRunner().invoke(cli, [*args, "--allow-meaningless-eps"])
    assert res.exit_code == 0, res.output
    rows = {line.split()[0]: line for line in res.stdout.splitlines() if line.split()}
    assert "meaningless: the ball covers the [0, 1] box" in rows["Linf:8"]
    assert "meaningless" not in rows["L2:0.5"] and "meaningless: it includes Linf:8" in rows["union"]
    assert read_record(next((tmp_path / "records").glob("*.json"))).config["meaningless"] == ["Linf:8"]
    with pytest.raises(RbxError, match="allow_meaningless=True"):  # the library refuses the same way
        evaluate("cifar10-smallcnn-linf-at", DATA, "L2:100", n_examples=2, attacks=["pgd:steps=1"], progress=False)
    res = CliRunner().invoke(cli, ["check", "--model", "cifar10-smallcnn-linf-at", "--dataset", DATA, "--n-examples",
                                   "4", "--threat", "Linf:8", "--attack", "pgd:steps=1"])  # rbx check refuses it too
    assert res.exit_code == 2 and "did you mean Linf:8/255?" in _one_line(res) and "give a smaller radius" in _one_line(res)


def test_a_plugin_that_forgets_super_post_init_is_still_checked():
    """The kind behind five plugins that skipped the type checks: their own __post_init__ did not call the base's.
    The base now runs its checks before any subclass's own __post_init__."""
    from dataclasses import dataclass as _dc

    from robustbench_ext.attack.base import Attack

    seen = []

    @_dc(eq=False)
    class Forgetful(Attack):
        name = "forgetful"
        steps: int = 3

        def __post_init__(self) -> None:  # no super().__post_init__()
            seen.append(self.steps)

        def run(self, ctx, x, y):
            return x

    Forgetful(steps=4)
    assert seen == [4]
    with pytest.raises(RbxError, match="forgetful"):
        Forgetful(steps="3")
    with pytest.raises(RbxError, match="forgetful"):
        Forgetful(steps=2, eot=0)
