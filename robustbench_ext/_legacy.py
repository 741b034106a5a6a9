"""Import paths of rbx 0.1 (53 flat modules) keep working for one minor version, with a DeprecationWarning.

rbx 0.2 groups the engine into sub-packages (``attack``, ``data``, ``models``, ``records``, ``reporting``,
``evaluation``, ``training``, ``cli``). ``from robustbench_ext.runner import evaluate`` still works and warns
``robustbench_ext.runner is now robustbench_ext.evaluation.runner``; so do names that moved between modules
(``robustbench_ext.runner.derive_seed``, the 0.1 home of :func:`robustbench_ext.runtime.derive_seed`) and
names that were renamed (``StageWalk`` is :class:`~robustbench_ext.evaluation.executor.Executor`). The old
paths go in 0.3.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings
from typing import Any

PKG = "robustbench_ext"

#: Old module (0.1) -> its module now.
MOVED_MODULES = {
    "devutils": "runtime",
    "threat": "attack.threat", "geometry": "attack.geometry", "losses": "attack.losses",
    "attack_context": "attack.context", "attack": "attack.base", "loop": "attack.iterative",
    "cascade": "attack.cascade", "min_norm": "attack.min_norm", "acceleration": "attack.search",
    "data": "data.datasets", "imagenet_data": "data.imagenet", "corruption_data": "data.corrupted",
    "models": "models.loading", "architectures": "models.architectures", "model_sources": "models.sources",
    "boundary": "models.adapter",
    "records": "records.schema", "accuracies": "records.accuracies", "stats": "records.stats",
    "provenance": "records.provenance", "record_io": "records.store", "curves": "records.curves",
    "report": "reporting.tables", "leaderboard": "reporting.boards", "plots": "reporting.plots",
    "regress": "reporting.regress", "robustbench_export": "reporting.export",
    "suites": "evaluation.suites", "plan": "evaluation.plan", "eval_state": "evaluation.state",
    "walk": "evaluation.executor", "runner": "evaluation.runner", "streaming": "evaluation.streaming",
    "distributed": "evaluation.distributed", "checks": "evaluation.checks", "draws": "evaluation.majority",
    "curve_run": "evaluation.curves", "corruptions": "evaluation.corruptions",
    "defense": "training.contract", "training": "training.engine",
    "cli": "cli.app", "cli_common": "cli.common", "cli_model": "cli.model", "cli_results": "cli.results",
}

_SHARDS = ("list_shards", "pack_shards", "ShardStream")
_FILES = ("atomic_write_bytes", "atomic_write_text", "ensure_writable", "remove_if_empty")
#: (old module, old name) -> (module now, name now), for names that moved between modules or were renamed.
MOVED_NAMES: dict[tuple[str, str], tuple[str, str]] = {
    ("runner", "derive_seed"): ("runtime", "derive_seed"),
    ("devutils", "derive_seed"): ("runtime", "derive_seed"),
    ("record_io", "Evaluation"): ("evaluation.result", "Evaluation"),
    ("runner", "Evaluation"): ("evaluation.result", "Evaluation"),
    ("runner", "evaluate"): ("evaluation.api", "evaluate"),
    ("streaming", "stream_evaluate"): ("evaluation.streaming", "stream_evaluate"),
    ("cli_common", "DEFAULT_MODEL"): ("evaluation.request", "DEFAULT_MODEL"),
    ("cli_common", "STATE_DIR"): ("evaluation.request", "STATE_DIR"),
    ("draws", "describe_rule"): ("reporting.tables", "describe_rule"),
    ("walk", "StageWalk"): ("evaluation.executor", "Executor"),
    ("plan", "PlannedStage"): ("evaluation.plan", "Stage"),
    ("plan", "StagePlan"): ("evaluation.plan", "RunPlan"),
    ("cascade", "Stage"): ("attack.cascade", "LabelledAttack"),
    ("boundary", "ModelBoundary"): ("models.adapter", "ModelAdapter"),
    ("defense", "Trainer"): ("training.contract", "EngineView"),
    **{("streaming", n): ("data.shards", n) for n in _SHARDS},
    **{("record_io", n): ("paths", n) for n in _FILES},
}


def resolve(old: str, name: str) -> tuple[str, str]:
    """Where ``robustbench_ext.<old>.<name>`` (a 0.1 path) lives now: (module, name)."""
    module, new = MOVED_NAMES.get((old, name), (MOVED_MODULES[old], name))
    return f"{PKG}.{module}", new


def _warn(old_path: str, new_path: str, stacklevel: int = 3) -> None:
    warnings.warn(f"{old_path} is now {new_path}; the old path goes in rbx 0.3", DeprecationWarning, stacklevel=stacklevel)


def moved_attr(old: str, name: str) -> Any:
    """The object behind the 0.1 path ``robustbench_ext.<old>.<name>``, with a DeprecationWarning."""
    module, new = resolve(old, name)
    try:
        obj = getattr(importlib.import_module(module), new)
    except AttributeError:
        raise AttributeError(f"module '{PKG}.{old}' has no attribute {name!r}") from None
    _warn(f"{PKG}.{old}.{name}", f"{module}.{new}", stacklevel=4)
    return obj


def package_getattr(package: str, name: str) -> Any:
    """``__getattr__`` of a package that replaced a 0.1 module of the same name (``robustbench_ext.data``
    was ``data.py``): names of that module not in the package's public face still resolve, with a warning."""
    old = package.rpartition(".")[2]
    if name.startswith("__"):
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    return moved_attr(old, name)


class _OldModule(types.ModuleType):
    """A 0.1 module path: every attribute is looked up where it lives now (with a DeprecationWarning)."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return moved_attr(self.__name__.rpartition(".")[2], name)


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``robustbench_ext.<old>`` for the 0.1 modules that no longer exist as files."""

    def find_spec(self, fullname, path=None, target=None):
        head, _, old = fullname.partition(".")
        if head != PKG or "." in old or old not in MOVED_MODULES:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        return _OldModule(spec.name)

    def exec_module(self, module) -> None:
        old = module.__name__.rpartition(".")[2]
        _warn(module.__name__, f"{PKG}.{MOVED_MODULES[old]}", stacklevel=5)


def install() -> None:
    """Put the finder last on ``sys.meta_path`` (real modules and packages are always found first)."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.append(_Finder())
