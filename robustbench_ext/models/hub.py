"""Models from the Hugging Face Hub: ``hf:ORG/NAME[,file=FILE][,rev=REVISION]``.

Needs ``huggingface_hub`` (``pip install 'robustbench-ext[hub]'``, which brings ``safetensors`` too). Files
come through ``huggingface_hub.hf_hub_download`` and its cache (``$HF_HOME/hub``, default
``~/.cache/huggingface/hub``), so a model downloaded once runs offline, also with ``HF_HUB_OFFLINE=1``.

Which file, and what it becomes:

- ``file=FILE``: that file; what it is decides (:mod:`~robustbench_ext.models.formats`): a safetensors or
  PyTorch state dict loads into ``--arch`` (or the ``architecture`` its ``config.json`` names, see below),
  a TorchScript archive runs as it is, a pickled model is refused unless ``--trust-pickle``;
- a **timm** repository (its ``config.json`` has timm's ``architecture`` and ``pretrained_cfg``, as
  ``timm.models.push_to_hf_hub`` writes it): the model is built by ``timm.create_model`` (architecture,
  ``model_args``, ``num_classes``) and its weights read from ``model.safetensors``, else
  ``pytorch_model.bin`` (tensors only); the normalization of ``pretrained_cfg`` is wrapped in;
- otherwise the first of :data:`WEIGHT_FILES` the repository has: safetensors first. A ``config.json`` with
  ``{"architecture": "<an rbx architecture>", "num_classes": K, "mean": [...], "std": [...],
  "dataset": "cifar10"}`` lets ``hf:`` run without ``--arch`` (rbx's own convention for uploading a model).

The record names the repository, the resolved commit and the file (``source``: ``hf:ORG/NAME@COMMIT/FILE``),
the file's sha256, and the model card's links (the repository page; a paper where the card's metadata
names an ``arxiv:`` id). Every failure is one line: no such repository, a gated one, no such file, or not
in the local cache while offline (saying where the cache is and how to fill it).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._compat import import_timm
from ..errors import ModelLoadError, RbxError
from ..progress import third_party_bars
from ..registry import ARCHITECTURES, MODELS
from ..specs import parse_params
from .formats import sniff
from .files import file_error, file_sha256, read_state_dict
from .loading import LoadedModel, Normalize, architecture_label, checkpoint_classes, from_file, load_into
from .whole import load_pickled, load_torchscript

log = logging.getLogger(__name__)

#: Weight files looked for, in order, when ``file=`` is not given (safetensors first: it holds no code).
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.pt", "model.pth")
#: Weight files of a timm repository, in timm's own order.
TIMM_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


@dataclass(frozen=True)
class HubFile:
    """A file of a Hub repository in the local cache: its ``path`` and the ``commit`` it was resolved at."""

    path: Path
    name: str
    commit: str | None


class _Fetch:
    """Downloads through ``hf_hub_download`` with one-line errors; remembers whether the Hub was unreachable."""

    def __init__(self, repo: str, revision: str | None) -> None:
        try:
            import huggingface_hub
            import huggingface_hub.constants  # noqa: F401  (submodules: the package loads them lazily)
            import huggingface_hub.utils  # noqa: F401
        except ImportError:
            raise RbxError("hf: models need huggingface_hub: pip install 'robustbench-ext[hub]' "
                           "(or pip install huggingface_hub safetensors)") from None
        self.hub = huggingface_hub
        self.repo, self.revision = repo, revision
        self.unreachable: str | None = None

    def get(self, filename: str, *, required: bool = False) -> HubFile | None:
        """The cached path of ``filename`` (downloaded if needed), or None where the repository has no such file
        or it is not cached while the Hub is unreachable (``required``: then an error that says which)."""
        try:
            with third_party_bars():  # the Hub's download bars follow the terminal rule too
                path = Path(self.hub.hf_hub_download(self.repo, filename, revision=self.revision))
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 -- sorted by the exception's class name (stable across versions)
            names = {type(e).__name__ for e in _chain(exc)}
            if names & {"GatedRepoError"}:
                raise ModelLoadError(f"hf:{self.repo} is a gated repository: accept its terms on huggingface.co and log in "
                                     "(hf auth login, or set HF_TOKEN)") from None
            if names & {"RepositoryNotFoundError"}:
                raise ModelLoadError(f"hf:{self.repo}: no such model repository on the Hugging Face Hub (or it is private: "
                                     "log in with hf auth login, or set HF_TOKEN)") from None
            if names & {"RevisionNotFoundError"}:
                raise ModelLoadError(f"hf:{self.repo}: no revision '{self.revision}' (rev= takes a branch, tag or commit)") from None
            if names & {"LocalEntryNotFoundError", "OfflineModeIsEnabled", "ConnectError", "ConnectionError",
                        "ConnectTimeout", "ReadTimeout", "Timeout", "gaierror", "MaxRetryError", "NewConnectionError",
                        "SSLError", "ProxyError"}:
                self.unreachable = type(exc).__name__
            elif not names & {"EntryNotFoundError", "RemoteEntryNotFoundError"}:
                raise ModelLoadError(f"hf:{self.repo}: downloading {filename} failed ({type(exc).__name__}: "
                                     f"{_first(exc)})") from None
            if required:
                raise self.missing([filename]) from None
            return None
        return HubFile(path, filename, _commit_of(path))

    def missing(self, tried: list[str]) -> ModelLoadError:
        """The error when none of ``tried`` could be had: not in the repository, or not cached while offline."""
        files = ", ".join(tried)
        if self.unreachable:
            return ModelLoadError(
                f"hf:{self.repo}: {files} not in the local Hugging Face cache ({self.hub.constants.HF_HUB_CACHE}) and "
                f"the Hub cannot be reached ({self.unreachable}; HF_HUB_OFFLINE={'1' if _offline(self.hub) else 'unset'}): "
                f"download it where there is internet (hf download {self.repo}) and copy the cache, or set HF_HOME")
        return ModelLoadError(f"hf:{self.repo} has no {files}: name its weights file with hf:{self.repo},file=FILE")


def _offline(hub: Any) -> bool:
    try:
        return bool(hub.constants.HF_HUB_OFFLINE)
    except AttributeError:
        return False


def _commit_of(path: Path) -> str | None:
    """The commit a cached file was resolved at: the folder after ``snapshots/`` in the cache layout."""
    parts = path.parts
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts[:-1] else None


def _chain(exc: BaseException | None):
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else ""


def parse_hub_spec(arg: str) -> tuple[str, dict[str, Any]]:
    """``ORG/NAME[,file=F][,rev=R]`` -> (repository id, options); a one-line error for anything else."""
    repo, _, rest = arg.partition(",")
    repo = repo.strip()
    if repo.startswith(("hf.co/", "https://huggingface.co/")):
        repo = repo.split("huggingface.co/", 1)[-1].split("hf.co/", 1)[-1]
    opts = parse_params(rest, f"hf:{arg}")
    unknown = set(opts) - {"file", "rev"}
    if unknown:
        raise RbxError(f"hf:{arg}: unknown options {sorted(unknown)}; known: file, rev")
    if not _REPO_ID.fullmatch(repo):
        raise RbxError(f"hf:{arg}: write hf:ORG/NAME (a Hugging Face model repository id, e.g. hf:timm/resnet18.a1_in1k)")
    return repo, {k: str(v) for k, v in opts.items()}


def card_links(fetch: _Fetch, config: dict[str, Any] | None) -> dict[str, str]:
    """The model card's links: the repository page, and a paper where the card's metadata (its README's YAML
    header) or a timm ``pretrained_cfg`` names an arXiv id."""
    links = {"model": f"https://huggingface.co/{fetch.repo}"}
    ids: list[str] = []
    readme = fetch.get("README.md")
    if readme is not None:
        text = readme.path.read_text(encoding="utf-8", errors="replace")
        if text.startswith("---"):
            header = text.split("---", 2)[1] if text.count("---") >= 2 else ""
            ids += re.findall(r"arxiv:\s*(\d{4}\.\d{4,5})", header, flags=re.IGNORECASE)
    pcfg = (config or {}).get("pretrained_cfg") or {}
    ids += re.findall(r"arxiv:\s*(\d{4}\.\d{4,5})", str(pcfg.get("paper_ids") or ""), flags=re.IGNORECASE)
    if ids:
        links["paper"] = f"https://arxiv.org/abs/{ids[0]}"
    return links


def _is_timm_config(config: dict[str, Any] | None) -> bool:
    return bool(config) and "architecture" in config and ("pretrained_cfg" in config or "num_features" in config)


def _read_config(fetch: _Fetch) -> dict[str, Any] | None:
    got = fetch.get("config.json")
    if got is None:
        return None
    try:
        cfg = json.loads(got.path.read_text())
    except (OSError, ValueError):
        raise ModelLoadError(f"hf:{fetch.repo}: its config.json ({got.path}) is not valid JSON") from None
    return cfg if isinstance(cfg, dict) else None


@MODELS.register("hf", takes_arg=True, arg_name="ORG/NAME[,file=FILE][,rev=REV]",
                 summary="a Hugging Face Hub model (safetensors first; timm's hub models through timm); needs huggingface_hub")
def hub_model(arg: str, arch_override: str | None = None, num_classes: int | None = None,
              arch_kwargs: dict | None = None, trust_pickle: bool = False) -> LoadedModel:
    """A model from the Hugging Face Hub (see the module docstring)."""
    repo, opts = parse_hub_spec(arg)
    fetch = _Fetch(repo, opts.get("rev"))
    config = _read_config(fetch)
    if "file" not in opts and arch_override is None and _is_timm_config(config):
        loaded, got = _timm_model(fetch, config or {}, num_classes)
    else:
        if "file" in opts:
            got = fetch.get(opts["file"], required=True)
        else:
            got = next((g for g in (fetch.get(f) for f in WEIGHT_FILES) if g is not None), None)
            if got is None:
                raise fetch.missing(list(WEIGHT_FILES))
        loaded = _file_model(fetch, got, config, arch_override, num_classes, arch_kwargs, trust_pickle)
    loaded.source = f"hf:{repo}@{got.commit or fetch.revision or 'main'}/{got.name}"
    loaded.extra = {**loaded.extra, "hub": {"repo": repo, "revision": got.commit, "file": got.name},
                    "card": card_links(fetch, config)}
    return loaded


def _file_model(fetch: _Fetch, got: HubFile, config: dict[str, Any] | None, arch: str | None, num_classes: int | None,
                arch_kwargs: dict | None, trust_pickle: bool) -> LoadedModel:
    """A weights file of a repository, by what it is."""
    name, kind = f"hf:{fetch.repo}", sniff(got.path)
    cfg = config or {}
    if kind.kind == "torchscript":
        if arch is not None:
            raise RbxError(f"hf:{fetch.repo}/{got.name} is {kind.what}: drop --arch")
        loaded = load_torchscript(got.path, name)
    elif kind.kind == "module" or (kind.kind == "pickle" and trust_pickle):
        loaded = load_pickled(got.path, name, trust_pickle, arch, arch_kwargs, num_classes)
    elif kind.kind in ("state_dict", "safetensors"):
        arch = arch or _config_architecture(cfg, fetch.repo)
        if arch is None:
            raise RbxError(f"hf:{fetch.repo}/{got.name} is {kind.what} of an unknown architecture: give --arch NAME, "
                           "--arch pkg.module:Class or --arch path/to/file.py:Class (or put \"architecture\" in the "
                           "repository's config.json)")
        kwargs = {**(cfg.get("arch_kwargs") or {}), **(arch_kwargs or {})}
        loaded = from_file(got.path, arch, name, num_classes or cfg.get("num_classes"), kwargs)
    else:
        raise file_error(got.path, kind)
    loaded.dataset = loaded.dataset or cfg.get("dataset")
    mean, std = cfg.get("mean"), cfg.get("std")
    if mean is not None and std is not None and loaded.normalization is None:
        loaded.module = Normalize(loaded.module, tuple(mean), tuple(std)).eval()
        loaded.normalization = {"mean": [float(m) for m in mean], "std": [float(s) for s in std]}
    return loaded


def _config_architecture(cfg: dict[str, Any], repo: str) -> str | None:
    """The rbx architecture a repository's ``config.json`` names (registered names only: a downloaded config never
    makes rbx import code), or None."""
    arch = cfg.get("architecture")
    if not isinstance(arch, str):
        return None
    if arch.partition(":")[0] not in ARCHITECTURES.names():
        raise RbxError(f"hf:{repo}: its config.json names architecture '{arch}', which is not an rbx architecture "
                       f"(known: {', '.join(ARCHITECTURES.names(display=True))}); give --arch")
    return arch


def _timm_model(fetch: _Fetch, config: dict[str, Any], num_classes: int | None) -> tuple[LoadedModel, HubFile]:
    """A timm repository: ``timm.create_model`` builds the architecture from its config, the weights are read
    from its safetensors file (else its PyTorch file, tensors only)."""
    timm = import_timm()
    arch = str(config["architecture"])
    pcfg = dict(config.get("pretrained_cfg") or {})
    model_args = dict(config.get("model_args") or {})
    got = next((g for g in (fetch.get(f) for f in TIMM_WEIGHT_FILES) if g is not None), None)
    if got is None:
        raise fetch.missing(list(TIMM_WEIGHT_FILES))
    state = read_state_dict(got.path)
    k = num_classes or config.get("num_classes") or pcfg.get("num_classes")
    try:
        module = timm.create_model(arch, pretrained=False, **({"num_classes": int(k)} if k else {}), **model_args)
    except Exception as exc:  # noqa: BLE001 -- an architecture this timm does not have, or bad model_args
        raise ModelLoadError(f"hf:{fetch.repo}: timm {timm.__version__} cannot build '{arch}' "
                             f"({type(exc).__name__}: {_first(exc)}); a newer timm may know it") from None
    label = architecture_label(f"timm:{arch}", model_args)
    load_into(module, state, label, got.path)
    mean, std = pcfg.get("mean"), pcfg.get("std")
    norm = None
    if mean is not None and std is not None:
        module = Normalize(module, tuple(mean), tuple(std))
        norm = {"mean": [float(m) for m in mean], "std": [float(s) for s in std]}
    head = checkpoint_classes(state, module.model if isinstance(module, Normalize) else module)
    extra: dict[str, Any] = {"format": "timm"}
    if pcfg.get("input_size"):
        extra["input_size"] = list(pcfg["input_size"])
    loaded = LoadedModel(module.eval(), f"hf:{fetch.repo}", label, "", file_sha256(got.path), norm,
                         extra=extra, num_classes=head or (int(k) if k else None))
    return loaded, got

