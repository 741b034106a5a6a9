"""The evaluation state (AutoAttack's name for it): everything a killed run needs to continue, and its key.

:class:`EvaluationState` holds the per-sample flags so far, which stage of the run plan is running and
which of its batches comes next, the results of the finished stages and the running totals
(:class:`StageTotals`) of the stage in progress. It is written atomically after every batch into the
state folder (``RESULTS/.rbx-partial/<key>.npz``); :func:`run_key` says which state belongs to which run.
Since every batch is seeded by its position, a resumed run's flags equal an uninterrupted run's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import ResultsError


@dataclass
class StageTotals:
    """The running totals of the stage in progress: seconds, passes, the loss curve and the points broken.

    ``broken[c]`` lists the points broken in the stage's ``c``-th flag column (one column for a threat
    model's stage, one per threat model for a union stage).
    """

    seconds: float = 0.0
    n_forward: int = 0
    n_backward: int = 0
    n_nonfinite: int = 0
    curve_sum: list[float] = field(default_factory=list)
    curve_n: list[int] = field(default_factory=list)
    broken: list[list[int]] = field(default_factory=lambda: [[]])
    population: int | None = None  # an audit stage: the robust points it drew its sample from

    @classmethod
    def fresh(cls, n_columns: int) -> "StageTotals":
        return cls(broken=[[] for _ in range(n_columns)])

    def add_curve(self, sums: Sequence[float], counts: Sequence[int]) -> None:
        """Add one batch's per-step loss sums and point counts (steps align from the first)."""
        for s, (v, c) in enumerate(zip(sums, counts)):
            if s >= len(self.curve_sum):
                self.curve_sum.append(0.0)
                self.curve_n.append(0)
            self.curve_sum[s] += v
            self.curve_n[s] += c

    @property
    def curve(self) -> tuple[float, ...]:
        return tuple(round(s / c, 6) for s, c in zip(self.curve_sum, self.curve_n))

    @classmethod
    def merge(cls, parts: Sequence["StageTotals"]) -> "StageTotals":
        """One stage's totals from every rank's: passes and losses add up, seconds is the slowest rank's, an audit
        stage's population is the run's."""
        out = cls.fresh(len(parts[0].broken) if parts else 1)
        for p in parts:
            out.seconds = max(out.seconds, p.seconds)
            out.n_forward += p.n_forward
            out.n_backward += p.n_backward
            out.n_nonfinite += p.n_nonfinite
            out.add_curve(p.curve_sum, p.curve_n)
            for c, b in enumerate(p.broken):
                out.broken[c].extend(b)
        out.broken = [sorted(b) for b in out.broken]
        # an audit stage's population is the run's (every rank draws from the same robust points): the same on every rank
        out.population = next((p.population for p in parts if p.population is not None), None)
        return out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class EvaluationState:
    """A run's state after its last finished batch (see the module docstring).

    ``robust`` [N, C] and ``broken_by`` [N, C] have a column per threat model (main ones, then eps-sweep
    ones); ``stage`` indexes the run plan, ``batch`` the next batch of ``stage_points`` (the points the
    stage started with); ``results`` are the finished stages' result dicts, in plan order.
    """

    clean_correct: np.ndarray
    robust: np.ndarray
    broken_by: np.ndarray
    started: str
    checks: dict[str, Any] = field(default_factory=dict)
    results: list[dict[str, Any]] = field(default_factory=list)
    stage: int = 0
    batch: int = 0
    stage_points: np.ndarray | None = None
    totals: StageTotals | None = None
    elapsed: float = 0.0

    _ARRAYS = ("clean_correct", "robust", "broken_by", "stage_points")

    def to_bytes(self, key: str) -> bytes:
        meta = {k: v for k, v in dataclasses.asdict(self).items() if k not in self._ARRAYS}
        arrays = {k: getattr(self, k) for k in self._ARRAYS if getattr(self, k) is not None}
        buf = io.BytesIO()
        np.savez(buf, meta=np.array(json.dumps({"key": key, **meta})), **arrays)
        return buf.getvalue()

    @classmethod
    def from_file(cls, path: Path, key: str) -> "EvaluationState | None":
        """The state saved at ``path`` if it belongs to the run ``key`` (else None); unreadable: an error."""
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                if meta.pop("key") != key:
                    return None
                arrays = {k: z[k] for k in cls._ARRAYS if k in z.files}
        except Exception as exc:
            raise ResultsError(f"cannot read the evaluation state {path} ({exc}); delete it to start over") from None
        totals = meta.pop("totals")
        return cls(**arrays, **meta, totals=StageTotals(**totals) if totals is not None else None)


def evaluation_desc(model: Any, threats: Sequence[Any], union: Sequence[Any], seed: int, batch_size: int) -> dict[str, Any]:
    """The model, attacks and their parameters, seed and batching: what makes two evaluations comparable.

    ``model`` is a :class:`~robustbench_ext.models.loading.LoadedModel`, ``threats`` are ThreatSpecs and ``union``
    attack specs (typed loosely: this module sits below the layers that define them).
    """
    # the architecture too: the same weights file under other --arch-kwargs (say an activation) is another model
    return {"model": [model.name, model.source, model.sha256, model.normalization, model.architecture],
            "threats": [[t.threat.label, [[a.name, dict(a.params)] for a in t.attacks]] for t in threats],
            "union": [[a.name, dict(a.params)] for a in union], "seed": seed, "batch_size": batch_size}


def run_key(desc: dict[str, Any], data_sha256: str, device: torch.device, n_main: int | None = None,
            search: dict[str, Any] | None = None, world: int = 1) -> str:
    """What makes two runs the same run: the evaluation, the data slice, the device, the search switches, the world."""
    key = {**desc, "data": data_sha256, "device": device.type, "n_main": n_main}
    if search:
        key["search"] = search
    if world > 1:
        key["world"] = world
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]
