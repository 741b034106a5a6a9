"""Reading model files: tensors out, never code run, and a one-line error that says what a file IS.

Every loader that reads a state dict -- ``file:``, ``hf:``, ``torchvision:``/``timm:`` with ``weights=PATH``,
``trained:``, the reference models, the ``mix:`` parts -- goes through :func:`read_state_dict`: what the file is
is found first (:func:`~robustbench_ext.models.formats.sniff`, which unpickles nothing), then only tensors are
read (``torch.load(weights_only=True)`` or safetensors). Any other file -- a TorchScript archive, a whole
pickled model, an HTML page from a failed download, a truncated file -- is a one-line :func:`file_error` that
names what it is and what to do, never torch's advice to unpickle it. :func:`quietly` keeps the warnings torch
raises while loading (``torch.jit`` deprecations) out of the user's output.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from ..errors import ModelLoadError
from .formats import FileKind, sniff

log = logging.getLogger(__name__)


def file_sha256(path: Path) -> str:
    """sha256 (hex) of a file's bytes: a model file's identity in records."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


#: Keys under which a training checkpoint keeps the model's state dict (the first one present is used).
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net", "network")
#: File kinds (:mod:`~robustbench_ext.models.formats`) that are a broken file, not a model: re-download.
BROKEN_KINDS = frozenset({"empty", "html", "text", "unknown"})


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """Read a state dict (plain, or under one of :data:`STATE_DICT_KEYS`) from a PyTorch file or a safetensors
    file, floats as float32.

    What the file is, is found first (:func:`~robustbench_ext.models.formats.sniff`, which unpickles nothing);
    only tensors are then unpickled (``weights_only``). Any other file is a one-line error that says what it IS
    and what to do (:func:`file_error`): a TorchScript archive, a whole pickled model, an HTML page, ...
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"checkpoint not found: {path}")
    kind = sniff(path)
    if kind.kind == "safetensors":
        obj: Any = read_safetensors(path)
    elif kind.kind == "state_dict":
        try:
            obj = quietly(torch.load, path, map_location="cpu", weights_only=True)
        except BaseException as exc:  # EOFError (a truncated file) included: click would turn it into an "abort"
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise file_error(path, FileKind("unknown", f"truncated or corrupt ({kind.size:,} bytes)", kind.size)) from None
    else:
        raise file_error(path, kind)
    return state_dict_of(obj, path)


def state_dict_of(obj: Any, path: Path) -> dict[str, Tensor]:
    """The state dict in a loaded checkpoint object (itself, or under one of :data:`STATE_DICT_KEYS`), keys
    without a ``module.`` (DataParallel) prefix, floats as float32; a one-line error if there is none."""
    for key in STATE_DICT_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        held = (f"a dict with keys {sorted(map(str, obj))[:6]}" if isinstance(obj, dict) else f"a {type(obj).__name__}")
        nested = [k for k, v in obj.items() if isinstance(v, dict) and v and all(isinstance(t, Tensor) for t in v.values())] \
            if isinstance(obj, dict) else []
        todo = (f"its key '{nested[0]}' holds one: save that dict alone (torch.save(checkpoint['{nested[0]}'], PATH))"
                if nested else "save model.state_dict()")
        raise ModelLoadError(f"checkpoint {path} holds {held}, not a state dict of tensors (rbx looks under "
                             f"{', '.join(STATE_DICT_KEYS)}): {todo}")
    return {
        (k[len("module."):] if k.startswith("module.") else k): (v.float() if v.is_floating_point() else v)
        for k, v in obj.items()
    }


def read_safetensors(path: Path) -> dict[str, Tensor]:
    """The tensors of a safetensors file (which holds tensors only: nothing is executed)."""
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise ModelLoadError(f"{path} is a safetensors file: install safetensors to read it "
                             "(pip install safetensors, or pip install 'robustbench-ext[hub]')") from None
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # noqa: BLE001 -- safetensors raises its own error types
        raise ModelLoadError(f"safetensors file {path} is truncated or corrupt ({type(exc).__name__}): "
                             "delete it and download it again") from None


def file_error(path: Path, kind: FileKind | None = None, *, wanted: str = "a state dict") -> ModelLoadError:
    """The one-line error for a file that is not what a loader wanted: what the file IS (found by
    :func:`~robustbench_ext.models.formats.sniff`) and what to do with it."""
    path = Path(path)
    kind = kind or sniff(path)
    what = kind.what
    if kind.kind in BROKEN_KINDS:
        return ModelLoadError(f"checkpoint {path} is {what}: delete it and download it again")
    if kind.kind == "torchscript":
        return ModelLoadError(f"{path} is {what}, not {wanted}: run it as --model torchscript:{path} "
                              "(or file:PATH without --arch)")
    if kind.kind == "module":
        return ModelLoadError(
            f"{path} is {what}; loading it runs code named by the file, so rbx never unpickles it silently: "
            f"if you trust its source use --model pickle:{path} --trust-pickle, else save model.state_dict() and use "
            "--model file:PATH --arch ...")
    if kind.kind == "pickle":
        return ModelLoadError(
            f"{path} is {what}: rbx reads tensors only, never other pickled objects; save model.state_dict() alone, or if you "
            f"trust its source use --model pickle:{path} --trust-pickle")
    if kind.kind in ("safetensors", "state_dict"):
        return ModelLoadError(f"{path} is {what}, not {wanted}")
    return ModelLoadError(f"{path} is {what}: rbx evaluates PyTorch models (a state dict or safetensors file with "
                          "--arch, a TorchScript archive, or a pickled nn.Module with --trust-pickle)")


def checkpoint_error(path: Path) -> ModelLoadError:
    """The one-line error for a downloaded file that cannot be read: what it is (:func:`file_error`)."""
    path = Path(path)
    kind = sniff(path)
    if kind.kind in ("state_dict", "safetensors"):  # the header looked right but reading failed: damaged
        kind = FileKind("unknown", f"truncated or corrupt ({kind.size:,} bytes)", kind.size)
    return file_error(path, kind)


def quietly(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` with the warnings torch raises while loading (deprecations of ``torch.jit``, the
    TorchScript dispatch note) logged at debug level instead of printed into the user's output."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn(*args, **kwargs)
    for w in caught:
        log.debug("while loading: %s: %s", w.category.__name__, w.message)
    return out
