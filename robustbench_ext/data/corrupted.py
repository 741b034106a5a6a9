"""Common corruptions (Hendrycks & Dietterich, ICLR 2019): CIFAR-10-C and CIFAR-100-C, published or generated.

RobustBench's "corruptions" threat model evaluates a model on the 15 corruptions of :data:`CORRUPTIONS`
at the 5 severities of :data:`SEVERITIES`; its corruptions accuracy is the mean of the 75 accuracies.
The 4 held-out corruptions (:data:`EXTRA_CORRUPTIONS`) exist in both sources and can be selected, but are
never in the default set.

A :class:`CorruptionSet` is a clean base slice (the first N test images) plus a way to get its corrupted
versions, one (corruption, severity) at a time, so memory stays at one image set:

1. **published** files, when present: ``CIFAR-10-C/`` (``CIFAR-100-C/``) in a data folder (``$RBX_DATA``,
   ``./data``, ...; :func:`robustbench_ext.data.datasets.data_dirs`) or given as ``path=``: ``<corruption>.npy``
   ``[5 M, 32, 32, 3]`` uint8 (severity s is rows ``(s-1) M .. s M - 1``, M = 10,000, in the official test
   order) and ``labels.npy`` ``[5 M]``. Only the rows of the evaluated images are read (memory-mapped). The
   base must be the dataset's own test set (``cifar10`` or ``cifar10-1k``; ``cifar100``): its image k is
   matched to the official row holding the same class at the same rank within that class, which is the
   identity for the official order and correct for the class-interleaved JPEG copy too (it keeps the
   official order within each class). The record names the folder and every file's sha256.
2. **generated** otherwise: the maintained ``imagecorruptions`` package (Michaelis et al. 2019, the
   ImageNet-C code of Hendrycks & Dietterich packaged; made to run on current scikit-image and NumPy by
   :func:`robustbench_ext._compat.import_imagecorruptions`) applied to the base images. It draws from
   NumPy's global RNG, so image k under corruption c at severity s is generated right after
   ``np.random.seed(SeedSequence([seed, crc32(c), s, k]).generate_state(1)[0])`` (:func:`image_seed`), and
   the global RNG state is restored afterwards. An image's corrupted version therefore depends only on
   (seed, corruption, severity, its index), not on N, on the other images or on which corruptions run.

**Generated corruptions are not CIFAR-10-C.** imagecorruptions uses ImageNet-C's severity parameters
(set for 224-pixel images: blur radii, noise scales, frost crops, fog scale), whereas the published
CIFAR-10-C was made with parameters re-tuned for 32-pixel images; numbers on generated sets measure the
same kind of shift but are not comparable to published CIFAR-10-C / RobustBench numbers. Records say so.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import zlib
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from . import datasets as data
from .._compat import import_imagecorruptions
from .datasets import EvalData, _to_float_images
from ..errors import DataError
from ..paths import describe_search
from ..registry import DATASETS
from ..runtime import check_seed

log = logging.getLogger(__name__)

#: The 15 common corruptions of Hendrycks & Dietterich (2019), in their order (noise, blur, weather, digital).
CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness",
    "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)
#: The 4 held-out ("validation") corruptions; in the published files and in imagecorruptions, never a default.
EXTRA_CORRUPTIONS: tuple[str, ...] = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
SOURCES = ("auto", "published", "generated")
COMPARABILITY_NOTE = ("generated with imagecorruptions, which uses ImageNet-C's severity parameters (for 224-pixel "
                      "images): not the published CIFAR-C, and not comparable to published corruption accuracies")


@dataclass(frozen=True)
class _CSpec:
    """One corruption dataset: its name, title, published folder, and the base test sets it can stand on."""

    name: str
    title: str
    folder: str
    default_base: str
    fallback_base: str | None
    own_bases: tuple[str, ...]  # base datasets in the official within-class order (published rows can be matched)


CIFAR10_C = _CSpec("cifar10-c", "CIFAR-10-C", "CIFAR-10-C", "cifar10", data.EMBEDDED_DATASET, ("cifar10", data.EMBEDDED_DATASET))
CIFAR100_C = _CSpec("cifar100-c", "CIFAR-100-C", "CIFAR-100-C", "cifar100", None, ("cifar100",))


def check_selection(corruptions: Sequence[str] | None = None,
                    severities: Sequence[int] | None = None) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Validate a choice of corruptions and severities (None: all 15, all 5); keep the given order, no repeats."""
    chosen = tuple(corruptions) if corruptions else CORRUPTIONS
    known = CORRUPTIONS + EXTRA_CORRUPTIONS
    for c in chosen:
        if c not in known:
            raise DataError(f"unknown corruption '{c}'; known: {', '.join(known)}")
    levels = tuple(severities) if severities else SEVERITIES
    for s in levels:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s not in SEVERITIES:
            raise DataError(f"corruption severities are integers 1 to 5, got {s!r}")
    if len(set(chosen)) != len(chosen) or len(set(levels)) != len(levels):
        raise DataError("corruptions and severities must not repeat")
    return chosen, tuple(int(s) for s in levels)


def image_seed(seed: int, corruption: str, severity: int, index: int) -> int:
    """The 32-bit seed of NumPy's global RNG for generating image ``index`` under ``corruption`` at ``severity``.

    ``seed`` must lie in [0, 2**32) (:func:`~robustbench_ext.runtime.check_seed`): distinct seeds, distinct images."""
    key = [check_seed(seed, "corruption seed"), zlib.crc32(corruption.encode()), int(severity), int(index)]
    return int(np.random.SeedSequence(key).generate_state(1, dtype=np.uint32)[0])


def generate(images: np.ndarray, corruption: str, severity: int, seed: int, start: int = 0) -> np.ndarray:
    """Corrupt uint8 images ``[N, H, W, 3]`` (H, W >= 32) with imagecorruptions; image k gets index ``start + k``.

    Returns uint8 ``[N, H, W, 3]``. NumPy's global RNG is seeded per image (:func:`image_seed`) and restored.
    """
    ic = import_imagecorruptions()
    check_selection([corruption], [severity])
    out = np.empty_like(images)
    state = np.random.get_state()
    try:
        for k, img in enumerate(images):
            np.random.seed(image_seed(seed, corruption, severity, start + k))
            out[k] = ic.corrupt(np.ascontiguousarray(img), severity=int(severity), corruption_name=corruption)
    finally:
        np.random.set_state(state)
    return out


def generator_versions() -> dict[str, str | None]:
    """Versions of imagecorruptions and the libraries its pixels depend on (for the record)."""
    out = {}
    for dist in ("imagecorruptions", "scikit-image", "opencv-python", "scipy", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """sha256 of a file, streamed (cached per path, size and mtime within the process)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _FILE_HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        _FILE_HASHES[key] = h.hexdigest()
    return _FILE_HASHES[key]


def official_rows(base_y: np.ndarray, official_y: np.ndarray) -> np.ndarray | None:
    """Row in the official order of each base image, matched by class and rank within the class.

    Valid when the base keeps the official order within each class (the official set itself, any prefix of
    it, the class-interleaved JPEG copy). None when the base has more images of a class than the official set.
    """
    rows = np.empty(len(base_y), dtype=np.int64)
    for c in np.unique(base_y):
        mine = np.flatnonzero(base_y == c)
        theirs = np.flatnonzero(official_y == c)
        if len(mine) > len(theirs):
            return None
        rows[mine] = theirs[: len(mine)]
    return rows


@dataclass(frozen=True)
class CorruptionSet:
    """A clean base slice and its corrupted versions, one (corruption, severity) at a time.

    ``clean``: the base images (their first N). ``kind``: ``published`` (``folder`` holds the .npy files,
    ``rows`` the row of each base image within one severity block) or ``generated`` (``seed``).
    """

    name: str
    title: str
    clean: EvalData
    kind: str
    folder: str | None = None
    rows: np.ndarray | None = field(default=None, compare=False)
    per_severity: int = 0
    seed: int = 0
    versions: dict[str, str | None] = field(default_factory=dict, compare=False, repr=False)

    @property
    def n(self) -> int:
        return self.clean.n

    def first(self, n_examples: int | None) -> "CorruptionSet":
        """The first ``n_examples`` base images (and their rows)."""
        clean = self.clean.first(n_examples)
        rows = self.rows[: clean.n] if self.rows is not None else None
        return dataclasses.replace(self, clean=clean, rows=rows)

    def images(self, corruption: str, severity: int) -> Tensor:
        """The base images under ``corruption`` at ``severity``: ``[N, C, H, W]`` float32 in [0, 1] (CPU)."""
        check_selection([corruption], [severity])
        if self.kind == "published":
            path = Path(self.folder) / f"{corruption}.npy"  # type: ignore[arg-type]
            arr = _open_npy(path, self.per_severity, tuple(self.clean.x.shape[2:]))
            picked = np.asarray(arr[(severity - 1) * self.per_severity + self.rows])
            return _to_float_images(picked, str(path))
        x = self.clean.x
        if x.shape[1] != 3 or min(x.shape[2:]) < 32:
            raise DataError(f"{self.title}: imagecorruptions needs RGB images of at least 32x32 pixels, got {tuple(x.shape[1:])}")
        u8 = (x * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
        return _to_float_images(generate(u8, corruption, severity, self.seed), self.title)

    def description(self) -> str:
        """One line: which corrupted images these are (the record's dataset source)."""
        if self.kind == "published":
            return f"{self.title} (published files, {self.folder}) of {self.clean.source}"
        v = self.versions.get("imagecorruptions")
        return f"{self.title} generated with imagecorruptions {v}, seed {self.seed}, from {self.clean.source}"

    def source(self, corruptions: Sequence[str]) -> dict[str, Any]:
        """The record's ``corruptions.source`` block: which source, with file hashes or generator versions."""
        out: dict[str, Any] = {"kind": self.kind, "description": self.description(), "base": self.clean.name,
                               "base_source": self.clean.source, "base_sha256": self.clean.sha256()}
        if self.kind == "published":
            folder = Path(self.folder)  # type: ignore[arg-type]
            out.update(folder=str(folder), rows="official test order, matched to the base images by class and rank",
                       files={f: file_sha256(folder / f) for f in [f"{c}.npy" for c in corruptions] + ["labels.npy"]},
                       comparable_to_published=True)
        else:
            out.update(generator=f"imagecorruptions {self.versions.get('imagecorruptions')}", versions=dict(self.versions),
                       seed=self.seed, seed_rule="np.random.seed(SeedSequence([seed, crc32(corruption), severity, index])"
                       ".generate_state(1)[0]) before each image", comparable_to_published=False, note=COMPARABILITY_NOTE)
        return out

    def sha256(self, corruptions: Sequence[str], severities: Sequence[int]) -> str:
        """Identity of exactly the images evaluated: the base slice, the source, and the selection."""
        ident = {"base": self.clean.sha256(), "selection": [list(corruptions), list(severities)], "kind": self.kind}
        if self.kind == "published":
            folder = Path(self.folder)  # type: ignore[arg-type]
            ident["files"] = [file_sha256(folder / f"{c}.npy") for c in corruptions]
            ident["rows"] = self.rows.tolist() if self.rows is not None else None
        else:
            ident.update(seed=self.seed, versions=self.versions)
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


def _open_npy(path: Path, per_severity: int, hw: tuple[int, int]) -> np.ndarray:
    """A published corruption file, memory-mapped and checked: ``[5 M, H, W, 3]`` uint8."""
    if not path.is_file():
        raise DataError(f"{path} is missing: the published corruption files are <corruption>.npy and labels.npy")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:
        raise DataError(f"cannot read {path} as .npy ({exc})") from None
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[0] != 5 * per_severity or tuple(arr.shape[1:]) != (*hw, 3):
        raise DataError(f"{path}: expected uint8 [{5 * per_severity}, {hw[0]}, {hw[1]}, 3] (5 severities x {per_severity} "
                        f"images), got {arr.dtype} {list(arr.shape)}")
    return arr


def _find_published(spec: _CSpec, path: str | None) -> Path | None:
    if path is not None:
        folder = Path(path).expanduser()
        if not (folder / "labels.npy").is_file():
            raise DataError(f"{folder} is not a {spec.title} folder (no labels.npy); it should hold <corruption>.npy and labels.npy")
        return folder
    for d in data.data_dirs():
        if (d / spec.folder / "labels.npy").is_file():
            return d / spec.folder
    return None


def _base(spec: _CSpec, base: str | None, n_examples: int | None) -> EvalData:
    """The clean base slice: ``base`` if given, else the dataset's test set, else (offline) its embedded slice."""
    if base is not None:
        made = DATASETS.create(base, n_examples=n_examples)
        if not isinstance(made, EvalData):
            raise DataError(f"{spec.name}: base '{base}' must be a plain image dataset (cifar10, cifar10-1k, npz:PATH, ...)")
        return made
    try:
        return DATASETS.create(spec.default_base, n_examples=n_examples)
    except DataError as exc:
        if spec.fallback_base is None:
            raise DataError(f"{spec.title} needs the clean test images: {exc}") from None
        log.warning("%s: %s; using the embedded slice %s as the base images instead", spec.title, exc, spec.fallback_base)
        return DATASETS.create(spec.fallback_base, n_examples=n_examples)


def load_corruption_set(spec: _CSpec, n_examples: int | None, base: str | None, source: str, seed: int,
                        path: str | None) -> CorruptionSet:
    """The search rule of the module docstring: published files when present (and usable), else generated."""
    if source not in SOURCES:
        raise DataError(f"{spec.name}: source must be one of {', '.join(SOURCES)}, got '{source}'")
    check_seed(seed, f"{spec.name}: seed")
    folder = _find_published(spec, path) if source != "generated" else None
    if source == "published" and folder is None:
        raise DataError(f"{spec.title} not found (looked for {spec.folder}/labels.npy in "
                        f"{describe_search('RBX_DATA', data.data_dirs())}): put the published {spec.folder}/ in ./data, set "
                        f"RBX_DATA=DIR or pass path=DIR, or use source=generated")
    clean = _base(spec, base, n_examples)
    if folder is not None:
        usable = clean.name in spec.own_bases
        if not usable and (source == "published" or path is not None):
            raise DataError(f"{spec.title}: the published files follow the official test order, so the base must be one of "
                            f"{', '.join(spec.own_bases)}, not '{clean.name}'; use source=generated for other images")
        if usable:
            try:
                labels = np.load(folder / "labels.npy", mmap_mode="r", allow_pickle=False)
            except Exception as exc:
                raise DataError(f"cannot read {folder / 'labels.npy'} ({exc})") from None
            if labels.ndim != 1 or len(labels) % 5:
                raise DataError(f"{folder / 'labels.npy'}: expected [5 M] labels (5 severities), got shape {list(labels.shape)}")
            per = len(labels) // 5
            rows = official_rows(clean.y.numpy(), np.asarray(labels[:per]))
            if rows is None:
                raise DataError(f"{spec.title} at {folder}: the base {clean.name} has more images of a class than the "
                                f"{per} per severity in labels.npy")
            return CorruptionSet(spec.name, spec.title, clean, "published", str(folder), rows, per)
        log.info("%s: published files at %s do not match the base %s; generating instead", spec.title, folder, clean.name)
    import_imagecorruptions()  # a missing package fails here, before any work
    title = spec.title if clean.name in spec.own_bases else "common corruptions"  # not "CIFAR-10-C" of other images
    return CorruptionSet(spec.name, title, clean, "generated", seed=seed, versions=generator_versions())


def generated_from(clean: EvalData, seed: int = 0) -> CorruptionSet:
    """The common corruptions of any RGB images of at least 32x32 pixels, generated (images of one's own)."""
    check_seed(seed, "corruption seed")
    import_imagecorruptions()
    return CorruptionSet(f"corruptions:{clean.name}", "common corruptions", clean, "generated", seed=seed,
                         versions=generator_versions())


@DATASETS.register("cifar10-c", corruptions=True, summary="CIFAR-10-C: 15 common corruptions x 5 severities; the published CIFAR-10-C/ "
                                        "files, else generated with imagecorruptions (base=, source=, seed=, path=)")
def cifar10_c(n_examples: int | None = None, base: str | None = None, source: str = "auto", seed: int = 0,
              path: str | None = None) -> CorruptionSet:
    """CIFAR-10 under the common corruptions (see the module docstring); base default ``cifar10``, offline ``cifar10-1k``."""
    return load_corruption_set(CIFAR10_C, n_examples, base, source, seed, path)


@DATASETS.register("cifar100-c", corruptions=True, summary="CIFAR-100-C: 15 common corruptions x 5 severities; the published CIFAR-100-C/ "
                                         "files, else generated with imagecorruptions")
def cifar100_c(n_examples: int | None = None, base: str | None = None, source: str = "auto", seed: int = 0,
               path: str | None = None) -> CorruptionSet:
    """CIFAR-100 under the common corruptions (see the module docstring); base default ``cifar100``."""
    return load_corruption_set(CIFAR100_C, n_examples, base, source, seed, path)
