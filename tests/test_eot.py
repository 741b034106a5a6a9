"""EOT (expectation over transformation) in the shared loop: every gradient attack takes ``eot=K``.

On a deterministic model, K passes give K identical gradients, so ``eot=2`` must give the plain attack's
result with twice the backward passes; on a randomized model whose noise is seeded, the gradient and the
loss the loop tracks must be the mean over K draws, checked by hand.
"""

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_batch, tiny_model
from robustbench_ext.attack.base import AttackContext, MultiThreatAttack
from robustbench_ext.defenses.randomized import GaussianNoiseInput
from robustbench_ext.errors import RbxError
from robustbench_ext.registry import ATTACKS
from robustbench_ext.attack.threat import ThreatModel

EPS = {"Linf": 8 / 255, "L2": 0.5, "L1": 5.0}
ALL = ATTACKS.names()


def _smoke(name, **kw):
    return ATTACKS.create(name, **{**ATTACKS.get(name).factory.smoke_params, **kw})


def _supports_eot(name) -> bool:
    return _smoke(name).eot_note_for() is None


EOT_ATTACKS = [n for n in ALL if _supports_eot(n)]


def test_every_gradient_attack_takes_eot_and_black_box_ones_refuse_it():
    # Every rbx gradient attack, the ensembles and the multi-threat ones take eot; so do pyautoattack's APGDs.
    for name in ("pgd", "apgd-ce", "apgd-dlr", "apgd-t", "pma", "md", "fgsm", "fgsm-rs", "cw", "deepfool", "fmn",
                 "trades-pgd", "msd", "union-worst", "pma+", "aa-apgd-ce", "aa-apgd-t"):
        assert name in EOT_ATTACKS
    assert ATTACKS.create("apgd-ce:eot=10").params()["eot"] == 10
    assert "eot" not in ATTACKS.create("apgd-ce").params()  # records of plain runs read as before
    for name in ("aa-square", "aa-fab", "aa-fab-t"):
        with pytest.raises(RbxError, match="version=rand"):
            _smoke(name, eot=2)(tiny_model(), tiny_batch(2), torch.zeros(2, dtype=torch.long),
                                ThreatModel("Linf", EPS["Linf"]))
    for bad in (0, -1, 1.5, True):
        # (a non-integer is refused by the parameter type check when the attack is built, 0 and -1 by the range)
        with pytest.raises(RbxError, match="eot must be (a positive integer|an integer)"):
            ATTACKS.create("pgd", eot=bad).check_eot()


@pytest.mark.parametrize("name", EOT_ATTACKS)
def test_eot_on_a_deterministic_model_is_the_plain_attack(name):
    model = tiny_model()
    x = tiny_batch(8)
    y = model(x).argmax(1)
    plain, eot = _smoke(name), _smoke(name, eot=2)
    if isinstance(plain, MultiThreatAttack):
        threats = [ThreatModel(n, EPS[n]) for n in ("Linf", "L2")]
        a, b = plain(model, x, y, threats, seed=3), eot(model, x, y, threats, seed=3)
        for xa, xb in zip(a.x_adv, b.x_adv):
            torch.testing.assert_close(xa, xb, atol=1e-5, rtol=0)
        assert torch.equal(a.success, b.success)
        assert b.n_backward == 2 * a.n_backward
        return
    # the first threat model the attack supports: Lp, then L0 and the transformation threat models (issue 30, 31)
    candidates = [ThreatModel(n, EPS[n]) for n in ("Linf", "L2", "L1")] + [
        ThreatModel.parse(t) for t in ("L0:4", "stadv:0.05", "color:0.1", "recolor:0.06", "jpeg-linf:0.01", "spatial-rt:10,1")]
    threat = next(t for t in candidates if plain.supports(t))
    a, b = plain(model, x, y, threat, seed=3), eot(model, x, y, threat, seed=3)
    torch.testing.assert_close(a.x_adv, b.x_adv, atol=1e-5, rtol=0)
    assert torch.equal(a.success, b.success)
    if a.min_norm is not None:
        torch.testing.assert_close(a.min_norm, b.min_norm, atol=1e-4, rtol=0)
    if not name.startswith("aa-"):  # pyautoattack's APGD counts its EOT passes its own way (and adds a few checks)
        assert b.n_backward == 2 * a.n_backward, "each gradient must cost eot backward passes"
        assert len(a.loss_sum) == len(b.loss_sum)


def _seeded_noisy(seed=5, sigma=0.2):
    return GaussianNoiseInput(tiny_model(), sigma, seed=seed).eval()


def test_eot_gradient_and_loss_are_the_k_draw_means():
    x = tiny_batch(6)
    y = tiny_model()(x).argmax(1)
    k = 4
    noisy = _seeded_noisy()
    ctx = AttackContext(noisy, ThreatModel("Linf", EPS["Linf"]), torch.Generator().manual_seed(0), eot=k)
    ce = lambda z: F.cross_entropy(z, y, reduction="none")  # noqa: E731
    logits, loss, grad = ctx.value_and_grad(x, ce)
    assert ctx.n_backward == k * x.shape[0] and ctx.n_forward == k * x.shape[0]
    noisy.reseed(5)  # the same k draws, one at a time, by hand
    grads, losses, outs = [], [], []
    for _ in range(k):
        xg = x.clone().requires_grad_(True)
        z = noisy(xg)
        l_ = ce(z)
        grads.append(torch.autograd.grad(l_.sum(), xg)[0])
        losses.append(l_.detach())
        outs.append(z.detach())
    torch.testing.assert_close(grad, sum(grads) / k)
    torch.testing.assert_close(loss, sum(losses) / k)
    torch.testing.assert_close(logits, sum(outs) / k)
    assert not torch.allclose(grads[0], grads[1])  # the draws really differ: the mean is not one draw
    # value(): the same mean without gradients
    noisy.reseed(5)
    v_logits, v_loss = ctx.value(x, ce)
    torch.testing.assert_close(v_loss, sum(losses) / k)
    torch.testing.assert_close(v_logits, sum(outs) / k)


def test_the_loop_tracks_the_k_draw_mean_loss():
    x = tiny_batch(6)
    y = tiny_model()(x).argmax(1)
    k = 3
    noisy = _seeded_noisy(seed=9)
    res = ATTACKS.create("pgd", steps=2, random_start=False, eot=k)(noisy, x, y, ThreatModel("Linf", 1 / 255), seed=0)
    noisy.reseed(9)  # the attack's first k passes are the k draws at the clean point
    with torch.no_grad():
        hand = sum(F.cross_entropy(noisy(x), y, reduction="none") for _ in range(k)) / k
    assert res.loss_count[0] == x.shape[0]
    assert res.loss_sum[0] == pytest.approx(float(hand.sum()), rel=1e-5)
    assert res.n_backward == k * sum(res.loss_count)


def test_autoattack_rand_is_apgd_ce_and_dlr_with_20_eot_iterations():
    from robustbench_ext.attacks.autoattack import _build, version_components

    threat = ThreatModel("Linf", EPS["Linf"])
    assert version_components(threat, "rand") == ["apgd-ce", "apgd-dlr"]
    assert _build(torch.nn.Identity(), threat, "rand", None, 0, "cpu").apgd.eot_iter == 20
    stages = ATTACKS.create("autoattack:version=rand").parts(threat)
    assert [s.name for s in stages] == ["aa-apgd-ce", "aa-apgd-dlr"]
    # eot on the ensemble reaches its parts (and then replaces pyautoattack's 20)
    assert all(s.eot == 5 for s in ATTACKS.create("autoattack:version=rand,eot=5").parts(threat))
