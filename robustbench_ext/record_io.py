"""Records on disk: the results directory check, atomic writes, and reading records and their flags back.

The record itself (schema, per-sample flags, the one record builder) is :mod:`robustbench_ext.records`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from .errors import ResultsError
from .records import RunRecord, SampleFlags

def ensure_writable(results_dir: Path) -> Path:
    """Prove ``results_dir`` is writable before any work is done, and leave nothing behind.

    Folders that did not exist are created for the test and removed again, so a run that fails later
    (a missing model, say) leaves no empty results directory; writers create them when they write.
    """
    results_dir = Path(results_dir)
    missing = []
    p = results_dir.absolute()
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    try:
        results_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=results_dir, prefix=".rbx-write-test-", delete=True):
            pass
    except OSError as exc:
        raise ResultsError(f"cannot write to results directory {results_dir} ({exc.strerror or exc}); pass a writable --results-dir") from None
    finally:
        for d in missing:  # innermost first
            try:
                d.rmdir()
            except OSError:
                break
    return results_dir


def remove_if_empty(folder: Path) -> None:
    """Remove ``folder`` if it exists and is empty (a checkpoint folder after its run finished)."""
    try:
        Path(folder).rmdir()
    except OSError:
        pass


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one, never a part."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; results are meant to be shared
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_run(record: RunRecord, flags: SampleFlags, results_dir: Path, stem: str) -> Path:
    """Write ``<stem>.npz`` then ``<stem>.json`` atomically under ``results_dir/records``; return the JSON path."""
    out = Path(results_dir) / "records"
    try:
        out.mkdir(parents=True, exist_ok=True)
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


@dataclass
class Evaluation:
    """A finished run (an attack evaluation or a corruption evaluation): the record (files not yet written) and the per-sample flags."""

    record: RunRecord
    flags: SampleFlags

    @property
    def stem(self) -> str:
        """File name stem for this run's record and flags (its run id)."""
        return self.record.run_id

    def write(self, results_dir: Path) -> Path:
        """Write ``records/<stem>.{npz,json}`` atomically; return the JSON path."""
        return write_run(self.record, self.flags, results_dir, self.stem)
