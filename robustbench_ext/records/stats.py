"""Statistics for accuracies measured on n samples."""

from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Decimal

#: Two-sided 95% normal quantile.
Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson 1927); ``(0, 1)`` when n == 0.

    Unlike the normal approximation it stays inside [0, 1] and is sound at 0% and 100%.
    """
    if n <= 0:
        return (0.0, 1.0)
    if not 0 <= successes <= n:
        raise ValueError(f"successes={successes} outside 0..{n}")
    p = successes / n
    z2 = z * z
    denom = 1 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    lo = 0.0 if successes == 0 else max(0.0, center - half)  # exact at the ends, free of rounding
    hi = 1.0 if successes == n else min(1.0, center + half)
    return (lo, hi)


def percent(fraction: float, digits: int = 1) -> str:
    """``100 * fraction`` rounded half-up to ``digits`` decimals, as text: the one rounding of every accuracy and
    interval bound rbx shows (the run's table, leaderboards in Markdown, CSV and HTML, reports, exports, gates)."""
    value = Decimal(repr(float(fraction))) * 100
    return str(value.quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))


def interval(ci: tuple[float, float], digits: int = 1, sep: str = "–") -> str:
    """A 95% interval as ``lo–hi`` percentages (through :func:`percent`)."""
    return f"{percent(ci[0], digits)}{sep}{percent(ci[1], digits)}"
