"""Defenses and the training engine: losses against hand-computed values, RAMP's KL and gradient
projection, SOVR(M=0) == CE-AT, one step lowers the loss, exact resume, and every defense trains."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from robustbench_ext.defenses.baselines import EAT, MAX, PGDAT, trades_kl
from robustbench_ext.defenses.ltd import soft_cross_entropy, soft_labels
from robustbench_ext.defenses.ramp import RAMP, gradient_projection, ramp_kl
from robustbench_ext.defenses.sovr import SOVR, logit_margin, ovr_loss, switching_loss
from robustbench_ext.cli import cli
from robustbench_ext.training.contract import TRAINING_APGD, StepContext, build_attack
from robustbench_ext.models.loading import Temperature
from robustbench_ext.errors import RbxError
from robustbench_ext.models.loading import file_sha256, load_model, read_state_dict
from robustbench_ext.registry import ATTACKS, DEFENSES
from robustbench_ext.attack.threat import ThreatModel
from robustbench_ext.training.engine import TrainConfig, Trainer, augment, lr_factor


def sp(v):
    return math.log1p(math.exp(v))


# ---- losses by hand ------------------------------------------------------------------------------------
def test_ovr_loss_by_hand():
    z = torch.tensor([[2.0, -1.0, 0.5], [0.0, 0.0, 3.0]])
    y = torch.tensor([0, 2])
    expected = [sp(-2.0) + sp(-1.0) + sp(0.5), sp(0.0) + sp(0.0) + sp(-3.0)]
    assert torch.allclose(ovr_loss(z, y), torch.tensor(expected), atol=1e-6)
    assert torch.allclose(logit_margin(z, y), torch.tensor([1.5, 3.0]))


def test_switching_loss_by_hand():
    z = torch.tensor([[2.0, -1.0, 0.5], [0.0, 0.0, 3.0], [1.0, 1.5, 0.0], [0.2, 0.1, 0.0]])
    y = torch.tensor([0, 2, 0, 0])
    margins = logit_margin(z, y)  # 1.5, 3.0, -0.5, 0.1
    ce = F.cross_entropy(z, y, reduction="none")
    ovr = ovr_loss(z, y)
    loss0, imp0 = switching_loss(z, y, margins, 0.0, 2.0)
    assert torch.allclose(loss0, ce.mean()) and not imp0.any()
    loss_half, imp = switching_loss(z, y, margins, 0.5, 2.0)  # the two smallest margins: samples 2 and 3
    assert imp.tolist() == [False, False, True, True]
    assert torch.allclose(loss_half, (ce[0] + ce[1] + 2 * ovr[2] + 2 * ovr[3]) / 4)
    loss1, _ = switching_loss(z, y, margins, 1.0, 1.0)
    assert torch.allclose(loss1, ovr.mean())


def test_trades_kl_and_soft_labels_by_hand():
    clean = torch.tensor([[1.0, 0.0]])
    adv = torch.tensor([[0.0, 1.0]])
    p, q = F.softmax(clean, 1)[0], F.softmax(adv, 1)[0]
    expected = float((p * (p / q).log()).sum())  # KL(p(x) || p(x'))
    assert trades_kl(clean, adv).item() == pytest.approx(expected, rel=1e-6)
    qs = soft_labels(torch.tensor([[2.0, 1.0, 0.0]]), 0.5)
    assert torch.allclose(qs, F.softmax(torch.tensor([[4.0, 2.0, 0.0]]), 1))
    assert (qs * qs.log()).sum() > (F.softmax(torch.tensor([[2.0, 1.0, 0.0]]), 1).pow(1) * F.softmax(torch.tensor([[2.0, 1.0, 0.0]]), 1).log()).sum()
    logits = torch.tensor([[0.5, -0.5, 1.0]])
    expected = -(qs * F.log_softmax(logits, 1)).sum().item()
    assert soft_cross_entropy(logits, qs).item() == pytest.approx(expected, rel=1e-6)


def test_temperature_wrapper_divides_logits():
    net = torch.nn.Linear(3, 2)
    x = torch.randn(4, 3)
    assert torch.allclose(Temperature(net, 2.0)(x), net(x) / 2)


# ---- RAMP ---------------------------------------------------------------------------------------------
def test_ramp_kl_direction_and_mask():
    z_src = torch.tensor([[3.0, 0.0], [0.0, 3.0], [2.0, 1.0]], requires_grad=True)
    z_tgt = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0]], requires_grad=True)
    y = torch.tensor([0, 0, 0])  # sample 1's source adversarial is misclassified: masked out
    kl = ramp_kl(z_src, z_tgt, y)
    p, q = F.softmax(z_src, 1), F.softmax(z_tgt, 1)
    per = (p * (p.log() - q.log())).sum(1)  # KL(p_source || p_target): the L1 side is pulled to the Linf side
    assert kl.detach().item() == pytest.approx(float(((per[0] + per[2]) / 2).detach()), rel=1e-6)
    assert kl.detach().item() != pytest.approx(float(((q * (q.log() - p.log())).sum(1)[[0, 2]]).mean().detach()), rel=1e-3)
    kl.backward()
    assert z_src.grad.abs().sum() > 0 and z_tgt.grad.abs().sum() > 0  # neither side detached
    assert z_src.grad[1].abs().sum() == 0 and z_tgt.grad[1].abs().sum() == 0  # the masked sample gets nothing
    none = ramp_kl(torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]]), torch.tensor([0]))
    assert none.item() == 0.0


def test_gradient_projection_on_constructed_deltas():
    old = {"w": torch.zeros(2), "bn.running_mean": torch.zeros(2), "bn.num_batches_tracked": torch.tensor(3)}
    g = torch.tensor([1.0, 0.0])
    adv = {"w": g.clone(), "bn.running_mean": g.clone(), "bn.num_batches_tracked": torch.tensor(5)}
    agree = gradient_projection(old, adv, {"w": 2 * g, "bn.running_mean": 2 * g, "bn.num_batches_tracked": torch.tensor(4)}, 0.5)
    assert torch.allclose(agree["w"], 0.5 * g + 0.5 * 1.0 * 2 * g)  # cos = 1
    assert torch.allclose(agree["bn.running_mean"], agree["w"])  # BN statistics are projected too
    assert agree["bn.num_batches_tracked"].item() == 5  # integer buffers come from the adversarial model
    opposite = gradient_projection(old, adv, {"w": -g, "bn.running_mean": -g, "bn.num_batches_tracked": torch.tensor(4)}, 0.5)
    assert torch.allclose(opposite["w"], 0.5 * g)  # cos = -1: the natural update is dropped
    ortho = gradient_projection(old, adv, {"w": torch.tensor([0.0, 1.0]), "bn.running_mean": g,
                                           "bn.num_batches_tracked": torch.tensor(4)}, 0.5)
    assert torch.allclose(ortho["w"], 0.5 * g)  # cos = 0
    tilted = gradient_projection(old, adv, {"w": torch.tensor([1.0, 1.0]), "bn.running_mean": g,
                                            "bn.num_batches_tracked": torch.tensor(4)}, 0.5)
    c = 1 / math.sqrt(2)
    assert torch.allclose(tilted["w"], torch.tensor([0.5 + 0.5 * c, 0.5 * c]))


# ---- defenses on a real model -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def batch(cifar200):
    return cifar200.x[:32], cifar200.y[:32]


def _fresh_cnn(name=None):
    init = DEFENSES.get(name).factory.smoke_init if name else None
    return load_model(init or "cifar10-smallcnn-linf-at").module.train()


def test_sovr_with_m0_equals_ce_at(batch):
    x, y = batch
    model = _fresh_cnn()
    a = SOVR(M=0.0, attack="pgd:steps=3").loss(model, x, y, StepContext(seed=5, epoch=0, step=0))[0]
    b = PGDAT(attack="pgd:steps=3").loss(model, x, y, StepContext(seed=5, epoch=0, step=0))[0]
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", DEFENSES.names())
def test_one_training_step_lowers_the_loss(name, batch):
    x, y = batch
    model = _fresh_cnn(name)
    defense = DEFENSES.create(name, **DEFENSES.get(name).factory.smoke_params)

    class _T:  # what setup() needs from a trainer
        device = torch.device("cpu")

    defense.setup(_T())
    params = defense.trainable_parameters(model)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    # One plain step with the defense's own optimizer, at most at lr 0.01 (adaptive smoothing: AdamW at 1e-4;
    # SGD at 0.01 is too coarse for its clamped, batch-normalized gamma and can raise the loss).
    recipe = type(defense).recipe
    lr = min(0.01, recipe.lr)
    opt = torch.optim.AdamW(params, lr=lr) if recipe.optimizer == "adamw" else torch.optim.SGD(params, lr=lr)
    before, _ = defense.loss(model, x, y, StepContext(seed=1, epoch=0, step=0, generator=torch.Generator().manual_seed(1)))
    opt.zero_grad()
    before.backward()
    opt.step()
    after, _ = defense.loss(model, x, y, StepContext(seed=1, epoch=0, step=0, generator=torch.Generator().manual_seed(1)))
    assert after.item() < before.item()


def test_lr_schedules_and_augmentation():
    assert lr_factor("onecycle", 0.0) == 0 and lr_factor("onecycle", 0.4) == pytest.approx(1) and lr_factor("onecycle", 0.999) < 0.01
    assert [lr_factor("piecewise", t) for t in (0.1, 0.6, 0.8)] == [1.0, 0.1, 0.01]
    # Warm-up + cosine (adaptive smoothing): (1 - exp(-25 t)) (1 + cos(pi t)) / 2.
    assert lr_factor("cosine", 0.0) == 0.0
    assert lr_factor("cosine", 0.02) == pytest.approx((1 - math.exp(-0.5)) * 0.5 * (1 + math.cos(0.02 * math.pi)), rel=1e-12)
    assert lr_factor("cosine", 0.5) == pytest.approx((1 - math.exp(-12.5)) * 0.5, rel=1e-12)
    assert lr_factor("cosine", 0.999) < 1e-5
    x = torch.rand(8, 3, 32, 32)
    a = augment(x, torch.Generator().manual_seed(0))
    b = augment(x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)
    # Every output image is a crop (possibly flipped) of the reflect-padded input.
    xp = F.pad(x, (4, 4, 4, 4), mode="reflect")
    for i in range(8):
        found = any(torch.equal(a[i], img[:, dy:dy + 32, dx:dx + 32]) for img in (xp[i], xp[i].flip(2))
                    for dy in range(9) for dx in range(9))
        assert found


# ---- the engine ---------------------------------------------------------------------------------------
def _cfg(tmp_path, **kw):
    base = dict(defense="pgd-at:attack=pgd:steps=2", out=str(tmp_path / "run"), arch="smallcnn", n_train=96, dataset="cifar10-1k",
                epochs=2, batch_size=32, lr=0.05, seed=3, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("spec", [
    "ramp:attack=apgd-ce:steps=2,gp=true",  # per-epoch hooks (gradient projection) included
    # state carried from batch to batch and across epochs (MTARD's loss weights and first-batch losses)
    "mtard:attack=pgd:steps=2,nat_teacher=cifar10-smallcnn-linf-at,adv_teacher=cifar10-smallcnn-linf-at,balance=true",
], ids=["ramp", "mtard"])
def test_resume_reproduces_the_next_epoch_exactly(tmp_path, monkeypatch, spec):
    straight = Trainer(_cfg(tmp_path / "a", defense=spec))
    straight.run()

    crashing = Trainer(_cfg(tmp_path / "b", defense=spec))
    real = Trainer.run_epoch

    def crash_in_epoch_2(self, epoch, *a, **kw):
        if epoch == 1:
            raise KeyboardInterrupt("killed during epoch 2")
        return real(self, epoch, *a, **kw)

    monkeypatch.setattr(Trainer, "run_epoch", crash_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        crashing.run()
    monkeypatch.setattr(Trainer, "run_epoch", real)
    assert torch.load(tmp_path / "b" / "run" / "checkpoint.pt", weights_only=True)["epoch"] == 1
    resumed = Trainer(_cfg(tmp_path / "b", defense=spec))
    resumed.run()  # continues after epoch 1
    assert [r["epoch"] for r in resumed.log] == [1, 2]
    for (k, v1), v2 in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(v1, v2), k
    assert resumed.log[1]["loss"] == straight.log[1]["loss"]
    assert _same_state(resumed.defense.state_dict(), straight.defense.state_dict())


def _same_state(a, b) -> bool:
    """Deep equality of a defense's state (nested dicts/lists with tensors)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(_same_state, a, b))
    return a == b


@pytest.mark.parametrize("name", DEFENSES.names())
def test_every_defense_trains_and_reloads(name, tmp_path):
    params = ",".join(f"{k}={v}" for k, v in DEFENSES.get(name).factory.smoke_params.items())
    spec = f"{name}:{params}" if params else name
    init = DEFENSES.get(name).factory.smoke_init
    trainer = Trainer(_cfg(tmp_path, defense=spec, epochs=1, n_train=64, **({"init": init, "arch": None} if init else {})))
    result = trainer.run()
    assert result.model_path.is_file() and len(result.log) == 1
    row = result.log[0]
    assert {"loss", "clean_acc", "seconds", "lr_end"} <= set(row) and np.isfinite(row["loss"])
    assert name == "standard" or "adv_acc" in row
    lines = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["epoch"] == 1
    if init and init.startswith("mix:"):  # a mixer's trained part is its mixing network
        reloaded = load_model(init.replace("alpha=net", f"mixnet={tmp_path / 'run'}"))
    else:
        reloaded = load_model(f"trained:{tmp_path / 'run'}")
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        expected = trainer.loaded_model().module(x)
        assert torch.allclose(reloaded.module(x), expected, atol=2e-2, rtol=2e-2)  # fp16 weights
    if name == "ltd":
        assert isinstance(reloaded.module, Temperature)


def test_train_cli_end_to_end_and_errors(tmp_path):
    runner = CliRunner()
    bad = runner.invoke(cli, ["train", "--defense", "rampp", "--arch", "smallcnn"])
    assert bad.exit_code == 2 and bad.stderr.startswith("rbx: error: unknown defense 'rampp'; known:")
    bad = runner.invoke(cli, ["train", "--defense", "ramp:lbdd=2", "--arch", "smallcnn"])
    assert bad.exit_code == 2 and "parameters:" in bad.stderr
    bad = runner.invoke(cli, ["train", "--defense", "pgd-at"])
    assert bad.exit_code == 2 and "--arch" in bad.stderr
    res = runner.invoke(cli, ["train", "--defense", "sovr:attack=pgd:steps=2", "--arch", "smallcnn", "--n-train", "64",
                              "--dataset", "cifar10-1k", "--eval-dataset", "cifar10-1k",
                              "--batch-size", "32", "--epochs", "1", "--eval-n", "20", "--results-dir", str(tmp_path),
                              "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "record:" in res.stdout and list((tmp_path / "records").glob("*.json"))
    assert (tmp_path / "train").is_dir()


# ---- recipes: a defense chooses its optimizer and schedule ----------------------------------------------
def test_recipe_defaults_and_overrides(tmp_path):
    sgd = Trainer(_cfg(tmp_path / "a", epochs=1, lr=None))  # pgd-at: the engine's SGD recipe
    assert isinstance(sgd.opt, torch.optim.SGD) and sgd.cfg.optimizer == "sgd" and sgd.cfg.lr == 0.1
    assert sgd.cfg.schedule == "onecycle" and [g["weight_decay"] for g in sgd.opt.param_groups] == [5e-4, 0.0]
    # The no-decay group holds exactly the biases and normalization parameters.
    assert {id(p) for p in sgd.opt.param_groups[1]["params"]} == {id(p) for p in sgd.model.parameters() if p.ndim <= 1}
    adamw = Trainer(_cfg(tmp_path / "b", epochs=1, optimizer="adamw", lr=0.01, weight_decay=0.0, schedule="constant"))
    assert isinstance(adamw.opt, torch.optim.AdamW) and [g["lr"] for g in adamw.opt.param_groups] == [0.01, 0.01]
    with pytest.raises(RbxError, match="unknown --optimizer 'adam'; known: sgd, adamw"):
        Trainer(_cfg(tmp_path / "c", optimizer="adam"))


def test_checkpoint_without_the_optimizer_field_still_resumes(tmp_path):
    Trainer(_cfg(tmp_path, epochs=1)).run()
    path = tmp_path / "run" / "checkpoint.pt"
    ck = torch.load(path, weights_only=True)
    cfg = json.loads(ck["config"])
    del cfg["optimizer"]  # written before recipes existed: it was SGD
    ck["config"] = json.dumps(cfg)
    torch.save(ck, path)
    resumed = Trainer(_cfg(tmp_path, epochs=2))
    resumed.run()
    assert [r["epoch"] for r in resumed.log] == [1, 2]


# ---- RAMP's gradient projection ------------------------------------------------------------------------
def test_ramp_natural_training_follows_the_schedule_with_one_optimizer(tmp_path, monkeypatch):
    seen = []
    real = Trainer.run_epoch

    def spy(self, epoch, model, opt, sched, loss_fn, desc):
        hook = opt.register_step_pre_hook(lambda o, a, k: seen.append(("natural" in desc, epoch, id(o), o.param_groups[0]["lr"])))
        try:
            return real(self, epoch, model, opt, sched, loss_fn, desc)
        finally:
            hook.remove()

    monkeypatch.setattr(Trainer, "run_epoch", spy)
    trainer = Trainer(_cfg(tmp_path, defense="ramp:attack=apgd-ce:steps=1,gp=true", n_train=64, epochs=2))
    trainer.run()
    total = 4  # 2 epochs x 2 batches
    expected = [0.05 * lr_factor("onecycle", s / total) for s in range(total)]
    natural = [lr for nat, _, _, lr in seen if nat]
    adversarial = [lr for nat, _, _, lr in seen if not nat]
    assert natural == pytest.approx(expected, abs=1e-12) and adversarial == pytest.approx(expected, abs=1e-12)
    assert max(natural[:2]) > 0.03  # epoch 0's natural training runs at the schedule's rates, not at ~0
    assert len({oid for nat, _, oid, _ in seen if nat}) == 1  # one natural optimizer for the whole run
    assert {oid for nat, _, oid, _ in seen if nat} != {id(trainer.opt)}
    defense = trainer.defense
    assert [g["weight_decay"] for g in defense._nat_opt.param_groups] == [trainer.cfg.weight_decay, 0.0]
    # The natural update of epoch 0 is real (it was ~1e-8 times a gradient before) and logged.
    assert trainer.log[0]["gp_nat_update"] > 1e-3 and trainer.log[1]["gp_nat_update"] > 1e-3
    ck = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ck["defense"]["nat_opt"]["state"] and ck["defense"]["nat_sched"]["last_epoch"] == total
    # A checkpoint without that state (an older rbx) cannot resume a GP run faithfully: a clear error.
    del ck["defense"]
    ck["epoch"] = 1
    torch.save(ck, tmp_path / "run" / "checkpoint.pt")
    with pytest.raises(RbxError, match="no-resume"):
        Trainer(_cfg(tmp_path, defense="ramp:attack=apgd-ce:steps=1,gp=true", n_train=64, epochs=2)).run()


# ---- the multi-norm training adversary and MAX's norms -------------------------------------------------
def test_training_adversary_is_the_authors_training_apgd():
    for cls in (EAT, MAX, RAMP):
        assert cls().attack == TRAINING_APGD
    attack = build_attack(TRAINING_APGD, "test")
    assert (attack.steps, attack.random_start, attack.init_sparsity, attack.early_stop) == (10, False, 0.05, False)
    evaluation = ATTACKS.create("apgd-ce")  # evaluation defaults unchanged
    assert (evaluation.random_start, evaluation.init_sparsity, evaluation.early_stop) == (True, 0.2, True)
    with pytest.raises(RbxError, match="init_sparsity"):
        ATTACKS.create("apgd-ce", init_sparsity=0.0)
    assert MAX().threats == ["Linf:8/255", "L2:0.5", "L1:12"] and EAT().threats == ["Linf:8/255", "L1:12"]


def test_l1_training_apgd_first_step_moves_init_sparsity_coordinates(batch):
    x, y = batch
    x, y = x[:8], y[:8]
    net = _fresh_cnn().eval()
    n_fts = x[0].numel()
    l0 = {}
    for frac in (0.05, 0.2):
        attack = ATTACKS.create("apgd-ce", steps=1, random_start=False, init_sparsity=frac, early_stop=False)
        res = attack(net, x, y, ThreatModel.parse("L1:12"), seed=0)
        l0[frac] = (res.x_adv - x).flatten(1).ne(0).sum(1)
    # From the clean point, the one step moves the top ceil(frac * d) gradient coordinates (fewer at box faces).
    assert int(l0[0.05].max()) <= math.ceil(0.05 * n_fts) and int(l0[0.05].max()) > 0
    assert int(l0[0.2].max()) > math.ceil(0.05 * n_fts)


def test_train_eval_hook_measures_the_saved_weights_and_records_max_norms(tmp_path, monkeypatch):
    import robustbench_ext.evaluation.api as runner

    suite = tmp_path / "tiny.toml"
    suite.write_text('name = "tiny"\ndescription = "test"\ndataset = "cifar10-1k"\n'
                     '[[threats]]\nthreat = "Linf:8/255"\nattacks = [{ name = "pgd", steps = 1 }]\n')
    evaluated = []
    real = runner.evaluate

    def spy(model, *a, **kw):
        evaluated.append(model)
        return real(model, *a, **kw)

    monkeypatch.setattr(runner, "evaluate", spy)
    res = CliRunner().invoke(cli, ["train", "--defense", "max:attack=apgd-ce:steps=1", "--arch", "smallcnn", "--n-train", "32",
                                   "--dataset", "cifar10-1k", "--batch-size", "32", "--epochs", "1", "--eval-n", "8",
                                   "--eval-suite", str(suite), "--results-dir", str(tmp_path), "--out", str(tmp_path / "run"),
                                   "--no-progress"])
    assert res.exit_code == 0, res.output
    weights = tmp_path / "run" / "model.pt"
    (model,) = evaluated
    assert model.sha256 == file_sha256(weights) and model.source == str(weights)
    saved = read_state_dict(weights)
    for k, v in model.module.state_dict().items():
        assert torch.equal(v, saved[k]), k  # the fp16 weights on disk, not the float32 ones in memory
    (record,) = (tmp_path / "records").glob("*.json")
    block = json.loads(record.read_text())["model"]
    assert block["sha256"] == file_sha256(weights)
    assert block["trained"]["defense"] == "max"
    assert block["trained"]["defense_params"]["threats"] == ["Linf:8/255", "L2:0.5", "L1:12"]


@pytest.mark.parametrize("name", DEFENSES.names())
def test_declared_training_threats_name_real_threat_parameters(name):
    """``Defense.trains_on`` (what a trained model's record says it has seen; MultiRobustBench's SC) names only
    parameters the defense has, and each holds threat specs that parse at the defaults."""
    import dataclasses

    from robustbench_ext.attack.threat import ThreatModel
    cls = DEFENSES.get(name).factory
    declared = cls.trains_on
    if declared is None:
        pytest.skip(f"{name} declares no training threat models (its records say: unknown)")
    defense = DEFENSES.create(name, **cls.smoke_params)
    fields = {f.name for f in dataclasses.fields(defense)} if dataclasses.is_dataclass(defense) else set()
    for param in declared:
        assert param in fields, f"{name}.trains_on names {param!r}, which is not one of its parameters"
        value = getattr(defense, param)
        for spec in ([value] if isinstance(value, str) else list(value)):
            ThreatModel.parse(spec if isinstance(spec, str) else spec.label)
