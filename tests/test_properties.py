"""Property tests (hypothesis): attacks always land in ball ∩ box, success is the model's own verdict,
and union flags are the AND of the per-threat flags."""

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from conftest import tiny_model
from robustbench_ext.attack.base import MultiThreatAttack
from robustbench_ext.records.schema import SampleFlags
from robustbench_ext.registry import ATTACKS
from robustbench_ext.records.schema import union_flags
from robustbench_ext.attack.threat import GEOMETRY_NORMS as NORMS, ThreatModel  # balls: lp and L0

# attacks with a ball threat model (the transformation attacks of issue 31 have their own set tests)
SINGLE = [n for n in ATTACKS.names() if not issubclass(ATTACKS.get(n).factory, MultiThreatAttack)
          and set(ATTACKS.get(n).factory.norms) & set(NORMS)]
CHEAP = [n for n in SINGLE if not n.startswith("aa-") and n not in ("autoattack", "pma+aa")]  # pyautoattack: slow


@st.composite
def attack_case(draw, names, shapes=((1, 4, 4), (3, 4, 4), (3, 6, 5))):
    name = draw(st.sampled_from(names))
    norm = draw(st.sampled_from([n for n in NORMS if n in ATTACKS.get(name).factory.norms]))  # e.g. cw: L2 only
    shape = draw(st.sampled_from(shapes))
    d = int(np.prod(shape))
    scale = {"Linf": 1.0, "L2": float(np.sqrt(d)), "L1": float(d), "L0": float(d // shape[0]), "L0c": float(d)}[norm]
    eps = draw(st.sampled_from([0.01, 0.05, 0.2, 0.7])) * scale
    if norm in ("L0", "L0c"):
        eps = float(max(1, round(eps)))
    n = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**16))
    return name, norm, shape, eps, n, seed


def _check(name, norm, shape, eps, n, seed):
    model = tiny_model(seed % 7, in_shape=shape)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n, *shape), generator=g)
    x[x < 0.1] = 0.0  # pixels on the box faces
    x[x > 0.9] = 1.0
    y = torch.randint(0, 10, (n,), generator=g)
    threat = ThreatModel(norm, eps)
    attack = ATTACKS.create(name, **ATTACKS.get(name).factory.smoke_params)
    res = attack(model, x, y, threat, seed=seed)
    x_adv = res.x_adv
    assert x_adv.dtype == torch.float32 and x_adv.shape == x.shape
    assert bool((x_adv >= 0).all() and (x_adv <= 1).all())
    geom = threat.geometry
    assert bool((geom.norm_of(x_adv.double() - x.double()) <= geom.tolerance(eps, x[0].numel())).all())
    with torch.no_grad():
        assert torch.equal(res.success, model(x_adv).argmax(1) != y)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(attack_case(CHEAP))
def test_every_attack_stays_in_ball_and_box(case):
    _check(*case)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(attack_case([n for n in SINGLE if n not in CHEAP], shapes=((1, 8, 8), (3, 8, 8))))  # Square needs >= 8x8
def test_autoattack_components_stay_in_ball_and_box(case):
    _check(*case)


@settings(max_examples=200, deadline=None)
@given(arrays(bool, st.tuples(st.integers(0, 30), st.integers(0, 4))), st.data())
def test_union_is_the_and_of_the_flags(robust, data):
    n = robust.shape[0]
    clean = data.draw(arrays(bool, (n,)))
    u = union_flags(clean, robust)
    for i in range(n):
        assert u[i] == (clean[i] and all(robust[i]))
    flags = SampleFlags(np.arange(n), np.zeros(n, np.int64), clean, robust, np.zeros(robust.shape, np.int16),
                        tuple(f"t{k}" for k in range(robust.shape[1])))
    assert np.array_equal(flags.union, u)
    if robust.shape[1]:
        assert u.sum() <= min(int((clean & robust[:, k]).sum()) for k in range(robust.shape[1]))
