"""Threat models: a norm and a radius, parsed from strings such as ``Linf:8/255``, ``L2:0.5``, ``L1:12``."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ThreatModelError

if TYPE_CHECKING:  # pragma: no cover
    from .geometry import Geometry

#: Canonical norm names, in the order tables show them.
NORMS: tuple[str, ...] = ("Linf", "L2", "L1")

_NORM_ALIASES = {
    "linf": "Linf", "l-inf": "Linf", "l_inf": "Linf", "inf": "Linf", "l∞": "Linf",
    "l2": "L2", "2": "L2",
    "l1": "L1", "1": "L1",
}

def canonical_norm(norm: str) -> str:
    """Map ``linf``/``inf``/``L2``/``l1``... to ``Linf``/``L2``/``L1``; raise ThreatModelError otherwise."""
    key = str(norm).strip().lower()
    if key not in _NORM_ALIASES:
        raise ThreatModelError(f"unknown norm '{norm}'; known: {', '.join(NORMS)}")
    return _NORM_ALIASES[key]


def parse_eps(text: str) -> float:
    """Parse a radius written as a number (``0.5``, ``1e-2``) or a fraction (``8/255``).

    Signs, ``nan`` and ``inf`` parse here so that :class:`ThreatModel` can reject them by name.
    """
    parts = str(text).strip().split("/")
    try:
        if len(parts) > 2 or not all(p.strip() for p in parts):
            raise ValueError
        values = [float(p) for p in parts]
    except ValueError:
        raise ThreatModelError(f"cannot parse eps '{text}': write a number such as 0.5 or a fraction such as 8/255") from None
    if len(values) == 2:
        if values[1] == 0:
            raise ThreatModelError(f"eps '{text}' divides by zero")
        return values[0] / values[1]
    return values[0]


def format_eps(eps: float) -> str:
    """Write eps the way papers do: ``8/255`` when it is a whole number of 255ths, else ``%g``."""
    k = eps * 255.0
    if not float(eps).is_integer() and abs(k - round(k)) < 1e-6:
        return f"{int(round(k))}/255"
    return f"{eps:g}"


@dataclass(frozen=True)
class ThreatModel:
    """An lp ball of radius ``eps`` around each input, intersected with the [0, 1] box.

    ``norm`` is one of :data:`NORMS`; ``eps`` is in the units of inputs scaled to [0, 1].
    """

    norm: str
    eps: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", canonical_norm(self.norm))
        try:
            eps = float(self.eps)
        except (TypeError, ValueError):
            raise ThreatModelError(f"eps must be a number, got {self.eps!r}") from None
        if math.isnan(eps) or math.isinf(eps):
            raise ThreatModelError(f"eps must be finite, got {eps} for {self.norm}")
        if eps <= 0:
            raise ThreatModelError(f"eps must be > 0, got {eps:g} for {self.norm}")
        object.__setattr__(self, "eps", eps)

    @classmethod
    def parse(cls, text: str) -> "ThreatModel":
        """Parse ``NORM:EPS`` (``Linf:8/255``, ``L2:0.5``, ``L1:12``); ``=`` works in place of ``:``."""
        if isinstance(text, ThreatModel):
            return text
        parts = re.split(r"[:=]", str(text).strip(), maxsplit=1)
        if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
            raise ThreatModelError(
                f"cannot parse threat model '{text}': write NORM:EPS, e.g. Linf:8/255, L2:0.5 or L1:12"
            )
        return cls(canonical_norm(parts[0]), parse_eps(parts[1]))

    @property
    def geometry(self) -> "Geometry":
        """The per-norm math (norm, projection, step direction, random start) for this threat model."""
        from .geometry import get_geometry

        return get_geometry(self.norm)

    @property
    def label(self) -> str:
        """Canonical text form, e.g. ``Linf:8/255``; ``ThreatModel.parse(tm.label) == tm`` up to float rounding."""
        return f"{self.norm}:{format_eps(self.eps)}"

    def __str__(self) -> str:
        return self.label

    def covers_box(self, n_features: int) -> bool:
        """True when the ball contains every point of the [0, 1] box around any input of ``n_features``.

        Then every input can be moved anywhere and robust accuracy says nothing about robustness.
        """
        diameter = {"Linf": 1.0, "L2": math.sqrt(n_features), "L1": float(n_features)}[self.norm]
        return self.eps >= diameter


def box_advice(lo: float, hi: float, *, uint8: str = "store them as uint8 or divide by 255",
               normalize: str = "normalize=MEAN/STD (--normalize)") -> str:
    """What images whose values span ``lo..hi`` instead of the [0, 1] box look like, and what to do about it.

    Derived only from what was seen (the range): ``""`` when the range looks like nothing known, so that no
    message sends the user the wrong way. ``uint8``: the advice for 0..255 data where it is read (a file can
    store uint8; an attack call needs floats); ``normalize``: how the model takes its normalization there.
    """
    seen = f"range {lo:.3g}..{hi:.3g}"
    if -0.05 <= lo and hi <= 1.05:
        return f"slightly outside [0, 1] ({seen}; rounding after resizing or interpolation?): clip them, x.clamp(0, 1)"
    if lo >= 0 and 1.5 < hi <= 255.5:
        return f"looks like 0..255 ({seen}): {uint8}"
    if lo >= 0 and 255.5 < hi <= 65535.5:
        return f"looks like 16-bit images ({seen}): divide by 65535"
    if -1.05 <= lo <= -0.5 and 0.5 <= hi <= 1.05:
        return (f"looks like [-1, 1] images ({seen}): pass (x + 1) / 2, and if the model expects [-1, 1] inputs, put "
                f"that in the model ({normalize} with mean 0.5 and std 0.5 per channel)")
    if -5 <= lo < 0 and hi <= 5:  # mean subtracted: below 0; divided by std < 1: often above 1
        return (f"looks normalized ({seen}): pass [0, 1] images and put the normalization in the model ({normalize})")
    return ""
