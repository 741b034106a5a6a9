"""Contract tests over every registered attack and every norm: a new attack is covered the moment it registers."""

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

from conftest import tiny_batch, tiny_model
from robustbench_ext.attack import Attack, AttackResult
from robustbench_ext.errors import AttackContractError, RbxError, UnsupportedNormError
from robustbench_ext.registry import ATTACKS
from robustbench_ext.threat import NORMS, ThreatModel

EPS = {"Linf": [4 / 255, 0.3], "L2": [0.5, 3.0], "L1": [5.0, 40.0]}
CASES = [(name, norm) for name in ATTACKS.names() for norm in NORMS]


def _attack(name):
    return ATTACKS.create(name)


@pytest.mark.parametrize("name, norm", CASES)
def test_contract(name, norm):
    attack = _attack(name)
    model = tiny_model()
    x = tiny_batch()
    y = model(x).argmax(1)  # every point starts correctly classified
    for eps in EPS[norm]:
        threat = ThreatModel(norm, eps)
        if not attack.supports(threat):
            with pytest.raises(UnsupportedNormError, match=norm):
                attack(model, x, y, threat, seed=0)
            continue
        res = attack(model, x, y, threat, seed=0)
        assert isinstance(res, AttackResult)
        assert res.x_adv.shape == x.shape and res.x_adv.dtype == torch.float32
        assert torch.isfinite(res.x_adv).all()
        assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
        geom = threat.geometry
        assert (geom.norm_of(res.x_adv.double() - x.double()) <= geom.tolerance(eps, x[0].numel())).all()
        with torch.no_grad():
            assert torch.equal(res.success, model(res.x_adv).argmax(1) != y)
        assert res.n_forward >= x.shape[0] and res.n_backward >= 0
        again = attack(model, x, y, threat, seed=0)
        assert torch.equal(again.x_adv, res.x_adv) and torch.equal(again.success, res.success)
    # On this weak random model, the large radius must break most points: the attack really searches.
    big = ThreatModel(norm, EPS[norm][1])
    if attack.supports(big):
        assert attack(model, x, y, big, seed=0).success.float().mean() >= 0.5


@pytest.mark.parametrize("name", ATTACKS.names())
def test_empty_batch_and_input_checks(name):
    attack = _attack(name)
    model = tiny_model()
    norm = attack.norms[0]
    threat = ThreatModel(norm, EPS[norm][0])
    empty = attack(model, torch.zeros((0, 3, 8, 8)), torch.zeros(0, dtype=torch.long), threat)
    assert empty.x_adv.shape == (0, 3, 8, 8) and empty.success.numel() == 0
    x = tiny_batch(4)
    with pytest.raises(RbxError, match=r"\[0, 1\]"):
        attack(model, x * 255, torch.zeros(4, dtype=torch.long), threat)
    with pytest.raises(RbxError):
        attack(model, x, torch.zeros(3, dtype=torch.long), threat)


@dataclass(eq=False)
class _Cheater(Attack):
    """Returns a point outside the ball: the base class must refuse it."""

    name: ClassVar[str] = "cheater"

    def run(self, ctx, x, y):
        return (x + 2 * ctx.eps).clamp(0, 1)


@dataclass(eq=False)
class _Liar(Attack):
    """Returns the clean input unchanged: success must come from the model, not the attack."""

    name: ClassVar[str] = "liar"

    def run(self, ctx, x, y):
        return x.clone()


def test_base_class_rejects_points_outside_the_ball():
    model, x = tiny_model(), tiny_batch()
    y = model(x).argmax(1)
    with pytest.raises(AttackContractError, match="outside the Linf"):
        _Cheater()(model, x, y, ThreatModel("Linf", 8 / 255))


def test_base_class_recomputes_success():
    model, x = tiny_model(), tiny_batch()
    y = model(x).argmax(1)
    y[:3] = (y[:3] + 1) % 10  # three points are misclassified from the start
    res = _Liar()(model, x, y, ThreatModel("L2", 0.5))
    assert res.success.tolist() == [True] * 3 + [False] * (len(y) - 3)
