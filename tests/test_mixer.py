"""The adaptive smoothing mixer and MixedNUTS: valid log-probabilities, the base models at alpha 0 and 1,
gradients through alpha(x), the MixedNUTS map by hand, and the fitting rule's guarantee."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from robustbench_ext.defenses.smoothing_mixer import FEATURES, GELU_MIN, MixedClassifier, _new_mixnet, fit_mixednuts, log_mix, nuts_map
from robustbench_ext.errors import RbxError
from robustbench_ext.models import load_model
from robustbench_ext.registry import ATTACKS
from robustbench_ext.devutils import frozen
from robustbench_ext.threat import ThreatModel

PAIR = "cifar10-smallcnn-linf-at+cifar10-smallcnn-linf-at"


@pytest.fixture(scope="module")
def bases():
    rob = load_model("cifar10-smallcnn-linf-at").module
    std = load_model("cifar10-smallcnn-linf-at").module
    with torch.no_grad():  # a different "standard" model: the same net with perturbed weights
        g = torch.Generator().manual_seed(0)
        for p in std.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return std.eval(), rob.eval()


@pytest.fixture(scope="module")
def x(cifar200):
    return cifar200.x[:16]


def test_constant_alpha_is_a_log_probability_and_interpolates(bases, x):
    std, rob = bases
    with torch.no_grad():
        for a in (0.0, 0.3, 0.7, 1.0):
            out = MixedClassifier(std, rob, alpha=a)(x)
            assert torch.allclose(out.logsumexp(1), torch.zeros(len(x)), atol=1e-5)
        assert torch.allclose(MixedClassifier(std, rob, alpha=0.0)(x), F.log_softmax(std(x), 1), atol=1e-6)
        assert torch.allclose(MixedClassifier(std, rob, alpha=1.0)(x), F.log_softmax(rob(x), 1), atol=1e-6)
        mid = MixedClassifier(std, rob, alpha=0.3)(x).exp()
        assert torch.allclose(mid, 0.7 * F.softmax(std(x), 1) + 0.3 * F.softmax(rob(x), 1), atol=1e-6)


def test_log_mix_is_stable_at_the_ends():
    lp = torch.log_softmax(torch.tensor([[50.0, -50.0]]), 1)
    lq = torch.log_softmax(torch.tensor([[-50.0, 50.0]]), 1)
    out = log_mix(lp, lq, torch.tensor([0.5]))
    assert torch.isfinite(out).all() and torch.allclose(out.exp().sum(1), torch.ones(1))


def test_gradients_reach_the_mixing_network_and_flow_through_alpha(bases, x):
    assert load_model(f"mix:{PAIR},alpha=net").module.mixnet is not None  # the model source builds one
    std, rob = bases  # two different models: with identical ones alpha would not matter
    features = (FEATURES["smallcnn"], FEATURES["smallcnn"])
    comp = MixedClassifier(std, rob, mixnet=_new_mixnet(std, rob, features), features=features).train()
    out = comp(x)
    assert torch.allclose(out.logsumexp(1), torch.zeros(len(x)), atol=1e-5)
    F.nll_loss(out, torch.zeros(len(x), dtype=torch.long)).backward()
    grads = [p.grad for p in comp.mixnet.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
    assert all(p.grad is None for p in comp.std.parameters())  # base models are frozen
    # End to end: the input gradient includes the path through alpha(x).
    comp.eval()
    xg = x.clone().requires_grad_(True)
    (gx,) = torch.autograd.grad(comp(xg)[:, 0].sum(), xg)
    with torch.no_grad():
        alpha_fixed = torch.sigmoid(comp.mixnet.gamma(torch.cat([comp._feats["g0"], comp._feats["h0"]], 1),
                                                      torch.cat([comp._feats["g1"], comp._feats["h1"]], 1)))
    xg2 = x.clone().requires_grad_(True)
    lg, lh = F.log_softmax(comp.std(xg2), 1), F.log_softmax(comp.rob(xg2), 1)
    (gx_fixed,) = torch.autograd.grad(log_mix(lg, lh, alpha_fixed)[:, 0].sum(), xg2)
    assert not torch.allclose(gx, gx_fixed)


def _gelu(v):
    return v * 0.5 * (1 + math.erf(v / math.sqrt(2)))


def test_mixednuts_map_by_hand_and_monotone():
    z = torch.tensor([[2.0, 0.0, -1.0]])
    mean = 1 / 3
    std = math.sqrt(((2 - mean) ** 2 + mean ** 2 + (1 + mean) ** 2) / 3)
    s, p, c = 3.0, 2.0, 0.5
    expected = []
    for v in (2.0, 0.0, -1.0):
        u = _gelu((v - mean) / math.sqrt(std ** 2 + 1e-8) + c)
        expected.append(s * math.copysign(abs(u) ** p, u))
    assert torch.allclose(nuts_map(z, s, p, c), torch.tensor([expected]), atol=1e-5)
    # Monotone in each logit wherever GELU is (its input above GELU's minimum): the ranking of those is kept.
    zz = torch.randn(200, 10) * 3
    for s, p, c in [(1.0, 1.0, 0.0), (5.0, 4.0, -1.1), (0.5, 3.0, 1.0)]:
        m = nuts_map(zz, s, p, c)
        top = zz.topk(10, dim=1).values
        zn = (zz - top.mean(1, keepdim=True)) / torch.sqrt(top.var(1, unbiased=False, keepdim=True) + 1e-8)
        ok = zn + c >= GELU_MIN
        for i in range(len(zz)):
            a, b = zz[i][ok[i]], m[i][ok[i]]
            order = a.argsort()
            assert (b[order].diff() >= -1e-6).all()


def test_fitted_parameters_keep_the_requested_share(cifar200):
    rob = load_model("cifar10-smallcnn-linf-at").module.eval()
    x, y = cifar200.x, cifar200.y
    attack = ATTACKS.create("pma", steps=10)
    with frozen(rob):
        with torch.no_grad():
            z_clean = rob(x)
        res = attack(rob, x, y, ThreatModel.parse("Linf:8/255"), seed=0)
        with torch.no_grad():
            z_adv = rob(res.x_adv)
    wrong = z_clean.argmax(1) != y
    adv_ok = z_adv.argmax(1) == y
    params = fit_mixednuts(z_clean[wrong], z_adv[adv_ok], beta=95.0)
    assert 0 < params["alpha"] < 1 and params["objective"] <= 1
    margins = F.softmax(nuts_map(z_adv[adv_ok], params["s"], params["p"], params["c"]), 1).topk(2, 1).values
    keep = (margins[:, 0] - margins[:, 1]) >= params["cutoff"]
    assert keep.float().mean() >= 0.95 - 1.0 / adv_ok.sum()
    # Those points stay correct in the mixture whatever the standard model says: here one that is always
    # confidently wrong on them.
    x_keep, y_keep = res.x_adv[adv_ok][keep], y[adv_ok][keep]

    class AlwaysWrong(torch.nn.Module):
        def forward(self, inp):
            return F.one_hot((y_keep + 1) % 10, 10).float() * 50

    comp = MixedClassifier(AlwaysWrong(), rob, alpha=params["alpha"], nuts=params)
    with torch.no_grad():
        assert (comp(x_keep).argmax(1) == y_keep).all()


def test_mixednuts_gradient_bypass(bases, x, tmp_path):
    std, rob = bases
    nuts = {"s": 5.0, "p": 4.0, "c": -1.1, "alpha": 0.95}
    exact = MixedClassifier(std, rob, alpha=0.95, nuts=nuts, grad_bypass=False)
    bypass = MixedClassifier(std, rob, alpha=0.95, nuts=nuts, grad_bypass=True, alpha_grad=0.9)
    with torch.no_grad():
        assert torch.allclose(exact(x), bypass(x))
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(bypass(xg)[:, 0].sum(), xg)
    xs = x.clone().requires_grad_(True)
    (gs,) = torch.autograd.grad(log_mix(F.log_softmax(std(xs), 1), F.log_softmax(rob(xs), 1), 0.9)[:, 0].sum(), xs)
    assert torch.allclose(g, gs, atol=1e-6)
    path = tmp_path / "nuts.json"
    path.write_text(json.dumps(nuts))
    loaded = load_model(f"mix:{PAIR},nuts={path}")
    assert "mixednuts" in loaded.name


def test_mix_source_errors():
    with pytest.raises(RbxError, match="STD\\+ROB"):
        load_model("mix:cifar10-smallcnn-linf-at")
    with pytest.raises(RbxError, match="unknown options"):
        load_model(f"mix:{PAIR},beta=2")
    with pytest.raises(RbxError, match="alpha must be in"):
        load_model(f"mix:{PAIR},alpha=1.5")
