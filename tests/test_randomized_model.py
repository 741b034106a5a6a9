"""The randomized model source ``noisy:MODEL,sigma=S[,seed=K]``: fresh noise per pass, reproducible under a
seed, flagged by the runner's determinism pre-check."""

import pytest
import torch

from robustbench_ext.defenses.randomized import GaussianNoiseInput
from robustbench_ext.evaluation.checks import cheap_checks, check_deterministic
from robustbench_ext.errors import RbxError
from robustbench_ext.models.loading import load_model

BASE = "cifar10-smallcnn-linf-at"


def test_noise_is_fresh_per_pass_and_flagged(cifar200):
    model = load_model(f"noisy:{BASE},sigma=0.1")
    x, y = cifar200.x[:16], cifar200.y[:16]
    with torch.no_grad():
        a, b = model.module(x), model.module(x)
    assert not torch.equal(a, b)
    check = check_deterministic(model.module, x)
    assert not check.passed and "EoT" in check.message
    assert check_deterministic(load_model(BASE).module, x).passed  # the base model passes the same check
    assert {r.name: r.passed for r in cheap_checks(model.module, x, y)}["deterministic"] is False
    assert model.extra["randomized"]["sigma"] == 0.1 and "sigma=0.1" in model.name


class _Recorder(torch.nn.Module):
    """Keeps the inputs it is given (as offsets from mid-grey) and returns 10 of their values as logits."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, z):
        self.seen.append(z.detach() - 0.5)
        return z.flatten(1)[:, :10]


def test_noise_is_gaussian_with_sigma_and_reproducible():
    x = torch.full((64, 3, 32, 32), 0.5)  # mid-grey: the noise is never clipped at 3 sigma
    rec = _Recorder()
    noisy = GaussianNoiseInput(rec, 0.1, seed=3)
    noisy(x)
    noise = rec.seen[-1]
    assert abs(noise.std().item() - 0.1) < 0.002 and abs(noise.mean().item()) < 0.002
    noisy.reseed(3)
    noisy(x)
    assert torch.equal(rec.seen[-1], noise)  # same seed, same noise
    noisy(x)
    assert not torch.equal(rec.seen[-1], noise)  # the next pass draws afresh
    unseeded = GaussianNoiseInput(rec, 0.1)  # no seed: torch's global RNG
    torch.manual_seed(11)
    unseeded(x)
    first = rec.seen[-1]
    torch.manual_seed(11)
    unseeded(x)
    assert torch.equal(rec.seen[-1], first)


def test_gradients_reach_the_input(cifar200):
    model = load_model(f"noisy:{BASE},sigma=0.05,seed=0").module
    x = cifar200.x[:4].clone().requires_grad_(True)
    model(x).sum().backward()
    assert x.grad.abs().sum() > 0


def test_bad_specs_give_one_line_errors():
    for spec, match in [(f"noisy:{BASE},sigma=-1", "sigma must be >= 0"), (f"noisy:{BASE},sigma=abc", "must be a number"),
                        (f"noisy:{BASE},temperature=2", "known options: sigma"), ("noisy:,sigma=0.1", "write noisy:MODEL")]:
        with pytest.raises(RbxError, match=match) as info:
            load_model(spec)
        assert "\n" not in str(info.value)
