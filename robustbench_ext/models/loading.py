"""Models: :class:`LoadedModel`, the inference wrappers, architectures filled from state dicts, and what
``evaluate`` accepts.

Every model source (:mod:`robustbench_ext.models.sources`) returns a :class:`LoadedModel`: an
``nn.Module`` in eval mode that maps ``[N, C, H, W]`` inputs in [0, 1] to logits ``[N, K]``, plus what
the record needs to identify it (name, architecture, source, sha256, class count, the dataset it was
made for). State dicts are read by :mod:`~robustbench_ext.models.files` (tensors only; a file that is not
one is a one-line error saying what it is); whole-model files (TorchScript, opt-in pickles) by
:mod:`~robustbench_ext.models.whole`. The class count of a checkpoint is read from its last layer, so a
100-class or a 5-class net of a known architecture loads without flags. Architectures are registered names
or the user's own code (``pkg.module:Class``, ``path/to/file.py:Class``: :mod:`~robustbench_ext.models.architectures`).

The reference models (``cifar10-resnet18-linf-at``, ``cifar10-smallcnn-linf-at``) are looked for,
by file name, in ``$RBX_MODELS`` (``os.pathsep``-separated), ``./models``, ``<repo>/models``,
``../shared/models`` beside the working directory or the repository, and last in the package's own
``assets/`` folder, which ships the small CNN (so a fresh install runs offline; see ``assets/README.md``).
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..errors import ModelLoadError, RbxError
from ..paths import ASSETS, describe_search, search_path
from ..registry import ARCHITECTURES, MODELS
from .architectures import import_architecture, is_code_spec
from .files import checkpoint_error, file_error, file_sha256, read_state_dict  # noqa: F401  (importable from here too)

log = logging.getLogger(__name__)

#: Named input normalizations (mean, std) for ``--normalize``.
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


@dataclass
class LoadedModel:
    """A classifier ready to attack, and its identity for the record.

    ``module``: ``[N, C, H, W]`` in [0, 1] -> logits ``[N, K]``, in eval mode, on the CPU until the
    runner moves it. ``source``: where the weights came from; ``sha256``: of the checkpoint file.
    ``num_classes``: K where known before a forward pass; ``dataset``: the dataset the model was made
    for, where known (a RobustBench entry's, the reference models'), which a run uses when none is given.
    """

    module: nn.Module
    name: str
    architecture: str
    source: str
    sha256: str | None = None
    normalization: dict[str, list[float]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    num_classes: int | None = None
    dataset: str | None = None

    def describe(self) -> dict[str, Any]:
        """The record's ``model`` block."""
        return {
            "name": self.name,
            "architecture": self.architecture,
            "source": self.source,
            "sha256": self.sha256,
            "normalization": self.normalization,
            "parameters": sum(p.numel() for p in self.module.parameters()),
            **({"num_classes": self.num_classes} if self.num_classes is not None else {}),
            **({"dataset": self.dataset} if self.dataset is not None else {}),
            **self.extra,
        }


class Normalize(nn.Module):
    """Wrap a model that expects normalized inputs so that it takes [0, 1] inputs: ``model((x - mean) / std)``."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.model((x - self.mean) / self.std)


class Temperature(nn.Module):
    """Divides a model's logits by a fixed temperature (kept at inference: LTD's student temperature)."""

    def __init__(self, model: nn.Module, temperature: float) -> None:
        super().__init__()
        self.model = model
        self.temperature = float(temperature)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x) / self.temperature


#: Inference wrappers a trained model can carry, rebuilt from ``model.json`` by the ``trained:`` source.
WRAPPERS = {"temperature": lambda model, spec: Temperature(model, spec["temperature"])}


def apply_wrapper(model: nn.Module, spec: dict[str, Any] | None) -> nn.Module:
    if not spec:
        return model
    if spec.get("kind") not in WRAPPERS:
        raise RbxError(f"unknown model wrapper {spec.get('kind')!r}; known: {', '.join(WRAPPERS)}")
    return WRAPPERS[spec["kind"]](model, spec)


def parse_normalization(text: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """``none``, a preset name (``cifar10``, ``imagenet``) or ``M1,M2,M3/S1,S2,S3``."""
    key = text.strip().lower()
    if key in ("", "none"):
        return None
    if key in NORMALIZATIONS:
        return NORMALIZATIONS[key]
    m = re.fullmatch(r"\s*([^/]+)/([^/]+)\s*", text)
    try:
        if not m:
            raise ValueError
        mean = tuple(float(v) for v in m.group(1).split(","))
        std = tuple(float(v) for v in m.group(2).split(","))
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ValueError
    except ValueError:
        raise RbxError(
            f"cannot parse normalization '{text}'; use none, {', '.join(NORMALIZATIONS)} or MEAN,.../STD,... "
            "(e.g. 0.5,0.5,0.5/0.25,0.25,0.25)"
        ) from None
    return mean, std


def last_layer(module: nn.Module) -> str | None:
    """The name of a classifier's output layer: its last ``nn.Linear`` (else its last ``nn.Conv2d``), or None."""
    last_linear = last_conv = None
    for name, m in module.named_modules():
        if isinstance(m, nn.Linear):
            last_linear = name
        elif isinstance(m, nn.Conv2d):
            last_conv = name
    return last_linear if last_linear is not None else last_conv


def checkpoint_classes(state: dict[str, Tensor], module: nn.Module) -> int | None:
    """The class count a checkpoint was trained for: the output size of ``module``'s last layer in ``state``."""
    head = last_layer(module)
    weight = state.get(f"{head}.weight") if head is not None else None
    return int(weight.shape[0]) if weight is not None and weight.ndim >= 2 else None


def load_into(module: nn.Module, state: dict[str, Tensor], arch: str, path: Path) -> nn.Module:
    """``load_state_dict(strict=True)`` with a one-line error that names what does not fit."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        if mismatched:
            k = mismatched[0]
            parts.append(f"{len(mismatched)} shape mismatches (e.g. {k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)})")
        hint = ("check the class and its --arch-kwargs" if is_code_spec(arch.partition("(")[0])
                else f"pick the matching --arch (known: {', '.join(ARCHITECTURES.names())}, or pkg.module:Class)")
        raise ModelLoadError(f"checkpoint {path} does not fit architecture '{arch}': {'; '.join(parts)}; {hint}")
    module.load_state_dict(state, strict=True)
    return module.eval()


def model_dirs() -> list[Path]:
    """Folders searched for model checkpoints, in order (the package's embedded assets last)."""
    return search_path("RBX_MODELS", "models", extra=(ASSETS,))


#: The reference model that ships inside the package (the one that always works offline).
EMBEDDED_MODEL = "cifar10-smallcnn-linf-at"


def find_checkpoint(filename: str) -> Path:
    dirs = model_dirs()
    for d in dirs:
        if (d / filename).is_file():
            return d / filename
    raise ModelLoadError(
        f"model file {filename} not found (looked in {describe_search('RBX_MODELS', dirs)}); it does not ship with rbx: "
        f"put it in ./models or set RBX_MODELS=DIR, or use the embedded model: --model {EMBEDDED_MODEL}")


def build_architecture(arch: str, num_classes: int | None = None, kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """An untrained ``arch``: a registered architecture (``ARCHITECTURES``, e.g. ``resnet18``, ``torchvision:NAME``)
    or code (``pkg.module:Class``, ``path/to/file.py:Class``; :func:`~robustbench_ext.models.architectures.import_architecture`),
    built with ``kwargs`` and, when given, ``num_classes``."""
    kw = dict(kwargs or {})
    if is_code_spec(arch):
        return import_architecture(arch).build(kw, num_classes)
    if num_classes is not None:
        kw["num_classes"] = num_classes
    return ARCHITECTURES.create(arch, **kw)


def architecture_label(arch: str, kwargs: Mapping[str, Any] | None = None) -> str:
    """How a record names an architecture: ``arch``, or ``arch(k=v, ...)`` with keyword arguments."""
    return arch if not kwargs else f"{arch}(" + ", ".join(f"{k}={v}" for k, v in kwargs.items()) + ")"


def from_file(path: Path, arch: str, name: str, num_classes: int | None = None,
              arch_kwargs: Mapping[str, Any] | None = None) -> LoadedModel:
    """Build ``arch`` (with ``arch_kwargs``) with the checkpoint's class count (read from its last layer) and load
    the checkpoint (a PyTorch state dict or a safetensors file).

    ``num_classes`` (or ``num_classes`` in ``arch_kwargs``) overrides the inference; a checkpoint with another
    class count is then an error.
    """
    kwargs = dict(arch_kwargs or {})
    if "num_classes" in kwargs:
        given = kwargs.pop("num_classes")
        if num_classes is not None and given != num_classes:
            raise RbxError(f"num_classes={given} in --arch-kwargs disagrees with --num-classes {num_classes}")
        num_classes = given
    code = import_architecture(arch) if is_code_spec(arch) else None

    def build(k: int | None) -> nn.Module:
        return code.build(kwargs, k) if code is not None else build_architecture(arch, k, kwargs)

    module = build(None)  # validates the architecture (and the code) before the weights are read
    state = read_state_dict(path)
    found = checkpoint_classes(state, module)
    if num_classes is not None and found is not None and found != num_classes:
        raise ModelLoadError(f"checkpoint {path} has {found} classes (its last layer), not --num-classes {num_classes}")
    k = num_classes or found
    if k is not None and k != checkpoint_classes(module.state_dict(), module) and (code is None or code.takes_num_classes):
        module = build(k)
    label = architecture_label(arch, kwargs)
    load_into(module, state, label, path)
    extra = {"architecture_code": code.provenance(kwargs)} if code is not None else {}
    return LoadedModel(module, name, label, str(path), file_sha256(path), num_classes=k, extra=extra)


#: Options of :func:`load_model` that only some model sources take, and what to say when one is given to another.
SOURCE_OPTIONS = {
    "arch_kwargs": "--arch-kwargs goes with --arch (file:, pickle: and hf: models); model '{spec}' does not take it",
    "trust_pickle": "--trust-pickle is for pickle:PATH models only (model '{spec}' is not unpickled)",
}


def load_model(spec: str, *, arch: str | None = None, normalize: str | None = None,
               num_classes: int | None = None, arch_kwargs: Mapping[str, Any] | None = None,
               trust_pickle: bool = False) -> LoadedModel:
    """Load the model named by ``spec`` (a registered name or a source: ``file:PATH``, ``torchscript:PATH``,
    ``pickle:PATH``, ``hf:ORG/NAME``, ``torchvision:NAME``, ``timm:NAME``, ``robustbench:ID``, ``trained:DIR``).

    ``arch`` (with ``arch_kwargs``) builds the architecture of a state dict (``file:``, ``hf:``); ``normalize``
    wraps the model in :class:`Normalize`; ``num_classes`` overrides the class count read from a checkpoint;
    ``trust_pickle`` allows ``pickle:PATH`` to unpickle a whole model (which runs code from the file).
    """
    options = {k: v for k, v in (("arch_kwargs", dict(arch_kwargs or {})), ("trust_pickle", bool(trust_pickle))) if v}
    if options:
        takes = MODELS.parameters(spec)
        for key in options:
            if key not in takes:
                raise RbxError(SOURCE_OPTIONS[key].format(spec=spec))
    loaded: LoadedModel = MODELS.create(spec, arch_override=arch, num_classes=num_classes, **options)
    return with_normalization(loaded, normalize)


def with_normalization(loaded: LoadedModel, normalize: str | None) -> LoadedModel:
    """``loaded`` with its module wrapped in :class:`Normalize` (``normalize``: a preset or ``MEAN/STD``), in eval mode."""
    norm = parse_normalization(normalize) if normalize else None
    if norm is not None:
        if loaded.normalization is not None:
            raise RbxError(f"model '{loaded.name}' already normalizes its inputs ({loaded.normalization}); drop --normalize")
        loaded.module = Normalize(loaded.module, *norm)
        loaded.normalization = {"mean": list(norm[0]), "std": list(norm[1])}
    loaded.module.eval()
    return loaded


def weights_sha256(module: nn.Module) -> str:
    """sha256 of a module's state (names, dtypes, shapes and values, in order): its identity when no file is."""
    h = hashlib.sha256()
    for k, v in module.state_dict().items():
        t = v.detach().cpu().contiguous()
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def as_loaded_model(model: "LoadedModel | nn.Module | str", normalize: str | None = None) -> LoadedModel:
    """What :func:`robustbench_ext.evaluation.runner.evaluate` accepts as a model: a :class:`LoadedModel`, a model spec, or a
    plain ``nn.Module`` (``[N, C, H, W]`` in [0, 1] -> logits; identified in the record by its class and weights)."""
    if isinstance(model, LoadedModel):
        return with_normalization(model, normalize)
    if isinstance(model, str):
        return load_model(model, normalize=normalize)
    if isinstance(model, nn.Module):
        name = type(model).__name__
        was_training = model.training
        loaded = LoadedModel(model, name, name, "python object", weights_sha256(model),
                             extra={"sha256_of": "the module's state_dict (no checkpoint file)"})
        loaded = with_normalization(loaded, normalize)
        loaded.module.train(was_training)  # the user's object keeps its mode: the runner evaluates under frozen()
        return loaded
    raise RbxError(f"model must be an nn.Module, a LoadedModel or a model name such as cifar10-smallcnn-linf-at; "
                   f"got {type(model).__name__}")
