"""Models: where they come from (registered names, ``file:`` (state dicts, safetensors, TorchScript, detected),
``torchscript:``, ``pickle:`` (opt-in), ``hf:`` (the Hugging Face Hub), ``trained:``, ``torchvision:``, ``timm:``,
``robustbench:``), the built-in architectures and architectures from the user's code (``--arch pkg.module:Class``),
what a model file is (:mod:`~robustbench_ext.models.formats`), and the model adapter every evaluated model goes
through (one output adapter, errors named, the model/data agreement check).

Model sources register in :data:`robustbench_ext.registry.MODELS`, architectures in
:data:`~robustbench_ext.registry.ARCHITECTURES` (see the "adding a model source" guide in the docs).
"""

from . import architectures, hub, sources, whole  # noqa: F401  (registers the architectures and model sources)
from .adapter import ModelAdapter, ModelError, check_agreement, select_logits
from .loading import EMBEDDED_MODEL, LoadedModel, Normalize, as_loaded_model, load_model

__all__ = ["EMBEDDED_MODEL", "LoadedModel", "ModelAdapter", "ModelError", "Normalize", "as_loaded_model",
           "check_agreement", "load_model", "select_logits"]


def __getattr__(name: str):
    """Names of rbx 0.1's ``models`` module outside this face (DeprecationWarning)."""
    from .._legacy import package_getattr

    return package_getattr(__name__, name)
