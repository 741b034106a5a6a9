"""Streaming evaluation over packed ``.npz`` shards: datasets larger than memory, resumable per shard.

A shard is an ``.npz`` that :func:`robustbench_ext.data.read_npz` reads (decoded ``x``/``y`` or packed
``jpeg``/``offsets``/``y``), optionally with ``index`` (the images' global ids). ``rbx shards pack``
writes them; any tool can. The stream:

- reads the shards in sorted order through an :class:`torch.utils.data.IterableDataset`; a DataLoader
  worker decodes the next shard while the current one is attacked, so memory holds at most two
  shards whatever the dataset's size;
- evaluates each shard as one ordinary rbx run (checks, clean pass, cascades, union stage) seeded
  by ``(seed, shard number)``, and writes its record under ``<stream dir>/records/shard-K.json``:
  a killed stream restarts at the first shard without a record (and a half-done shard resumes from
  its batch checkpoint); a shard record made with other settings or from a changed file is redone;
- with ``torch.distributed`` (``torchrun``), shard ``k`` goes to rank ``k % world``; rank 0 merges;
- merges the shard records into one record (flags concatenated; accuracies recomputed from them;
  per-stage passes, points and seconds summed) in ``results/records/``, like any run.

Per-shard records are marked ``config.stream.role = "shard"`` and leaderboards skip them.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import io
import json
import logging
import time
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from . import provenance
from .acceleration import SearchOptions
from .data import EvalData, read_npz
from .distributed import Dist
from .errors import DataError, ResultsError
from .models import LoadedModel, file_sha256
from .devutils import derive_seed
from .eval_state import evaluation_desc
from .records import Accuracy, RunSettings, SampleFlags, StageResult, ThreatResult, build_record, slug
from .record_io import atomic_write_bytes, read_flags, read_record, write_run
from .runner import Evaluation, evaluate
from .suites import AttackSpec, ThreatSpec

log = logging.getLogger(__name__)

#: Seed key of shard k is derive_seed(seed, SHARD_KEY, k).
SHARD_KEY = 2_000_003


# ---- shards ----------------------------------------------------------------------------------------
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


def _shard_index(path: Path, n: int) -> np.ndarray | None:
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
            yield k, str(path), data, _shard_index(path, data.n)


def _loader(stream: ShardStream, workers: int) -> Iterator[tuple[int, str, EvalData, np.ndarray | None]]:
    if workers == 0:
        return iter(stream)
    # batch_size=None: each item is one shard; the worker decodes ahead (prefetch 1) while we attack
    return iter(DataLoader(stream, batch_size=None, num_workers=workers, prefetch_factor=1,
                           persistent_workers=False, collate_fn=lambda item: item))


# ---- the stream ------------------------------------------------------------------------------------
def stream_key(model: LoadedModel, threats: Sequence[ThreatSpec], union: Sequence[AttackSpec], seed: int,
               batch_size: int, search: SearchOptions) -> str:
    desc = {**evaluation_desc(model, threats, union, seed, batch_size), "search": search.describe()}
    return hashlib.sha256(json.dumps(desc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stream_evaluate(
    model: LoadedModel,
    shards: str | Path,
    threats: Sequence[ThreatSpec],
    *,
    union_attacks: Sequence[AttackSpec] = (),
    suite: str | None = None,
    seed: int = 0,
    batch_size: int = 256,
    device: str | torch.device = "auto",
    results_dir: Path = Path("results"),
    stream_dir: Path | None = None,
    progress: bool = True,
    search: SearchOptions = SearchOptions(),
    dist: Dist | None = None,
    workers: int = 1,
) -> tuple[Evaluation, Path] | None:
    """Evaluate every shard (this rank's share), then merge (rank 0). Returns the merged run and its path on rank 0."""
    dist = dist if dist is not None else Dist.current()
    paths = list_shards(shards)
    key = stream_key(model, threats, union_attacks, seed, batch_size, search)
    stream_dir = Path(stream_dir or Path(results_dir) / "stream" / f"{slug(model.name)}_{slug(suite or 'custom')}_{key}")
    parts = stream_dir / "records"
    shas = {}
    todo = []
    for k, path in enumerate(paths):
        if not dist.mine(k):
            continue
        shas[k] = file_sha256(path)
        if _part_ok(parts / f"shard-{k:05d}.json", key, shas[k]):
            log.info("shard %d (%s): already evaluated, skipping", k, path.name)
            continue
        todo.append(k)
    log.info("%d shards, %d for this rank, %d to evaluate; parts in %s", len(paths), sum(dist.mine(k) for k in range(len(paths))),
             len(todo), parts)
    for k, where, data, idx in _loader(ShardStream(paths, todo), workers):
        t0 = time.perf_counter()
        ev = evaluate(model, data, threats, union_attacks=union_attacks, suite=suite, seed=derive_seed(seed, SHARD_KEY, k),
                      batch_size=batch_size, device=device, progress=progress, state_dir=stream_dir / ".partial",
                      search=search, dist=Dist())  # one shard = one single-process run
        flags = ev.flags if idx is None else dataclasses.replace(ev.flags, index=idx)
        record = dataclasses.replace(ev.record, run_id=f"shard-{k:05d}", config={**ev.record.config, "stream": {
            "role": "shard", "key": key, "shard": k, "path": where, "file_sha256": shas[k], "global_index": idx is not None}})
        write_run(record, flags, stream_dir, f"shard-{k:05d}")
        log.info("shard %d: %d images, clean %.3f, union %.3f, %.1f s", k, data.n, record.clean.accuracy,
                 record.union.accuracy, time.perf_counter() - t0)
    dist.barrier()
    if not dist.is_main:
        return None
    merged = merge_parts([parts / f"shard-{k:05d}.json" for k in range(len(paths))], key, str(shards), dist, seed=seed,
                         shard_paths=paths)
    return merged, merged.write(results_dir)


def _part_ok(path: Path, key: str, sha: str) -> bool:
    if not path.is_file():
        return False
    try:
        rec = read_record(path)
        read_flags(path, rec)
    except ResultsError:
        return False
    meta = rec.config.get("stream", {})
    return meta.get("key") == key and meta.get("file_sha256") == sha


def _packed_dataset(shard_paths: Sequence[Path]) -> tuple[str | None, str | None]:
    """The name and source of the dataset ``rbx shards`` packed (None for shards from elsewhere)."""
    with np.load(shard_paths[0], allow_pickle=False) as z:
        if "dataset_name" not in z.files:
            return None, None
        return str(z["dataset_name"]), str(z["dataset_source"])


def _content_sha256(shard_paths: Sequence[Path], y: np.ndarray) -> str:
    """The hash of the streamed images as :meth:`EvalData.sha256` computes it for the same images in memory
    (float32 pixels in order, then int64 labels): a streamed run and a plain run of the same images pair up."""
    h = hashlib.sha256()
    for p in shard_paths:
        h.update(read_npz(Path(p), None, "shard").x.contiguous().numpy().tobytes())
    h.update(np.ascontiguousarray(y, dtype=np.int64).tobytes())
    return h.hexdigest()


def merge_parts(part_paths: Sequence[Path], key: str, shards: str, dist: Dist = Dist(), *, seed: int | None = None,
                shard_paths: Sequence[Path] = ()) -> Evaluation:
    """One record from the shard records (in shard order): flags concatenated, accuracies recomputed.

    ``seed``: the run's own seed (each shard ran with one derived from it; the record says the user's);
    ``shard_paths``: the shards, whose packed dataset names the record's dataset and whose images give its hash.
    """
    recs, flags = [], []
    for p in part_paths:
        if not p.is_file():
            raise ResultsError(f"shard record {p} is missing: run the stream again to evaluate it")
        r = read_record(p)
        if r.config.get("stream", {}).get("key") != key:
            raise ResultsError(f"shard record {p} was made with other settings: run the stream again")
        recs.append(r)
        flags.append(read_flags(p, r))
    first = recs[0]
    labels = tuple(t.threat for t in first.threats)
    index, offset = [], 0
    for r, q in zip(recs, flags):  # shards without an index array: positions in the concatenated stream
        index.append(q.index if r.config["stream"].get("global_index") else q.index + offset)
        offset += r.n
    f = SampleFlags(np.concatenate(index), np.concatenate([q.y for q in flags]),
                    np.concatenate([q.clean_correct for q in flags]), np.concatenate([q.robust for q in flags]),
                    np.concatenate([q.broken_by for q in flags]), labels)
    threats = tuple(
        ThreatResult(t.threat, t.norm, t.eps, Accuracy.from_flags(f.robust[:, ti]),
                     _merge_stages([r.threats[ti].attacks for r in recs]), round(sum(r.threats[ti].seconds for r in recs), 3))
        for ti, t in enumerate(first.threats))
    n = int(len(f.y))
    name, source = _packed_dataset(shard_paths) if shard_paths else (None, None)
    if shard_paths:
        sha = _content_sha256(shard_paths, f.y)
    else:  # no shard files at hand: a hash of the shards' hashes
        h = hashlib.sha256()
        for r in recs:
            h.update(r.dataset["sha256"].encode())
        sha = h.hexdigest()
    first_n = bool(np.array_equal(f.index, np.arange(n)))
    dataset = {**{k: first.dataset.get(k) for k in ("shape", "num_classes", "classes")},
               "name": name or f"shards:{shards}", "source": source or f"npz shards ({len(recs)} files)", "location": shards,
               "split": None, "n": n, "selection": f"first {n}" if first_n and name else f"all {len(recs)} shards",
               "sha256": sha, "streamed": f"{len(recs)} npz shards",
               "shards": [{"path": r.config["stream"]["path"], "n": r.n, "sha256": r.dataset["sha256"]} for r in recs]}
    wall = sum(float(r.provenance.get("wall_seconds", 0.0)) for r in recs)
    dev = torch.device(first.config.get("device", "cpu"))
    cfg = first.config
    settings = RunSettings(
        suite=first.suite, threats=tuple((t["threat"], tuple(t["attacks"])) for t in cfg["threats"]),
        union_attacks=tuple(cfg.get("union_attacks", ())), seed=int(seed if seed is not None else cfg.get("seed", 0)),
        batch_size=int(cfg["batch_size"]),
        device=cfg["device"], search=cfg.get("search", {}), distributed=dist.describe() if dist.world > 1 else None,
        extra={"stream": {"role": "merged", "key": key, "shards": len(recs), "seed_per_shard": "derive_seed(seed, 2000003, k)"}})
    record = build_record(settings, model=first.model, dataset=dataset, flags=f, threats=threats,
                          provenance=provenance.collect(dev, int(seed if seed is not None else cfg.get("seed", 0)),
                                                        first.provenance["started"], wall),
                          checks=first.checks, union_attacks=_merge_stages([r.union_attacks for r in recs]))
    return Evaluation(record, f)


def _merge_stages(per_part: Sequence[Sequence[StageResult]]) -> tuple[StageResult, ...]:
    if not per_part or not per_part[0]:
        return ()
    out = []
    for si, s0 in enumerate(per_part[0]):
        stages = [p[si] for p in per_part]
        w = np.array([s.n_attacked for s in stages], dtype=float)
        length = max(len(s.loss_curve) for s in stages)
        curve = []
        for j in range(length):  # mean over shards weighted by points attacked (approximate after early stops)
            vals = [(s.loss_curve[j], wi) for s, wi in zip(stages, w) if j < len(s.loss_curve)]
            tot = sum(wi for _, wi in vals)
            curve.append(round(sum(v * wi for v, wi in vals) / tot, 6) if tot else 0.0)
        out.append(StageResult(s0.attack, s0.params, round(sum(s.seconds for s in stages), 3), sum(s.n_attacked for s in stages),
                               sum(s.n_broken for s in stages), sum(s.robust_after for s in stages),
                               sum(s.n_forward for s in stages), sum(s.n_backward for s in stages), tuple(curve)))
    return tuple(out)
