"""Model sources: the reference models, ``robustbench:<ModelId>`` and ``file:PATH`` (with an architecture).

Every source returns a :class:`LoadedModel`: an ``nn.Module`` in eval mode that maps ``[N, C, H, W]``
inputs in [0, 1] to logits ``[N, K]``, plus what the record needs to identify it.

The reference models (``cifar10-resnet18-linf-at``, ``cifar10-smallcnn-linf-at``) are looked for,
by file name, in ``$RBX_MODELS`` (``os.pathsep``-separated), ``./models``, ``<repo>/models``,
``../shared/models`` beside the working directory or the repository, and last in the package's own
``assets/`` folder, which ships the small CNN (so a fresh install runs offline; see ``assets/README.md``).
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import logging
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ._compat import import_robustbench
from .errors import ModelLoadError, RbxError, UnknownNameError
from .paths import ASSETS, describe_search, download_guard, search_path
from .registry import ARCHITECTURES, MODELS

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
    """

    module: nn.Module
    name: str
    architecture: str
    source: str
    sha256: str | None = None
    normalization: dict[str, list[float]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """The record's ``model`` block."""
        return {
            "name": self.name,
            "architecture": self.architecture,
            "source": self.source,
            "sha256": self.sha256,
            "normalization": self.normalization,
            "parameters": sum(p.numel() for p in self.module.parameters()),
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
    """Read a state dict (plain, or under ``state_dict``/``model_state_dict``/``model``), floats as float32."""
    if not path.is_file():
        raise ModelLoadError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"cannot read checkpoint {path} (truncated, or not a PyTorch state dict?): {first}") from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ModelLoadError(f"checkpoint {path} does not hold a state dict of tensors")
    return {
        (k[len("module."):] if k.startswith("module.") else k): (v.float() if v.is_floating_point() else v)
        for k, v in obj.items()
    }


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


def build_architecture(arch: str, num_classes: int = 10) -> nn.Module:
    return ARCHITECTURES.create(arch, num_classes=num_classes)


def from_file(path: Path, arch: str, name: str, num_classes: int = 10) -> LoadedModel:
    """Build ``arch`` and load the checkpoint at ``path`` into it."""
    module = build_architecture(arch, num_classes)  # validates the arch name first
    state = read_state_dict(path)
    load_into(module, state, arch, path)
    return LoadedModel(module, name, arch, str(path), file_sha256(path))


# ---- registered model sources ----------------------------------------------------------------------
_REFERENCE = {
    # name: (file in ../shared/models, architecture, what it is)
    "cifar10-resnet18-linf-at": ("cifar10_resnet18_linf_at.pt", "resnet18",
                                 "reference CIFAR-10 ResNet-18, PGD-2 Linf 8/255 adversarial training (15 epochs)"),
    "cifar10-smallcnn-linf-at": ("cifar10_smallcnn_linf_at.pt", "smallcnn",
                                 "reference CIFAR-10 small CNN, PGD-2 Linf 8/255 adversarial training; the CPU test subject"),
}


def _register_reference(name: str, filename: str, arch: str, summary: str) -> None:
    def factory(arch_override: str | None = None, num_classes: int = 10) -> LoadedModel:
        if arch_override not in (None, arch):
            raise RbxError(f"model '{name}' is a {arch}; drop --arch (it is for file:PATH models)")
        return from_file(find_checkpoint(filename), arch, name, num_classes)

    factory.__doc__ = summary
    MODELS.register(name, summary=summary, architecture=arch, filename=filename)(factory)


for _name, (_file, _arch, _summary) in _REFERENCE.items():
    _register_reference(_name, _file, _arch, _summary)


@MODELS.register("file", takes_arg=True, arg_name="PATH", summary="a state-dict checkpoint; needs --arch")
def file_model(path: str, arch_override: str | None = None, num_classes: int = 10) -> LoadedModel:
    if arch_override is None:
        raise RbxError(f"model 'file:{path}' needs --arch; known architectures: {', '.join(ARCHITECTURES.names())}")
    return from_file(Path(path), arch_override, f"file:{Path(path).name}", num_classes)


@MODELS.register("trained", takes_arg=True, arg_name="DIR",
                 summary="a model trained with `rbx train` (its folder, or its model.pt), with its inference wrapper")
def trained_model(path: str, arch_override: str | None = None, num_classes: int = 10) -> LoadedModel:
    import json as _json

    p = Path(path)
    weights = p / "model.pt" if p.is_dir() else p
    meta_path = weights.with_name("model.json")
    if not meta_path.is_file():
        raise ModelLoadError(f"{meta_path} not found: trained:DIR needs the folder `rbx train` wrote (model.pt + model.json)")
    try:
        meta = _json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {meta_path}: {exc}") from None
    arch = meta.get("architecture")
    if arch_override not in (None, arch):
        raise RbxError(f"{weights} is a {arch}; drop --arch")
    loaded = from_file(weights, arch, str(meta.get("name") or weights.parent.name), num_classes)
    loaded.module = apply_wrapper(loaded.module, meta.get("wrapper")).eval()
    loaded.extra = {"trained": {k: meta.get(k) for k in ("defense", "defense_params", "init", "epochs", "wrapper")}}
    return loaded


@MODELS.register("robustbench", takes_arg=True, arg_name="[DATASET/][THREAT/]MODEL_ID",
                 summary="a RobustBench model zoo entry through robustbench.load_model (model dir: $RBX_ROBUSTBENCH_DIR or ./models)")
def robustbench_model(spec: str, arch_override: str | None = None, num_classes: int = 10) -> LoadedModel:
    parts = spec.split("/")
    model_id = parts[-1]
    dataset = parts[0] if len(parts) == 3 else "cifar10"
    threat = parts[-2] if len(parts) >= 2 else "Linf"
    model_dir = Path(os.environ.get("RBX_ROBUSTBENCH_DIR", "models"))
    utils = import_robustbench("utils")
    zoo = import_robustbench("model_zoo")
    enums = import_robustbench("model_zoo.enums")
    try:
        ds_enum, tm_enum = enums.BenchmarkDataset(dataset), enums.ThreatModel(threat)
        known = zoo.model_dicts[ds_enum][tm_enum]
    except (ValueError, KeyError):
        raise RbxError(f"robustbench has no {dataset}/{threat} board; write robustbench:[cifar10|cifar100|imagenet/][Linf|L2|corruptions/]MODEL_ID") from None
    if model_id not in known:
        close = difflib.get_close_matches(model_id, list(known), n=5)
        hint = f"; did you mean {', '.join(close)}?" if close else f" ({len(known)} models; see robustbench's leaderboard)"
        raise UnknownNameError(f"unknown robustbench model '{model_id}' for {dataset}/{threat}{hint}")
    ckpt = model_dir / dataset / threat / f"{model_id}.pt"
    try:
        # robustbench prints download progress to stdout; a failed download leaves no empty folders behind
        with contextlib.redirect_stdout(sys.stderr), download_guard(model_dir):
            module = utils.load_model(model_name=model_id, model_dir=str(model_dir), dataset=dataset, threat_model=threat)
    except (ConnectionError, OSError, RuntimeError, ValueError) as exc:
        offline = _is_network_error(exc)
        if offline or not ckpt.is_file():
            raise ModelLoadError(
                f"robustbench model '{model_id}' is not in {ckpt.parent} and could not be downloaded "
                f"(offline? {type(exc).__name__}); put its checkpoint at {ckpt} or set RBX_ROBUSTBENCH_DIR"
            ) from None
        raise ModelLoadError(f"robustbench could not load '{model_id}' from {ckpt}: {str(exc).splitlines()[0]}") from None
    except Exception as exc:  # gdown and requests raise their own types when offline
        if _is_network_error(exc):
            raise ModelLoadError(
                f"robustbench model '{model_id}' is not in {ckpt.parent} and could not be downloaded "
                f"(offline? {type(exc).__name__}); put its checkpoint at {ckpt} or set RBX_ROBUSTBENCH_DIR"
            ) from None
        raise
    return LoadedModel(
        module.eval(), f"robustbench:{model_id}", type(module).__name__, f"robustbench:{dataset}/{threat}/{model_id}",
        file_sha256(ckpt) if ckpt.is_file() else None, extra={"robustbench": {"dataset": dataset, "threat_model": threat}},
    )


def _is_network_error(exc: BaseException) -> bool:
    names = {type(e).__name__ for e in _chain(exc)}
    return bool(names & {"ConnectionError", "MaxRetryError", "NewConnectionError", "Timeout", "ConnectTimeout",
                         "gaierror", "FileURLRetrievalError", "ReadTimeout", "SSLError", "ProxyError"})


def _chain(exc: BaseException | None):
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


def load_model(spec: str, *, arch: str | None = None, normalize: str | None = None, num_classes: int = 10) -> LoadedModel:
    """Load the model named by ``spec`` (a registered name, ``file:PATH`` or ``robustbench:ID``).

    ``arch`` is needed for ``file:PATH``; ``normalize`` wraps the model in :class:`Normalize`.
    """
    loaded: LoadedModel = MODELS.create(spec, arch_override=arch, num_classes=num_classes)
    return with_normalization(loaded, normalize)


def with_normalization(loaded: LoadedModel, normalize: str | None) -> LoadedModel:
    """``loaded`` with its module wrapped in :class:`Normalize` (``normalize``: a preset or ``MEAN/STD``), in eval mode."""
    norm = parse_normalization(normalize) if normalize else None
    if norm is not None:
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
    """What :func:`robustbench_ext.runner.evaluate` accepts as a model: a :class:`LoadedModel`, a model spec, or a
    plain ``nn.Module`` (``[N, C, H, W]`` in [0, 1] -> logits; identified in the record by its class and weights)."""
    if isinstance(model, LoadedModel):
        return with_normalization(model, normalize)
    if isinstance(model, str):
        return load_model(model, normalize=normalize)
    if isinstance(model, nn.Module):
        name = type(model).__name__
        loaded = LoadedModel(model, name, name, "python object", weights_sha256(model),
                             extra={"sha256_of": "the module's state_dict (no checkpoint file)"})
        return with_normalization(loaded, normalize)
    raise RbxError(f"model must be an nn.Module, a LoadedModel or a model name such as cifar10-smallcnn-linf-at; "
                   f"got {type(model).__name__}")
