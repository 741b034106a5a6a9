"""Evaluation data: the :class:`EvalData` container, the registered datasets (CIFAR-10/100, MNIST, npz,
image folders, the embedded CIFAR-10 slice), ImageNet, the common-corruption sets and packed shards.

One module per family; each registers its datasets in :data:`robustbench_ext.registry.DATASETS` (see the
"adding a dataset" guide in the docs).
"""

from . import corrupted, datasets, imagenet  # noqa: F401  (registers the datasets)
from .datasets import EMBEDDED_DATASET, EvalData, as_eval_data, read_npz
from .shards import list_shards, pack_shards

__all__ = ["EMBEDDED_DATASET", "EvalData", "as_eval_data", "list_shards", "pack_shards", "read_npz"]


def __getattr__(name: str):
    """Names of rbx 0.1's ``data`` module outside this face (DeprecationWarning)."""
    from .._legacy import package_getattr

    return package_getattr(__name__, name)
