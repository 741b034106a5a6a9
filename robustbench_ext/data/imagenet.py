"""ImageNet (``imagenet``, ``imagenet:PATH``): the ILSVRC2012 validation set, as RobustBench evaluates it.

It cannot be downloaded (its licence requires registration): the validation images are read from a
torchvision ImageFolder layout (``val/<wnid>/*.JPEG``), found as ``imagenet/val`` in the data folders
(:func:`robustbench_ext.data.datasets.data_dirs`) or given as PATH. The images are RobustBench's 5,000-image
evaluation subset in its order, preprocessed as RobustBench names its preprocessings; labels are the
standard ImageNet-1k class indices. See :func:`imagenet`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from .. import _compat
from . import datasets as data
from .datasets import EvalData, check_n_examples
from ..errors import DataError
from ..paths import describe_search
from ..registry import DATASETS

log = logging.getLogger(__name__)

#: Preprocessings by name, as RobustBench names and defines them (``robustbench/data.py``, PREPROCESSINGS):
#: the name -> (resize, interpolation, center crop). ``none``: the images as they are (all must share one size).
IMAGENET_PREPROCESSINGS: dict[str, tuple[int | tuple[int, int] | None, str, int | None]] = {
    "Res256Crop224": (256, "bilinear", 224),
    "BicubicRes256Crop224": (256, "bicubic", 224),
    "Crop288": (None, "bilinear", 288),
    "Res224": ((224, 224), "bilinear", None),
    "none": (None, "bilinear", None),
}
#: The preprocessing of RobustBench's ImageNet evaluation (and torchvision's reference evaluation).
IMAGENET_DEFAULT_PREPROCESSING = "Res256Crop224"
#: RobustBench's 5,000-image ImageNet evaluation subset (``wnid/file`` per line, in evaluation order) and its
#: wnid -> class index map (the sorted ILSVRC2012 wnids), both shipped inside the robustbench package.
IMAGENET_SUBSET_FILE = "imagenet_test_image_ids.txt"
IMAGENET_CLASS_MAP_FILE = "imagenet_class_to_id_map.json"
_IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".ppm", ".bmp", ".webp")


def imagenet_transform(name: str):
    """The torchvision transform (PIL image -> ``[3, H, W]`` float in [0, 1]) of a named preprocessing."""
    from torchvision import transforms as T

    if name not in IMAGENET_PREPROCESSINGS:
        raise DataError(f"unknown ImageNet preprocessing '{name}'; known: {', '.join(IMAGENET_PREPROCESSINGS)}")
    resize, interpolation, crop = IMAGENET_PREPROCESSINGS[name]
    steps = []
    if resize is not None:
        steps.append(T.Resize(resize, interpolation=T.InterpolationMode(interpolation)))
    if crop is not None:
        steps.append(T.CenterCrop(crop))
    return T.Compose([*steps, T.ToTensor()])


def _split_arg(arg: str | None, what: str, allowed: tuple[str, ...]) -> tuple[str | None, dict[str, Any]]:
    """``PATH,key=value,...`` (every part optional) -> (PATH or None, {key: value}); unknown keys are an error."""
    from ..specs import _split_outside_quotes

    path, params = None, {}
    for part in filter(None, (p.strip() for p in _split_outside_quotes(arg or ""))):
        key, eq, value = part.partition("=")
        if not eq:
            if path is not None:
                raise DataError(f"{what}: two paths given ('{path}' and '{part}'); quote a path that holds a comma")
            path = part.strip("'\"")
        elif key.strip() in allowed:
            params[key.strip()] = value.strip().strip("'\"")
        else:
            raise DataError(f"{what}: unknown parameter '{key.strip()}'; parameters: {', '.join(allowed)}")
    return path, params


def _imagenet_root(path: str | None) -> Path:
    """The validation folder (``<wnid>/<image>``): PATH (or PATH/val), else ``imagenet/val`` in the data folders."""
    if path is not None:
        root = Path(path).expanduser()
        if (root / "val").is_dir():
            root = root / "val"
        if not root.is_dir():
            raise DataError(f"no such folder: {root}; give the ILSVRC2012 validation folder (val/<wnid>/*.JPEG)")
        return root
    for d in data.data_dirs():
        if (d / "imagenet" / "val").is_dir():
            return d / "imagenet" / "val"
    raise DataError(
        f"ImageNet validation set not found (looked for imagenet/val/ in {describe_search('RBX_DATA', data.data_dirs())}); "
        "it cannot be downloaded (its licence requires registration at image-net.org): put the ILSVRC2012 validation "
        "images as imagenet/val/<wnid>/*.JPEG in ./data or set RBX_DATA=DIR, or pass --dataset imagenet:PATH")


def _imagenet_classes(root: Path) -> tuple[dict[str, int], str]:
    """wnid -> class index, and how it was obtained.

    The standard index of ImageNet-1k models (torchvision, timm, RobustBench) is the position of the wnid
    among the 1,000 sorted ILSVRC2012 wnids; RobustBench ships that map. Without it, the sorted wnid
    folders present stand in, which agrees only when all 1,000 are there (a warning says when not).
    """
    mapping = _compat.robustbench_helper_file(IMAGENET_CLASS_MAP_FILE)
    if mapping is not None:
        try:
            index = {str(k): int(v) for k, v in json.loads(mapping.read_text()).items()}
        except (OSError, ValueError, AttributeError) as exc:
            raise DataError(f"cannot read robustbench's ImageNet class map {mapping} ({exc})") from None
        return index, f"sorted ILSVRC2012 wnids (robustbench/helper_files/{IMAGENET_CLASS_MAP_FILE})"
    wnids = sorted(e.name for e in os.scandir(root) if e.is_dir())
    if len(wnids) != 1000:
        log.warning("%s holds %d class folders, not 1,000, and robustbench's class map is not installed: labels are "
                    "the positions among the folders present and will not match ImageNet-1k models", root, len(wnids))
    return {w: i for i, w in enumerate(wnids)}, f"sorted wnid folders of {root} ({len(wnids)})"


def _imagenet_selection(root: Path, ids: str | None, n_examples: int | None) -> tuple[list[str], str, dict[str, Any]]:
    """The first ``n_examples`` images (``wnid/file``) to read, what they are the first N of, and record fields.

    With an id list (RobustBench's 5,000-image subset by default), its order; without one, every image sorted
    by file name (the official validation order, ``ILSVRC2012_val_00000001`` first, classes mixed). Only
    folder listings are read here, never images.
    """
    id_file = Path(ids).expanduser() if ids else _compat.robustbench_helper_file(IMAGENET_SUBSET_FILE)
    if ids and not id_file.is_file():
        raise DataError(f"no such id list: {id_file}")
    if id_file is not None:
        try:
            text = id_file.read_text()
        except OSError as exc:
            raise DataError(f"cannot read the ImageNet id list {id_file} ({exc})") from None
        entries = [line.strip() for line in text.splitlines() if line.strip()]
        if not entries:
            raise DataError(f"the ImageNet id list {id_file} is empty")
        what = f"RobustBench's 5,000-image ImageNet evaluation subset ({id_file.name}" if not ids else f"the list {id_file} ("
        n = check_n_examples(n_examples, len(entries), f"{what}{', ' if not ids else ''}{len(entries)} ids)")
        selection = f"{what}{', ' if not ids else ''}in its order)"
        extra = {"subset_file": str(id_file), "subset_sha256": hashlib.sha256(text.encode()).hexdigest()}
        return entries[:n], selection, extra
    log.warning("robustbench's ImageNet subset list is not installed: taking the first images of %s by file name", root)
    entries = sorted((f"{d.name}/{f.name}" for d in os.scandir(root) if d.is_dir() for f in os.scandir(d)
                      if f.is_file() and f.name.lower().endswith(_IMAGE_EXTENSIONS)), key=lambda e: (e.split("/", 1)[1], e))
    if not entries:
        raise DataError(f"{root} holds no images in <wnid>/<image> folders")
    n = check_n_examples(n_examples, len(entries), str(root))
    selection = "the validation images sorted by file name (RobustBench's 5,000-image subset list was not found)"
    return entries[:n], selection, {"subset_file": None}


@DATASETS.register("imagenet", takes_arg=True, arg_name="[PATH][,preprocessing=P][,ids=FILE]", optional_arg=True,
                   summary="ImageNet (ILSVRC2012) val from imagenet/val or PATH: RobustBench's 5,000-image subset, Res256Crop224")
def imagenet(arg: str | None = None, n_examples: int | None = None) -> EvalData:
    """The ILSVRC2012 validation set, as RobustBench evaluates it.

    ``arg``: ``[PATH][,preprocessing=NAME][,ids=FILE]``. PATH is the validation folder (``<wnid>/*.JPEG``,
    torchvision's ImageFolder layout) or a folder holding ``val/``; without it ``imagenet/val`` is looked for
    in the data folders. The images are RobustBench's 5,000-image evaluation subset in its order (the id list
    inside the robustbench package; ``ids=FILE`` for another list), the first ``n_examples`` of them, each
    preprocessed with ``preprocessing`` (default ``Res256Crop224``: resize the short side to 256, bilinear,
    center-crop 224 -> ``[N, 3, 224, 224]``; see :data:`IMAGENET_PREPROCESSINGS`). Labels are the standard
    ImageNet-1k class indices (sorted wnids). Only the selected images are opened.
    """
    from PIL import Image

    path, params = _split_arg(arg, "imagenet", ("preprocessing", "ids"))
    preprocessing = params.get("preprocessing", IMAGENET_DEFAULT_PREPROCESSING)
    transform = imagenet_transform(preprocessing)
    root = _imagenet_root(path)
    entries, selection, extra = _imagenet_selection(root, params.get("ids"), n_examples)
    class_index, index_source = _imagenet_classes(root)
    images, labels = [], []
    for entry in entries:
        wnid = entry.split("/", 1)[0]
        if wnid not in class_index:
            raise DataError(f"{root}: '{wnid}' ({entry}) is not one of the ImageNet-1k class wnids ({index_source})")
        file = root / entry
        try:
            with Image.open(file) as img:
                images.append(transform(img.convert("RGB")))
        except FileNotFoundError:
            raise DataError(f"{root}: {entry} is missing (it is in {selection}); is {root} the complete ILSVRC2012 "
                            "validation set?") from None
        except Exception as exc:
            raise DataError(f"{file} is not a readable image ({exc})") from None
        labels.append(class_index[wnid])
    shapes = sorted({tuple(t.shape) for t in images})
    if len(shapes) > 1:
        raise DataError(f"imagenet: images differ in size ({shapes[:3]}) with preprocessing '{preprocessing}': use "
                        f"{IMAGENET_DEFAULT_PREPROCESSING} or another resizing preprocessing")
    classes = tuple(sorted(class_index, key=class_index.get))
    return EvalData("imagenet", torch.stack(images), torch.as_tensor(labels, dtype=torch.int64),
                    f"ImageNet (ILSVRC2012) val, {preprocessing}", str(root), "val", classes, selection,
                    {"preprocessing": preprocessing, "class_index": index_source, **extra})
