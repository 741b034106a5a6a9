"""Science tests for the attacks: real properties on the reference small CNN (200 CIFAR-10 images)."""

import numpy as np
import pytest
import torch

from robustbench_ext._compat import import_pyautoattack
from robustbench_ext.registry import ATTACKS
from robustbench_ext.runtime import frozen
from robustbench_ext import evaluate
from robustbench_ext.evaluation.suites import AttackSpec, ThreatSpec
from robustbench_ext.attack.threat import ThreatModel

N = 200


@pytest.fixture(scope="module")
def correct_points(small_cnn, cifar200):
    net = small_cnn.module
    with frozen(net), torch.no_grad():
        ok = net(cifar200.x).argmax(1) == cifar200.y
    return net, cifar200.x[ok], cifar200.y[ok]


def robust_acc(net, x, y, spec, threat, seed=0):
    """Robust accuracy over all N images (misclassified clean points count as not robust)."""
    attack = AttackSpec.parse(spec).build()
    with frozen(net):
        res = attack(net, x, y, ThreatModel.parse(threat), seed=seed)
    return (~res.success).sum().item() / N, res


@pytest.mark.slow
def test_pma_not_weaker_than_pgd_at_equal_steps(correct_points):
    net, x, y = correct_points
    # PMA with 50 steps per round runs 100 steps in all: the same as PGD-100.
    pma, res = robust_acc(net, x, y, "pma:steps=50", "Linf:8/255")
    pgd, _ = robust_acc(net, x, y, "pgd:steps=100", "Linf:8/255")
    assert pma <= pgd
    assert res.n_backward <= 2 * 50 * len(y)  # early stop: never more than the budget


@pytest.mark.slow
@pytest.mark.parametrize("threat", ["L2:0.5", "L1:12"])
def test_pma_through_the_geometry_beats_pgd(correct_points, threat):
    net, x, y = correct_points
    pma, _ = robust_acc(net, x, y, "pma:steps=50", threat)
    pgd, _ = robust_acc(net, x, y, "pgd:steps=100", threat)
    assert pma <= pgd


@pytest.mark.slow
def test_apgd_ce_matches_pyautoattack(correct_points):
    net, x, y = correct_points
    ours, _ = robust_acc(net, x, y, "apgd-ce", "Linf:8/255")
    apgd = import_pyautoattack().autopgd_base.APGDAttack
    ref = apgd(net, n_iter=100, norm="Linf", eps=8 / 255, n_restarts=1, seed=0, device="cpu")
    with frozen(net):
        x_adv = ref.perturb(x.clone(), y.clone())
        with torch.no_grad():
            theirs = (net(x_adv).argmax(1) == y).sum().item() / N
    assert abs(ours - theirs) <= 0.015, (ours, theirs)


@pytest.mark.slow
def test_pma_plus_not_weaker_than_apgd_ce(correct_points):
    net, x, y = correct_points
    plus, _ = robust_acc(net, x, y, "pma+:n_targets=3", "Linf:8/255")
    apgd, _ = robust_acc(net, x, y, "apgd-ce", "Linf:8/255")
    assert plus <= apgd


@pytest.mark.slow
def test_apgd_l1_large_eps_and_targets_run_through_the_geometry(correct_points):
    net, x, y = correct_points
    plain, _ = robust_acc(net, x, y, "apgd-ce:steps=50", "L1:12")
    pgd, _ = robust_acc(net, x, y, "pgd:steps=50", "L1:12")
    assert plain <= pgd  # sparse steps with adaptive sparsity beat fixed-sparsity PGD
    targeted, res = robust_acc(net, x, y, "apgd-t:steps=30,n_targets=2,large_eps=true", "L1:12")
    assert targeted < 0.3 and res.n_forward > 0


def test_ensemble_cascade_and_attribution(small_cnn, cifar200):
    data = type(cifar200)(cifar200.name, cifar200.x[:60], cifar200.y[:60], cifar200.source, cifar200.location)
    spec = ThreatSpec(ThreatModel.parse("Linf:8/255"), (AttackSpec.parse("pma+:steps=10,n_targets=2"),))
    ev = evaluate(small_cnn, data, [spec], progress=False)
    stages = ev.record.threats[0].attacks
    assert [s.attack for s in stages] == ["pma+/pma", "pma+/apgd-t"]
    assert stages[1].n_attacked == stages[0].robust_after
    assert set(np.unique(ev.flags.broken_by[:, 0])) <= {-2, -1, 0, 1}


def test_union_stage(small_cnn, cifar200):
    data = type(cifar200)(cifar200.name, cifar200.x[:60], cifar200.y[:60], cifar200.source, cifar200.location)
    specs = [ThreatSpec(ThreatModel.parse(t), (AttackSpec.parse("pgd:steps=1,random_start=false"),))
             for t in ("Linf:8/255", "L2:0.5")]
    ev = evaluate(small_cnn, data, specs, union_attacks=[AttackSpec.parse("union-worst:attack=apgd-ce:steps=20")],
                  progress=False)
    rec, fl = ev.record, ev.flags
    (stage,) = rec.union_attacks
    assert stage.attack == "union-worst" and stage.n_broken > 0  # a weak cascade leaves work for the union stage
    assert stage.n_attacked == stage.robust_after + stage.n_broken
    assert (fl.broken_by == 1).any()  # index after each threat's one-attack cascade
    assert np.array_equal(fl.union, fl.clean_correct & fl.robust.all(1))
    assert rec.union.count == stage.robust_after


def test_autoattack_adapter_takes_non_contiguous_input(small_cnn, cifar200):
    net = small_cnn.module
    x = cifar200.x[:8].permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # same values, not contiguous
    assert not x.is_contiguous()
    y = cifar200.y[:8]
    res = ATTACKS.create("aa-apgd-ce", budget=0.1)(net, x, y, ThreatModel.parse("L2:0.5"), seed=0)
    assert res.x_adv.shape == x.shape and res.n_forward > 0


def test_unsupported_norm_is_a_clear_error():
    from robustbench_ext.errors import RbxError
    spec = ThreatSpec(ThreatModel.parse("L2:0.5"), (AttackSpec.parse("msd"),))
    with pytest.raises(RbxError, match="several threat models"):
        spec.build()
