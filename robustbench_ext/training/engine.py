"""The adversarial-training engine behind ``rbx train``: one loop for every defense and baseline.

Per epoch: a seeded shuffle, augmentation on the device (random crop with 4-pixel reflect padding and a
horizontal flip, drawn from the epoch's generator), the defense's loss per batch (its attacks seeded by
the batch's position), an optimizer step (SGD with momentum or AdamW; no weight decay on biases and norm
layers) under a one-cycle, piecewise, warm-up + cosine or constant schedule stepped per batch, bf16
autocast on CUDA. The optimizer, peak learning rate, weight decay and schedule are the defense's
:attr:`~robustbench_ext.training.contract.Defense.recipe` unless the configuration sets them. After each epoch: a
log line (loss, clean and adversarial training accuracy, lr, seconds, the defense's statistics) and an
atomic checkpoint (weights, optimizer, schedule, the defense's own state, log); ``resume`` continues from
it, and because every random draw is derived from (seed, epoch, batch), the resumed epochs equal an
uninterrupted run's on CPU.

At the end the model (fp16 state dict + ``model.json``: architecture and inference wrapper) is saved;
:meth:`Trainer.saved_model` loads it back through its model source, so an evaluation (``rbx train``'s
hook) measures exactly the saved weights whose sha256 it records.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .contract import Defense, Recipe, StepContext
from ..progress import resumable
from ..runtime import autograd_on, check_seed, resolve_device, stream_seed
from ..errors import RbxError
from ..attack.losses import accuracy
from ..models.loading import LoadedModel, build_architecture, file_sha256, load_model
from ..progress import PointBar, RunClock, log as progress_log, show_bars
from ..paths import atomic_write_bytes, atomic_write_text
from ..registry import DATASETS, DEFENSES

log = logging.getLogger(__name__)

SCHEDULES = ("onecycle", "piecewise", "cosine", "constant")
#: Warm-up time constant of the ``cosine`` schedule, as a fraction of the run.
COSINE_WARMUP = 1 / 25
#: Recipe fields a configuration may leave as None (then the defense's recipe decides).
RECIPE_FIELDS = ("optimizer", "lr", "momentum", "nesterov", "weight_decay", "schedule")
#: What a checkpoint written before a field existed was made with (so it still resumes).
LEGACY_CONFIG = {"optimizer": "sgd"}


@dataclass
class TrainConfig:
    """Everything that defines a training run (stored in its checkpoint and ``config.json``)."""

    defense: str
    out: str
    arch: str | None = None
    init: str | None = None
    dataset: str = "cifar10-train"
    n_train: int | None = None
    epochs: int = 1
    batch_size: int = 128
    # None: the defense's recipe (Defense.recipe) decides; see RECIPE_FIELDS.
    optimizer: str | None = None
    lr: float | None = None
    momentum: float | None = None
    nesterov: bool | None = None
    weight_decay: float | None = None
    schedule: str | None = None
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    augment: bool = True
    name: str | None = None

    def validate(self) -> None:
        if self.arch is None and self.init is None:
            raise RbxError("rbx train needs --arch (from scratch) or --init MODEL (fine-tuning)")
        check_seed(self.seed, "--seed")
        for k in ("epochs", "batch_size"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise RbxError(f"--{k.replace('_', '-')} must be a positive integer, got {v!r}")
        if self.n_train is not None and (not isinstance(self.n_train, int) or self.n_train < 1):
            raise RbxError(f"--n-train must be a positive integer, got {self.n_train!r}")
        if ((self.lr is not None and not self.lr > 0) or (self.weight_decay is not None and self.weight_decay < 0)
                or (self.momentum is not None and not 0 <= self.momentum < 1)):
            raise RbxError("--lr must be > 0, --weight-decay >= 0 and --momentum in [0, 1)")
        if self.schedule is not None and self.schedule not in SCHEDULES:
            raise RbxError(f"unknown --schedule '{self.schedule}'; known: {', '.join(SCHEDULES)}")
        if self.optimizer is not None and self.optimizer not in OPTIMIZERS:
            raise RbxError(f"unknown --optimizer '{self.optimizer}'; known: {', '.join(OPTIMIZERS)}")

    def resolved(self, recipe: Recipe) -> "TrainConfig":
        """A copy with every recipe field left as None taken from ``recipe`` (the defense's)."""
        return dataclasses.replace(self, **{k: getattr(recipe, k) for k in RECIPE_FIELDS if getattr(self, k) is None})


def lr_factor(schedule: str, t: float) -> float:
    """Learning-rate multiplier at training progress ``t`` in [0, 1).

    ``onecycle``: linear warm-up to the peak at 40%, then linear decay to 0 (fast-AT style);
    ``piecewise``: 1, then 0.1 from 50%, 0.01 from 75%; ``cosine``: cosine decay to 0, (1 + cos(pi t)) / 2,
    damped by an exponential warm-up 1 - exp(-t / 0.04) (adaptive smoothing's recipe: ``CosineAnnealingLR``
    over the run with pytorch_warmup's ``ExponentialWarmup``, warm-up period 1/25 of the steps); ``constant``: 1.
    """
    if schedule == "onecycle":
        return t / 0.4 if t < 0.4 else max(0.0, (1 - t) / 0.6)
    if schedule == "piecewise":
        return 1.0 if t < 0.5 else 0.1 if t < 0.75 else 0.01
    if schedule == "cosine":
        return (1.0 - math.exp(-t / COSINE_WARMUP)) * 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))
    return 1.0


def augment(x: Tensor, generator: torch.Generator, pad: int = 4) -> Tensor:
    """Random crop with reflect padding and random horizontal flip, batched on ``x``'s device."""
    n, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=generator.device).to(x.device)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=generator.device).to(x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device)).reshape(n, 1, h, 1).expand(n, c, h, w + 2 * pad)
    x = xp.gather(2, rows)
    cols = (ox[:, None] + torch.arange(w, device=x.device)).reshape(n, 1, 1, w).expand(n, c, h, w)
    x = x.gather(3, cols)
    flip = (torch.rand(n, generator=generator, device=generator.device) < 0.5).to(x.device)
    return torch.where(flip.reshape(n, 1, 1, 1), x.flip(3), x)


#: Optimizers by name: (parameter groups, resolved config) -> optimizer.
OPTIMIZERS: dict[str, Callable[[list[dict], TrainConfig], torch.optim.Optimizer]] = {
    "sgd": lambda groups, cfg: torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum,
                                               nesterov=bool(cfg.nesterov) and cfg.momentum > 0),
    "adamw": lambda groups, cfg: torch.optim.AdamW(groups, lr=cfg.lr),
}


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """``cfg.optimizer`` over ``model``'s trainable parameters: weight decay on weights, none on biases and norm layers.

    ``cfg`` must be resolved (:meth:`TrainConfig.resolved`).
    """
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return OPTIMIZERS[cfg.optimizer](groups, cfg)


def make_schedule(opt: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """``cfg.schedule`` over ``total_steps`` optimizer steps (stepped once per batch): lr = peak * lr_factor(step / total)."""
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(cfg.schedule, s / total_steps))


def parse_defense(spec: str) -> Defense:
    """``NAME[:K=V,...]`` -> a defense (unknown names and parameters give errors listing the valid ones)."""
    return DEFENSES.create(spec)


@dataclass
class TrainResult:
    out: Path
    model_path: Path
    log: list[dict[str, Any]] = field(default_factory=list)
    record: Path | None = None


class Trainer:
    """Runs one training configuration; see the module docstring."""

    def __init__(self, cfg: TrainConfig, *, progress: bool | None = None) -> None:
        cfg.validate()
        self.defense = parse_defense(cfg.defense)
        cfg = cfg.resolved(self.defense.recipe)
        self.cfg = cfg
        self.progress = show_bars(progress)  # None: a bar only when stderr is a terminal (the CLI's rule)
        self.device = resolve_device(cfg.device)
        self.out = Path(cfg.out)
        self.name = cfg.name or self.out.name
        data = DATASETS.create(cfg.dataset, n_examples=cfg.n_train)
        self.data = data
        self.x, self.y = data.x.to(self.device), data.y.to(self.device)
        torch.manual_seed(cfg.seed)  # explicit: a fresh architecture's initial weights
        if cfg.init is not None:
            loaded = load_model(cfg.init, arch=cfg.arch)
            self.model, self.arch, self.init_source = loaded.module, loaded.architecture, loaded.source
            if cfg.arch is not None and cfg.arch != self.arch:
                raise RbxError(f"--init {cfg.init} is a {self.arch}, not a {cfg.arch}")
        else:
            self.model, self.arch, self.init_source = build_architecture(cfg.arch), cfg.arch, None
        self.model = self.model.to(self.device).train()
        trainable = {id(p) for p in self.defense.trainable_parameters(self.model)}
        for p in self.model.parameters():
            p.requires_grad_(id(p) in trainable)
        self.opt = make_optimizer(self.model, cfg)
        self.steps_per_epoch = math.ceil(data.n / cfg.batch_size)
        self.sched = self.make_schedule(self.opt)
        self.autocast = bool(cfg.amp and self.device.type == "cuda")
        self.log: list[dict[str, Any]] = []
        self.epoch = 0
        self._defense_state: dict[str, Any] | None = None  # from a checkpoint, handed over after setup()

    def make_schedule(self, opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        """The run's learning-rate schedule for ``opt`` (one step per batch over all epochs): a defense's
        second optimizer (RAMP's natural training) follows the same one."""
        return make_schedule(opt, self.cfg, self.steps_per_epoch * self.cfg.epochs)

    # ---- the loop ----------------------------------------------------------------------------------
    def batches(self, epoch: int) -> tuple[torch.Generator, list[Tensor]]:
        """The epoch's generator and its shuffled batches of indices (both from (seed, epoch))."""
        gen = torch.Generator(device="cpu").manual_seed(stream_seed(self.cfg.seed, "train-order", epoch))
        order = torch.randperm(self.data.n, generator=gen)
        return gen, list(order.split(self.cfg.batch_size))

    def run_epoch(self, epoch: int, model: nn.Module, opt: torch.optim.Optimizer, sched,
                  loss_fn: Callable[[nn.Module, Tensor, Tensor, StepContext], tuple[Tensor, dict[str, Tensor]]],
                  desc: str) -> dict[str, float]:
        """One pass over the training set with ``loss_fn``; returns the epoch's mean statistics."""
        gen, batches = self.batches(epoch)
        sums: dict[str, Tensor] = {}
        t0 = time.perf_counter()
        model.train()
        bar = PointBar(self.data.n, desc, show=self.progress)  # counts images, so small runs move smoothly
        seen = 0
        for step, idx in enumerate(batches):
            bar.done_through(seen)
            seen += len(idx)
            idx = idx.to(self.device)
            x, y = self.x[idx], self.y[idx]
            if self.cfg.augment:
                x = augment(x, gen)
            seed = stream_seed(self.cfg.seed, "train-step", epoch, step)
            ctx = StepContext(seed=seed, epoch=epoch, step=step, autocast=self.autocast,
                              generator=torch.Generator(device="cpu").manual_seed(seed))
            with ctx.autocast_ctx():
                loss, stats = loss_fn(model, x, y, ctx)
            if not torch.isfinite(loss):
                raise RbxError(f"the training loss became {loss.item()} at epoch {epoch}, step {step}: lower --lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            stats = {"loss": loss.detach().float(), **{k: v.detach().float() for k, v in stats.items()}}
            for k, v in stats.items():
                sums[k] = sums.get(k, 0) + v
        bar.close()
        out = {k: round(float(v) / max(len(batches), 1), 5) for k, v in sums.items()}
        out["seconds"] = round(time.perf_counter() - t0, 2)
        return out

    def run(self, resume: bool | None = None) -> TrainResult:
        """Train (continuing a checkpoint if there is one and ``resume`` is not False); save the model.

        Training takes gradients whatever the caller's autograd context (``torch.no_grad()``,
        ``torch.inference_mode()``); an interruption keeps the last epoch's checkpoint and says so."""
        with autograd_on(), resumable(self.out / "checkpoint.pt", "training checkpoint (the last finished epoch)"):
            return self._run(resume)

    def _run(self, resume: bool | None) -> TrainResult:
        ckpt_path = self.out / "checkpoint.pt"
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.out / "config.json", json.dumps(self._config_dict(), indent=2) + "\n")
        if ckpt_path.is_file() and resume is not False:
            self._load_checkpoint(ckpt_path)
            log.warning("resuming %s after epoch %d", self.out, self.epoch)
        elif resume:
            raise RbxError(f"--resume: no checkpoint in {self.out}; run without --resume")
        self.defense.setup(self)
        if self.epoch > 0:
            self.defense.load_state_dict(self._defense_state, self)
        clock = RunClock(self.cfg.epochs - self.epoch)
        first = self.epoch
        while self.epoch < self.cfg.epochs:
            epoch = self.epoch
            self.defense.epoch_start(self, epoch)
            stats = self.run_epoch(epoch, self.model, self.opt, self.sched, self._defense_loss,
                                   f"epoch {epoch + 1}/{self.cfg.epochs} {self.defense.name}")
            stats.update(self.defense.epoch_end(self, epoch) or {})
            stats = {"epoch": epoch + 1, "lr_end": round(self.sched.get_last_lr()[0], 6), **stats}
            self.log.append(stats)
            progress_log.info("epoch %d/%d %s: %s; %s", epoch + 1, self.cfg.epochs, self.defense.name,
                              ", ".join(f"{k} {v}" for k, v in stats.items() if k != "epoch"),
                              clock.summary(epoch + 1 - first))
            self.epoch = epoch + 1
            self._save_checkpoint(ckpt_path)
            atomic_write_text(self.out / "log.jsonl", "".join(json.dumps(r) + "\n" for r in self.log))
        model_path = self._save_model()
        return TrainResult(self.out, model_path, list(self.log))

    def _defense_loss(self, model, x, y, ctx):
        loss, stats = self.defense.loss(model, x, y, ctx)
        if "clean_acc" not in stats:
            with torch.no_grad():
                was = model.training
                model.eval()
                stats = {**stats, "clean_acc": accuracy(model(x), y)}
                model.train(was)
        return loss, stats

    # ---- persistence -------------------------------------------------------------------------------
    def _config_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self.cfg), "defense_params": self.defense.params(), "arch_resolved": self.arch,
                "init_source": self.init_source, "device_resolved": str(self.device)}

    def _save_checkpoint(self, path: Path) -> None:
        buf = io.BytesIO()
        torch.save({"model": self.model.state_dict(), "opt": self.opt.state_dict(), "sched": self.sched.state_dict(),
                    "defense": self.defense.state_dict(), "epoch": self.epoch, "log": self.log,
                    "config": json.dumps(self._config_dict())}, buf)
        atomic_write_bytes(path, buf.getvalue())

    def _load_checkpoint(self, path: Path) -> None:
        try:
            ck = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as exc:
            raise RbxError(f"cannot read training checkpoint {path} ({exc}); delete it to start over") from None
        saved = json.loads(ck["config"])
        mine = self._config_dict()
        keys = [k for k in mine if k not in ("epochs", "device", "device_resolved", "name", "out")]
        diff = [k for k in keys if saved.get(k, LEGACY_CONFIG.get(k)) != mine.get(k)]
        if diff:
            raise RbxError(f"the checkpoint in {self.out} was made with different settings ({', '.join(diff)}); "
                           "use another --out or --no-resume")
        self.model.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["opt"])
        self.sched.load_state_dict(ck["sched"])
        self.epoch, self.log = int(ck["epoch"]), list(ck["log"])
        self._defense_state = ck.get("defense")

    def _save_model(self) -> Path:
        state = {k: (v.half() if v.is_floating_point() else v) for k, v in self.model.state_dict().items()}
        buf = io.BytesIO()
        torch.save(state, buf)
        path = self.out / "model.pt"
        atomic_write_bytes(path, buf.getvalue())
        meta = {"name": self.name, "architecture": self.arch, "wrapper": self.defense.wrapper_spec(),
                "defense": self.defense.name, "defense_params": self.defense.params(), "init": self.cfg.init,
                "epochs": self.cfg.epochs, "dtype": "float16"}
        atomic_write_text(self.out / "model.json", json.dumps(meta, indent=2) + "\n")
        self.defense.save(self.out, self.model)
        return path

    def saved_model_spec(self) -> str:
        """The model source that loads what this run saved (``trained:OUT`` for most defenses)."""
        return self.defense.saved_model_spec(self.out, self)

    def saved_model(self) -> LoadedModel:
        """The saved model, loaded back through its model source: what an evaluation of this run must measure
        (the fp16 weights on disk, whose sha256 the record carries, not the float32 weights in memory)."""
        return load_model(self.saved_model_spec())

    def loaded_model(self) -> LoadedModel:
        """The in-memory trained model with the defense's inference wrapper (float32; for the saved weights,
        which an evaluation must use, see :meth:`saved_model`)."""
        model_path = self.out / "model.pt"
        return LoadedModel(self.defense.wrap(self.model).eval(), self.name, self.arch, str(model_path),
                           file_sha256(model_path) if model_path.is_file() else None,
                           extra={"trained": {"defense": self.defense.name, "params": self.defense.params(),
                                              "epochs": self.cfg.epochs, "init": self.cfg.init}})
