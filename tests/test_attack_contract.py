"""Contract tests over every registered attack and every norm: a new attack is covered the moment it registers."""

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

from conftest import tiny_batch, tiny_model
from robustbench_ext.attack.base import Attack, AttackResult, MultiThreatAttack
from robustbench_ext.errors import AttackContractError, RbxError, UnsupportedNormError
from robustbench_ext.registry import ATTACKS
from robustbench_ext.attack.threat import NORMS, ThreatModel

EPS = {"Linf": [4 / 255, 0.3], "L2": [0.5, 3.0], "L1": [5.0, 40.0], "L0": [2.0, 24.0], "L0c": [3.0, 60.0],
       "spatial-rt": [5.0, 90.0], "stadv": [0.02, 1.0], "color": [0.02, 1.0], "recolor": [0.02, 0.5], "jpeg-linf": [0.01, 0.5]}


def assert_in_threat_model(res, x, threat):
    """The result's images are members of the threat model: in the ball (lp), or rendered from parameters inside
    the budget box (transformation threat models)."""
    if threat.is_lp:
        geom = threat.geometry
        assert res.params is None
        assert (geom.norm_of(res.x_adv.double() - x.double()) <= geom.tolerance(threat.eps, x[0].numel())).all()
    else:
        tf = threat.transform
        assert res.params is not None and (tf.budget_used(res.params, threat) <= 1 + 1e-5).all()
        assert torch.allclose(res.x_adv, tf.apply(x.float(), res.params), atol=1e-6)
MULTI = [n for n in ATTACKS.names() if issubclass(ATTACKS.get(n).factory, MultiThreatAttack)]
SINGLE = [n for n in ATTACKS.names() if n not in MULTI]
CASES = [(name, norm) for name in SINGLE for norm in NORMS]


def _attack(name):
    """Every registered attack, in its quick-but-real configuration."""
    return ATTACKS.create(name, **ATTACKS.get(name).factory.smoke_params)


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
        assert_in_threat_model(res, x, threat)
        with torch.no_grad():
            assert torch.equal(res.success, model(res.x_adv).argmax(1) != y)
        assert res.n_forward >= x.shape[0] and res.n_backward >= 0
        again = attack(model, x, y, threat, seed=0)
        assert torch.equal(again.x_adv, res.x_adv) and torch.equal(again.success, res.success)
        if not threat.is_lp:
            assert torch.equal(again.params, res.params)
    # On this weak random model, the large radius must break most points: the attack really searches.
    big = ThreatModel(norm, EPS[norm][1])
    if attack.supports(big):
        assert attack(model, x, y, big, seed=0).success.float().mean() >= 0.5


@pytest.mark.parametrize("name", SINGLE)
def test_empty_batch_and_input_checks(name):
    attack = _attack(name)
    model = tiny_model()
    norm = attack.norms[0]
    threat = ThreatModel(norm, EPS[norm][0])
    if not threat.is_lp:  # a transformation threat model also refuses inputs it cannot transform, in one line
        with pytest.raises(RbxError, match=norm):
            attack(model, torch.rand(2, 3, 5), torch.zeros(2, dtype=torch.long), threat)
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


@pytest.mark.parametrize("name", MULTI)
def test_multi_threat_contract(name):
    attack = _attack(name)
    model, x = tiny_model(), tiny_batch()
    y = model(x).argmax(1)
    threats = [ThreatModel("Linf", 0.3), ThreatModel("L2", 3.0), ThreatModel("L1", 40.0)]
    res = attack(model, x, y, threats, seed=0)
    assert len(res.x_adv) == 3 and res.success.shape == (len(y), 3) and res.loss.shape == (len(y), 3)
    for t, xa in zip(threats, res.x_adv):
        geom = t.geometry
        assert xa.shape == x.shape and xa.min() >= 0 and xa.max() <= 1
        assert (geom.norm_of(xa.double() - x.double()) <= geom.tolerance(t.eps, x[0].numel())).all()
    with torch.no_grad():
        pred = torch.stack([model(xa).argmax(1) != y for xa in res.x_adv], 1)
    assert torch.equal(res.success, pred)
    assert torch.equal(res.union_success, pred.any(1))
    # The worst threat model is a successful one whenever any succeeds.
    assert bool(res.success[torch.arange(len(y)), res.worst][res.union_success].all())
    assert res.x_worst().shape == x.shape
    again = attack(model, x, y, threats, seed=0)
    assert torch.equal(again.success, res.success) and all(torch.equal(a, b) for a, b in zip(again.x_adv, res.x_adv))
    assert res.union_success.float().mean() >= 0.5


@dataclass(eq=False)
class _LinfOnly(Attack):
    name: ClassVar[str] = "linf-only"
    norms: ClassVar[tuple[str, ...]] = ("Linf",)

    def run(self, ctx, x, y):
        return x.clone()


def test_unsupported_norm_is_refused_not_skipped(monkeypatch):
    from robustbench_ext.evaluation.suites import AttackSpec, ThreatSpec

    model, x = tiny_model(), tiny_batch()
    with pytest.raises(UnsupportedNormError, match="does not support L1; it supports: Linf"):
        _LinfOnly()(model, x, model(x).argmax(1), ThreatModel("L1", 5.0))
    monkeypatch.setitem(ATTACKS._entries, "linf-only", type(ATTACKS.get("pgd"))("linf-only", _LinfOnly))
    with pytest.raises(UnsupportedNormError, match="linf-only.*L2:0.5"):
        ThreatSpec(ThreatModel.parse("L2:0.5"), (AttackSpec.parse("linf-only"),)).build()


@dataclass(eq=False)
class _Mutator(Attack):
    """Evaluates one point, then changes that very tensor in place and returns it: the verification must
    not reuse the logits of the evaluated (old) values."""

    name: ClassVar[str] = "mutator"

    def run(self, ctx, x, y):
        _, _, grad = ctx.value_and_grad(x, lambda logits: torch.nn.functional.cross_entropy(logits, y, reduction="none"))
        xk = x.clone()
        ctx.logits(xk)  # the clean point: correctly classified
        xk.add_(ctx.eps * grad.sign()).clamp_(0, 1)  # now an FGSM point, inside the Linf ball
        return xk


def test_verification_reuses_only_identical_points():
    model = tiny_model()
    x = tiny_batch()
    y = model(x).argmax(1)
    threat = ThreatModel("Linf", 0.3)
    res = _Mutator()(model, x, y, threat, seed=0)
    with torch.no_grad():
        truth = model(res.x_adv).argmax(1) != y
    assert truth.any()  # the moved points do fool the model: a stale (clean) verdict would say they do not
    assert torch.equal(res.success, truth)


MIN_NORM = [(n, norm) for n in SINGLE for norm in NORMS
            if ATTACKS.get(n).factory.minimum_norm and norm in ATTACKS.get(n).factory.norms]


@pytest.mark.parametrize("name, norm", MIN_NORM)
def test_minimum_norm_contract(name, norm):
    """Minimal norms are the model's verdict, ignore eps, and agree with the fixed-eps candidates."""
    attack = _attack(name)
    model, x = tiny_model(), tiny_batch()
    y = model(x).argmax(1)
    y[:2] = (y[:2] + 1) % 10  # two points misclassified from the start: norm 0
    geom = ThreatModel(norm, 1.0).geometry
    results = {eps: attack(model, x, y, ThreatModel(norm, eps), seed=0) for eps in EPS[norm]}
    m = results[EPS[norm][0]].min_norm
    assert m.dtype == torch.float64 and m.shape == (len(y),) and (m >= 0).all()
    assert (m[:2] == 0).all() and (m[2:] > 0).all()
    for eps, res in results.items():
        assert torch.equal(res.min_norm, m)  # the search does not read eps
        inside = m <= eps
        assert res.success[inside].all()  # the closest point found is returned when it fits the ball
        d = geom.norm_of(res.x_adv.double() - x.double())
        assert torch.allclose(d[inside], m[inside])
        far = ~inside & torch.isfinite(m)
        assert (d[far] >= eps * (1 - 1e-4)).all()  # farther adversarial points are projected onto the sphere
    assert torch.isfinite(m).float().mean() >= 0.5  # on this weak model most points break at some radius
    non_min = next(n for n in SINGLE if not ATTACKS.get(n).factory.minimum_norm)
    assert _attack(non_min)(model, x, y, ThreatModel(norm, EPS[norm][0])).min_norm is None
    empty = attack(model, x[:0], y[:0], ThreatModel(norm, EPS[norm][0]))
    assert empty.min_norm is not None and empty.min_norm.numel() == 0


@dataclass(eq=False)
class _SilentMinNorm(Attack):
    """Claims to be a minimum-norm attack but reports no points: the base class must refuse it."""

    name: ClassVar[str] = "silent-min-norm"
    minimum_norm: ClassVar[bool] = True

    def run(self, ctx, x, y):
        return x.clone()


def test_minimum_norm_attack_must_report_its_points():
    model, x = tiny_model(), tiny_batch()
    with pytest.raises(AttackContractError, match="reported no points"):
        _SilentMinNorm()(model, x, model(x).argmax(1), ThreatModel("L2", 0.5))
