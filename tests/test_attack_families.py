"""FGSM, FGSM-RS, C&W, DeepFool and FMN: by-hand checks on linear models, science checks on the small CNN
(40 CIFAR-10 images), and the robust-accuracy curve from minimal norms against fixed-eps runs."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from robustbench_ext.attack.base import AttackContext
from robustbench_ext.records.curves import eps_grid, robust_accuracy_curve
from robustbench_ext.errors import RbxError
from robustbench_ext.registry import ATTACKS
from robustbench_ext.runtime import frozen
from robustbench_ext.evaluation.suites import AttackSpec
from robustbench_ext.attack.threat import ThreatModel

N = 40


@pytest.fixture(scope="module")
def cnn_points(small_cnn, cifar200):
    """The small CNN and the correctly classified points among the first N images."""
    net = small_cnn.module
    x, y = cifar200.x[:N], cifar200.y[:N]
    with torch.no_grad():
        ok = net(x).argmax(1) == y
    return net, x[ok], y[ok]


def attack(net, spec, threat, x, y, seed=0):
    with frozen(net):
        return AttackSpec.parse(spec).build()(net, x, y, ThreatModel.parse(threat), seed=seed)


# ---- FGSM by hand ------------------------------------------------------------------------------------
def _linear_case(seed=0, d=48):
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(d, 5))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    x = 0.3 + 0.4 * torch.rand((6, 3, 4, 4), generator=g)  # interior: the steps below never reach the box
    with torch.no_grad():
        y = net(x).argmax(1)
    return net.eval(), x, y


def _ce_grad(net, x, y):
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(nn.functional.cross_entropy(net(xg), y, reduction="sum"), xg)
    return g


@pytest.mark.parametrize("threat", ["Linf:0.05", "L2:0.3"])
def test_fgsm_is_one_steepest_ascent_step(threat):
    # The cross-entropy of a linear model is convex, so the step point beats the clean point and is returned.
    net, x, y = _linear_case()
    tm = ThreatModel.parse(threat)
    g = _ce_grad(net, x, y)
    if tm.norm == "Linf":
        expected = x + tm.eps * g.sign()
    else:
        expected = x + tm.eps * g / g.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1)
    res = ATTACKS.create("fgsm")(net, x, y, tm, seed=0)
    assert torch.allclose(res.x_adv, expected, atol=1e-6)
    assert res.n_backward == len(x)  # one gradient per point


def test_fgsm_rs_steps_125_eps_from_a_uniform_start():
    net, x, y = _linear_case(1)
    tm = ThreatModel.parse("Linf:0.05")
    start = tm.geometry.random_init(x, tm.eps, torch.Generator().manual_seed(7))  # what the attack draws with seed 7
    expected = tm.geometry.project(x, start + 1.25 * tm.eps * _ce_grad(net, start, y).sign(), tm.eps)
    res = ATTACKS.create("fgsm-rs")(net, x, y, tm, seed=7)
    assert torch.allclose(res.x_adv, expected, atol=1e-6)
    assert not torch.equal(res.x_adv, ATTACKS.create("fgsm-rs")(net, x, y, tm, seed=8).x_adv)
    with pytest.raises(RbxError, match="exactly one step"):
        ATTACKS.create("fgsm", steps=3)


def test_fgsm_l1_step_spreads_over_enough_coordinates():
    net, x, y = _linear_case(2)
    tm = ThreatModel.parse("L1:6")
    geom = tm.geometry
    g = _ce_grad(net, x, y)
    # ceil(6) = 6 of the 48 coordinates move (the default 1% would move one, which the box caps below 1).
    expected = geom.project(x, x + 6 * geom.step_direction(g, x, sparsity=6 / 48), 6)
    res = ATTACKS.create("fgsm")(net, x, y, tm, seed=0)
    assert torch.allclose(res.x_adv, expected, atol=1e-6)
    delta = (res.x_adv - x).flatten(1)
    assert ((delta != 0).sum(1) == 6).all() and (delta.abs().sum(1) > 1.5).all()


# ---- FGSM science -------------------------------------------------------------------------------------
@pytest.mark.parametrize("threat", ["Linf:8/255", "L2:0.5"])
def test_fgsm_breaks_points_but_not_more_than_pgd(cnn_points, threat):
    net, x, y = cnn_points
    pgd = attack(net, "pgd:steps=10", threat, x, y).success.sum().item()
    for name in ("fgsm", "fgsm-rs"):
        fgsm = attack(net, name, threat, x, y).success.sum().item()
        assert 0 < fgsm <= pgd, (name, fgsm, pgd)


# ---- minimum-norm attacks: science --------------------------------------------------------------------
def _tightness(net, x, y, res):
    """Fraction of points whose reported closest adversarial, pulled 10% back toward x, is still adversarial."""
    with torch.no_grad():
        return (net(x + 0.9 * (res.x_adv - x)).argmax(1) != y).float().mean().item()


@pytest.fixture(scope="module")
def l2_searches(cnn_points):
    """PGD-10's successes at L2 0.5, and FMN's and DeepFool's closest points under a radius that holds them all."""
    net, x, y = cnn_points
    return {"pgd": attack(net, "pgd:steps=10", "L2:0.5", x, y).success,
            "fmn": attack(net, "fmn:steps=30", "L2:100", x, y),  # with eps = 100, x_adv is the closest point itself
            "deepfool": attack(net, "deepfool", "L2:100", x, y)}


def test_fmn_and_deepfool_find_the_points_pgd_breaks_at_small_norms(cnn_points, l2_searches):
    net, x, y = cnn_points
    pgd = l2_searches["pgd"]
    assert pgd.any()
    for name in ("fmn", "deepfool"):
        res = l2_searches[name]
        m = res.min_norm
        assert m.dtype == torch.float64 and m.shape == (len(y),)
        assert torch.isfinite(m).float().mean() >= 0.95  # an unbounded search breaks (almost) every point
        assert (m[pgd] <= 0.5).sum() >= pgd.sum() - 1, (name, m[pgd])  # what PGD breaks within 0.5 is found within 0.5
        assert _tightness(net, x, y, res) <= 0.2  # the points sit at the boundary, not past it
        assert torch.allclose(m, (res.x_adv.double() - x.double()).flatten(1).norm(dim=1))
    # FMN's adaptive radius beats one-shot linearization on most points (not all: it follows the runner-up class).
    assert (l2_searches["fmn"].min_norm <= l2_searches["deepfool"].min_norm).float().mean() >= 0.5


def test_cw_finds_norms_comparable_to_fmn(cnn_points, l2_searches):
    net, x, y = cnn_points
    x, y = x[:10], y[:10]
    cw = attack(net, "cw:binary_search_steps=4,steps=25,initial_const=0.1", "L2:100", x, y)
    fmn = l2_searches["fmn"].min_norm[:10]
    finite = torch.isfinite(cw.min_norm)
    assert finite.float().mean() >= 0.8
    ratio = (cw.min_norm[finite] / fmn[finite]).median().item()
    assert 0.67 <= ratio <= 1.5, ratio  # two different minimum-norm searches agree within 50%
    assert _tightness(net, x, y, cw) <= 0.2
    with torch.no_grad():  # every finite norm is a misclassified point (verified by the base class)
        assert (net(cw.x_adv[finite]).argmax(1) != y[finite]).all()


def test_cw_kappa_buys_confidence(cnn_points):
    net, x, y = cnn_points
    x, y = x[:6], y[:6]
    plain = attack(net, "cw:binary_search_steps=3,steps=20,initial_const=1,lr=0.05", "L2:100", x, y)
    sure = attack(net, "cw:binary_search_steps=3,steps=20,initial_const=1,lr=0.05,kappa=0.5", "L2:100", x, y)
    both = torch.isfinite(plain.min_norm) & torch.isfinite(sure.min_norm)
    assert both.sum() >= 3
    with torch.no_grad():
        z = net(sure.x_adv[both])
    yb = y[both]
    margin = z.scatter(1, yb[:, None], -math.inf).amax(1) - z.gather(1, yb[:, None]).squeeze(1)
    assert (margin >= 0.5).all()  # success needs a margin of kappa (the paper's test)...
    assert sure.min_norm[both].sum() > plain.min_norm[both].sum()  # ...which costs larger perturbations


# ---- the curve against fixed-eps runs ----------------------------------------------------------------
@pytest.mark.parametrize("spec, norm, grid", [("fmn:steps=20", "L2", (0.1, 0.3, 0.6)),
                                              ("deepfool", "Linf", (1 / 255, 3 / 255, 8 / 255))])
def test_curve_agrees_with_fixed_eps_runs(small_cnn, cifar200, spec, norm, grid):
    net = small_cnn.module
    x, y = cifar200.x[:N], cifar200.y[:N]  # misclassified clean points included: norm 0, never robust
    runs = {eps: attack(net, spec, f"{norm}:{eps}", x, y) for eps in grid}
    m = runs[grid[0]].min_norm
    for r in runs.values():  # the search ignores eps: every run reports the same minimal norms
        assert torch.equal(r.min_norm, m)
    with torch.no_grad():
        assert torch.equal(m == 0, net(x).argmax(1) != y)
    curve = robust_accuracy_curve(m, grid)
    geom = ThreatModel.parse(f"{norm}:1").geometry
    for eps, res in runs.items():
        by_norm = m <= eps
        assert bool(res.success[by_norm].all())  # the curve's broken points are broken at that eps
        extra = res.success & ~by_norm
        if extra.any():  # ...and the fixed run's extra ones are projections of farther points onto the sphere
            on_sphere = geom.norm_of(res.x_adv[extra].double() - x[extra].double())
            assert (on_sphere >= eps * (1 - 1e-4)).all()
        assert extra.sum() <= 2, (eps, int(extra.sum()))
        assert curve.at(eps) == pytest.approx((~by_norm).float().mean().item())
        assert curve.at(eps) - extra.sum().item() / N == pytest.approx((~res.success).float().mean().item())


# ---- the curve function -------------------------------------------------------------------------------
def test_robust_accuracy_curve_by_hand():
    m = [0.0, 0.3, 0.5, math.inf]  # misclassified clean, broken at 0.3, broken at 0.5, never broken
    c = robust_accuracy_curve(m, [0.0, 0.3, 0.4, 0.5, 1.0])
    assert c.robust_accuracy == (0.75, 0.5, 0.5, 0.25, 0.25)  # a point at exactly eps is inside the ball
    assert c.n == 4 and c.at(0.4) == 0.5
    assert robust_accuracy_curve(torch.tensor(m, dtype=torch.float64), [0.3]).robust_accuracy == (0.5,)
    assert np.allclose(eps_grid(1.0, 5), [0, 0.25, 0.5, 0.75, 1.0])
    with pytest.raises(RbxError, match="NaN or negative"):
        robust_accuracy_curve([0.1, float("nan")], [0.1])
    with pytest.raises(RbxError, match="NaN or negative"):
        robust_accuracy_curve([-0.1], [0.1])
    with pytest.raises(RbxError, match="finite and >= 0"):
        robust_accuracy_curve([0.1], [math.inf])
    with pytest.raises(RbxError, match="not on the curve's grid"):
        c.at(0.2)


def test_value_and_grads_matches_one_gradient_per_component():
    net, x, y = _linear_case(3)
    ctx = AttackContext(net, ThreatModel.parse("L2:1"), torch.Generator().manual_seed(0))
    logits, losses, grads = ctx.value_and_grads(x, lambda z: z[:, :3] - z[:, 3:4])
    assert losses.shape == (len(x), 3) and grads.shape == (3, *x.shape)
    w = net[1].weight
    for j in range(3):
        assert torch.allclose(grads[j], (w[j] - w[3]).reshape(1, 3, 4, 4).expand_as(x), atol=1e-6)
    assert ctx.n_forward == len(x) and ctx.n_backward == 3 * len(x)
