"""Registered model sources: where a researcher's model comes from.

====================================  ====================================================================
spec                                  model
====================================  ====================================================================
``cifar10-smallcnn-linf-at``,         rbx's reference models (the small CNN ships inside the package)
``cifar10-resnet18-linf-at``
``file:PATH [--arch ARCH]``           a model file, by what it is: a state dict or safetensors file in
                                      ``--arch`` (registered, ``pkg.module:Class`` or ``file.py:Class``,
                                      ``--arch-kwargs K=V``; class count read from its last layer), or a
                                      TorchScript archive (no ``--arch``)
``torchscript:PATH``                  a TorchScript archive
``pickle:PATH --trust-pickle``        a whole pickled model; unpickling runs the file's code: opt-in only
``hf:ORG/NAME[,file=F][,rev=R]``      a Hugging Face Hub model (safetensors first; timm's hub models
                                      through timm); see :mod:`robustbench_ext.models.hub`
``trained:DIR``                       a model trained by ``rbx train``, with its inference wrapper
``robustbench:[DATASET/][THREAT/]ID`` a RobustBench zoo entry, which runs on its own dataset by default
``torchvision:NAME[,weights=W]``      a torchvision model: ``weights`` = a weights enum name (default
                                      ``DEFAULT``, through torchvision's cache), ``none`` (random) or a file
``timm:NAME[,weights=W]``             a timm model through ``timm.create_model``: pretrained from the hub
                                      (default), ``none`` (random), or a local weights file (offline)
====================================  ====================================================================

Models that expect normalized inputs (torchvision's and timm's ImageNet models) are wrapped in
:class:`~robustbench_ext.models.loading.Normalize` with their own mean and std, so every model takes [0, 1]
inputs. A download that fails is one line saying where to put the file instead; nothing is left behind.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import sys
from pathlib import Path

from torch import nn

from .._compat import import_robustbench, import_timm
from ..errors import ModelLoadError, RbxError, UnknownNameError
from .files import checkpoint_error, file_error, file_sha256, read_state_dict
from .formats import sniff
from .loading import LoadedModel, Normalize, apply_wrapper, checkpoint_classes, find_checkpoint, from_file, load_into
from .whole import load_pickled, load_torchscript
from ..paths import download_guard
from ..progress import third_party_bars
from ..registry import ARCHITECTURES, MODELS
from ..specs import parse_params

#: The dataset each RobustBench board's models run on, as rbx names it.
ROBUSTBENCH_DATASETS = {"cifar10": "cifar10", "cifar100": "cifar100", "imagenet": "imagenet"}

_REFERENCE = {
    # name: (file in ../shared/models or the package's assets, architecture, what it is)
    "cifar10-resnet18-linf-at": ("cifar10_resnet18_linf_at.pt", "resnet18",
                                 "reference CIFAR-10 ResNet-18, PGD-2 Linf 8/255 adversarial training (15 epochs)"),
    "cifar10-smallcnn-linf-at": ("cifar10_smallcnn_linf_at.pt", "smallcnn",
                                 "reference CIFAR-10 small CNN, PGD-2 Linf 8/255 adversarial training; the CPU test subject"),
}


#: The reference models' card (the record's ``model.card``): both are trained with PGD adversarial training
#: (Madry et al., ICLR 2018); the small CNN's own card is ``robustbench_ext/assets/README.md``.
REFERENCE_CARD = {"paper": "https://arxiv.org/abs/1706.06083"}


def _register_reference(name: str, filename: str, arch: str, summary: str) -> None:
    def factory(arch_override: str | None = None, num_classes: int | None = None) -> LoadedModel:
        if arch_override not in (None, arch):
            raise RbxError(f"model '{name}' is a {arch}; drop --arch (it is for file:PATH models)")
        loaded = from_file(find_checkpoint(filename), arch, name, num_classes)
        loaded.dataset = "cifar10"
        loaded.extra = {**loaded.extra, "card": dict(REFERENCE_CARD)}
        return loaded

    factory.__doc__ = summary
    MODELS.register(name, summary=summary, architecture=arch, filename=filename, card=REFERENCE_CARD)(factory)


for _name, (_file, _arch, _summary) in _REFERENCE.items():
    _register_reference(_name, _file, _arch, _summary)


#: File endings of model weights: a model spec ending so is a path (``file:`` reads all three).
WEIGHT_SUFFIXES = (".pt", ".pth", ".safetensors")


@MODELS.add_hint
def _path_hint(text: str) -> tuple[str, str] | None:
    """An unknown model spec that is a path: ``trained:DIR`` for a folder ``rbx train`` wrote, ``file:PATH`` for weights
    (the path exists, or ends in .pt/.pth/.safetensors). Nothing for other text."""
    p = Path(text)
    if (p / "model.json").is_file() and (p / "model.pt").is_file():
        return f"trained:{text}", "a model trained with rbx train"
    if p.suffix.lower() in WEIGHT_SUFFIXES or p.is_file():
        state = "" if p.exists() else "; no such file yet"
        return f"file:{text}", f"a model file (a state dict needs its --arch too){state}"
    return None


@MODELS.register("file", takes_arg=True, arg_name="PATH",
                 summary="a model file: a state dict or safetensors file (needs --arch), or a TorchScript archive (detected)")
def file_model(path: str, arch_override: str | None = None, num_classes: int | None = None,
               arch_kwargs: dict | None = None) -> LoadedModel:
    """A model file, by what it is (:func:`~robustbench_ext.models.formats.sniff`): a state dict or safetensors file
    loads into ``--arch`` (class count read from it); a TorchScript archive runs as it is; anything else (a whole
    pickled model, an HTML page, ...) is a one-line error saying what the file is and what to do."""
    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"checkpoint not found: {p}")
    kind = sniff(p)
    if kind.kind == "torchscript":
        if arch_override is not None or arch_kwargs:
            raise RbxError(f"{p} is {kind.what}: it carries its own architecture; drop --arch")
        return load_torchscript(p, f"file:{p.name}")
    if kind.kind not in ("state_dict", "safetensors"):
        raise file_error(p, kind)
    if arch_override is None:
        raise RbxError(f"model 'file:{path}' is {kind.what} and needs --arch: a registered architecture "
                       f"({', '.join(ARCHITECTURES.names(display=True))}), --arch pkg.module:Class or --arch path/to/file.py:Class")
    return from_file(p, arch_override, f"file:{p.name}", num_classes, arch_kwargs)


@MODELS.register("torchscript", takes_arg=True, arg_name="PATH",
                 summary="a TorchScript archive (torch.jit.script/trace(model).save): architecture and weights in one file")
def torchscript_model(path: str, arch_override: str | None = None, num_classes: int | None = None) -> LoadedModel:
    if arch_override is not None:
        raise RbxError(f"torchscript:{path} carries its own architecture; drop --arch")
    return load_torchscript(Path(path), f"torchscript:{Path(path).name}")


@MODELS.register("pickle", takes_arg=True, arg_name="PATH",
                 summary="a whole pickled model (torch.save(model)); runs the file's code, so only with --trust-pickle")
def pickle_model(path: str, arch_override: str | None = None, num_classes: int | None = None,
                 arch_kwargs: dict | None = None, trust_pickle: bool = False) -> LoadedModel:
    return load_pickled(Path(path), f"pickle:{Path(path).name}", trust_pickle, arch_override, arch_kwargs, num_classes)


@MODELS.register("trained", takes_arg=True, arg_name="DIR",
                 summary="a model trained with `rbx train` (its folder, or its model.pt), with its inference wrapper")
def trained_model(path: str, arch_override: str | None = None, num_classes: int | None = None) -> LoadedModel:
    p = Path(path)
    weights = p / "model.pt" if p.is_dir() else p
    meta_path = weights.with_name("model.json")
    if not meta_path.is_file():
        raise ModelLoadError(f"{meta_path} not found: trained:DIR needs the folder `rbx train` wrote (model.pt + model.json)")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {meta_path}: {exc}") from None
    arch = meta.get("architecture")
    if arch_override not in (None, arch):
        raise RbxError(f"{weights} is a {arch}; drop --arch")
    loaded = from_file(weights, arch, str(meta.get("name") or weights.parent.name), num_classes or meta.get("num_classes"))
    loaded.module = apply_wrapper(loaded.module, meta.get("wrapper")).eval()
    loaded.extra = {"trained": {k: meta.get(k) for k in ("defense", "defense_params", "init", "epochs", "wrapper")}}
    loaded.dataset = meta.get("eval_dataset")
    return loaded


def robustbench_parts(spec: str) -> tuple[str, str, str]:
    """``[DATASET/][THREAT/]ID`` -> (dataset, threat model, id), defaults cifar10 and Linf."""
    parts = spec.split("/")
    return (parts[0] if len(parts) == 3 else "cifar10"), (parts[-2] if len(parts) >= 2 else "Linf"), parts[-1]


def dataset_hint(spec: str) -> str | None:
    """The dataset a model spec runs on by default, known without loading it (None: the suite's)."""
    name, _, arg = spec.partition(":")
    if name == "labels":
        return dataset_hint(arg)
    if name == "robustbench":
        return ROBUSTBENCH_DATASETS.get(robustbench_parts(arg)[0])
    if name in _REFERENCE:
        return None  # CIFAR-10 models: the suite's dataset (cifar10) is theirs
    return None


@MODELS.register("robustbench", takes_arg=True, arg_name="[DATASET/][THREAT/]MODEL_ID",
                 summary="a RobustBench model zoo entry through robustbench.load_model (model dir: $RBX_ROBUSTBENCH_DIR or ./models)")
def robustbench_model(spec: str, arch_override: str | None = None, num_classes: int | None = None) -> LoadedModel:
    dataset, threat, model_id = robustbench_parts(spec)
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
        with third_party_bars(), contextlib.redirect_stdout(sys.stderr), download_guard(model_dir):
            module = utils.load_model(model_name=model_id, model_dir=str(model_dir), dataset=dataset, threat_model=threat)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # EOFError from an empty file too (click would call it an "abort")
        if ckpt.is_file() and not _is_network_error(exc):
            raise checkpoint_error(ckpt) from None  # a broken file: never relay torch's advice to unpickle it
        if _is_network_error(exc) or not ckpt.is_file():
            raise ModelLoadError(
                f"robustbench model '{model_id}' is not in {ckpt.parent} and could not be downloaded "
                f"({_why_download_failed(exc)}); put its checkpoint at {ckpt} or set RBX_ROBUSTBENCH_DIR"
            ) from None
        raise
    prep = known[model_id].get("preprocessing") if isinstance(known[model_id], dict) else None
    return LoadedModel(
        module.eval(), f"robustbench:{model_id}", type(module).__name__, f"robustbench:{dataset}/{threat}/{model_id}",
        file_sha256(ckpt) if ckpt.is_file() else None,
        extra={"robustbench": {"dataset": dataset, "threat_model": threat, **({"preprocessing": prep} if prep else {})}},
        dataset=ROBUSTBENCH_DATASETS.get(dataset),
    )


def _is_network_error(exc: BaseException) -> bool:
    names = {type(e).__name__ for e in _chain(exc)}
    return bool(names & {"ConnectionError", "MaxRetryError", "NewConnectionError", "Timeout", "ConnectTimeout",
                         "gaierror", "FileURLRetrievalError", "ReadTimeout", "SSLError", "ProxyError", "URLError",
                         "LocalEntryNotFoundError", "OfflineModeIsEnabled"})


def _why_download_failed(exc: BaseException) -> str:
    """Why a download failed, as far as the error shows: "offline?" only when it is a network error."""
    if _is_network_error(exc):
        return f"offline or the server unreachable? {type(exc).__name__}"
    text = str(exc).strip().splitlines()[0][:150] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _chain(exc: BaseException | None):
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


# ---- torchvision and timm --------------------------------------------------------------------------
def _name_and_options(arg: str, kind: str) -> tuple[str, dict]:
    name, _, rest = arg.partition(",")
    opts = parse_params(rest, f"{kind}:{arg}")
    unknown = set(opts) - {"weights"}
    if unknown:
        raise RbxError(f"{kind}:{arg}: unknown options {sorted(unknown)}; known: weights")
    return name.strip(), opts


def _normalized(module: nn.Module, mean, std) -> tuple[nn.Module, dict | None]:
    if mean is None or std is None:
        return module, None
    return Normalize(module, tuple(mean), tuple(std)), {"mean": [float(m) for m in mean], "std": [float(s) for s in std]}


@MODELS.register("torchvision", takes_arg=True, arg_name="NAME[,weights=DEFAULT|none|ENUM|PATH]",
                 summary="a torchvision classifier (ImageNet normalization wrapped in; weights through torchvision's cache)")
def torchvision_model(arg: str, arch_override: str | None = None, num_classes: int | None = None) -> LoadedModel:
    import torchvision.models as tvm

    name, opts = _name_and_options(arg, "torchvision")
    if name not in tvm.list_models(module=tvm):
        close = difflib.get_close_matches(name, tvm.list_models(module=tvm), n=5)
        raise UnknownNameError(f"unknown torchvision model '{name}'" + (f"; did you mean {', '.join(close)}?" if close else ""))
    weights = str(opts.get("weights", "DEFAULT"))
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # torchvision's ImageNet models
    sha, source = None, f"torchvision:{name}"
    if weights.lower() == "none" or Path(weights).is_file():
        module = tvm.get_model(name, weights=None, **({"num_classes": num_classes} if num_classes else {}))
        if weights.lower() != "none":
            path = Path(weights)
            state = read_state_dict(path)
            k = checkpoint_classes(state, module)
            if k is not None and k != checkpoint_classes(module.state_dict(), module):
                module = tvm.get_model(name, weights=None, num_classes=k)
            load_into(module, state, f"torchvision:{name}", path)
            sha, source = file_sha256(path), f"torchvision:{name} + {path}"
        else:
            source += " (random weights)"
    else:
        try:
            w = tvm.get_model_weights(name)[weights] if weights != "DEFAULT" else tvm.get_model_weights(name).DEFAULT
        except (KeyError, ValueError):
            raise RbxError(f"torchvision model '{name}' has no weights '{weights}'; known: "
                           f"{', '.join(w.name for w in tvm.get_model_weights(name))}, none, or a file path") from None
        hub = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch")) / "hub" / "checkpoints"
        try:
            with third_party_bars():
                module = tvm.get_model(name, weights=w)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            target = hub / Path(w.url).name
            if target.is_file() and not _is_network_error(exc):
                raise checkpoint_error(target) from None
            raise ModelLoadError(f"torchvision weights {w} could not be downloaded ({_why_download_failed(exc)}); "
                                 f"put {Path(w.url).name} in {hub} or use torchvision:{name},weights=PATH") from None
        mean, std = w.transforms().mean, w.transforms().std
        source = f"torchvision:{name},weights={w}"
    module, norm = _normalized(module.eval(), mean, std)
    k = checkpoint_classes(module.state_dict(), module)
    return LoadedModel(module.eval(), f"torchvision:{name}", name, source, sha, norm, num_classes=k,
                       dataset="imagenet" if k == 1000 else None)


@MODELS.register("timm", takes_arg=True, arg_name="NAME[,weights=hub|none|PATH]",
                 summary="a timm model through timm.create_model (its normalization wrapped in; pretrained from the hub or a local file)")
def timm_model(arg: str, arch_override: str | None = None, num_classes: int | None = None) -> LoadedModel:
    timm = import_timm()

    name, opts = _name_and_options(arg, "timm")
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5)
        raise UnknownNameError(f"unknown timm model '{name}'" + (f"; did you mean {', '.join(close)}?" if close else ""))
    weights = str(opts.get("weights", "hub"))
    kw = {"num_classes": num_classes} if num_classes else {}
    sha, source = None, f"timm:{name}"
    if weights.lower() == "none":
        module, source = timm.create_model(name, pretrained=False, **kw), f"timm:{name} (random weights)"
    elif weights.lower() == "hub":
        try:
            with third_party_bars():
                module = timm.create_model(name, pretrained=True, **kw)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            raise ModelLoadError(f"timm could not download the weights of '{name}' ({_why_download_failed(exc)}); "
                                 f"download them where you have internet and use timm:{name},weights=PATH") from None
        source = f"timm:{name} (pretrained, hub)"
    else:
        path = Path(weights)
        if not path.is_file():
            raise ModelLoadError(f"checkpoint not found: {path}")
        state = read_state_dict(path)  # what the file is, before any model is built
        probe = timm.create_model(name, pretrained=False)
        k = checkpoint_classes(state, probe) or num_classes
        module = timm.create_model(name, pretrained=False, **({"num_classes": k} if k else {}))
        load_into(module, state, f"timm:{name}", path)
        sha, source = file_sha256(path), f"timm:{name} + {path}"
    cfg = getattr(module, "pretrained_cfg", {}) or {}
    module, norm = _normalized(module.eval(), cfg.get("mean"), cfg.get("std"))
    k = getattr(module.model if isinstance(module, Normalize) else module, "num_classes", None)
    return LoadedModel(module.eval(), f"timm:{name}", name, source, sha, norm, num_classes=k,
                       extra={"input_size": list(cfg["input_size"])} if cfg.get("input_size") else {})


@MODELS.register("labels", takes_arg=True, arg_name="MODEL",
                 summary="MODEL answering with its predicted label only (one-hot, no scores): for label-only runs")
def labels_model(spec: str, arch_override: str | None = None, num_classes: int | None = None) -> LoadedModel:
    """``labels:MODEL``: any model spec wrapped in :class:`~robustbench_ext.models.adapter.LabelOnly`. A run of it is
    a label-only run (only decision-based attacks; no gradient is ever taken)."""
    from .adapter import LabelOnly

    if not spec:
        raise RbxError("labels:MODEL needs a model spec after 'labels:', e.g. labels:cifar10-smallcnn-linf-at")
    inner = MODELS.create(spec, arch_override=arch_override, num_classes=num_classes)
    inner.module = LabelOnly(inner.module.eval()).eval()
    inner.name = f"labels:{inner.name}"
    inner.extra = {**inner.extra, "label_only": True}
    return inner
