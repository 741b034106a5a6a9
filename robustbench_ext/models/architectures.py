"""Architectures (untrained modules) that checkpoints load into: registered ones in ``ARCHITECTURES``, and any
class or factory in the user's own code (``--arch pkg.module:Class``, ``--arch path/to/file.py:Class``).

``resnet18``, ``preact-resnet18`` and ``wrn-28-10`` are robustbench's own CIFAR definitions, so
RobustBench checkpoints and the reference ResNet-18 load with every key matched. ``torchvision:NAME`` and
``timm:NAME`` are any torchvision or timm model, untrained.

Code named by ``--arch`` (:func:`import_architecture`): ``pkg.module:Class`` is imported with the working
directory on ``sys.path`` (as ``python -m`` would), ``path/to/file.py:Class`` is loaded from that file with
its folder on ``sys.path`` (so it can import its neighbours). ``Class`` may be a class or a function that
returns an ``nn.Module``; keyword arguments come from ``--arch-kwargs K=V,...``, and ``num_classes`` is passed
when it takes one. The record names the code and, for a file, its sha256.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch.nn.functional as F
from torch import nn

from .._compat import import_robustbench, import_timm
from ..errors import ModelLoadError, RbxError
from ..registry import ARCHITECTURES

log = logging.getLogger(__name__)


@ARCHITECTURES.register("smallcnn", summary="small CIFAR CNN: 4 conv (32,32,64,64) + 3 linear (256,256,K); the CPU test subject")
def smallcnn(num_classes: int = 10) -> nn.Module:
    """The reference small CNN, as an ``nn.Sequential`` whose state-dict keys are its indices."""
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 8 * 8, 256), nn.ReLU(),
        nn.Linear(256, 256), nn.ReLU(),
        nn.Linear(256, num_classes),
    )


class _Block(nn.Module):
    """ResNet basic block (He et al., CVPR 2016) with the parameter names of robustbench's CIFAR ResNet."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet18(nn.Module):
    """CIFAR ResNet-18 (3x3 stem, no max-pool, 4x4 average pool): rbx's own definition, key-compatible
    with robustbench's ``ResNet(BasicBlock, [2, 2, 2, 2])``; used where robustbench cannot be imported
    (e.g. a GPU image without it). A test checks both give the same logits on the reference checkpoint."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        widths, cin, layers = (64, 128, 256, 512), 64, []
        for i, w in enumerate(widths):
            layers.append(nn.Sequential(_Block(cin, w, 1 if i == 0 else 2), _Block(w, w, 1)))
            cin = w
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(F.avg_pool2d(out, 4).flatten(1))


@ARCHITECTURES.register("resnet18", summary="CIFAR ResNet-18 (robustbench's ResNet18: 3x3 stem, no max-pool)")
def resnet18(num_classes: int = 10) -> nn.Module:
    try:
        resnet = import_robustbench("model_zoo.architectures.resnet")
    except RbxError as exc:
        log.warning("robustbench unavailable (%s); using rbx's key-compatible CIFAR ResNet-18", exc)
        return CifarResNet18(num_classes)
    return resnet.ResNet(resnet.BasicBlock, [2, 2, 2, 2], num_classes=num_classes)


@ARCHITECTURES.register("torchvision", takes_arg=True, arg_name="NAME",
                        summary="any torchvision classifier, untrained (file:PATH --arch torchvision:resnet50 --normalize imagenet)")
def torchvision_arch(name: str, num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    """``torchvision.models.get_model(name, weights=None, num_classes=..., **kwargs)``."""
    import torchvision.models as tvm

    if name not in tvm.list_models(module=tvm):
        raise RbxError(f"unknown torchvision model '{name}'; see torchvision.models.list_models()")
    try:
        return tvm.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    except TypeError as exc:
        raise RbxError(f"torchvision model '{name}' does not take {sorted(kwargs)} ({exc})") from None


@ARCHITECTURES.register("timm", takes_arg=True, arg_name="NAME",
                        summary="any timm model, untrained (file:PATH --arch timm:NAME --normalize ...)")
def timm_arch(name: str, num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, pretrained=False, num_classes=..., **kwargs)``."""
    timm = import_timm()

    if not timm.is_model(name):
        raise RbxError(f"unknown timm model '{name}'; see timm.list_models()")
    try:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    except TypeError as exc:
        raise RbxError(f"timm model '{name}' does not take {sorted(kwargs)} ({exc})") from None


@ARCHITECTURES.register("preact-resnet18", summary="CIFAR PreAct ResNet-18 (robustbench's PreActResNet18)")
def preact_resnet18(num_classes: int = 10) -> nn.Module:
    resnet = import_robustbench("model_zoo.architectures.resnet")
    return resnet.PreActResNet(resnet.PreActBlock, [2, 2, 2, 2], num_classes=num_classes)


@ARCHITECTURES.register("wrn-28-10", summary="WideResNet-28-10 (robustbench's WideResNet)")
def wrn_28_10(num_classes: int = 10) -> nn.Module:
    wrn = import_robustbench("model_zoo.architectures.wide_resnet")
    return wrn.WideResNet(depth=28, widen_factor=10, num_classes=num_classes)


# ---- architectures from the user's own code -----------------------------------------------------------
@dataclass(frozen=True)
class CodeArchitecture:
    """A class or factory named by ``--arch pkg.module:Class`` or ``--arch path/to/file.py:Class``, imported.

    ``factory(**kwargs)`` returns the (untrained) ``nn.Module``; ``file`` and ``file_sha256``: the source file
    of a ``file.py`` form, for the record."""

    spec: str
    factory: Callable[..., Any]
    file: str | None = None
    file_sha256: str | None = None

    @property
    def takes_num_classes(self) -> bool:
        """Whether the factory accepts ``num_classes`` (by name or through ``**kwargs``)."""
        params = _signature_params(self.factory)
        return params is None or "num_classes" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())

    def provenance(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """What the record keeps about the code: the spec, the keyword arguments and the file's sha256."""
        out: dict[str, Any] = {"spec": self.spec, "kwargs": dict(kwargs)}
        if self.file is not None:
            out.update(file=self.file, file_sha256=self.file_sha256)
        return out

    def build(self, kwargs: Mapping[str, Any], num_classes: int | None = None) -> nn.Module:
        """``factory(**kwargs)`` (plus ``num_classes`` when given and taken); one-line errors for bad arguments,
        an exception in the user's constructor, or a result that is not an ``nn.Module``."""
        kw = dict(kwargs)
        if num_classes is not None and "num_classes" not in kw and self.takes_num_classes:
            kw["num_classes"] = num_classes
        params = _signature_params(self.factory)
        if params is not None:
            try:
                inspect.signature(self.factory).bind(**kw)
            except TypeError as exc:
                names = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
                raise RbxError(f"--arch {self.spec}: cannot call it with {kw or 'no arguments'} ({exc}); its parameters: "
                               f"{', '.join(names) or 'none'} (give them with --arch-kwargs K=V,...)") from None
        try:
            module = self.factory(**kw)
        except Exception as exc:  # noqa: BLE001 -- the user's constructor: its error is the user's, in one line
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise ModelLoadError(f"--arch {self.spec}: building it with {kw or 'no arguments'} raised "
                                 f"{type(exc).__name__}: {first}") from None
        if not isinstance(module, nn.Module):
            raise RbxError(f"--arch {self.spec} returned a {type(module).__name__}, not a torch.nn.Module")
        return module


def is_code_spec(arch: str) -> bool:
    """Whether ``arch`` names code (``pkg.module:Class``, ``path/to/file.py:Class``), not a registered architecture."""
    head = arch.partition(":")[0]
    return ":" in arch and head not in ARCHITECTURES.names()


def import_architecture(spec: str) -> CodeArchitecture:
    """Import the class or factory ``spec`` names (see the module docstring); one-line errors that say what is
    missing: the file, the module, or the name in it (listing the ``nn.Module`` classes it does have)."""
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise RbxError(f"--arch {spec}: write pkg.module:Class or path/to/file.py:Class")
    file = sha = None
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise ModelLoadError(f"--arch {spec}: file {path} not found")
        file, sha = str(path.resolve()), hashlib.sha256(path.read_bytes()).hexdigest()
        name = f"rbx_arch_{path.stem}_{sha[:12]}"
        module = sys.modules.get(name)
        if module is None:
            loader_spec = importlib.util.spec_from_file_location(name, path)
            if loader_spec is None or loader_spec.loader is None:
                raise ModelLoadError(f"--arch {spec}: cannot load {path} as Python code")
            module = importlib.util.module_from_spec(loader_spec)
            with on_sys_path(path.resolve().parent):
                try:
                    sys.modules[name] = module
                    loader_spec.loader.exec_module(module)
                except Exception as exc:  # noqa: BLE001 -- the user's file: its error in one line
                    sys.modules.pop(name, None)
                    raise ModelLoadError(f"--arch {spec}: importing {path} raised {type(exc).__name__}: {_first(exc)}") from None
    else:
        with on_sys_path(Path.cwd()):
            try:
                module = importlib.import_module(target)
            except Exception as exc:  # noqa: BLE001 -- ModuleNotFoundError, or an error in the user's module
                hint = "" if "." in target else f" (and '{target}' is no registered architecture: see `rbx list architectures`)"
                raise ModelLoadError(f"--arch {spec}: cannot import {target} ({type(exc).__name__}: {_first(exc)}){hint}") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            classes = sorted(n for n, v in vars(module).items() if isinstance(v, type) and issubclass(v, nn.Module)
                             and v.__module__ == module.__name__)
            raise ModelLoadError(f"--arch {spec}: {target} has no '{attr}'"
                                 + (f"; its nn.Module classes: {', '.join(classes)}" if classes else ""))
        obj = getattr(obj, part)
    if not callable(obj):
        raise RbxError(f"--arch {spec}: '{attr}' is a {type(obj).__name__}, not a class or function")
    return CodeArchitecture(spec, obj, file, sha)


@contextlib.contextmanager
def on_sys_path(folder: Path):
    """``folder`` first on ``sys.path`` for the duration (removed again if it was not there)."""
    entry = os.fspath(folder)
    added = entry not in sys.path
    if added:
        sys.path.insert(0, entry)
    try:
        yield
    finally:
        if added and entry in sys.path:
            sys.path.remove(entry)


def _signature_params(factory: Callable[..., Any]) -> "Mapping[str, inspect.Parameter] | None":
    try:
        return inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return None


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""
