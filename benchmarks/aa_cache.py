"""A cache of pyautoattack's per-sample results and seconds, so tuning rbx does not re-pay AutoAttack.

AutoAttack's side of a comparison does not change while rbx is tuned, and on the CPU it costs minutes
(small CNN) to hours (ResNet-18). One file per (model, images, threat model) holds the per-sample robust
flags (AutoAttack's own verdict, before intersecting with rbx's clean pass), the seconds it took and the
date it was measured. The key is a sha256 of everything that can change the result or the time:

model sha256, dataset sha256 (pixels and labels of exactly the evaluated images), norm, eps, AutoAttack
version and components, pyautoattack version, seed, torch thread count, device, batch size, torch version.

A hit is reported by the caller (``cached_at`` in the result) so no table shows a cached time as fresh.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

#: Where the harnesses keep the cache (committed: the AutoAttack side is a measurement too).
DEFAULT_DIR = Path("results/aa_cache")


def cache_key(fields: dict[str, Any]) -> str:
    """sha256 of the key fields (sorted JSON), first 24 hex digits."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:24]


@dataclass(frozen=True)
class AAResult:
    """AutoAttack on one threat model: per-sample robust flags ``[N]``, wall and process-CPU seconds, its
    components, and when it was measured if it came from the cache (None: measured in this run)."""

    robust: np.ndarray
    seconds: float
    cpu_seconds: float | None
    components: list
    cached_at: str | None


def cached_run(cache_dir: Path | None, fields: dict[str, Any], run: Callable[[], tuple[np.ndarray, float, float, list]],
               refresh: bool = False) -> AAResult:
    """``run()`` -> (robust flags [N] bool, wall seconds, CPU seconds, components), from the cache when a
    matching entry exists (``cached_at`` then holds the UTC date it was measured). A fresh result is stored
    at once, so a long comparison keeps every finished threat model even if it is stopped later.
    """
    from robustbench_ext.records.provenance import utc_now
    from robustbench_ext.paths import atomic_write_text

    path = None if cache_dir is None else Path(cache_dir) / f"{cache_key(fields)}.json"
    if path is not None and path.is_file() and not refresh:
        entry = json.loads(path.read_text())
        if entry.get("key") == fields:
            return AAResult(np.asarray(entry["robust"], dtype=bool), float(entry["seconds"]), entry.get("cpu_seconds"),
                            list(entry["components"]), entry["measured_at"])
    robust, seconds, cpu, comps = run()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        entry = {"key": fields, "measured_at": utc_now(), "seconds": round(float(seconds), 3), "cpu_seconds": round(float(cpu), 3),
                 "components": list(comps), "n": int(len(robust)), "robust": [bool(v) for v in np.asarray(robust)]}
        atomic_write_text(path, json.dumps(entry) + "\n")
    return AAResult(np.asarray(robust, dtype=bool), float(seconds), float(cpu), list(comps), None)
