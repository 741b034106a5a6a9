"""Whole-model files: a TorchScript archive (architecture and weights in one file, ``torch.jit.load``) and,
only on the user's explicit opt-in, a whole pickled model (``torch.save(model)``, whose loading runs code the
file names). Used by the ``file:``, ``torchscript:``, ``pickle:`` and ``hf:`` model sources."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ..errors import ModelLoadError, RbxError
from .architectures import import_architecture, is_code_spec, on_sys_path
from .files import BROKEN_KINDS, STATE_DICT_KEYS, file_error, file_sha256, quietly, state_dict_of
from .formats import sniff
from .loading import LoadedModel, architecture_label, build_architecture, load_into


def load_torchscript(path: Path, name: str) -> LoadedModel:
    """A TorchScript archive (``torch.jit.script(model).save(path)`` or ``torch.jit.trace``): architecture and
    weights in one file, loaded on the CPU with ``torch.jit.load`` (torch's deprecation warnings kept out of the
    output). Its identity is the file's sha256."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path}")
    kind = sniff(path)
    if kind.kind != "torchscript":
        raise file_error(path, kind, wanted="a TorchScript archive")
    try:
        module = quietly(torch.jit.load, str(path), map_location="cpu")
    except Exception as exc:  # noqa: BLE001 -- torch.jit raises RuntimeError and friends for a damaged archive
        raise ModelLoadError(f"TorchScript archive {path} could not be loaded ({type(exc).__name__}: "
                             f"{(str(exc).strip().splitlines() or [''])[0][:200]}); was it saved by a newer torch?") from None
    return LoadedModel(module.eval(), name, f"TorchScript {getattr(module, 'original_name', type(module).__name__)}",
                       str(path), file_sha256(path), extra={"format": "torchscript"})


#: What the record says about a model read by unpickling: the user opted in, naming the risk.
TRUSTED_PICKLE = "unpickled with --trust-pickle (torch.load(weights_only=False)): the file's code was trusted"


def load_pickled(path: Path, name: str, trust_pickle: bool, arch: str | None = None,
                 arch_kwargs: Mapping[str, Any] | None = None, num_classes: int | None = None) -> LoadedModel:
    """A whole pickled model (``torch.save(model)``), read with ``torch.load(weights_only=False)`` -- which runs
    code the file names -- only when ``trust_pickle`` says the user trusts it. The unpickled object may be an
    ``nn.Module``, a checkpoint dict holding one (under ``model``, ``net``, ...) or a state dict (then ``arch``
    builds the architecture). The class must be importable: a class defined in the script that saved the model
    (``__main__``) is not, and the error says how to save a state dict instead."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path}")
    kind = sniff(path)
    if not trust_pickle:
        raise ModelLoadError(f"pickle:{path} is {kind.what}: unpickling runs code named by the file (it can do anything "
                             "your account can); pass --trust-pickle (Python: trust_pickle=True) only if you trust its "
                             "source, or save model.state_dict() and use --model file:PATH --arch ...")
    if kind.kind in BROKEN_KINDS or kind.kind in ("torchscript", "safetensors", "onnx", "hdf5", "npz", "zip"):
        raise file_error(path, kind, wanted="a pickled model")
    main = next((c for c in kind.classes if c.startswith("__main__.")), None)
    if main is not None:
        raise ModelLoadError(f"{path} holds an object of class {main}, defined in the script that saved it, which rbx "
                             f"cannot import: save model.state_dict() and use --model file:PATH --arch "
                             f"path/to/that_script.py:{main.split('.', 1)[1]}")
    with on_sys_path(Path.cwd()):  # a model class from the project rbx runs in imports, as under python -m
        try:
            obj = quietly(torch.load, path, map_location="cpu", weights_only=False)
        except KeyboardInterrupt:
            raise
        except (ModuleNotFoundError, AttributeError) as exc:
            raise ModelLoadError(f"{path}: unpickling needs code that is not importable here ({type(exc).__name__}: "
                                 f"{exc}); install the package that defines the model or run rbx from its folder") from None
        except BaseException as exc:  # noqa: BLE001 -- a damaged file: one line
            raise ModelLoadError(f"{path} could not be unpickled ({type(exc).__name__}: "
                                 f"{(str(exc).strip().splitlines() or [''])[0][:200]})") from None
    module = obj if isinstance(obj, nn.Module) else None
    if module is None and isinstance(obj, dict):
        module = next((obj[k] for k in STATE_DICT_KEYS if isinstance(obj.get(k), nn.Module)), None)
        if module is None:
            found = [v for v in obj.values() if isinstance(v, nn.Module)]
            module = found[0] if len(found) == 1 else None
    if module is not None:
        if arch is not None:
            raise RbxError(f"{path} holds a whole model ({type(module).__module__}.{type(module).__name__}); drop --arch")
        cls = f"{type(module).__module__}.{type(module).__name__}"
        return LoadedModel(module.eval(), name, cls, str(path), file_sha256(path),
                           extra={"format": "pickle", "trusted": TRUSTED_PICKLE})
    state = state_dict_of(obj, path)  # a state dict after all (one with Python objects beside it)
    if arch is None:
        raise RbxError(f"{path} holds a state dict of an unknown architecture ({len(state)} tensors, e.g. "
                       f"'{next(iter(state))}'): give --arch NAME, --arch pkg.module:Class or --arch path/to/file.py:Class")
    kwargs = dict(arch_kwargs or {})
    code = import_architecture(arch) if is_code_spec(arch) else None
    module = code.build(kwargs, num_classes) if code is not None else build_architecture(arch, num_classes, kwargs)
    label = architecture_label(arch, kwargs)
    load_into(module, state, label, path)
    return LoadedModel(module, name, label, str(path), file_sha256(path), num_classes=num_classes,
                       extra={"format": "pickle", "trusted": TRUSTED_PICKLE,
                              **({"architecture_code": code.provenance(kwargs)} if code is not None else {})})
