"""PGD is real: on the reference small CNN it breaks many points, not all, and more budget helps."""

import pytest
import torch

from robustbench_ext.errors import RbxError
from robustbench_ext.registry import ATTACKS
from robustbench_ext.runtime import frozen
from robustbench_ext.attack.threat import ThreatModel


def _robust_acc(model, data, threat, n=100, **params):
    net = model.module
    x, y = data.x[:n], data.y[:n]
    with frozen(net), torch.no_grad():
        correct = net(x).argmax(1) == y
    res = ATTACKS.create("pgd", **params)(net, x[correct], y[correct], ThreatModel.parse(threat), seed=0)
    return correct.float().mean().item(), (~res.success).sum().item() / n


def test_pgd_linf_is_real(small_cnn, cifar200):
    clean, robust = _robust_acc(small_cnn, cifar200, "Linf:8/255", steps=20)
    assert 0.30 <= clean <= 0.60  # README: 48.8% on 10k (JPEG copy)
    assert robust <= clean - 0.10  # far below clean
    assert robust > 0.02  # but an adversarially trained model keeps some points


@pytest.mark.parametrize("threat", ["L2:0.5", "L1:12"])
def test_pgd_other_norms_are_real(small_cnn, cifar200, threat):
    clean, robust = _robust_acc(small_cnn, cifar200, threat, steps=20)
    assert 0.02 < robust <= clean - 0.05


def test_robustness_falls_with_eps(small_cnn, cifar200):
    accs = [_robust_acc(small_cnn, cifar200, f"Linf:{k}/255", steps=10)[1] for k in (1, 4, 8, 16)]
    assert accs == sorted(accs, reverse=True) and accs[0] > accs[-1]


def test_margin_loss_and_restarts_run(small_cnn, cifar200):
    _, one = _robust_acc(small_cnn, cifar200, "Linf:8/255", steps=10, loss="margin")
    _, three = _robust_acc(small_cnn, cifar200, "Linf:8/255", steps=10, loss="margin", restarts=3)
    assert three <= one  # restarts only attack points the first run missed


def test_pgd_parameter_validation():
    with pytest.raises(RbxError, match="steps"):
        ATTACKS.create("pgd", steps=0)
    with pytest.raises(RbxError, match="unknown loss"):
        ATTACKS.create("pgd", loss="hinge")
    with pytest.raises(RbxError, match="l1_sparsity"):
        ATTACKS.create("pgd", l1_sparsity=0)
