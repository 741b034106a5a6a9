"""The adaptive smoothing mixer and MixedNUTS: valid log-probabilities, the base models at alpha 0 and 1,
gradients through alpha(x), the MixedNUTS map by hand, and the fitting rule's guarantee."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from robustbench_ext.defenses.smoothing_mixer import (FEATURES, GELU_MIN, MixedClassifier, MixnetSettings, _new_mixnet, fit_mixednuts, log_mix,
                                     nuts_map, value_with_grad_of)
from robustbench_ext.errors import RbxError
from robustbench_ext.models.loading import load_model
from robustbench_ext.registry import ATTACKS
from robustbench_ext.runtime import frozen
from robustbench_ext.attack.threat import ThreatModel

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
    # End to end: the input gradient includes the path through alpha(x) (inference constants that do not
    # saturate the sigmoid: the defaults' gamma bias of 20 leaves alpha at its maximum almost everywhere).
    comp.mixnet.settings = MixnetSettings(eval_gamma_scale=2.0, eval_gamma_bias=0.4)
    comp.eval()
    xg = x.clone().requires_grad_(True)
    (gx,) = torch.autograd.grad(comp(xg)[:, 0].sum(), xg)
    with torch.no_grad():
        alpha_fixed = comp.mixnet(torch.cat([comp._feats["g0"], comp._feats["h0"]], 1),
                                  torch.cat([comp._feats["g1"], comp._feats["h1"]], 1))[1]
    xg2 = x.clone().requires_grad_(True)
    lg, lh = F.log_softmax(comp.std(xg2), 1), F.log_softmax(comp.rob(xg2), 1)
    (gx_fixed,) = torch.autograd.grad(log_mix(lg, lh, alpha_fixed)[:, 0].sum(), xg2)
    assert not torch.allclose(gx, gx_fixed)


def _gelu(v):
    return v * 0.5 * (1 + math.erf(v / math.sqrt(2)))


def test_mixednuts_map_by_hand_and_monotone():
    z = torch.tensor([[2.0, 0.0, -1.0]])
    mean = 1 / 3
    std = math.sqrt(((2 - mean) ** 2 + mean ** 2 + (1 + mean) ** 2) / 2)  # unbiased, as the authors' torch.var
    s, p, c = 3.0, 2.0, 0.5
    expected = []
    for v in (2.0, 0.0, -1.0):
        u = _gelu((v - mean) / math.sqrt(std ** 2 + 1e-8) + c)
        expected.append(s * math.copysign(abs(u) ** p, u))
    assert nuts_map(z, s, p, c).dtype == torch.float64  # the authors map in float64
    assert torch.allclose(nuts_map(z, s, p, c), torch.tensor([expected], dtype=torch.float64), atol=1e-9)
    # Monotone in each logit wherever GELU is (its input above GELU's minimum): the ranking of those is kept.
    zz = torch.randn(200, 10) * 3
    for s, p, c in [(1.0, 1.0, 0.0), (5.0, 4.0, -1.1), (0.5, 3.0, 1.0)]:
        m = nuts_map(zz, s, p, c)
        top = zz.topk(10, dim=1).values
        zn = (zz - top.mean(1, keepdim=True)) / torch.sqrt(top.var(1, keepdim=True) + 1e-8)
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
    # The surrogate's alpha: the same rule on the raw softmax margins (no map), at beta_diffable = beta.
    raw = F.softmax(z_adv[adv_ok].double(), 1).topk(2, 1).values
    cutoff = float(torch.quantile(raw[:, 0] - raw[:, 1], 0.05))
    assert params["alpha_diffable"] == pytest.approx(1 / (1 + cutoff), rel=1e-12) and params["beta_diffable"] == 95.0
    margins = F.softmax(nuts_map(z_adv[adv_ok], params["s"], params["p"], params["c"]), 1).topk(2, 1).values
    keep = (margins[:, 0] - margins[:, 1]) >= params["cutoff"]
    assert keep.float().mean() >= 0.95 - 1.0 / adv_ok.sum()
    # Those points stay correct in the mixture whatever the standard model says: here one that is always
    # confidently wrong on them.
    x_keep, y_keep = res.x_adv[adv_ok][keep], y[adv_ok][keep]

    class AlwaysWrong(torch.nn.Module):
        def forward(self, inp):
            return F.one_hot((y_keep + 1) % 10, 10).float() * 50

    for std_map in ("onehot", "softmax"):
        comp = MixedClassifier(AlwaysWrong(), rob, alpha=params["alpha"], nuts=params, std_map=std_map)
        with torch.no_grad():
            assert (comp(x_keep).argmax(1) == y_keep).all()


NUTS = {"s": 5.0, "p": 4.0, "c": -1.1, "alpha": 0.95, "alpha_diffable": 0.8}


def _input_grad(fn, x):
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(fn(xg)[:, 0].sum(), xg)
    return g


def test_mixednuts_output_by_hand_one_hot_and_softmax_std(bases, x):
    std, rob = bases
    with torch.no_grad():
        zg, zh = std(x), rob(x)
        p_map = F.softmax(nuts_map(zh, 5.0, 4.0, -1.1), 1).float()
        hot = F.one_hot(zg.argmax(1), 10).float()
        onehot = MixedClassifier(std, rob, alpha=0.95, nuts=NUTS)(x)  # the authors' best setting is the default
        assert torch.allclose(onehot.exp(), 0.05 * hot + 0.95 * p_map, atol=1e-6)
        assert torch.isfinite(onehot).all() and torch.allclose(onehot.logsumexp(1), torch.zeros(len(x)), atol=1e-5)
        soft = MixedClassifier(std, rob, alpha=0.95, nuts=NUTS, std_map="softmax")(x)
        assert torch.allclose(soft.exp(), 0.05 * F.softmax(zg, 1) + 0.95 * p_map, atol=1e-6)


@pytest.mark.parametrize("grad", ["surrogate", "nonlin", "rbx-bypass", "exact"])
def test_mixednuts_gradient_modes(grad, bases, x):
    std, rob = bases
    comp = MixedClassifier(std, rob, alpha=0.95, nuts=NUTS, grad=grad)
    with torch.no_grad():
        value = comp(x)
    # Gradient mode returns the classifier's own logits, bit for bit (what the attack loop's hits read).
    assert torch.equal(comp(x.clone().requires_grad_(True)).detach(), value)

    def p_std(v):
        return F.softmax(std(v), 1)

    def p_rob(v):
        return F.softmax(rob(v), 1)

    def p_map(v):
        return F.softmax(nuts_map(rob(v), 5.0, 4.0, -1.1), 1).float()

    by_hand = {  # the gradient each mode must give, written in probability space
        "surrogate": lambda v: torch.log(0.2 * p_std(v) + 0.8 * (0.9 * p_rob(v) + 0.1 * p_map(v))),  # alpha_diffable 0.8
        "nonlin": lambda v: torch.log(0.05 * p_std(v) + 0.95 * p_map(v)),
        "rbx-bypass": lambda v: torch.log(0.1 * p_std(v) + 0.9 * p_rob(v)),
        "exact": lambda v: torch.log(0.05 * F.one_hot(std(v).argmax(1), 10).float() + 0.95 * p_map(v)),
    }[grad]
    g, g_hand = _input_grad(comp, x), _input_grad(by_hand, x)
    assert g.abs().sum() > 0
    assert torch.allclose(g, g_hand, atol=1e-5, rtol=1e-4)
    if grad != "nonlin":
        assert not torch.allclose(g, _input_grad(lambda v: torch.log(0.05 * p_std(v) + 0.95 * p_map(v)), x), atol=1e-5)


def test_value_with_grad_of_is_exact():
    a = torch.randn(64, 10, dtype=torch.float32)
    s = torch.randn(64, 10, requires_grad=True)
    out = value_with_grad_of(a * 1.0000001, s * 3)
    assert torch.equal(out.detach(), a * 1.0000001)  # the old `a + s - s.detach()` rounds; this does not
    out.sum().backward()
    assert torch.equal(s.grad, torch.full_like(s, 3.0))


def test_mix_source_gradient_options(bases, tmp_path):
    path = tmp_path / "nuts.json"
    path.write_text(json.dumps(NUTS))
    default = load_model(f"mix:{PAIR},nuts={path}")
    assert default.name.endswith("mixednuts)") and default.module.grad == "surrogate" and default.module.std_map == "onehot"
    assert default.module.alpha_grad == 0.8  # the fitted alpha_diffable
    assert default.describe()["mix"]["grad"] == "surrogate" and default.sha256
    rbx = load_model(f"mix:{PAIR},nuts={path},grad=rbx-bypass")
    assert rbx.module.grad == "rbx-bypass" and rbx.module.alpha_grad == 0.9 and "rbx-bypass gradients" in rbx.name
    assert load_model(f"mix:{PAIR},nuts={path},bypass=false").module.grad == "exact"  # the old spelling
    assert "softmax std" in load_model(f"mix:{PAIR},nuts={path},std_map=softmax").name
    assert load_model(f"mix:{PAIR},nuts={path},alpha_grad=0.7").module.alpha_grad == 0.7
    with pytest.raises(RbxError, match="unknown grad"):
        load_model(f"mix:{PAIR},nuts={path},grad=magic")
    with pytest.raises(RbxError, match="not both"):
        load_model(f"mix:{PAIR},nuts={path},grad=exact,bypass=false")
    with pytest.raises(RbxError, match="apply to MixedNUTS"):
        load_model(f"mix:{PAIR},alpha=0.5,grad=exact")


# ---- the mixing network's training and inference settings ---------------------------------------------
def _mixnet(bases, settings=None):
    std, rob = bases
    features = (FEATURES["smallcnn"], FEATURES["smallcnn"])
    net = _new_mixnet(std, rob, features, settings)
    with torch.no_grad():  # BN running statistics away from their (0, 1) start, so that their use is visible
        net.norm.running_mean.fill_(0.3)
        net.norm.running_var.fill_(2.0)
    return MixedClassifier(std, rob, mixnet=net, features=features), net


def _feats(comp, x):
    with torch.no_grad():
        comp(x)
    return torch.cat([comp._feats["g0"], comp._feats["h0"]], 1), torch.cat([comp._feats["g1"], comp._feats["h1"]], 1)


def test_mixnet_alpha_by_hand_in_eval_training_attack_and_train_modes(bases, x):
    comp, net = _mixnet(bases)
    early, late = _feats(comp.eval(), x)
    with torch.no_grad():
        raw = net.body(net.early(early) + net.late(late)).squeeze(1)  # M's output before the BN on gamma
        bn = (raw - 0.3) / math.sqrt(2.0 + 1e-5)
        gamma, alpha = net(early, late)
        # Inference: the eval constants (3, 20), then alpha mapped into [0.2, 0.95].
        assert torch.allclose(gamma, bn * 3 + 20, atol=1e-5)
        assert torch.allclose(alpha, 0.2 + 0.75 * torch.sigmoid(bn * 3 + 20), atol=1e-6)
        # The training attack's composite: eval-mode BN, the training constants (2, 0.4), alpha not bounded.
        with net.training_attack():
            gamma_t, alpha_t = net(early, late)
        assert torch.allclose(gamma_t, bn * 2 + 0.4, atol=1e-5) and torch.allclose(alpha_t, torch.sigmoid(bn * 2 + 0.4))
        assert net.calibrated  # restored
    # Training: M's output clamped to mean +- 0.6 std (unbiased) of the batch, then BN with batch statistics.
    net.train()
    with torch.no_grad():
        raw = net.body(net.early(early) + net.late(late)).squeeze(1)  # train mode: the conv BNs use batch statistics
    gamma_tr, alpha_tr = net(early, late)
    c = raw.clamp(float(raw.mean() - 0.6 * raw.std()), float(raw.mean() + 0.6 * raw.std()))
    expected = (c - c.mean()) / torch.sqrt(c.var(unbiased=False) + 1e-5) * 2 + 0.4
    assert torch.allclose(gamma_tr.detach(), expected, atol=1e-4) and torch.allclose(alpha_tr, torch.sigmoid(gamma_tr))
    assert (c != raw).any()  # the clamp did something on this batch


def test_mixnet_alpha_is_bounded_at_inference(bases, x):
    comp, net = _mixnet(bases, MixnetSettings(eval_gamma_bias=0.0, eval_gamma_scale=50.0))  # saturate both ends
    inputs = torch.cat([x, x.flip(0) * 0.5])
    early, late = _feats(comp.eval(), inputs)
    with torch.no_grad():
        raw = net.body(net.early(early) + net.late(late)).squeeze(1)
        net.norm.running_mean.fill_(float(raw.median()))  # half the batch on each side of BN's centre
        net.norm.running_var.fill_(float(raw.var()))
        comp(inputs)
    alpha = comp.last_alpha
    assert float(alpha.min()) >= 0.2 - 1e-7 and float(alpha.max()) <= 0.95 + 1e-7
    assert float(alpha.max() - alpha.min()) > 0.5  # and not constant
    with pytest.raises(RbxError, match="alpha_min"):
        MixnetSettings(alpha_min=0.9, alpha_max=0.5)


def test_mixnet_settings_are_saved_and_old_mixnets_get_the_defaults(tmp_path):
    from robustbench_ext.training.engine import TrainConfig, Trainer

    init = f"mix:{PAIR},alpha=net"
    cfg = TrainConfig(defense="adaptive-smoothing:attack=apgd-ce:steps=1,alpha_min=0.3,eval_gamma_bias=1.5", out=str(tmp_path / "m"),
                      init=init, dataset="cifar10-1k", n_train=32, batch_size=16, device="cpu")
    trainer = Trainer(cfg)
    # The authors' recipe unless told otherwise: AdamW, lr 1e-4, weight decay 1e-5 (weights only), warm-up + cosine.
    assert isinstance(trainer.opt, torch.optim.AdamW) and trainer.cfg.schedule == "cosine"
    assert [g["lr"] for g in trainer.opt.param_groups] == [0.0, 0.0]  # warm-up starts from 0
    assert [g["weight_decay"] for g in trainer.opt.param_groups] == [1e-5, 0.0]
    trainer.run()
    saved = json.loads((tmp_path / "m" / "mixnet.json").read_text())
    assert saved["alpha_min"] == 0.3 and saved["eval_gamma_bias"] == 1.5 and saved["gamma_scale"] == 2.0
    assert trainer.saved_model_spec() == f"mix:{PAIR},mixnet={tmp_path / 'm'}"
    loaded = trainer.saved_model()
    assert loaded.module.mixnet.settings == MixnetSettings(alpha_min=0.3, eval_gamma_bias=1.5)
    assert loaded.describe()["mix"]["mixnet_settings"]["alpha_min"] == 0.3
    # A mixing network saved before the settings were (no mixnet.json): the documented defaults.
    (tmp_path / "m" / "mixnet.json").unlink()
    old = load_model(f"mix:{PAIR},mixnet={tmp_path / 'm'}")
    assert old.module.mixnet.settings == MixnetSettings() and old.module.mixnet.calibrated
    raw = load_model(f"mix:{PAIR},mixnet={tmp_path / 'm'},eval_settings=false")
    assert not raw.module.mixnet.calibrated and "training alpha" in raw.name


def test_committed_mixnet_loads_with_default_settings():
    train = Path(__file__).resolve().parents[1] / "results" / "train"
    mixnet, std = train / "mixnet_cpu_smallcnn", train / "standard-smallcnn"
    if not (mixnet / "mixnet.pt").is_file() or not (std / "model.pt").is_file():
        pytest.skip("the committed mixing network or its standard model is not in this checkout")
    comp = load_model(f"mix:trained:{std}+cifar10-smallcnn-linf-at,mixnet={mixnet}").module
    assert comp.mixnet.settings == MixnetSettings()
    with torch.no_grad():
        comp(torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    assert float(comp.last_alpha.min()) >= 0.2 - 1e-7  # the composite can no longer collapse to the standard model


def test_mix_source_errors():
    with pytest.raises(RbxError, match="STD\\+ROB"):
        load_model("mix:cifar10-smallcnn-linf-at")
    with pytest.raises(RbxError, match="unknown options"):
        load_model(f"mix:{PAIR},beta=2")
    with pytest.raises(RbxError, match="alpha must be in"):
        load_model(f"mix:{PAIR},alpha=1.5")


# ---- the attack loop's hits are the values the verification sees ----------------------------------------
class GradModeDiffers(torch.nn.Module):
    """A planted model: in gradient mode its logits favour a wrong class; without gradient tracking (what the
    contract verifies) they are the network's own. An exaggerated straight-through surrogate."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        z = self.net(x)
        if torch.is_grad_enabled():
            wrong = (z.argmax(1) + 1) % z.shape[1]
            return z + 100.0 * F.one_hot(wrong, z.shape[1]).float()
        return z


@pytest.mark.parametrize("attack", ["pgd", "apgd-ce"])
def test_attack_loop_hits_are_verified_values(attack, cifar200):
    net = load_model("cifar10-smallcnn-linf-at").module.eval()
    x, y = cifar200.x[:32], cifar200.y[:32]
    with torch.no_grad():
        correct = net(x).argmax(1) == y
    res = ATTACKS.create(attack, steps=3, random_start=False)(GradModeDiffers(net), x, y, ThreatModel.parse("Linf:8/255"), seed=0)
    # Every clean-correct point "looks" fooled at the clean start in gradient mode. Frozen there, it would be
    # verified robust and never attacked; instead it keeps being attacked: it moved.
    moved = (res.x_adv - x).flatten(1).abs().amax(1) > 0
    assert torch.equal(moved, correct)  # the clean-wrong points are (really) fooled at the start: frozen there
    assert res.success[correct].any()  # and the attack went on to break clean-correct points
