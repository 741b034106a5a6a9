"""Accuracies as records store them: one accuracy with its Wilson interval, the mean over corruption
cells, and a common-corruption evaluation's block (:mod:`robustbench_ext.records.schema` holds the record itself)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .stats import wilson_interval


@dataclass(frozen=True)
class Accuracy:
    """``count`` of ``n`` samples; ``accuracy = count / n``; ``ci95`` the Wilson interval."""

    accuracy: float
    count: int
    n: int
    ci95: tuple[float, float]

    @classmethod
    def from_flags(cls, flags: np.ndarray) -> "Accuracy":
        flags = np.asarray(flags, dtype=bool)
        n, k = int(flags.size), int(flags.sum())
        return cls(k / n if n else 0.0, k, n, wilson_interval(k, n))

    @classmethod
    def from_dict(cls, d: dict) -> "Accuracy":
        return cls(float(d["accuracy"]), int(d["count"]), int(d["n"]), tuple(d["ci95"]))  # type: ignore[arg-type]


@dataclass(frozen=True)
class MeanAccuracy:
    """The mean of K accuracies measured on the same ``n_images`` images (K = ``n_cells``).

    ``ci95`` is a Wilson interval over the images on each image's mean correctness: conservative, since a
    mean of correlated outcomes varies no more than one outcome does, and (unlike pooling the N x K
    outcomes as if independent) not too narrow.
    """

    accuracy: float
    n_images: int
    n_cells: int
    ci95: tuple[float, float]

    @classmethod
    def from_flags(cls, flags: np.ndarray) -> "MeanAccuracy":
        """``flags`` [N, K] bool -> the mean over all N x K with its interval over the N images."""
        flags = np.asarray(flags, dtype=bool)
        n, k = flags.shape
        per_image = flags.mean(axis=1) if k else np.zeros(n)
        total = float(per_image.sum())
        return cls(total / n if n else 0.0, int(n), int(k), wilson_interval(min(total, n), n))

    @classmethod
    def from_dict(cls, d: dict) -> "MeanAccuracy":
        return cls(float(d["accuracy"]), int(d["n_images"]), int(d["n_cells"]), tuple(d["ci95"]))  # type: ignore[arg-type]


@dataclass(frozen=True)
class CorruptionAccuracy:
    """Accuracy on the images under one corruption at one severity (1-5)."""

    corruption: str
    severity: int
    accuracy: Accuracy
    seconds: float = 0.0

    @classmethod
    def from_dict(cls, d: dict) -> "CorruptionAccuracy":
        return cls(str(d["corruption"]), int(d["severity"]), Accuracy.from_dict(d["accuracy"]), float(d.get("seconds", 0.0)))


@dataclass(frozen=True)
class CorruptionsResult:
    """A common-corruption run: its source, every (corruption, severity) accuracy, and their means.

    ``per_corruption``: corruption -> mean over its severities, in evaluation order; ``mean``: over every
    (corruption, severity) evaluated; ``complete``: all 15 corruptions at all 5 severities were evaluated, so
    ``mean`` is RobustBench's corruptions accuracy (on these images, from this source).
    """

    source: dict[str, Any]
    results: tuple[CorruptionAccuracy, ...]
    per_corruption: dict[str, MeanAccuracy]
    mean: MeanAccuracy
    complete: bool

    @property
    def corruptions(self) -> tuple[str, ...]:
        return tuple(self.per_corruption)

    @property
    def severities(self) -> tuple[int, ...]:
        return tuple(sorted({r.severity for r in self.results}))

    def accuracy(self, corruption: str, severity: int) -> Accuracy:
        for r in self.results:
            if r.corruption == corruption and r.severity == severity:
                return r.accuracy
        raise KeyError((corruption, severity))

    @classmethod
    def from_flags(cls, correct: np.ndarray, keys: Sequence[str], source: dict[str, Any],
                   seconds: Sequence[float] = (), complete: bool = False) -> "CorruptionsResult":
        """Accuracies from ``correct`` [N, K] and ``keys`` [K] (``"<corruption>/<severity>"``)."""
        correct = np.asarray(correct, dtype=bool)
        pairs = [(k.rsplit("/", 1)[0], int(k.rsplit("/", 1)[1])) for k in keys]
        secs = list(seconds) or [0.0] * len(pairs)
        results = tuple(CorruptionAccuracy(c, s, Accuracy.from_flags(correct[:, i]), round(float(secs[i]), 3))
                        for i, (c, s) in enumerate(pairs))
        order = list(dict.fromkeys(c for c, _ in pairs))
        per = {c: MeanAccuracy.from_flags(correct[:, [i for i, (ci, _) in enumerate(pairs) if ci == c]]) for c in order}
        return cls(dict(source), results, per, MeanAccuracy.from_flags(correct), bool(complete))

    @classmethod
    def from_dict(cls, d: dict) -> "CorruptionsResult":
        return cls(dict(d["source"]), tuple(CorruptionAccuracy.from_dict(r) for r in d["results"]),
                   {str(c): MeanAccuracy.from_dict(m) for c, m in d["per_corruption"].items()},
                   MeanAccuracy.from_dict(d["mean"]), bool(d["complete"]))
