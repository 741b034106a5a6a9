"""Streaming evaluation over packed ``.npz`` shards: datasets larger than memory, resumable per shard.

Shards are packed ``.npz`` files (:mod:`robustbench_ext.data.shards`; ``rbx shards pack`` writes them, any
tool can). The stream (``rbx run --shards``, a :class:`~robustbench_ext.evaluation.request.RunRequest` with
``shards``):

- reads the shards in sorted order through an :class:`torch.utils.data.IterableDataset`; a DataLoader
  worker decodes the next shard while the current one is attacked, so memory holds at most two
  shards whatever the dataset's size;
- evaluates each shard as one plain rbx run of the same request (checks, clean pass, cascades, union
  stage; :func:`~robustbench_ext.evaluation.runner.execute`) seeded by ``(seed, shard number)``, and writes its record under ``<stream dir>/records/shard-K.json``:
  a killed stream restarts at the first shard without a record (and a half-done shard resumes from
  its saved evaluation state); a shard record made with other settings or from a changed file is redone;
- with ``torch.distributed`` (``torchrun``), shard ``k`` goes to rank ``k % world``; rank 0 merges;
- merges the shard records into one record (flags concatenated; accuracies recomputed from them;
  per-stage passes, points and seconds summed) in ``results/records/``, like any run.

Per-shard records are marked ``config.stream.role = "shard"`` and leaderboards skip them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..records import provenance
from ..progress import resumable
from ..attack.search import SearchOptions
from ..data.shards import ShardStream, content_sha256, list_shards, packed_dataset, shard_loader
from .distributed import Dist
from ..errors import ResultsError
from ..models.loading import LoadedModel, file_sha256
from ..runtime import SEED_STREAMS, stream_seed
from .state import evaluation_desc
from ..records.schema import Accuracy, RunSettings, SampleFlags, StageResult, ThreatResult, build_record, slug
from ..records.store import read_flags, read_record, write_run
from .result import Evaluation
from .request import RunRequest
from .runner import execute, load_requested_model
from .suites import AttackSpec, ThreatSpec

log = logging.getLogger(__name__)

#: Seed key of the shards' stream (shard k runs with stream_seed(seed, "shard", k)).
SHARD_KEY = SEED_STREAMS["shard"][0]


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
    progress: bool | None = None,
    search: SearchOptions = SearchOptions(),
    dist: Dist | None = None,
    workers: int = 1,
) -> tuple[Evaluation, Path] | None:
    """Evaluate every shard (this rank's share), then merge (rank 0). Returns the merged run and its path on rank 0.

    The same as ``rbx run --shards``: a :class:`RunRequest` with ``shards`` (:func:`run_stream`)."""
    request = RunRequest(model=model, shards=str(shards), threats=tuple(threats), union_attacks=tuple(union_attacks),
                         suite=suite, seed=seed, batch_size=batch_size, device=device, results_dir=Path(results_dir),
                         progress=progress, search=search, dist=dist)
    return run_stream(request, stream_dir=stream_dir, workers=workers)


def run_stream(request: RunRequest, *, stream_dir: Path | None = None, workers: int = 1) -> tuple[Evaluation, Path] | None:
    """A ``stream`` request: every shard of ``request.shards`` evaluated as one plain run (this rank's share),
    then merged into one record (rank 0), written under ``request.results_dir``. The model is loaded and the
    run planned once, for all shards."""
    dist = request.dist if request.dist is not None else Dist.current()
    results_dir = request.results_dir if request.results_dir is not None else Path("results")
    planned = request.planned
    bench = planned.bench
    model = load_requested_model(request)
    paths = list_shards(request.shards)
    key = stream_key(model, bench.threats, bench.union, request.seed, request.batch_size, request.search)
    stream_dir = Path(stream_dir or results_dir / "stream" / f"{slug(model.name)}_{slug(bench.suite or 'custom')}_{key}")
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
    with resumable(stream_dir, "stream folder (finished shards and the running shard's evaluation state)"):
        _run_shards(request, model, paths, todo, shas, key, stream_dir, dist, workers)
    dist.barrier()
    if not dist.is_main:
        return None
    merged = merge_parts([parts / f"shard-{k:05d}.json" for k in range(len(paths))], key, str(request.shards), dist,
                         seed=request.seed, shard_paths=paths)
    return merged, merged.write(results_dir)  # (merged.path says where)


def _run_shards(request: RunRequest, model: LoadedModel, paths: Sequence[Path], todo: Sequence[int], shas: dict[int, str],
                key: str, stream_dir: Path, dist: Dist, workers: int) -> None:
    """Evaluate this rank's shards ``todo`` one after another, each a plain run written as a part record."""
    for k, where, data, idx in shard_loader(ShardStream(paths, todo), workers):
        t0 = time.perf_counter()
        # one shard = one single-process plain run of the same plan, seeded by its shard number
        shard = request.for_part(model=model, data=data, seed=stream_seed(request.seed, "shard", k),
                                 state_dir=stream_dir / ".partial", dist=Dist(), progress=request.show_progress(dist.is_main))
        ev = execute(shard)
        flags = ev.flags if idx is None else dataclasses.replace(ev.flags, index=idx)
        record = dataclasses.replace(ev.record, run_id=f"shard-{k:05d}", config={**ev.record.config, "stream": {
            "role": "shard", "key": key, "shard": k, "path": where, "file_sha256": shas[k], "global_index": idx is not None}})
        write_run(record, flags, stream_dir, f"shard-{k:05d}", overwrite=True)
        log.info("shard %d: %d images, clean %.3f, union %.3f, %.1f s", k, data.n, record.clean.accuracy,
                 record.union.accuracy, time.perf_counter() - t0)


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
    name, source = packed_dataset(shard_paths) if shard_paths else (None, None)
    if shard_paths:
        sha = content_sha256(shard_paths, f.y)
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
                               sum(s.n_forward for s in stages), sum(s.n_backward for s in stages), tuple(curve),
                               queries=None if s0.queries is None else sum(s.queries or 0 for s in stages)))
    return tuple(out)
