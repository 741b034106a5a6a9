"""Records on disk: the results directory check, atomic writes, and reading records and their flags back.

The record itself (schema, per-sample flags, the one record builder) is :mod:`robustbench_ext.records.schema`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import ResultsError
from ..paths import atomic_write_bytes, atomic_write_text, ensure_writable, remove_if_empty  # noqa: F401  (re-exported)
from .schema import RunRecord, SampleFlags



def free_stem(out: Path, stem: str) -> str:
    """``stem``, or ``stem-2``, ``stem-3`` ... : the first that names no record or flags file in ``out``.

    Two runs of one model and suite started within the same second get the same time-based stem; the second
    must not overwrite the first's record.
    """
    candidate, k = stem, 1
    while (out / f"{candidate}.json").exists() or (out / f"{candidate}.npz").exists():
        k += 1
        candidate = f"{stem}-{k}"
    return candidate


def write_run(record: RunRecord, flags: SampleFlags, results_dir: Path, stem: str, *, overwrite: bool = False) -> Path:
    """Write ``<stem>.npz`` then ``<stem>.json`` atomically under ``results_dir/records``; return the JSON path.

    An existing record of the same stem is kept (the new one gets the next free stem, and its ``run_id`` says so)
    unless ``overwrite`` (a stream's shard rewritten on resume).
    """
    out = Path(results_dir) / "records"
    try:
        out.mkdir(parents=True, exist_ok=True)
        if not overwrite:
            unique = free_stem(out, stem)
            if unique != stem:
                stem = unique
                if record.run_id != stem:
                    record = dataclasses.replace(record, run_id=stem)
        buf = io.BytesIO()
        np.savez_compressed(buf, **flags.to_arrays())
        blob = buf.getvalue()
        flags_path = out / f"{stem}.npz"
        atomic_write_bytes(flags_path, blob)
        record = dataclasses.replace(record, flags_file=flags_path.name, flags_sha256=hashlib.sha256(blob).hexdigest())
        json_path = out / f"{stem}.json"
        atomic_write_text(json_path, record.to_json() + "\n")
    except OSError as exc:
        raise ResultsError(f"cannot write results to {out} ({exc.strerror or exc}); pass a writable --results-dir") from None
    return json_path


def read_record(path: Path) -> RunRecord:
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ResultsError(f"cannot read record {path}: {exc}") from None
    if not isinstance(d, dict):
        raise ResultsError(f"{path} is not an rbx record")
    return RunRecord.from_dict(d)


def read_flags(record_path: Path, record: RunRecord | None = None) -> SampleFlags:
    """The flags npz of the record at ``record_path``, checked against the record's sha256."""
    record = record or read_record(record_path)
    path = Path(record_path).parent / record.flags_file
    if record.flags_sha256:
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
        if digest != record.flags_sha256:
            raise ResultsError(f"flags file {path} is missing or does not match its record's sha256")
    return SampleFlags.load(path)


def iter_records(results_dir: Path) -> Iterator[tuple[Path, RunRecord]]:
    """Every readable rbx record under ``results_dir`` (recursively, shard parts of streamed runs excepted), oldest first."""
    found = []
    for p in sorted(Path(results_dir).rglob("*.json")):
        if p.name.startswith("."):
            continue
        try:
            d = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(d, dict) and str(d.get("schema", "")).startswith("rbx.record/"):
            if (d.get("config") or {}).get("stream", {}).get("role") == "shard":
                continue  # one shard of a streamed run: the merged record stands for it
            try:
                found.append((p, RunRecord.from_dict(d)))
            except ResultsError:
                continue
    found.sort(key=lambda pr: (pr[1].provenance.get("started", ""), str(pr[0])))
    return iter(found)
