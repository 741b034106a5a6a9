"""Training: the defense contract (:class:`Defense`, registered in ``DEFENSES``) and the one adversarial
training engine (:class:`Trainer`) every defense runs on. The defenses themselves live in
:mod:`robustbench_ext.defenses` (see the "adding a defense" guide in the docs)."""

from .contract import Defense, EngineView, Recipe, StepContext
from .engine import TrainConfig, Trainer, TrainResult

__all__ = ["Defense", "EngineView", "Recipe", "StepContext", "TrainConfig", "TrainResult", "Trainer"]


def __getattr__(name: str):
    """Names of rbx 0.1's ``training`` module outside this face (DeprecationWarning)."""
    from .._legacy import package_getattr

    return package_getattr(__name__, name)
