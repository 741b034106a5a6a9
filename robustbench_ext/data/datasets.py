"""Evaluation data: CIFAR-10/100, MNIST, the ImageNet validation set, ``npz:PATH`` and ``imagefolder:PATH``.

Every loader returns :class:`EvalData`: images ``[N, C, H, W]`` float32 in [0, 1] on the CPU,
labels ``[N]`` int64, and where they came from. ``n_examples`` takes the first N.

Where CIFAR-10 is looked for, in order (first hit wins):

1. each folder of ``$RBX_DATA`` (``os.pathsep``-separated), then ``./data``, then ``<repo>/data``:
   the official torchvision layout (``cifar-10-batches-py/``) or the packed JPEG copy
   (``cifar10/{test,train}_jpeg.npz``);
2. ``../shared/data/cifar10/`` beside the working directory or the repository (the JPEG copy);
3. otherwise the official dataset is downloaded through torchvision into ``./data``; when that fails
   (offline), nothing is left behind and the error names the embedded slice as what works instead.

``cifar10-1k`` is package data: the first 1,000 images of the JPEG copy's class-balanced order (100 per
class), decoded to uint8 once and shipped inside rbx, so a fresh install evaluates offline.

The JPEG copy is class-interleaved (image k has label k % 10) and not lossless; records label it
"CIFAR-10 (JPEG copy)" so its numbers are never mistaken for numbers on the official test set.

CIFAR-100 (``cifar100``, ``cifar100-train``; torchvision's ``cifar-100-python/`` or a packed
``cifar100/{test,train}_jpeg.npz``) and MNIST (``mnist``, ``mnist-train``; torchvision's ``MNIST/raw/``)
follow the same rule, without an embedded alternative.

ImageNet (``imagenet``, ``imagenet:PATH``) lives in :mod:`robustbench_ext.data.imagenet`.

The common corruptions (``cifar10-c``, ``cifar100-c``) live in :mod:`robustbench_ext.data.corrupted`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor

from ..attack.threat import box_advice
from ..errors import DataError
from ..paths import ASSETS, describe_search, download_guard, search_path
from ..progress import third_party_bars
from ..registry import DATASETS
from ..runtime import autograd_tensor

log = logging.getLogger(__name__)

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
#: The embedded CIFAR-10 slice (package data) and its name in the registry.
EMBEDDED_DATASET = "cifar10-1k"
EMBEDDED_FILE = ASSETS / "cifar10_test_1k.npz"


@dataclass(frozen=True)
class EvalData:
    """A slice of a dataset ready to evaluate.

    ``x``: ``[N, C, H, W]`` float32 in [0, 1] (CPU); ``y``: ``[N]`` int64. ``source`` is a human
    label ("CIFAR-10 test (JPEG copy)"); ``location`` the file or folder it was read from.
    """

    name: str
    x: Tensor
    y: Tensor
    source: str
    location: str
    split: str | None = None
    classes: tuple[str, ...] | None = None
    #: What "the first N" are the first N of, when that is not the dataset's own order (ImageNet's subset).
    selection: str | None = None
    #: Further fields of the record's ``dataset`` block (ImageNet's preprocessing and class index, say).
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.y.shape[0])

    @property
    def num_classes(self) -> int | None:
        return len(self.classes) if self.classes else None

    def sha256(self) -> str:
        """Hash of exactly what is evaluated: float32 pixels (C-order) then int64 labels."""
        h = hashlib.sha256()
        h.update(self.x.detach().cpu().to(torch.float32).contiguous().numpy().tobytes())
        h.update(self.y.detach().cpu().to(torch.int64).contiguous().numpy().tobytes())
        return h.hexdigest()

    def first(self, n_examples: int | None) -> "EvalData":
        """The first ``n_examples`` samples (all for None), checked against what there is."""
        n = check_n_examples(n_examples, self.n, self.source)
        return self if n == self.n else dataclasses.replace(self, x=self.x[:n], y=self.y[:n])

    def describe(self) -> dict:
        """The record's ``dataset`` block."""
        return {
            "name": self.name,
            "source": self.source,
            "location": self.location,
            "split": self.split,
            "n": self.n,
            "selection": f"first {self.n}" + (f" of {self.selection}" if self.selection else ""),
            "shape": list(self.x.shape[1:]),
            "num_classes": self.num_classes,
            "classes": list(self.classes) if self.classes else None,
            "sha256": self.sha256(),
            **dict(self.extra),
        }


# ---- helpers ------------------------------------------------------------------------------------
def check_n_examples(n_examples: int | None, available: int, what: str) -> int:
    """Validate ``n_examples`` against ``available``; ``None`` means all."""
    if n_examples is None:
        return available
    if isinstance(n_examples, bool) or not isinstance(n_examples, (int, np.integer)) or n_examples < 1:
        raise DataError(f"--n-examples must be a positive integer, got {n_examples!r}")
    if n_examples > available:
        raise DataError(f"--n-examples {n_examples} is more than the {available} images in {what}")
    return int(n_examples)


def _to_float_images(arr: np.ndarray, what: str) -> Tensor:
    """uint8 or float images in NHWC, NCHW or NHW -> float32 ``[N, C, H, W]`` in [0, 1]."""
    a = np.asarray(arr)
    if a.ndim == 3:
        a = a[:, None]
    if a.ndim != 4:
        raise DataError(f"{what}: images must be [N, H, W, C] or [N, C, H, W], got shape {a.shape}")
    if a.shape[-1] in (1, 3, 4) and a.shape[1] not in (1, 3, 4):
        a = a.transpose(0, 3, 1, 2)
    if a.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(a)).float().div_(255.0)
    if not np.issubdtype(a.dtype, np.floating):
        raise DataError(f"{what}: images must be uint8 or float, got {a.dtype}")
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    if not torch.isfinite(t).all():
        raise DataError(f"{what}: images contain NaN or inf")
    lo, hi = float(t.min()), float(t.max())
    if lo < 0 or hi > 1:
        raise DataError(range_error(f"{what}: float images", lo, hi, uint8="store them as uint8 or divide by 255"))
    return t


def range_error(what: str, lo: float, hi: float, uint8: str) -> str:
    """The one message for images outside [0, 1]: the range seen and only the advice that range supports
    (:func:`~robustbench_ext.attack.threat.box_advice`: 0..255, normalized, [-1, 1], rounding, or none)."""
    advice = box_advice(lo, hi, uint8=uint8, normalize="--normalize MEAN/STD, or normalize= in Python")
    return f"{what} must lie in [0, 1], got {lo:.4g}..{hi:.4g}" + (f": {advice}" if advice else "")


def check_labels_fit(y: Tensor, k: int, what: str = "the data") -> None:
    """Raise a one-line :class:`DataError` if a label of ``y`` ``[N]`` is not a class of a ``k``-output model; the advice
    follows what the labels look like (1-based labels, 1..K, are named as such)."""
    if not len(y):
        return
    lo, hi = int(y.min()), int(y.max())
    if hi < k:
        return
    if lo >= 1 and hi == k:
        advice = f"its labels run from 1 to {k}, so they look 1-based: subtract 1 (class indices start at 0)"
    else:
        advice = "is this the model's dataset (or the model for this dataset)?"
    raise DataError(f"label {hi} of {what} is out of range for a model with {k} outputs; {advice}")


def _labels(arr: np.ndarray, n: int, what: str) -> Tensor:
    y = np.asarray(arr)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{what}: labels must be a 1-D integer array, got {y.dtype} {y.shape}")
    if len(y) < n:
        raise DataError(f"{what}: {len(y)} labels for {n} images")
    if len(y) and y.min() < 0:
        raise DataError(f"{what}: labels must be >= 0, found {int(y.min())}")
    return torch.from_numpy(y[:n].astype(np.int64))


def _stack_images(arrays: list[np.ndarray], what: str) -> Tensor:
    shapes = sorted({a.shape for a in arrays})
    if len(shapes) > 1:
        raise DataError(f"{what}: images differ in size ({shapes[:3]}): resize them to one size first")
    return _to_float_images(np.stack(arrays), what)


def decode_packed_jpeg(jpeg: np.ndarray, offsets: np.ndarray, n: int, what: str) -> Tensor:
    """Decode images 0..n-1 of a packed-JPEG array (image k is ``jpeg[offsets[k]:offsets[k+1]]``)."""
    from PIL import Image

    arrays = []
    for k in range(n):
        try:
            img = Image.open(io.BytesIO(jpeg[offsets[k] : offsets[k + 1]].tobytes())).convert("RGB")
        except Exception as exc:
            raise DataError(f"{what}: image {k} is not a readable JPEG ({exc})") from None
        arrays.append(np.asarray(img))
    return _stack_images(arrays, what)


def read_npz(path: Path, n_examples: int | None, name: str, source: str | None = None) -> EvalData:
    """Read decoded (``x``, ``y``) or packed-JPEG (``jpeg``, ``offsets``, ``y``) npz images."""
    what = str(path)
    if not path.is_file():
        raise DataError(f"no such file: {path}")
    try:
        z = np.load(path, allow_pickle=False)
        keys = set(z.files)
    except Exception as exc:
        raise DataError(f"cannot read {path} as .npz ({exc})") from None
    classes = tuple(str(c) for c in z["classes"]) if "classes" in keys else None
    if {"jpeg", "offsets", "y"} <= keys:
        offsets = z["offsets"]
        total = len(offsets) - 1
        n = check_n_examples(n_examples, total, what)
        x = decode_packed_jpeg(z["jpeg"], offsets, n, what)
    elif {"x", "y"} <= keys:
        xs = z["x"]
        n = check_n_examples(n_examples, len(xs), what)
        x = _to_float_images(xs[:n], what)
    else:
        raise DataError(f"{path}: expected arrays x and y, or jpeg, offsets and y; found {sorted(keys)}")
    y = _labels(z["y"], n, what)
    if classes and len(y) and int(y.max()) >= len(classes):
        raise DataError(f"{what}: label {int(y.max())} is out of range for {len(classes)} classes")
    return EvalData(name, x, y, source or f"npz ({path.name})", str(path), None, classes)


def as_eval_data(data: "EvalData | tuple[Tensor, Tensor] | str", n_examples: int | None = None) -> EvalData:
    """What :func:`robustbench_ext.evaluation.runner.evaluate` accepts as data: an :class:`EvalData`, a dataset spec, or a
    pair of tensors ``(x [N, C, H, W], y [N])`` (uint8 images or floats in [0, 1]; integer labels, cast to int64)."""
    if isinstance(data, EvalData):
        return data.first(n_examples)
    if isinstance(data, str):
        made = DATASETS.create(data, n_examples=n_examples)
        if not isinstance(made, EvalData):
            raise DataError(f"dataset '{data}' is a set of common corruptions, not one image set: evaluate it with a "
                            "corruption suite (rbx run --suite cifar10-corruptions) or robustbench_ext.evaluation.corruptions.evaluate_corruptions")
        return made
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        x, y = data
        if x.ndim != 4 or y.ndim != 1 or x.shape[0] != y.shape[0]:
            raise DataError(f"data must be (x [N, C, H, W], y [N]); got x {tuple(x.shape)} and y {tuple(y.shape)}")
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise DataError(f"labels must be integer class indices, got {y.dtype}")
        images = autograd_tensor(x.detach().cpu())  # (made under torch.inference_mode()? a normal copy)
        images = images.float().div(255.0) if images.dtype == torch.uint8 else images.float()
        if not torch.isfinite(images).all():
            raise DataError("images contain NaN or inf")
        lo, hi = float(images.min()), float(images.max())
        if lo < 0 or hi > 1:
            raise DataError(range_error("float images", lo, hi, uint8="pass them as uint8 or divide by 255"))
        labels = autograd_tensor(y.detach().cpu()).to(torch.int64)
        if len(labels) and int(labels.min()) < 0:
            raise DataError(f"labels must be >= 0, found {int(labels.min())}")
        return EvalData("tensors", images.contiguous(), labels, "tensors given to evaluate()", "python objects").first(n_examples)
    raise DataError(f"data must be an EvalData, a dataset name or a pair of tensors (x, y), got {type(data).__name__}")


# ---- search paths ---------------------------------------------------------------------------------
def data_dirs() -> list[Path]:
    """Folders searched for local datasets, in order (see the module docstring)."""
    return search_path("RBX_DATA", "data")


@dataclass(frozen=True)
class _TorchvisionSet:
    """A dataset torchvision can download, and where rbx looks for a local copy first.

    ``folder``: what torchvision finds under its root (``cifar-10-batches-py``); ``packed``: the folder of an
    rbx npz copy (``cifar10`` -> ``cifar10/{split}_jpeg.npz``), if the dataset has one; ``embedded``: the
    dataset named as what works offline instead (test split only).
    """

    title: str
    torchvision_class: str
    folder: str
    packed: str | None = None
    classes: tuple[str, ...] | None = None
    embedded: str | None = None


CIFAR10_SET = _TorchvisionSet("CIFAR-10", "CIFAR10", "cifar-10-batches-py", "cifar10", CIFAR10_CLASSES, EMBEDDED_DATASET)
CIFAR100_SET = _TorchvisionSet("CIFAR-100", "CIFAR100", "cifar-100-python", "cifar100")
MNIST_SET = _TorchvisionSet("MNIST", "MNIST", "MNIST/raw")


def _load_torchvision_set(spec: _TorchvisionSet, split: str, n_examples: int | None, name: str) -> EvalData:
    """The search rule of the module docstring for one torchvision dataset and split."""
    train = split == "train"
    for d in data_dirs():
        if (d / spec.folder).is_dir():
            return _torchvision_set(spec, d, train, n_examples, name, download=False)
        packed = d / spec.packed / f"{split}_jpeg.npz" if spec.packed else None
        if packed is not None and packed.is_file():
            data = read_npz(packed, n_examples, name, source=f"{spec.title} {split} (JPEG copy)")
            return EvalData(name, data.x, data.y, data.source, data.location, split, spec.classes or data.classes)
    log.info("%s %s not found locally (looked in %s); downloading it through torchvision into ./data",
             spec.title, split, describe_search("RBX_DATA", data_dirs()))
    return _torchvision_set(spec, Path("data"), train, n_examples, name, download=True)


def _torchvision_set(spec: _TorchvisionSet, root: Path, train: bool, n_examples: int | None, name: str,
                     download: bool) -> EvalData:
    import torchvision.datasets as tvd

    split = "train" if train else "test"
    try:
        with download_guard(root), third_party_bars():  # torchvision's download bar: only on a terminal
            ds = getattr(tvd, spec.torchvision_class)(str(root), train=train, download=download)
    except Exception as exc:
        where = f"{spec.folder}/" + (f" or {spec.packed}/{split}_jpeg.npz" if spec.packed else "")
        instead = f", or evaluate the embedded 1,000-image slice: --dataset {spec.embedded}" if spec.embedded and not train else ""
        raise DataError(
            f"{spec.title} {split} not found (looked in {describe_search('RBX_DATA', data_dirs())}) and the torchvision download "
            f"failed ({type(exc).__name__}: {_first_line(exc)}); put {where} in ./data or set RBX_DATA=DIR{instead}"
        ) from None
    n = check_n_examples(n_examples, len(ds.targets), f"{spec.title} {split}")
    images = ds.data[:n]
    x = _to_float_images(images.numpy() if isinstance(images, Tensor) else images, spec.title)
    y = torch.as_tensor(np.asarray(ds.targets[:n]), dtype=torch.int64)
    classes = spec.classes or (tuple(str(c) for c in ds.classes) if getattr(ds, "classes", None) else None)
    return EvalData(name, x, y, f"{spec.title} {split} (official, torchvision)", str(root), split, classes)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ---- registered datasets ---------------------------------------------------------------------------
@DATASETS.register("cifar10", summary="CIFAR-10 test split (10,000 images): local copy or torchvision download")
def cifar10(n_examples: int | None = None) -> EvalData:
    """CIFAR-10 test split."""
    return _load_torchvision_set(CIFAR10_SET, "test", n_examples, "cifar10")


@DATASETS.register("cifar10-train", summary="CIFAR-10 train split (50,000 images): local copy or torchvision download")
def cifar10_train(n_examples: int | None = None) -> EvalData:
    """CIFAR-10 training split."""
    return _load_torchvision_set(CIFAR10_SET, "train", n_examples, "cifar10-train")


@DATASETS.register("cifar100", summary="CIFAR-100 test split (10,000 images, 100 classes): local copy or torchvision download")
def cifar100(n_examples: int | None = None) -> EvalData:
    """CIFAR-100 test split (fine labels)."""
    return _load_torchvision_set(CIFAR100_SET, "test", n_examples, "cifar100")


@DATASETS.register("cifar100-train", summary="CIFAR-100 train split (50,000 images): local copy or torchvision download")
def cifar100_train(n_examples: int | None = None) -> EvalData:
    """CIFAR-100 training split (fine labels)."""
    return _load_torchvision_set(CIFAR100_SET, "train", n_examples, "cifar100-train")


@DATASETS.register("mnist", summary="MNIST test split (10,000 images, 1x28x28): local copy or torchvision download")
def mnist(n_examples: int | None = None) -> EvalData:
    """MNIST test split."""
    return _load_torchvision_set(MNIST_SET, "test", n_examples, "mnist")


@DATASETS.register("mnist-train", summary="MNIST train split (60,000 images, 1x28x28): local copy or torchvision download")
def mnist_train(n_examples: int | None = None) -> EvalData:
    """MNIST training split."""
    return _load_torchvision_set(MNIST_SET, "train", n_examples, "mnist-train")


@DATASETS.register(EMBEDDED_DATASET, summary="CIFAR-10 test, the embedded 1,000-image class-balanced slice (ships with rbx; offline)")
def cifar10_1k(n_examples: int | None = None) -> EvalData:
    """The embedded slice: the first 1,000 test images of the JPEG copy's class-interleaved order, uint8."""
    data = read_npz(EMBEDDED_FILE, n_examples, EMBEDDED_DATASET,
                    source="CIFAR-10 test (JPEG copy), embedded 1,000-image class-balanced slice")
    return EvalData(EMBEDDED_DATASET, data.x, data.y, data.source, data.location,
                    "test", CIFAR10_CLASSES)


@DATASETS.add_hint
def _path_hint(text: str) -> tuple[str, str] | None:
    """An unknown dataset spec that is a path: ``npz:PATH`` for an .npz file (it exists or ends in .npz),
    ``imagefolder:PATH`` for a folder of class folders. Nothing for other text."""
    p = Path(text)
    if p.suffix.lower() == ".npz" or (p.is_file() and _is_npz(p)):
        return f"npz:{text}", "images x and labels y in an .npz" + ("" if p.exists() else "; no such file yet")
    if p.is_dir() and any(c.is_dir() for c in p.iterdir()):
        return f"imagefolder:{text}", "a folder of class folders of images"
    return None


def _is_npz(path: Path) -> bool:
    """Whether ``path`` is a zip archive (what an .npz is), by its first bytes."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"PK\x03\x04"
    except OSError:
        return False


@DATASETS.register("npz", takes_arg=True, arg_name="PATH",
                   summary="images from an .npz: x [N,H,W,C] uint8 or [0,1] float and y, or packed jpeg/offsets/y")
def npz(path: str, n_examples: int | None = None) -> EvalData:
    return read_npz(Path(path), n_examples, f"npz:{path}")


@DATASETS.register("imagefolder", takes_arg=True, arg_name="PATH",
                   summary="a torchvision ImageFolder (PATH/<class>/<image>); classes in sorted order")
def imagefolder(path: str, n_examples: int | None = None) -> EvalData:
    from torchvision.datasets import ImageFolder

    root = Path(path)
    if not root.is_dir():
        raise DataError(f"no such folder: {root}")
    try:
        ds = ImageFolder(str(root))
    except Exception as exc:
        raise DataError(f"cannot read {root} as an image folder ({exc})") from None
    n = check_n_examples(n_examples, len(ds.samples), str(root))
    x = _stack_images([np.asarray(ds[k][0].convert("RGB")) for k in range(n)], str(root))
    y = torch.as_tensor([t for _, t in ds.samples[:n]], dtype=torch.int64)
    return EvalData(f"imagefolder:{path}", x, y, f"image folder ({root.name})", str(root), None, tuple(ds.classes))
