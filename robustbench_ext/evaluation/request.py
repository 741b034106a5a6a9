"""One validated run request: what ``rbx run``, ``rbx check``, :func:`~robustbench_ext.evaluate`, corruption
runs and shard streams are asked to do.

A :class:`RunRequest` is built once (from the CLI's options, ``evaluate()``'s keywords, or by hand), is
validated once, in its constructor -- every check that needs no model weights, images or results files:
numbers, names, and options that do not go together, so a bad request fails before anything is loaded --
and is planned once (:attr:`RunRequest.planned`: the suite and threat models resolved, every attack built
into the stage plan). Everything downstream reads the request; nothing parses an option a second time::

    request = RunRequest(model="cifar10-smallcnn-linf-at", data="cifar10-1k", n_examples=100)
    ev = run(request)            # robustbench_ext.evaluation.runner.run: the one entry point
    print(ev)                    # the run's table

The three kinds of run (:attr:`RunRequest.kind`): ``threats`` (the usual: clean, per-threat and union robust
accuracy), ``corruptions`` (a corruption suite: accuracy per corruption and severity) and ``stream`` (threat
models over packed ``.npz`` shards, ``shards=``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..attack.search import SearchOptions
from ..attack.threat import ThreatModel
from ..data.datasets import EvalData
from ..errors import RbxError
from ..models.adapter import is_label_only
from ..progress import show_bars
from ..models.loading import SOURCE_OPTIONS, LoadedModel, parse_normalization
from ..registry import DATASETS, MODELS
from ..runtime import check_batch_size, check_seed, resolve_device
from .distributed import Dist
from .majority import DEFAULT_DRAWS, Draws
from .plan import RunPlan, compile_plan
from .suites import Benchmark, Suite, ThreatSpec, default_suite, load_suite, plan_benchmark

#: The model a bare ``rbx run`` evaluates when the reference ResNet-18 is at hand (else the embedded small CNN:
#: :func:`default_model`).
DEFAULT_MODEL = "cifar10-resnet18-linf-at"
#: The suite a label-only run uses when none is named (its cascades are decision-based attacks only).
LABEL_ONLY_SUITE = "cifar10-labelonly"
#: Where a running evaluation keeps its evaluation state, inside the results directory (removed when the run ends).
STATE_DIR = ".rbx-partial"

KINDS = ("threats", "corruptions", "stream")
#: Fields that say where and how a run executes, not what it evaluates: changing them keeps the plan.
_EXECUTION_FIELDS = frozenset({"device", "dist", "progress", "state_dir", "results_dir", "resume"})


@dataclass(frozen=True)
class Planned:
    """A request planned: the benchmark (suite and threat models resolved, attacks named), the stage plan
    (every attack built once), the dataset to evaluate and, for a corruption run, its suite."""

    bench: Benchmark | None
    plan: RunPlan | None
    dataset: Any
    corruption_suite: Suite | None = None


@dataclass(frozen=True)
class RunRequest:
    """One run, as asked for. Validated in the constructor; :attr:`planned` plans it once.

    ``model``: a model spec (``cifar10-smallcnn-linf-at``, ``file:ckpt.pt``, ``hf:ORG/NAME``, ``robustbench:ID``;
    see :func:`~robustbench_ext.models.load_model`), a :class:`~robustbench_ext.models.LoadedModel` or a plain
    ``nn.Module`` (``[N, C, H, W]`` in [0, 1] -> logits; ``normalize`` wraps one that expects normalized inputs).
    ``arch`` (a registered architecture, ``pkg.module:Class`` or ``path/to/file.py:Class``), ``arch_kwargs``
    (its keyword arguments: a mapping or ``(key, value)`` pairs), ``num_classes``: for state-dict files
    (``file:``, ``hf:``). ``trust_pickle``: let ``pickle:PATH`` unpickle a whole model (runs the file's code).
    ``output``: which entry of a structured output holds the logits.

    ``data``: a dataset spec (``cifar10-1k``), an :class:`~robustbench_ext.data.EvalData` or a pair of tensors
    ``(x [N, C, H, W] in [0, 1], y [N])``, of which the first ``n_examples`` are taken; None: the model's own
    dataset, else the suite's. ``shards``: a folder or glob of ``.npz`` shards instead (a streamed run).

    ``threats`` / ``suite`` / ``attacks`` / ``union_attacks``: what to evaluate, by the one planning rule
    (:func:`~robustbench_ext.evaluation.suites.plan_benchmark`). A corruption suite makes a corruption run.

    The rest are the run's settings, documented at :func:`~robustbench_ext.evaluation.runner.evaluate`.
    """

    model: Any = DEFAULT_MODEL
    data: Any = None
    threats: tuple = ()
    suite: "str | Suite | None" = None
    attacks: tuple = ()
    union_attacks: tuple = ()
    arch: str | None = None
    arch_kwargs: Any = ()
    trust_pickle: bool = False
    normalize: str | None = None
    num_classes: int | None = None
    output: str | int | None = None
    allow_class_subset: bool = False
    n_examples: int | None = None
    shards: str | None = None
    seed: int = 0
    batch_size: int = 256
    device: "str | torch.device" = "auto"
    search: SearchOptions = SearchOptions()
    eps_sweep: tuple = ()
    union_only: bool | None = None
    union_order: tuple | None = None
    randomized: bool | None = None
    draws: int = DEFAULT_DRAWS
    draw_seed: int | None = None
    curve: bool = False
    label_only: bool = False
    skip_stages: tuple = ()
    allow_meaningless: bool = False
    audit: int | None = None
    escalate: bool = True
    state_dir: Path | None = None
    resume: bool | None = None
    results_dir: Path | None = None
    progress: bool | None = None
    dist: Dist | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        # sequences as tuples (a frozen request), a lone threat as a one-element tuple
        threats = self.threats
        if isinstance(threats, (str, ThreatModel, ThreatSpec)):
            threats = (threats,)
        for name, value in (("threats", threats), ("attacks", self.attacks), ("union_attacks", self.union_attacks),
                            ("eps_sweep", self.eps_sweep), ("skip_stages", self.skip_stages)):
            object.__setattr__(self, name, tuple(value or ()))
        if self.union_order is not None:
            object.__setattr__(self, "union_order", tuple(self.union_order))
        kwargs = self.arch_kwargs
        if isinstance(kwargs, dict) or hasattr(kwargs, "items"):
            kwargs = tuple(kwargs.items())
        if not isinstance(kwargs, (tuple, list)) or not all(isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str)
                                                          for p in kwargs):
            raise RbxError(f"arch_kwargs must be a mapping of keyword arguments, got {self.arch_kwargs!r}")
        object.__setattr__(self, "arch_kwargs", tuple(kwargs))
        for name in ("state_dir", "results_dir"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)))
        self._validate()

    # ---- validation: everything that needs no weights, images or files --------------------------------
    def _validate(self) -> None:
        check_batch_size(self.batch_size)
        check_seed(self.seed, "--seed")
        if self.draw_seed is not None:
            check_seed(self.draw_seed, "draw_seed")
        if self.n_examples is not None and (isinstance(self.n_examples, bool) or not isinstance(self.n_examples, int)
                                            or self.n_examples < 1):
            raise RbxError(f"--n-examples must be a positive integer, got {self.n_examples!r}")
        if self.audit is not None and (isinstance(self.audit, bool) or not isinstance(self.audit, int) or self.audit < 0):
            raise RbxError(f"--audit must be a number of points >= 0 (0: no audit), got {self.audit!r}")
        if isinstance(self.draws, bool) or not isinstance(self.draws, int) or self.draws < 1:
            raise RbxError(f"--draws must be a positive integer (fresh passes per re-check), got {self.draws!r}")
        Draws(self.draws, self.seed if self.draw_seed is None else int(self.draw_seed))
        bad = [f for f in self.eps_sweep if isinstance(f, bool) or not isinstance(f, (int, float)) or not (f > 0 and math.isfinite(f))]
        if bad:
            raise RbxError(f"--eps-sweep takes positive factors such as 0.25,0.5,2; got {list(self.eps_sweep)}")
        if self.num_classes is not None and (isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int)
                                             or self.num_classes < 2):
            raise RbxError(f"--num-classes must be an integer >= 2, got {self.num_classes}")
        if not isinstance(self.allow_meaningless, bool):
            raise RbxError(f"allow_meaningless must be True or False, got {self.allow_meaningless!r}")
        if not isinstance(self.search, SearchOptions):
            raise RbxError(f"search must be a SearchOptions, got {type(self.search).__name__}")
        if self.shards is not None:
            if self.data is not None or self.n_examples is not None or self.eps_sweep:
                raise RbxError("--shards replaces --dataset and --n-examples, and streams have no --eps-sweep")
            if self.randomized is not None or self.draws != DEFAULT_DRAWS or self.draw_seed is not None or self.curve:
                raise RbxError("--randomized, --draws and --curve are not available with --shards; evaluate a --dataset instead")
            if self.union_only:
                raise RbxError("--union-only does not go with --shards or --eps-sweep (both measure every threat model on every point)")
        if self.union_only and self.eps_sweep:
            raise RbxError("--union-only does not go with --shards or --eps-sweep (both measure every threat model on every point)")
        if not isinstance(self.label_only, bool):
            raise RbxError(f"label_only must be true or false, got {self.label_only!r}")
        if self.is_label_only and self.curve:
            raise RbxError("--curve needs minimum-norm attacks, which read scores and gradients: a label-only run has none")
        resolve_device(self.device)
        if self.normalize:
            parse_normalization(self.normalize)
        if isinstance(self.model, str):
            MODELS.get(self.model)
            if self.arch_kwargs and self.arch is None:
                raise RbxError("--arch-kwargs gives the keyword arguments of --arch: give --arch too")
            for key, given in (("arch_kwargs", bool(self.arch_kwargs)), ("trust_pickle", bool(self.trust_pickle))):
                if given and key not in MODELS.parameters(self.model):
                    raise RbxError(SOURCE_OPTIONS[key].format(spec=self.model))
        elif self.arch is not None or self.arch_kwargs or self.trust_pickle:
            raise RbxError("--arch, --arch-kwargs and --trust-pickle are for model specs (file:, pickle:, hf:), "
                           f"not for a {type(self.model).__name__} object")
        elif not isinstance(self.model, (LoadedModel, nn.Module)):
            raise RbxError(f"model must be a model spec, a LoadedModel or an nn.Module, got {type(self.model).__name__}")
        if isinstance(self.data, str):
            DATASETS.get(self.data)
        if self.kind == "corruptions":
            self._validate_corruption_run()

    def _validate_corruption_run(self) -> None:
        """A corruption suite runs no attack: options that only attacks use are refused by name."""
        unused = [flag for flag, given in (
            ("--threat", self.threats), ("--attack", self.attacks), ("--union-attack", self.union_attacks),
            ("--eps-sweep", self.eps_sweep), ("--shards", self.shards), ("--precision", self.search.precision != "fp32"),
            ("--channels-last", self.search.channels_last), ("--compile", self.search.compile), ("--resume", self.resume),
            ("--union-only", self.union_only), ("--audit", self.audit)) if given]
        if unused:
            raise RbxError(f"{', '.join(unused)} do not apply to the corruption suite '{self._suite.name}' (no attacks run)")
        if self.data is None:
            DATASETS.get(self._suite.dataset)

    @property
    def is_label_only(self) -> bool:
        """A label-only run: ``label_only`` asked for, or a model that answers with labels only (``labels:MODEL``).
        Its model's outputs are never read as scores and no gradient is taken: only decision-based attacks run."""
        if self.label_only:
            return True
        if isinstance(self.model, str):
            return self.model.startswith("labels:")
        if isinstance(self.model, LoadedModel):
            return bool(self.model.extra.get("label_only")) or is_label_only(self.model.module)
        return isinstance(self.model, nn.Module) and is_label_only(self.model)

    @cached_property
    def _suite(self) -> Suite | None:
        """The named suite, loaded (None: no suite named)."""
        if self.suite is None or isinstance(self.suite, Suite):
            return self.suite
        if self.threats and all(isinstance(t, ThreatSpec) for t in self.threats):
            return None  # cascades given in full: the suite name only labels the record (plan_benchmark's rule)
        return load_suite(self.suite)

    @property
    def kind(self) -> str:
        """``corruptions`` for a corruption suite, ``stream`` with ``shards``, else ``threats``."""
        if self._suite is not None and self._suite.kind == "corruptions":
            return "corruptions"
        return "stream" if self.shards is not None else "threats"

    # ---- planning: once --------------------------------------------------------------------------------
    @cached_property
    def planned(self) -> Planned:
        """The run planned once: suite and threat models resolved (:func:`plan_benchmark`), every attack built
        into the stage plan (:func:`compile_plan`), the dataset chosen. Errors name the bad attack or threat."""
        if self.kind == "corruptions":
            return Planned(None, None, self.data if self.data is not None else self._suite.dataset, self._suite)
        suite = self.suite
        if suite is None and self.is_label_only:  # label-only: the decision-based cascades (also for --threat alone)
            suite = LABEL_ONLY_SUITE
        if suite is None and not self.threats:  # the data's (or the model's) own suite: a CIFAR-100 run gets cifar100-union
            suite = default_suite(self._dataset_name())
        bench = plan_benchmark(suite, self.threats, self.attacks, self.union_attacks)
        union_only = bench.union_only if self.union_only is None else bool(self.union_only)
        order = bench.union_order if self.union_order is None else self.union_order
        plan = compile_plan(bench.threats, bench.union, self.eps_sweep, union_only=union_only, order=order)
        if self.is_label_only:
            check_label_only(plan)
        dataset = self.data if self.data is not None else (self._model_dataset() or bench.dataset)
        return Planned(bench, plan, dataset)

    def _dataset_name(self) -> str | None:
        """The dataset's name as far as the request says it (for choosing the default suite)."""
        if isinstance(self.data, EvalData):
            return self.data.name
        if isinstance(self.data, str):
            return self.data
        return self._model_dataset()

    def _model_dataset(self) -> str | None:
        """The dataset a registered model or source belongs to (a zoo model runs on its own dataset)."""
        if isinstance(self.model, LoadedModel):
            return self.model.dataset
        if isinstance(self.model, str):
            from ..models.sources import dataset_hint

            return dataset_hint(self.model)
        return None

    def with_(self, **changes: Any) -> "RunRequest":
        """A copy with some fields changed, validated again. Changes to where and how it runs (device, process
        group, progress, folders) keep the plan already made; any other change is planned again when used."""
        new = dataclasses.replace(self, **changes)
        if "planned" in self.__dict__ and set(changes) <= _EXECUTION_FIELDS:
            new.__dict__["planned"] = self.__dict__["planned"]
        return new

    def for_part(self, *, model: Any, data: Any, seed: int, **changes: Any) -> "RunRequest":
        """The plain run of one part of this run (a shard of a stream) on ``data`` with a derived ``seed``: the same
        plan, not planned again (the part's request carries this request's plan)."""
        planned = self.planned
        part = dataclasses.replace(self, model=model, data=data, shards=None, **changes)
        # a derived seed is a 63-bit stream seed (runtime.stream_seed), not a user's seed: set, not re-checked
        object.__setattr__(part, "seed", int(seed))
        part.__dict__["planned"] = dataclasses.replace(planned, dataset=data)  # the cached plan (cached_property)
        return part

    def state_folder(self) -> Path | None:
        """Where the evaluation state is kept: ``state_dir``, else ``results_dir/.rbx-partial``, else nowhere."""
        if self.state_dir is not None:
            return self.state_dir
        return self.results_dir / STATE_DIR if self.results_dir is not None else None

    def show_progress(self, is_main: bool = True) -> bool:
        """Progress bars: ``progress`` if set, else when stderr is a terminal (the CLI's rule, in the API too)."""
        return is_main and show_bars(self.progress)


def default_model(dataset: str | None, *, streamed: bool = False) -> tuple[str, str | None, str | None]:
    """What a command run without ``--model`` evaluates: ``(model, dataset, note)``.

    The reference ResNet-18 (:data:`DEFAULT_MODEL`) when its file is on this machine (``$RBX_MODELS``,
    ``./models``, ``../shared/models``); else -- a fresh clone or install, offline -- the model and data that ship
    inside the package: the embedded small CNN and, unless a dataset was named (or shards are streamed), the
    embedded 1,000-image CIFAR-10 slice. ``note`` (None for the reference model) says so in one line."""
    from ..data.datasets import EMBEDDED_DATASET
    from ..errors import ModelLoadError
    from ..models.loading import EMBEDDED_MODEL, find_checkpoint

    filename = MODELS.get(DEFAULT_MODEL).tags["filename"]
    try:
        find_checkpoint(filename)
        return DEFAULT_MODEL, dataset, None
    except ModelLoadError:
        pass
    data = dataset if dataset is not None or streamed else EMBEDDED_DATASET
    on = "" if data == dataset else f" on the embedded 1,000-image CIFAR-10 slice ({EMBEDDED_DATASET})"
    note = (f"the reference model {DEFAULT_MODEL} is not on this machine ({filename} does not ship with rbx): running the "
            f"embedded {EMBEDDED_MODEL}{on} instead; put {filename} in ./models or set RBX_MODELS=DIR for the reference model")
    return EMBEDDED_MODEL, data, note


def check_label_only(plan: RunPlan) -> None:
    """A label-only run allows only decision-based attacks (they read the predicted label, never a score or a
    gradient): any other stage is refused by name, before anything is loaded."""
    from ..registry import ATTACKS

    bad = [st.label for st in plan.stages if not getattr(st.attack, "label_only", False)]
    if bad:
        allowed = [n for n in ATTACKS.names() if getattr(ATTACKS.get(n).factory, "label_only", False)]
        raise RbxError(f"label-only run: attack '{bad[0]}' reads scores or gradients, which a label-only model does not "
                       f"give; use decision-based attacks ({', '.join(allowed)}), e.g. --suite cifar10-labelonly")


def parse_factors(text: str) -> tuple[float, ...]:
    """``--eps-sweep 0.25,0.5,2`` as factors; a one-line error for anything else."""
    try:
        factors = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise RbxError(f"--eps-sweep takes comma-separated positive factors such as 0.25,0.5,2; got '{text}'") from None
    if not factors or any(not (f > 0 and math.isfinite(f)) for f in factors):
        raise RbxError(f"--eps-sweep takes comma-separated positive factors such as 0.25,0.5,2; got '{text}'")
    return factors


def as_request(first: Any, kwargs: dict[str, Any], positional: Sequence[str]) -> RunRequest:
    """A request from a call such as ``evaluate(model, data, threats, **kw)``, or the request itself when the
    caller passed one (``evaluate(RunRequest(...))``; then no other argument is allowed)."""
    if isinstance(first, RunRequest):
        extra = [k for k, v in kwargs.items() if v is not _UNSET]
        if extra:
            raise RbxError(f"give a RunRequest alone, or keywords without one (got a request and {', '.join(extra)})")
        return first
    return RunRequest(**{positional[0]: first}, **{k: v for k, v in kwargs.items() if v is not _UNSET})


class _Unset:
    def __repr__(self) -> str:
        return "<unset>"


_UNSET: Any = _Unset()
