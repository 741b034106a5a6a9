"""Robust accuracy as a function of eps, from the per-sample minimal perturbation norms a minimum-norm
attack found (:attr:`robustbench_ext.attack.base.AttackResult.min_norm`).

A point counts as robust at eps when no misclassified point was found within distance eps: its minimal
norm is larger than eps (closed ball, as the fixed-eps contract: a point at exactly eps is inside).
Points misclassified clean have norm 0 and are never robust; points never broken have norm inf and
are robust at every eps. Pure functions, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import RbxError


@dataclass(frozen=True)
class RobustnessCurve:
    """Robust accuracy (fraction in [0, 1]) at each eps of a grid, over ``n`` points."""

    eps: tuple[float, ...]
    robust_accuracy: tuple[float, ...]
    n: int

    def at(self, eps: float) -> float:
        """Robust accuracy at a grid value (exact match)."""
        try:
            return self.robust_accuracy[self.eps.index(eps)]
        except ValueError:
            raise RbxError(f"eps {eps:g} is not on the curve's grid ({', '.join(f'{e:g}' for e in self.eps)})") from None


def robust_accuracy_curve(min_norms, eps_grid: Sequence[float]) -> RobustnessCurve:
    """Robust accuracy at each eps of ``eps_grid`` from per-sample minimal norms ``[N]``.

    ``min_norms``: array-like of floats >= 0 (inf for points never broken, 0 for points misclassified
    clean); NaN or negative values are an error. ``eps_grid``: radii >= 0 in the same norm and units.
    Compared in float64: pass the float64 norms an attack reports (float32 rounding can move a norm
    across an eps of the grid).
    """
    m = np.asarray(min_norms.detach().cpu() if hasattr(min_norms, "detach") else min_norms, dtype=np.float64).reshape(-1)
    if np.isnan(m).any() or (m < 0).any():
        raise RbxError("minimal norms must be >= 0 (inf for points never broken); got NaN or negative values")
    grid = [float(e) for e in eps_grid]
    if any(not np.isfinite(e) or e < 0 for e in grid):
        raise RbxError(f"eps grid values must be finite and >= 0, got {grid}")
    if m.size == 0:
        raise RbxError("no points: a robustness curve needs at least one minimal norm")
    acc = tuple(float((m > e).mean()) for e in grid)
    return RobustnessCurve(tuple(grid), acc, int(m.size))


def eps_grid(eps_max: float, n: int = 11) -> tuple[float, ...]:
    """``n`` evenly spaced radii from 0 to ``eps_max`` (both included)."""
    if not eps_max > 0 or n < 2:
        raise RbxError(f"eps grid needs eps_max > 0 and at least 2 points, got eps_max={eps_max!r}, n={n!r}")
    return tuple(float(v) for v in np.linspace(0.0, eps_max, n))
