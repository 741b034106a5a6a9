"""Packed ``.npz`` shards: datasets larger than memory, listed, packed and decoded one shard at a time.

A shard is an ``.npz`` that :func:`robustbench_ext.data.datasets.read_npz` reads (decoded ``x``/``y`` or packed
``jpeg``/``offsets``/``y``), optionally with ``index`` (the images' global ids). ``rbx shards pack`` writes
them (:func:`pack_shards`); any tool can. :class:`ShardStream` yields them in sorted order for a
DataLoader worker to decode ahead; the streaming evaluation (:mod:`robustbench_ext.evaluation.streaming`)
attacks them.
"""

from __future__ import annotations

import glob
import hashlib
import io
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from ..errors import DataError
from ..paths import atomic_write_bytes
from .datasets import EvalData, read_npz


def list_shards(spec: str | Path) -> list[Path]:
    """The shard files of a folder (its ``*.npz``) or a glob pattern, sorted by name."""
    p = Path(spec)
    paths = sorted(p.glob("*.npz")) if p.is_dir() else sorted(Path(s) for s in glob.glob(str(spec)))
    paths = [q for q in paths if q.is_file()]
    if not paths:
        raise DataError(f"no .npz shards at {spec}: give a folder of .npz files or a glob such as 'shards/*.npz'")
    return paths


def pack_shards(data: EvalData, out_dir: Path, shard_size: int, prefix: str = "shard") -> list[Path]:
    """Write ``data`` as uint8 NHWC shards of ``shard_size`` images (with global ``index``); return the paths."""
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise DataError(f"--shard-size must be a positive integer, got {shard_size!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    x = (data.x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    y = data.y.numpy().astype(np.int64)
    width = max(5, len(str((data.n - 1) // shard_size)))
    paths = []
    for k, start in enumerate(range(0, data.n, shard_size)):
        sl = slice(start, start + shard_size)
        arrays = {"x": x[sl], "y": y[sl], "index": np.arange(start, min(start + shard_size, data.n)),
                  # what was packed, so a streamed run's record names that dataset (and lands on its boards)
                  "dataset_name": np.array(data.name), "dataset_source": np.array(data.source)}
        if data.classes:
            arrays["classes"] = np.array(data.classes)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        path = out_dir / f"{prefix}-{k:0{width}d}.npz"
        atomic_write_bytes(path, buf.getvalue())
        paths.append(path)
    return paths


def shard_index(path: Path, n: int) -> np.ndarray | None:
    """The shard's ``index`` array (global image ids), or None if it has none."""
    with np.load(path, allow_pickle=False) as z:
        if "index" not in z.files:
            return None
        idx = np.asarray(z["index"], dtype=np.int64)
    if idx.shape != (n,):
        raise DataError(f"{path}: index has shape {idx.shape} for {n} images")
    return idx


class ShardStream(IterableDataset):
    """Yields ``(k, path, EvalData, index or None)`` for this rank's shards, decoding one shard at a time."""

    def __init__(self, paths: Sequence[Path], todo: Sequence[int]) -> None:
        self.paths = list(paths)
        self.todo = list(todo)

    def __iter__(self) -> Iterator[tuple[int, str, EvalData, np.ndarray | None]]:
        for k in self.todo:
            path = self.paths[k]
            data = read_npz(path, None, f"shard:{path.name}", source=f"npz shard ({path.name})")
            yield k, str(path), data, shard_index(path, data.n)


def shard_loader(stream: ShardStream, workers: int) -> Iterator[tuple[int, str, EvalData, np.ndarray | None]]:
    if workers == 0:
        return iter(stream)
    # batch_size=None: each item is one shard; the worker decodes ahead (prefetch 1) while we attack
    return iter(DataLoader(stream, batch_size=None, num_workers=workers, prefetch_factor=1,
                           persistent_workers=False, collate_fn=lambda item: item))


def packed_dataset(shard_paths: Sequence[Path]) -> tuple[str | None, str | None]:
    """The name and source of the dataset ``rbx shards`` packed (None for shards from elsewhere)."""
    with np.load(shard_paths[0], allow_pickle=False) as z:
        if "dataset_name" not in z.files:
            return None, None
        return str(z["dataset_name"]), str(z["dataset_source"])


def content_sha256(shard_paths: Sequence[Path], y: np.ndarray) -> str:
    """The hash of the streamed images as :meth:`EvalData.sha256` computes it for the same images in memory
    (float32 pixels in order, then int64 labels): a streamed run and a plain run of the same images pair up."""
    h = hashlib.sha256()
    for p in shard_paths:
        h.update(read_npz(Path(p), None, "shard").x.contiguous().numpy().tobytes())
    h.update(np.ascontiguousarray(y, dtype=np.int64).tobytes())
    return h.hexdigest()


