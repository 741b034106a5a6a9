"""AutoAttack's numbers beside rbx's on the boards, where a results directory holds them.

Three places can say what AutoAttack found for a record's model on the record's images:

1. the record itself, when every threat model was evaluated with ``--attack autoattack`` (its attacks are
   ``autoattack/...``): its own accuracies are AutoAttack's;
2. AutoAttack's per-sample flags in ``aa_cache/*.json`` (written by ``benchmarks/aa_cache.py``): one file per
   (model sha256, images sha256, n, norm, eps) with AutoAttack's own verdict per image, before intersecting
   with rbx's clean pass. For a record of the same model file as it is (not behind input noise or an added
   normalization) on the same images, AutoAttack's robust accuracy per
   threat model is ``mean(clean_correct & aa_robust)`` and its union ``mean(clean_correct & AND of aa_robust)``
   over the record's threat models (only when all of them are cached);
3. a comparison written by ``benchmarks/aa_vs_rbx.py`` (a JSON with ``rbx.record`` and ``autoattack`` blocks)
   whose rbx record is this record.

:func:`autoattack_view` returns what the first of these that applies says, as an :class:`AAView`, or None.
Nothing is computed here: these are AutoAttack runs someone made, read back.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..records.schema import RunRecord, SampleFlags


@dataclass(frozen=True)
class AAView:
    """AutoAttack's robust accuracy (fractions) per threat model on a record's images, its union where every
    threat model is covered (else None), and where the numbers come from (``record``, ``aa_cache`` or ``comparison``)."""

    per_threat: dict[str, float]
    union: float | None
    source: str
    missing: tuple[str, ...] = field(default_factory=tuple)

    def describe(self) -> str:
        """One line for a tooltip or a CSV note."""
        parts = [f"{t} {100 * a:.1f}" for t, a in self.per_threat.items()]
        missing = f"; not run: {', '.join(self.missing)}" if self.missing else ""
        return f"AutoAttack ({self.source}): " + ", ".join(parts) + missing


@dataclass
class AAIndex:
    """The AutoAttack results found under a results directory (see the module docstring)."""

    cache: dict[tuple[str, str, int, str], list[tuple[float, np.ndarray]]] = field(default_factory=dict)
    comparisons: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def scan(cls, results_dir: Path) -> "AAIndex":
        """Read every AutoAttack cache entry and comparison under ``results_dir``."""
        index = cls()
        for p in sorted(Path(results_dir).rglob("*.json")):
            if p.name.startswith("."):
                continue
            try:
                d = json.loads(p.read_text())
            except (OSError, ValueError):
                continue
            if not isinstance(d, dict):
                continue
            key = d.get("key")
            if isinstance(key, dict) and {"model_sha256", "data_sha256", "n", "norm", "eps"} <= set(key) and "robust" in d:
                robust = np.asarray(d["robust"], dtype=bool)
                if len(robust) == int(key["n"]):
                    index.cache.setdefault((str(key["model_sha256"]), str(key["data_sha256"]), int(key["n"]), str(key["norm"])),
                                           []).append((float(key["eps"]), robust))
            elif isinstance(d.get("rbx"), dict) and isinstance(d.get("autoattack"), dict) and d["rbx"].get("record"):
                index.comparisons[Path(str(d["rbx"]["record"])).name] = d["autoattack"]
        return index

    def view(self, record_path: Path, record: RunRecord, flags: SampleFlags | None) -> AAView | None:
        """What AutoAttack found for ``record`` (see :func:`autoattack_view`)."""
        return autoattack_view(self, record_path, record, flags)


def _is_autoattack(threat) -> bool:
    return bool(threat.attacks) and all(a.attack.startswith("autoattack") for a in threat.attacks)


def autoattack_view(index: AAIndex, record_path: Path, record: RunRecord, flags: SampleFlags | None) -> AAView | None:
    """AutoAttack's numbers for ``record``: from the record itself, the cache, or a comparison (in that order)."""
    threats = [t for t in record.threats if t.measured]
    if record.corruptions is not None or not threats:
        return None
    if all(_is_autoattack(t) for t in record.threats):
        return AAView({t.threat: t.robust.accuracy for t in threats}, record.union.accuracy, "record")
    model_sha, data_sha = record.model.get("sha256"), record.dataset.get("sha256")
    # AutoAttack's flags for a model file are that file's as it is: not a record of it behind input noise (a
    # randomized model, judged by majority) or behind a normalization rbx added -- the same sha256, another model.
    as_is = not record.model.get("randomized") and not record.config.get("draws") and record.model.get("normalization") is None
    if model_sha and data_sha and flags is not None and as_is:
        per: dict[str, float] = {}
        union = np.asarray(flags.clean_correct, dtype=bool).copy()
        missing = []
        for t in record.threats:
            hit = next((r for eps, r in index.cache.get((model_sha, data_sha, record.n, t.norm), [])
                        if math.isclose(eps, t.eps, rel_tol=1e-6, abs_tol=1e-9)), None)
            if hit is None:
                missing.append(t.threat)
                continue
            per[t.threat] = float((np.asarray(flags.clean_correct, dtype=bool) & hit).mean())
            union &= hit
        if per:
            return AAView(per, None if missing else float(union.mean()), "aa_cache", tuple(missing))
    comparison = index.comparisons.get(Path(record_path).name)
    if comparison:
        per = {t: float(v["robust"]) for t, v in (comparison.get("threats") or {}).items() if "robust" in v}
        union_value = comparison.get("union")
        return AAView(per, float(union_value) if union_value is not None else None, "comparison",
                      tuple(t.threat for t in record.threats if t.threat not in per))
    return None
