"""rbx: adversarial-robustness benchmarking for PyTorch.

The public API is :data:`__all__`: :func:`evaluate` and :func:`check` (what ``rbx run`` and ``rbx check``
call), :class:`RunRequest` (one validated run), the registries, the contract base classes for attacks and
defenses, and the record schema. The engine's sub-packages:

- the spine (this folder's modules): ``errors``, ``registry``, ``specs``, ``paths``, ``progress``, ``runtime``;
- :mod:`~robustbench_ext.attack` (threat models, geometry, the attack contract, the loop, the cascade);
- :mod:`~robustbench_ext.data`, :mod:`~robustbench_ext.models`, :mod:`~robustbench_ext.records`;
- :mod:`~robustbench_ext.reporting` (tables, boards, plots, the regression gate);
- :mod:`~robustbench_ext.evaluation` (suites, request, plan, executor, checks, streaming);
- :mod:`~robustbench_ext.training` (the defense contract and engine); :mod:`~robustbench_ext.cli` (``rbx``).

Attack and defense plugins live in ``robustbench_ext.attacks`` and ``robustbench_ext.defenses``. Import
paths of rbx 0.1 still work, with a DeprecationWarning (:mod:`robustbench_ext._legacy`).
"""

from ._version import __version__
from . import _legacy
from .errors import RbxError
from .registry import ARCHITECTURES, ATTACKS, DATASETS, DEFENSES, MODELS, SUITES

_legacy.install()

__all__ = [
    "__version__",
    # running
    "evaluate", "check", "run", "RunRequest", "Evaluation",
    # registries
    "ATTACKS", "DEFENSES", "MODELS", "DATASETS", "SUITES", "ARCHITECTURES",
    # contracts
    "ThreatModel", "Attack", "MultiThreatAttack", "AttackResult", "Defense", "LoadedModel", "EvalData",
    # records
    "RunRecord", "SampleFlags", "read_record", "read_flags",
    "RbxError",
]

#: Public names loaded on first use (importing the package stays light: no torch until one is used, so that the
#: ``rbx`` entry point can handle Ctrl-C during start-up): name -> module.
_LAZY = {
    "evaluate": "evaluation.api", "check": "evaluation.api", "run": "evaluation.api", "RunRequest": "evaluation.request",
    "Evaluation": "evaluation.result", "ThreatModel": "attack.threat",
    "Attack": "attack.base", "MultiThreatAttack": "attack.base", "AttackResult": "attack.context",
    "Defense": "training.contract", "LoadedModel": "models.loading", "EvalData": "data.datasets",
    "RunRecord": "records.schema", "SampleFlags": "records.schema", "read_record": "records.store",
    "read_flags": "records.store",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'robustbench_ext' has no attribute {name!r}")
