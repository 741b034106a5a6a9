"""rbx: adversarial-robustness benchmarking for PyTorch.

The engine: threat models and their geometry, registries, the attack contract, data and model
loading, the runner and its records, leaderboards and the CLI. Attacks live in the top-level
``attacks`` package and defenses in ``defenses``; both register themselves here.
"""

from ._version import __version__
from .errors import RbxError  # noqa: E402
from .threat import ThreatModel  # noqa: E402
from .registry import ATTACKS, DATASETS, DEFENSES, MODELS, SUITES, ARCHITECTURES  # noqa: E402

__all__ = ["__version__", "RbxError", "ThreatModel", "ATTACKS", "DATASETS", "DEFENSES", "MODELS", "SUITES", "ARCHITECTURES"]
