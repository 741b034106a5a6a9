"""Properties of the per-norm geometry: projections, step directions and random starts."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from robustbench_ext.attack.geometry import get_geometry
from robustbench_ext.attack.threat import GEOMETRY_NORMS as NORMS, LP_NORMS  # the norms with a geometry

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
    scale = {"Linf": 1.0, "L2": float(np.sqrt(d)), "L1": float(d), "L0": float(d // shape[0]), "L0c": float(d)}[norm]
    eps = draw(st.floats(1e-3, 1.5)) * scale * draw(st.sampled_from([0.01, 0.1, 1.0]))
    if norm in ("L0", "L0c"):
        eps = float(max(1, round(eps)))
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
    eps = 5.0 if norm.startswith("L0") else 0.3
    inside = geom.random_init(x, eps, g)
    assert torch.allclose(geom.project(x, inside, eps), inside, atol=1e-7)


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


@pytest.mark.parametrize("norm", LP_NORMS)
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
    eps = {"Linf": 8 / 255, "L2": 0.5, "L1": 12.0, "L0": 10.0, "L0c": 10.0}[norm]
    a = geom.random_init(x, eps, torch.Generator().manual_seed(7))
    b = geom.random_init(x, eps, torch.Generator().manual_seed(7))
    c = geom.random_init(x, eps, torch.Generator().manual_seed(8))
    _inside(geom, x, a, eps)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert (geom.norm_of(a - x) > 0).all()


@pytest.mark.parametrize("norm", LP_NORMS)
def test_per_sample_eps(norm):
    geom = get_geometry(norm)
    x = torch.full((3, 1, 4, 4), 0.5)
    eps = torch.tensor([0.01, 0.1, 0.2])
    p = geom.project(x, x + 1.0, eps)
    norms = geom.norm_of(p - x)
    assert torch.allclose(norms, eps, rtol=1e-5, atol=1e-6)  # float32 rounding of x + d


@pytest.mark.parametrize("norm", LP_NORMS)
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


# ---- L0 -------------------------------------------------------------------------------------------
def _l0_brute_force(x, z, k, grouped):
    """min ||d - v||^2 over every support of at most k units (pixels of C channels, or coordinates), each kept
    unit at its box-clipped value: exhaustive over supports (the exact answer on tiny inputs)."""
    import itertools

    c_, p_ = x.shape
    v = z - x
    c = np.clip(z, 0, 1) - x
    units = [list(range(c_))] if not grouped else None
    n_units = p_ if grouped else c_ * p_
    best, best_d = np.inf, None
    for size in range(0, min(k, n_units) + 1):
        for support in itertools.combinations(range(n_units), size):
            d = np.zeros_like(v)
            for u in support:
                if grouped:
                    d[:, u] = c[:, u]
                else:
                    d.flat[u] = c.flat[u]
            obj = ((d - v) ** 2).sum()
            if obj < best - 1e-12:
                best, best_d = obj, d
    return best, best_d


@pytest.mark.parametrize("grouped", [True, False])
@pytest.mark.parametrize("seed", range(30))
def test_l0_projection_is_optimal_against_brute_force(grouped, seed):
    """The L0-ball ∩ box projection keeps the k units of largest gain: no other support of <= k units is closer."""
    rng = np.random.default_rng(seed)
    c_, p_ = int(rng.integers(1, 4)), int(rng.integers(2, 6))
    x = rng.random((c_, p_))
    x[rng.random((c_, p_)) < 0.25] = rng.integers(0, 2)  # some coordinates on the faces
    z = x + rng.normal(0, rng.choice([0.3, 1.0, 3.0]), (c_, p_))  # far outside the box too
    n_units = p_ if grouped else c_ * p_
    k = int(rng.integers(1, n_units + 1))
    geom = get_geometry("L0" if grouped else "L0c")
    xt, zt = torch.tensor(x[None, :, :, None]), torch.tensor(z[None, :, :, None])  # [1, C, P, 1]
    ours = (geom.project(xt, zt, float(k)) - xt)[0, :, :, 0].numpy()
    best, _ = _l0_brute_force(x, z, k, grouped)
    assert ((ours - (z - x)) ** 2).sum() <= best + 1e-9
    assert geom.norm_of(torch.tensor(ours[None])).item() <= k
    assert (x + ours >= -1e-12).all() and (x + ours <= 1 + 1e-12).all()


def test_l0_projection_ranks_by_gain_not_by_clipped_change():
    """Pixel 0 wants +10 from 0.5 (clipped change 0.5, gain 9.75); pixel 1 wants +0.6 from 0.2 (change 0.6,
    gain 0.36). With one pixel allowed, the closer point keeps pixel 0."""
    geom = get_geometry("L0")
    x = torch.tensor([[[[0.5, 0.2]]]], dtype=torch.float64)
    z = torch.tensor([[[[10.5, 0.8]]]], dtype=torch.float64)
    p = geom.project(x, z, 1.0)
    assert torch.allclose(p, torch.tensor([[[[1.0, 0.2]]]], dtype=torch.float64))


def test_l0_counts_pixels_or_coordinates():
    x = torch.zeros((1, 3, 2, 2))
    d = torch.zeros_like(x)
    d[0, :, 0, 0] = 0.5  # one pixel, three channels
    d[0, 1, 1, 1] = 0.2  # one more pixel, one channel
    assert get_geometry("L0").norm_of(d).item() == 2
    assert get_geometry("L0c").norm_of(d).item() == 4
    assert get_geometry("L0").n_units((3, 32, 32)) == 1024 and get_geometry("L0c").n_units((3, 32, 32)) == 3072


def test_l0_has_no_dual_norm():
    from robustbench_ext.errors import ThreatModelError

    with pytest.raises(ThreatModelError, match="no dual norm"):
        get_geometry("L0").dual_norm_of(torch.ones((1, 3)))


# ---- hyperplane steps (FAB) ------------------------------------------------------------------------
@pytest.mark.parametrize("norm", LP_NORMS)
@pytest.mark.parametrize("seed", range(12))
def test_hyperplane_step_is_the_smallest_box_feasible_step(norm, seed):
    """Against a generic LP/QP solver: the step reaches the hyperplane inside the box with the least norm; when
    the box cannot reach it, every coordinate is at the face toward it."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 8))
    x = rng.random(n)
    x[rng.random(n) < 0.2] = rng.integers(0, 2)
    w = rng.normal(0, 1, n)
    w[rng.random(n) < 0.15] = 0.0
    far = seed % 4 == 3  # an unreachable hyperplane
    b = float(w @ x + rng.normal(0, 0.3) + (np.abs(w).sum() * 3 * np.sign(rng.normal()) if far else 0))
    geom = get_geometry(norm)
    d = geom.hyperplane_step(torch.tensor(x[None]), torch.tensor(w[None]), torch.tensor([b], dtype=torch.float64))[0].numpy()
    assert (x + d >= -1e-12).all() and (x + d <= 1 + 1e-12).all()
    assert (d[w == 0] == 0).all()
    lo, hi = -x, 1 - x
    if far or not (w @ np.where(w > 0, lo, hi) <= b - w @ x <= w @ np.where(w > 0, hi, lo)):
        face = np.where(np.sign(w) * np.sign(b - w @ x) > 0, hi, lo) * (w != 0)
        np.testing.assert_allclose(d, face, atol=1e-9)
        return
    assert abs(w @ (x + d) - b) < 1e-8
    p = {"Linf": np.inf, "L2": 2, "L1": 1}[norm]
    cons = [{"type": "eq", "fun": lambda z: w @ z - (b - w @ x)}]
    best = np.inf
    for start in (np.zeros(n), np.clip(d + rng.normal(0, 0.01, n), lo, hi)):
        res = scipy_optimize.minimize(lambda z: np.linalg.norm(z, p) ** (2 if p == 2 else 1), start, bounds=list(zip(lo, hi)),
                                      constraints=cons, method="SLSQP", options={"ftol": 1e-14, "maxiter": 2000})
        if res.success and abs(w @ res.x - (b - w @ x)) < 1e-7:
            best = min(best, np.linalg.norm(res.x, p))
    assert np.linalg.norm(d, p) <= best + 1e-6
