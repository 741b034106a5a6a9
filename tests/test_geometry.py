"""Properties of the per-norm geometry: projections, step directions and random starts."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from robustbench_ext.attack.geometry import get_geometry
from robustbench_ext.attack.threat import NORMS

scipy_optimize = pytest.importorskip("scipy.optimize")


def _inside(geom, x, x_adv, eps):
    d = x[0].numel()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    norms = geom.norm_of(x_adv.double() - x.double())
    assert (norms <= torch.as_tensor(geom.tolerance(eps, d), dtype=torch.float64)).all(), (norms.max(), eps)


@st.composite
def projection_case(draw):
    norm = draw(st.sampled_from(NORMS))
    n = draw(st.integers(1, 5))
    shape = draw(st.sampled_from([(1, 2, 2), (3, 4, 4), (3, 8, 8), (1, 1, 7)]))
    d = int(np.prod(shape))
    scale = {"Linf": 1.0, "L2": float(np.sqrt(d)), "L1": float(d)}[norm]
    eps = draw(st.floats(1e-3, 1.5)) * scale * draw(st.sampled_from([0.01, 0.1, 1.0]))
    seed = draw(st.integers(0, 2**31 - 1))
    spread = draw(st.sampled_from([0.01, 0.3, 3.0]))
    return norm, n, shape, eps, seed, spread


@settings(max_examples=150, deadline=None)
@given(projection_case())
def test_projection_lands_in_ball_and_box_and_is_idempotent(case):
    norm, n, shape, eps, seed, spread = case
    geom = get_geometry(norm)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n, *shape), generator=g)
    x[:, ..., 0] = (x[:, ..., 0] > 0.5).float()  # some coordinates exactly on the box faces
    z = x + spread * torch.randn((n, *shape), generator=g)
    p = geom.project(x, z, eps)
    _inside(geom, x, p, eps)
    assert torch.allclose(geom.project(x, p, eps), p, atol=1e-6)


@pytest.mark.parametrize("norm", NORMS)
def test_projection_keeps_feasible_points(norm):
    geom = get_geometry(norm)
    g = torch.Generator().manual_seed(0)
    x = torch.rand((4, 3, 4, 4), generator=g)
    inside = geom.random_init(x, 0.3, g)
    assert torch.allclose(geom.project(x, inside, 0.3), inside, atol=1e-7)


def _brute_force(norm, x, z, eps):
    """min ||d - v||^2 s.t. ||d|| <= eps, 0 <= x + d <= 1, by a generic constrained solver (SLSQP)."""
    v = z - x
    n = len(v)
    if norm == "L2":
        cons = [{"type": "ineq", "fun": lambda d: eps**2 - d @ d, "jac": lambda d: -2 * d}]
        bounds = list(zip(-x, 1 - x))
        res = scipy_optimize.minimize(lambda d: ((d - v) ** 2).sum(), np.clip(v, -x, 1 - x) * 0,
                                      jac=lambda d: 2 * (d - v), bounds=bounds, constraints=cons,
                                      method="SLSQP", options={"ftol": 1e-14, "maxiter": 1000})
        return res.x
    # L1: split d = p - q with p, q >= 0 to make the constraint smooth.
    cons = [{"type": "ineq", "fun": lambda w: eps - w.sum(), "jac": lambda w: -np.ones_like(w)}]
    bounds = [(0, 1 - xi) for xi in x] + [(0, xi) for xi in x]

    def f(w):
        d = w[:n] - w[n:]
        return ((d - v) ** 2).sum()

    def jac(w):
        r = 2 * (w[:n] - w[n:] - v)
        return np.concatenate([r, -r])

    res = scipy_optimize.minimize(f, np.zeros(2 * n), jac=jac, bounds=bounds, constraints=cons,
                                  method="SLSQP", options={"ftol": 1e-15, "maxiter": 2000})
    return res.x[:n] - res.x[n:]


@pytest.mark.parametrize("norm", ["L1", "L2"])
@pytest.mark.parametrize("seed", range(25))
def test_exact_projection_matches_brute_force_solver(norm, seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 9))
    x = rng.random(n)
    x[rng.random(n) < 0.25] = rng.integers(0, 2)  # some coordinates on the faces
    z = x + rng.normal(0, rng.choice([0.2, 1.0]), n)
    eps = float(rng.uniform(0.05, 1.0)) * (np.abs(z - x).sum() if norm == "L1" else np.linalg.norm(z - x))
    ours = get_geometry(norm).project(torch.tensor(x[None]), torch.tensor(z[None]), eps)[0].numpy() - x
    ref = _brute_force(norm, x, z, eps)
    # The projection is the unique minimizer: compare points and objective values.
    obj = lambda d: ((d - (z - x)) ** 2).sum()  # noqa: E731
    assert obj(ours) <= obj(ref) + 1e-8
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_l1_projection_is_not_scale_then_clip():
    # A case where clipping to the box after scaling into the ball loses mass the exact projection keeps.
    geom = get_geometry("L1")
    x = torch.tensor([[0.95, 0.5]], dtype=torch.float64)
    z = torch.tensor([[1.95, 0.6]], dtype=torch.float64)  # wants +1.0 and +0.1; box allows +0.05 on the first
    p = geom.project(x, z, 0.5) - x
    assert p[0, 0].item() == pytest.approx(0.05)
    assert p[0, 1].item() == pytest.approx(0.1)  # the budget left over goes to the free coordinate


@pytest.mark.parametrize("norm", NORMS)
def test_step_direction_has_unit_norm(norm):
    geom = get_geometry(norm)
    g = torch.randn((5, 3, 8, 8), generator=torch.Generator().manual_seed(0))
    d = geom.step_direction(g, sparsity=0.1)
    assert torch.allclose(geom.norm_of(d), torch.ones(5), atol=1e-6)
    # Ascent: the direction has positive inner product with the gradient.
    assert ((d * g).flatten(1).sum(1) > 0).all()
    assert torch.equal(geom.step_direction(torch.zeros_like(g), sparsity=0.1), torch.zeros_like(g))


def test_l1_direction_is_sparse_and_skips_blocked_coordinates():
    geom = get_geometry("L1")
    grad = torch.tensor([[5.0, -4.0, 3.0, 2.0, 1.0, 0.5, 0.25, 0.1, 0.05, 0.01]])
    x_adv = torch.tensor([[1.0, 0.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]])  # the two largest are blocked
    d = geom.step_direction(grad, x_adv, sparsity=0.2)
    assert d[0, :2].abs().sum() == 0
    assert torch.allclose(d[0, 2:4], torch.tensor([0.5, 0.5]))
    assert d[0, 4:].abs().sum() == 0


@pytest.mark.parametrize("norm", NORMS)
def test_random_init_inside_and_seeded(norm):
    geom = get_geometry(norm)
    x = torch.rand((8, 3, 8, 8), generator=torch.Generator().manual_seed(3))
    eps = {"Linf": 8 / 255, "L2": 0.5, "L1": 12.0}[norm]
    a = geom.random_init(x, eps, torch.Generator().manual_seed(7))
    b = geom.random_init(x, eps, torch.Generator().manual_seed(7))
    c = geom.random_init(x, eps, torch.Generator().manual_seed(8))
    _inside(geom, x, a, eps)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert (geom.norm_of(a - x) > 0).all()


@pytest.mark.parametrize("norm", NORMS)
def test_per_sample_eps(norm):
    geom = get_geometry(norm)
    x = torch.full((3, 1, 4, 4), 0.5)
    eps = torch.tensor([0.01, 0.1, 0.2])
    p = geom.project(x, x + 1.0, eps)
    norms = geom.norm_of(p - x)
    assert torch.allclose(norms, eps, rtol=1e-5, atol=1e-6)  # float32 rounding of x + d


@pytest.mark.parametrize("norm", NORMS)
def test_dual_norm_is_the_best_linear_gain_on_the_unit_ball(norm):
    """dual_norm_of(g) = max <g, u> over ||u|| <= 1: reached by the steepest-ascent direction, never beaten."""
    geom = get_geometry(norm)
    g = torch.randn((5, 3, 4, 4), generator=torch.Generator().manual_seed(0))
    d = g[0].numel()
    u = geom.step_direction(g, sparsity=1 / d)  # for L1 the steepest direction is one coordinate
    assert torch.allclose(geom.norm_of(u), torch.ones(5), atol=1e-6)
    gain = (g * u).flatten(1).sum(1)
    assert torch.allclose(gain, geom.dual_norm_of(g), rtol=1e-5)
    for seed in range(20):  # random unit vectors gain less (Hoelder)
        v = torch.randn(g.shape, generator=torch.Generator().manual_seed(seed + 1))
        v = v / geom.norm_of(v).reshape(-1, 1, 1, 1)
        assert ((g * v).flatten(1).sum(1) <= geom.dual_norm_of(g) + 1e-5).all()
    expected = {"Linf": g.flatten(1).abs().sum(1), "L2": g.flatten(1).norm(dim=1), "L1": g.flatten(1).abs().amax(1)}[norm]
    assert torch.allclose(geom.dual_norm_of(g), expected)
