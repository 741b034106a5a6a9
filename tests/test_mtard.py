"""MTARD and RSLAD against hand-computed values: the KL terms, the loss-weight updates over several batches,
eta's decay with the learning rate, MTARD's Entropy-Based Balance of the temperatures (on by default), RSLAD's
loss and adversary."""

import math
import warnings
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustbench_ext.defenses.mtard import (MTARD, RSLAD, SoftLabelPGD, _Schedule, balance_step, distill_kl, mean_entropy,
                            temperature_step)
from robustbench_ext.attack.base import AttackContext
from robustbench_ext.attack.iterative import Segment
from robustbench_ext.training.contract import StepContext
from robustbench_ext.registry import ATTACKS, DEFENSES
from robustbench_ext.attack.threat import ThreatModel


def _kl_by_hand(student, teacher, tau=1.0):
    """mean over samples and classes of q_k (log q_k - log p_k), with plain Python floats."""
    total, count = 0.0, 0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        zs = [math.exp(v) for v in s_row]
        zt = [math.exp(v / tau) for v in t_row]
        p = [v / sum(zs) for v in zs]
        q = [v / sum(zt) for v in zt]
        total += sum(qk * (math.log(qk) - math.log(pk)) for qk, pk in zip(q, p))
        count += len(q)
    return total / count


def test_distill_kl_by_hand():
    s = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]])
    t = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 0.0]])
    assert distill_kl(s, t).item() == pytest.approx(_kl_by_hand(s, t), rel=1e-6)
    assert distill_kl(s, t, 2.0).item() == pytest.approx(_kl_by_hand(s, t, 2.0), rel=1e-6)
    # averaged over classes too: 1/K of torch's batchmean KL
    batchmean = F.kl_div(F.log_softmax(s, 1), F.softmax(t, 1), reduction="batchmean").item()
    assert distill_kl(s, t).item() == pytest.approx(batchmean / 3, rel=1e-6)
    assert distill_kl(t, t).item() == pytest.approx(0.0, abs=1e-7)
    s.requires_grad_(True)
    t.requires_grad_(True)
    distill_kl(s, t).backward()
    assert s.grad.abs().sum() > 0 and t.grad is None  # the teacher is a constant


def test_balance_step_by_hand():
    assert balance_step(0.5, 1.0, 1.0, 0.025) == pytest.approx(0.5)
    # r_nat = 2, r_adv = 1: the target is 2/3, and w_nat moves 2.5% of the way there.
    assert balance_step(0.5, 2.0, 1.0, 0.025) == pytest.approx(0.5 - 0.025 * (0.5 - 2 / 3))
    assert balance_step(0.9, 1.0, 3.0, 0.1) == pytest.approx(0.9 - 0.1 * (0.9 - 0.25))


class _Shift(nn.Module):
    """A fixed linear classifier on flattened inputs (teacher or student stand-in)."""

    def __init__(self, seed, classes=4):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(12, classes, generator=g))

    def forward(self, x):
        return x.flatten(1) @ self.w


class _Ctx(StepContext):
    """A step context whose adversary adds a fixed offset (so the losses are known in advance)."""

    def adversary(self, attack, model, x, y, threat):
        return (x + 0.05).clamp(0, 1)


def _trainer(schedule="constant", epochs=1, steps_per_epoch=3):
    return SimpleNamespace(device=torch.device("cpu"), steps_per_epoch=steps_per_epoch,
                           cfg=SimpleNamespace(schedule=schedule, epochs=epochs))


def _mtard(**kw):
    d = MTARD(attack="pgd:steps=1", nat_teacher="cifar10-smallcnn-linf-at", adv_teacher="cifar10-smallcnn-linf-at", **kw)
    d._teachers = (_Shift(1), _Shift(2))  # set by setup() in training; small stand-ins here
    return d


def test_mtard_weights_follow_the_relative_losses_over_batches():
    defense = _mtard(balance=False)  # fixed temperatures: the losses by hand at tau 1
    defense._schedule = None  # eta not decayed
    student = _Shift(3)
    g = torch.Generator().manual_seed(0)
    batches = [torch.rand((5, 3, 2, 2), generator=g) for _ in range(3)]
    y = torch.zeros(5, dtype=torch.long)
    w_nat, first = 0.5, None
    for i, x in enumerate(batches):
        x_adv = (x + 0.05).clamp(0, 1)
        with torch.no_grad():
            l_nat = _kl_by_hand(student(x), defense._teachers[0](x))
            l_adv = _kl_by_hand(student(x_adv), defense._teachers[1](x_adv))
        first = first or (l_nat, l_adv)
        w_nat = w_nat - 0.025 * (w_nat - (l_nat / first[0]) / (l_nat / first[0] + l_adv / first[1]))
        loss, stats = defense.loss(student, x, y, _Ctx(seed=i, epoch=0, step=i))
        assert defense.weights[0] == pytest.approx(w_nat, rel=1e-6)
        assert loss.item() == pytest.approx((1 - w_nat) * l_adv + w_nat * l_nat, rel=1e-5)
        assert stats["w_nat"].item() == pytest.approx(w_nat, rel=1e-6)
    assert defense.weights[0] != pytest.approx(0.5)  # the batches differ, so the weights moved
    state = defense.state_dict()
    other = _mtard(balance=False)
    other.load_state_dict(state)
    assert other.state_dict() == state and other.weights == defense.weights


def test_eta_decays_with_the_learning_rate():
    # piecewise: lr factor 1, then 0.1 from half-way, 0.01 from three quarters (4 epochs of 2 batches).
    defense = _mtard(balance=False)
    sched = _Schedule(_trainer("piecewise", epochs=4, steps_per_epoch=2))
    assert [sched.factor(e, 0) for e in range(4)] == [1.0, 1.0, 0.1, 0.01]
    defense._schedule = sched
    defense._initial = (1.0, 1.0)  # pretend the first batch is behind us: r = L / 1
    student = _Shift(3)
    x = torch.rand((4, 3, 2, 2), generator=torch.Generator().manual_seed(1))
    y = torch.zeros(4, dtype=torch.long)
    for epoch, factor in ((0, 1.0), (2, 0.1), (3, 0.01)):
        before = defense.weights[0]
        with torch.no_grad():
            l_nat = _kl_by_hand(student(x), defense._teachers[0](x))
            l_adv = _kl_by_hand(student((x + 0.05).clamp(0, 1)), defense._teachers[1]((x + 0.05).clamp(0, 1)))
        defense.loss(student, x, y, _Ctx(seed=0, epoch=epoch, step=0))
        assert defense.weights[0] == pytest.approx(balance_step(before, l_nat, l_adv, 0.025 * factor), rel=1e-6)
    # onecycle: eta warms up and decays with the learning rate
    one = _Schedule(_trainer("onecycle", epochs=10, steps_per_epoch=1))
    assert one.factor(0, 0) == 0.0 and one.factor(4, 0) == pytest.approx(1.0) and one.factor(7, 0) == pytest.approx(0.5)
    bare = _Schedule(SimpleNamespace(device=torch.device("cpu")))  # a stand-in without a config: no decay
    assert bare.factor(5, 3) == 1.0


def test_temperature_balance_by_hand():
    k = 4
    assert mean_entropy(torch.zeros(2, k), 1.0) == pytest.approx(math.log(k))
    # the adversarial teacher is the more uncertain one: it is sharpened, the natural one softened
    assert temperature_step(2.0, 2.0, 1.2, 0.6, 0.001) == (pytest.approx(1.999), pytest.approx(2.001))
    assert temperature_step(2.0, 2.0, 0.6, 1.2, 0.001) == (pytest.approx(2.001), pytest.approx(1.999))
    assert temperature_step(1.0, 10.0, 1.2, 0.6, 0.5) == (1.0, 10.0)  # kept in [1, 10]
    assert temperature_step(3.0, 3.0, 0.7, 0.7, 0.5) == (3.0, 3.0)  # balanced: no change
    assert temperature_step(3.0, 3.0, 0.0, 0.7, 0.5) == (3.0, 3.0)  # a one-hot teacher: no update
    defense = _mtard(balance=True, tau_nat=2.0, tau_adv=2.0)
    defense._schedule = None
    x = torch.rand((4, 3, 2, 2), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        h_nat = mean_entropy(defense._teachers[0](x), 2.0)
        h_adv = mean_entropy(defense._teachers[1]((x + 0.05).clamp(0, 1)), 2.0)
    _, stats = defense.loss(_Shift(3), x, torch.zeros(4, dtype=torch.long), _Ctx(seed=0, epoch=0, step=0))
    assert (defense._tau[1], defense._tau[0]) == temperature_step(2.0, 2.0, h_adv, h_nat, 0.001)
    assert stats["tau_adv"].item() == pytest.approx(defense._tau[1])


class _Fixed(nn.Module):
    """The same logits ``row`` for every input (a teacher or student whose outputs are known in advance)."""

    def __init__(self, row):
        super().__init__()
        self.row = torch.tensor(row)

    def forward(self, x):
        return self.row.expand(x.shape[0], -1).clone()


def test_entropy_balance_by_hand_on_a_fixed_batch():
    """Three batches of two points, two classes; the natural teacher always says logits (2, 0), the adversarial one
    (1, 0), the student (0, 0); temperatures start at 1, lr_tau = 0.5 (to see the steps), eta = 0.025, no decay.

    Entropies (nats), H(p) = -p ln p - (1 - p) ln(1 - p) with p = sigmoid(z1 / tau):
      batch 1, tau_nat = 1: p = sigmoid(2) = 0.8807971, H_nat = 0.8807971 * 0.1269280 + 0.1192029 * 2.1269280 = 0.3653339
                tau_adv = 1: p = sigmoid(1) = 0.7310586, H_adv = 0.7310586 * 0.3132617 + 0.2689414 * 1.3132617 = 0.5822031
      H_adv > H_nat: tau_adv <- clip(1 - 0.5, 1, 10) = 1 (already at the floor), tau_nat <- 1 + 0.5 = 1.5
      batch 2, tau_nat = 1.5: p = sigmoid(4/3) = 0.7913915, H_nat = 0.5121072 < H_adv = 0.5822031
      tau_adv stays at the floor 1, tau_nat <- 1.5 + 0.5 = 2.0
      batch 3, tau_nat = 2: the natural teacher's logits / 2 = (1, 0), the adversarial teacher's at tau 1: H_nat = H_adv,
      sign(0) = 0, nothing moves: (2.0, 1.0).
    Losses, student p = (1/2, 1/2): the mean over the K = 2 classes of q (ln q - ln 1/2) is (ln 2 - H(q)) / 2:
      L_adv = (0.6931472 - 0.5822031) / 2 = 0.0554720 every batch (tau_adv stays 1);
      L_nat = (0.6931472 - 0.3653339) / 2 = 0.1639067 (batch 1), (0.6931472 - 0.5121072) / 2 = 0.0905200 (batch 2),
              = L_adv = 0.0554720 (batch 3). The batch's losses use the temperatures it starts with.
    Loss weights, w_nat <- w_nat - 0.025 (w_nat - r_nat / (r_nat + r_adv)), r = L / L(batch 1), r_adv = 1 throughout:
      batch 1: r = (1, 1): w_nat = 0.5, loss = 0.5 * 0.1639067 + 0.5 * 0.0554720 = 0.1096893
      batch 2: r_nat = 0.0905200 / 0.1639067 = 0.5522654, target 0.5522654 / 1.5522654 = 0.3557803,
               w_nat = 0.5 - 0.025 * (0.5 - 0.3557803) = 0.4963945, loss = 0.5036055 * 0.0554720 + 0.4963945 * 0.0905200 = 0.0728696
      batch 3: r_nat = 0.0554720 / 0.1639067 = 0.3384367, target 0.2528597,
               w_nat = 0.4963945 - 0.025 * (0.4963945 - 0.2528597) = 0.4903061, loss = L_adv = 0.0554720 (both terms equal)
    """
    defense = MTARD(attack="pgd:steps=1", nat_teacher="cifar10-smallcnn-linf-at", adv_teacher="cifar10-smallcnn-linf-at",
                    temperature_lr=0.5)
    assert defense.balance  # on by default
    defense._teachers = (_Fixed([2.0, 0.0]), _Fixed([1.0, 0.0]))
    defense._schedule = None
    student = _Fixed([0.0, 0.0])
    x, y = torch.rand((2, 3, 2, 2), generator=torch.Generator().manual_seed(0)), torch.zeros(2, dtype=torch.long)
    # the closed forms of the hand-computed numbers (guards against a typo in the decimals below)
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    ent = lambda p: -p * math.log(p) - (1 - p) * math.log(1 - p)  # noqa: E731
    assert (ent(sig(2)), ent(sig(1)), ent(sig(4 / 3))) == pytest.approx((0.3653339, 0.5822031, 0.5121072), abs=1e-7)
    expected = [  # (tau_nat, tau_adv) after the batch, w_nat, loss
        ((1.5, 1.0), 0.5, 0.1096893),
        ((2.0, 1.0), 0.4963945, 0.0728696),
        ((2.0, 1.0), 0.4903061, 0.0554720),
    ]
    for step, (tau, w_nat, loss_value) in enumerate(expected):
        loss, stats = defense.loss(student, x, y, _Ctx(seed=step, epoch=0, step=step))
        assert defense._tau == pytest.approx(tau, abs=1e-12)
        assert (stats["tau_nat"].item(), stats["tau_adv"].item()) == pytest.approx(tau, abs=1e-6)
        assert defense.weights[0] == pytest.approx(w_nat, abs=1e-6)
        assert loss.item() == pytest.approx(loss_value, abs=1e-6)
    # with the authors' lr_tau = 0.001: one batch moves tau_nat to 1.001, tau_adv stays at its floor
    default = MTARD(attack="pgd:steps=1", nat_teacher="cifar10-smallcnn-linf-at", adv_teacher="cifar10-smallcnn-linf-at")
    default._teachers, default._schedule = defense._teachers, None
    default.loss(student, x, y, _Ctx(seed=0, epoch=0, step=0))
    assert default._tau == pytest.approx((1.001, 1.0), abs=1e-12)


def test_balance_can_be_turned_off_and_the_old_name_still_works():
    off = DEFENSES.create("mtard:balance=false,nat_teacher=cifar10-smallcnn-linf-at,adv_teacher=cifar10-smallcnn-linf-at")
    assert off.balance is False and off.params()["balance"] is False
    off._teachers, off._schedule = (_Fixed([2.0, 0.0]), _Fixed([1.0, 0.0])), None
    student = _Fixed([0.0, 0.0])
    x, y = torch.rand((2, 3, 2, 2)), torch.zeros(2, dtype=torch.long)
    for step in range(3):
        loss, stats = off.loss(student, x, y, _Ctx(seed=step, epoch=0, step=step))
        assert off._tau == (1.0, 1.0) and "tau_nat" not in stats
    # fixed temperatures: L_nat stays (ln 2 - 0.3653339) / 2 = 0.1639067, so r = (1, 1) and w_nat stays 1/2
    assert off.weights[0] == pytest.approx(0.5) and loss.item() == pytest.approx(0.5 * 0.1639067 + 0.5 * 0.0554720, abs=1e-6)
    with pytest.warns(DeprecationWarning, match="balance_temperature is deprecated"):
        old = MTARD(nat_teacher="cifar10-smallcnn-linf-at", balance_temperature=False)
    assert old.balance is False and old.balance_temperature is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert MTARD(nat_teacher="cifar10-smallcnn-linf-at").balance is True  # the default warns about nothing
    with pytest.raises(Exception, match="balance must be true or false"):
        MTARD(nat_teacher="cifar10-smallcnn-linf-at", balance="yes")


def test_rslad_loss_by_hand():
    defense = RSLAD(teacher="cifar10-smallcnn-linf-at")
    defense._teacher = _Shift(1)
    student = _Shift(3)
    x = torch.rand((5, 3, 2, 2), generator=torch.Generator().manual_seed(3))
    y = torch.zeros(5, dtype=torch.long)
    loss, stats = defense.loss(student, x, y, _Ctx(seed=0, epoch=0, step=0))
    x_adv = (x + 0.05).clamp(0, 1)
    with torch.no_grad():
        t = defense._teacher(x)  # the teacher labels the CLEAN input for both terms
        expected = 5 / 6 * _kl_by_hand(student(x_adv), t) + 1 / 6 * _kl_by_hand(student(x), t)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_rslad_adversary_raises_the_kl_to_the_teacher(small_cnn, cifar200):
    net = small_cnn.module
    x, y = cifar200.x[:16], cifar200.y[:16]
    teacher = _Shift(4, classes=10)  # any other classifier: its soft labels are what the student is pulled away from
    q = F.softmax(teacher(F.avg_pool2d(x, 16)).float(), 1)
    threat = ThreatModel.parse("Linf:8/255")
    attack = SoftLabelPGD(steps=5).targets(q)
    x_adv = attack(net, x, y, threat, seed=0).x_adv
    with torch.no_grad():
        def kl(z):
            return (torch.xlogy(q, q) - q * F.log_softmax(z, 1)).sum(1)
        assert (kl(net(x_adv)) >= kl(net(x)) - 1e-6).all() and kl(net(x_adv)).mean() > kl(net(x)).mean()
    with pytest.raises(Exception, match="soft labels"):
        SoftLabelPGD(steps=1)(net, x, y, threat)


def test_pgd_small_gaussian_start():
    pgd = ATTACKS.create("pgd", steps=1, start_std=0.001)
    x = torch.rand((3, 3, 8, 8), generator=torch.Generator().manual_seed(0))
    ctx = AttackContext(nn.Identity(), ThreatModel.parse("Linf:8/255"), torch.Generator().manual_seed(5))
    start = pgd.start(ctx, x, 8 / 255, Segment(1))
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(start, (x + 0.001 * noise).clamp(0, 1))
    assert ATTACKS.create("pgd", steps=1).start(ctx, x, 8 / 255, Segment(1)).sub(x).abs().max() > 0.01  # default: uniform
