"""rbx: adversarial-robustness benchmarking for PyTorch.

The engine: threat models and their geometry, registries, the attack contract, data and model
loading, the runner and its records, leaderboards and the CLI. Attacks live in the top-level
``attacks`` package and defenses in ``defenses``; both register themselves here.
"""

from ._version import __version__
from .errors import RbxError  # noqa: E402
from .threat import ThreatModel  # noqa: E402
from .registry import ATTACKS, DATASETS, DEFENSES, MODELS, SUITES, ARCHITECTURES  # noqa: E402

__all__ = ["__version__", "evaluate", "RbxError", "ThreatModel", "ATTACKS", "DATASETS", "DEFENSES", "MODELS", "SUITES", "ARCHITECTURES"]


def __getattr__(name: str):
    """``robustbench_ext.evaluate``: loaded on first use, so importing a submodule stays light."""
    if name == "evaluate":
        from .runner import evaluate

        return evaluate
    raise AttributeError(f"module 'robustbench_ext' has no attribute {name!r}")
