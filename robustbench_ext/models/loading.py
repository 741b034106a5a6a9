"""Models: :class:`LoadedModel`, the inference wrappers, checkpoint reading, and what ``evaluate`` accepts.

Every model source (:mod:`robustbench_ext.models.sources`) returns a :class:`LoadedModel`: an
``nn.Module`` in eval mode that maps ``[N, C, H, W]`` inputs in [0, 1] to logits ``[N, K]``, plus what
the record needs to identify it (name, architecture, source, sha256, class count, the dataset it was
made for). Checkpoints are read with ``weights_only=True``; a file that is not a checkpoint (an empty
file, an HTML page from a failed download, a truncated file) is one line naming the file and saying to
delete it and download it again, never advice to unpickle it. The class count of a checkpoint is read
from its last layer, so a 100-class or a 5-class net of a known architecture loads without flags.

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
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ..errors import ModelLoadError, RbxError
from ..paths import ASSETS, describe_search, search_path
from ..registry import ARCHITECTURES, MODELS

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


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---- checkpoints -----------------------------------------------------------------------------------
def read_state_dict(path: Path) -> dict[str, Tensor]:
    """Read a state dict (plain, or under ``state_dict``/``model_state_dict``/``model``), floats as float32.

    ``torch.save`` files (only tensors are unpickled: ``weights_only``) and ``.safetensors`` files. A file that is
    not a checkpoint is a one-line error that names it and what it looks like (:func:`checkpoint_error`).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"checkpoint not found: {path}")
    try:
        obj = _read_safetensors(path) if _is_safetensors(path) else torch.load(path, map_location="cpu", weights_only=True)
    except RbxError:
        raise
    except BaseException as exc:  # EOFError (empty file) included: click would turn it into an "abort"
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise checkpoint_error(path, exc) from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        nested = [k for k, v in obj.items() if isinstance(v, dict) and v and all(isinstance(t, Tensor) for t in v.values())] \
            if isinstance(obj, dict) else []
        found = (f"its key '{nested[0]}' holds one: save that dict alone (torch.save(checkpoint['{nested[0]}'], PATH))"
                 if nested else f"it holds {_kind_of(obj)}: save model.state_dict() with torch.save")
        raise ModelLoadError(f"checkpoint {path} has no state dict of tensors where rbx looks (the top level, or under "
                             f"state_dict, model_state_dict or model); {found}")
    return {
        (k[len("module."):] if k.startswith("module.") else k): (v.float() if v.is_floating_point() else v)
        for k, v in obj.items()
    }


def _kind_of(obj: object) -> str:
    if isinstance(obj, dict):
        return f"a dict with keys {sorted(map(str, obj))[:6]}"
    return f"a {type(obj).__name__}"


def _is_safetensors(path: Path) -> bool:
    """A safetensors file: its ending, or its first bytes (an 8-byte header length, then the JSON header)."""
    if path.suffix.lower() == ".safetensors":
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < 100_000_000


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError as exc:
        raise ModelLoadError(f"{path} is a safetensors file and reading it needs safetensors ({exc}): "
                             "pip install safetensors") from None
    return load_file(str(path), device="cpu")


def checkpoint_error(path: Path, exc: BaseException | None = None) -> ModelLoadError:
    """The one-line error for a file that is not a readable checkpoint: what it looks like (from its bytes, and from
    the loader's error ``exc`` when there is one), and what to do -- re-download it only when it looks damaged."""
    path = Path(path)
    text = str(exc or "")
    if "Unsupported global" in text:  # weights_only met a class to import: a pickled object, not only tensors
        what = re.search(r"GLOBAL ([\w.]+)", text)
        return ModelLoadError(f"checkpoint {path} holds a pickled Python object{f' ({what.group(1)})' if what else ''}, "
                              "not only tensors, and rbx does not unpickle code (it could run anything): save "
                              "model.state_dict() with torch.save and load that")
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(512).lstrip().lower()
    except OSError as exc:
        return ModelLoadError(f"cannot read checkpoint {path} ({exc.strerror or exc})")
    if size == 0:
        what = "an empty file"
    elif head.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<")):
        what = "an HTML page, not a checkpoint (a failed or blocked download?)"
    elif head.startswith(b"{") or head.startswith(b"["):
        what = "a JSON/text file, not a checkpoint"
    else:
        what = f"truncated or corrupt ({size:,} bytes)"
    return ModelLoadError(f"checkpoint {path} is {what}: delete it and download it again")


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
        raise ModelLoadError(
            f"checkpoint {path} does not fit architecture '{arch}': {'; '.join(parts)}; "
            f"pick the matching --arch (known: {', '.join(ARCHITECTURES.names())})"
        )
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


def build_architecture(arch: str, num_classes: int | None = None) -> nn.Module:
    return ARCHITECTURES.create(arch, **({"num_classes": num_classes} if num_classes is not None else {}))


def from_file(path: Path, arch: str, name: str, num_classes: int | None = None) -> LoadedModel:
    """Build ``arch`` with the checkpoint's class count (read from its last layer) and load the checkpoint.

    ``num_classes`` overrides the inference; a checkpoint with another class count is then an error.
    """
    module = build_architecture(arch)  # validates the arch name first
    state = read_state_dict(path)
    found = checkpoint_classes(state, module)
    if num_classes is not None and found is not None and found != num_classes:
        raise ModelLoadError(f"checkpoint {path} has {found} classes (its last layer), not --num-classes {num_classes}")
    k = num_classes or found
    if k is not None and k != checkpoint_classes(module.state_dict(), module):
        module = build_architecture(arch, k)
    load_into(module, state, arch, path)
    return LoadedModel(module, name, arch, str(path), file_sha256(path), num_classes=k)


def load_model(spec: str, *, arch: str | None = None, normalize: str | None = None,
               num_classes: int | None = None) -> LoadedModel:
    """Load the model named by ``spec`` (a registered name, ``file:PATH`` or ``robustbench:ID``).

    ``arch`` is needed for ``file:PATH``; ``normalize`` wraps the model in :class:`Normalize`;
    ``num_classes`` overrides the class count read from a checkpoint.
    """
    loaded: LoadedModel = MODELS.create(spec, arch_override=arch, num_classes=num_classes)
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
