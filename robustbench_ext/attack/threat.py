"""Threat models: a norm and a radius, parsed from strings such as ``Linf:8/255``, ``L2:0.5``, ``L1:12``, ``L0:10``.

L0 counts changed *pixels*: ``L0:K`` lets an attack change at most K pixels of an image ``[C, H, W]``, all C
channels of a pixel counting as one (the convention of Croce et al.'s Sparse-RS, AAAI 2022, and of
sparse-PGD, Zhong et al., ICML 2024). ``L0c:K`` counts changed *coordinates* instead (each channel of each
pixel on its own; Croce & Hein's "Sparse and imperceivable adversarial attacks", ICCV 2019, call it the
unstructured case). Both radii are whole numbers. Inputs that are not images (``[D]``) have one coordinate
per pixel, so the two agree there.

Threat models beyond lp (:data:`TRANSFORM_KINDS`) are sets of images reachable by a parametrized
transformation whose parameters lie in a box: ``spatial-rt:30,3`` (rotation by at most 30 degrees and
translation by at most 3 pixels per axis; Engstrom et al. 2019), ``stadv:0.05`` (a per-pixel flow field of
Linf at most 0.05 in grid units; Xiao et al. 2018), ``color:0.1`` (global hue, saturation and brightness
shifts), ``recolor:0.06`` (a per-image colour function: offsets on a grid over the RGB cube, interpolated
trilinearly, each at most 0.06 per channel; ReColorAdv, Laidlaw & Feizi 2019) and ``jpeg-linf:0.03``
(Linf in the JPEG DCT coefficient domain; Kang et al. 2019). Their exact sets, budget conventions and
citations are in :mod:`robustbench_ext.attack.transforms`; they share the grammar (``KIND:EPS``) so that a
union mixes them with lp threat models. ``spatial-rt`` has two budgets
(``spatial-rt:ROT,TRANS``); ``eps`` is the rotation in degrees and ``eps2`` the translation in pixels
(``spatial-rt:30`` takes Engstrom et al.'s CIFAR ratio, 3 pixels per 30 degrees).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from ..errors import ThreatModelError

if TYPE_CHECKING:  # pragma: no cover
    from .geometry import Geometry
    from .transforms import Transform

#: Canonical norm names, in the order tables show them.
NORMS: tuple[str, ...] = ("Linf", "L2", "L1", "L0", "L0c", "spatial-rt", "stadv", "color", "recolor", "jpeg-linf")
#: The lp norms with p >= 1 (real norms: a dual norm, steepest-ascent steps of a length): what an attack
#: supports unless it says otherwise. The L0 "norms" count changed pixels (``L0``) or coordinates (``L0c``).
LP_NORMS: tuple[str, ...] = ("Linf", "L2", "L1")
#: Threat models beyond lp: parametrized transformations with a budget on their parameters
#: (:mod:`robustbench_ext.attack.transforms`). Attacks support them only when they say so.
TRANSFORM_KINDS: tuple[str, ...] = ("spatial-rt", "stadv", "color", "recolor", "jpeg-linf")
#: Norms whose radius counts something (pixels, coordinates): eps must be a whole number.
COUNT_NORMS: tuple[str, ...] = ("L0", "L0c")
#: The norms with a geometry (a ball, its projection: :mod:`robustbench_ext.attack.geometry`): lp and L0.
GEOMETRY_NORMS: tuple[str, ...] = LP_NORMS + COUNT_NORMS

_NORM_ALIASES = {
    "linf": "Linf", "l-inf": "Linf", "l_inf": "Linf", "inf": "Linf", "l∞": "Linf",
    "l2": "L2", "2": "L2",
    "l1": "L1", "1": "L1",
    "l0": "L0", "0": "L0", "l0-pixel": "L0", "l0p": "L0",
    "l0c": "L0c", "l0-coordinate": "L0c",
    "spatial-rt": "spatial-rt", "spatial": "spatial-rt", "rt": "spatial-rt",
    "stadv": "stadv", "flow": "stadv",
    "color": "color", "colour": "color", "hsb": "color",
    "recolor": "recolor", "recolour": "recolor", "recoloradv": "recolor",
    "jpeg-linf": "jpeg-linf", "jpeg": "jpeg-linf",
}

def canonical_norm(norm: str) -> str:
    """Map ``linf``/``inf``/``L2``/``l1``/``l0``... to ``Linf``/``L2``/``L1``/``L0``/``L0c``; raise ThreatModelError otherwise."""
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

    ``norm`` is one of :data:`NORMS`; ``eps`` is in the units of inputs scaled to [0, 1], or for ``L0`` /
    ``L0c`` a whole number of pixels / coordinates that may change.
    """

    norm: str
    eps: float
    #: ``spatial-rt`` only: the translation budget in pixels (None elsewhere).
    eps2: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", canonical_norm(self.norm))
        if self.norm == "spatial-rt":
            eps2 = float(self.eps) / 10.0 if self.eps2 is None else self.eps2
            try:
                eps2 = float(eps2)
            except (TypeError, ValueError):
                raise ThreatModelError(f"spatial-rt: the translation budget must be a number, got {self.eps2!r}") from None
            if math.isnan(eps2) or math.isinf(eps2) or eps2 < 0:
                raise ThreatModelError(f"spatial-rt: the translation budget must be a finite number >= 0 pixels, got {eps2:g}")
            object.__setattr__(self, "eps2", eps2)
        elif self.eps2 is not None:
            raise ThreatModelError(f"{self.norm} takes one budget (write {self.norm}:EPS); only spatial-rt takes two")
        try:
            eps = float(self.eps)
        except (TypeError, ValueError):
            raise ThreatModelError(f"eps must be a number, got {self.eps!r}") from None
        if math.isnan(eps) or math.isinf(eps):
            raise ThreatModelError(f"eps must be finite, got {eps} for {self.norm}")
        if eps <= 0:
            raise ThreatModelError(f"eps must be > 0, got {eps:g} for {self.norm}")
        if self.norm in COUNT_NORMS and not eps.is_integer():
            unit = "pixels" if self.norm == "L0" else "coordinates"
            raise ThreatModelError(f"{self.norm} counts changed {unit}: eps must be a whole number such as "
                                   f"{self.norm}:10, got {eps:g}")
        object.__setattr__(self, "eps", eps)

    @classmethod
    def parse(cls, text: str) -> "ThreatModel":
        """Parse ``NORM:EPS`` (``Linf:8/255``, ``L2:0.5``, ``L1:12``, ``L0:10``, ``L0c:30``); ``=`` works in place of ``:``."""
        if isinstance(text, ThreatModel):
            return text
        parts = re.split(r"[:=]", str(text).strip(), maxsplit=1)
        if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
            raise ThreatModelError(
                f"cannot parse threat model '{text}': write NORM:EPS, e.g. Linf:8/255, L2:0.5, L1:12, L0:10, "
                "spatial-rt:30,3, stadv:0.05, color:0.1, recolor:0.06 or jpeg-linf:0.03"
            )
        norm = canonical_norm(parts[0])
        budgets = parts[1].split(",")
        if len(budgets) > 1 and norm != "spatial-rt" or len(budgets) > 2:
            raise ThreatModelError(f"cannot parse threat model '{text}': {norm} takes one budget"
                                   + (" (spatial-rt takes ROT,TRANS, e.g. spatial-rt:30,3)" if norm == "spatial-rt" else ""))
        return cls(norm, parse_eps(budgets[0]), parse_eps(budgets[1]) if len(budgets) == 2 else None)

    @property
    def is_lp(self) -> bool:
        """Whether this is an lp (or L0) ball; False for the transformation threat models (:data:`TRANSFORM_KINDS`)."""
        return self.norm not in TRANSFORM_KINDS

    @property
    def transform(self) -> "Transform":
        """The parametrized transformation of a non-lp threat model (:mod:`robustbench_ext.attack.transforms`)."""
        from .transforms import get_transform

        return get_transform(self.norm)

    def scaled(self, factor: float) -> "ThreatModel":
        """The same threat model with every budget multiplied by ``factor`` (eps sweeps, strength grids)."""
        return ThreatModel(self.norm, self.eps * factor, None if self.eps2 is None else self.eps2 * factor)

    @property
    def geometry(self) -> "Geometry":
        """The per-norm math (norm, projection, step direction, random start) for this threat model."""
        from .geometry import get_geometry

        if not self.is_lp:
            raise ThreatModelError(f"{self.norm} is not an lp ball: it has no geometry; use threat.transform")
        return get_geometry(self.norm)

    @property
    def label(self) -> str:
        """Canonical text form, e.g. ``Linf:8/255``; ``ThreatModel.parse(tm.label) == tm`` up to float rounding."""
        if self.norm == "spatial-rt":
            return f"{self.norm}:{format_eps(self.eps)},{format_eps(self.eps2)}"
        return f"{self.norm}:{format_eps(self.eps)}"

    def __str__(self) -> str:
        return self.label

    def covers_box(self, n_features: "int | Sequence[int]") -> bool:
        """True when the ball contains every point of the [0, 1] box around any input.

        ``n_features``: the input's shape ``[C, H, W]`` (L0 needs it: its unit is a pixel of C channels) or
        its number of features (then an ``L0`` ball is taken as covering only when eps reaches it).
        Then every input can be moved anywhere and robust accuracy says nothing about robustness.
        Transformation threat models never cover the box (their sets are low-dimensional): False.
        """
        if not self.is_lp:
            return False
        return self.eps >= box_diameter(self.norm, n_features)


def box_diameter(norm: str, shape: "int | Sequence[int]") -> float:
    """The radius at which a ``norm`` ball around any point contains the whole [0, 1] box of inputs ``shape``
    (``[C, H, W]``, or a feature count): 1 (Linf), sqrt(D) (L2), D (L1), the pixel count H*W (L0) or D (L0c)."""
    if isinstance(shape, int):
        d, pixels = shape, shape
    else:
        dims = [int(s) for s in shape]
        d = math.prod(dims)
        pixels = math.prod(dims[1:]) if len(dims) >= 2 else d
    return {"Linf": 1.0, "L2": math.sqrt(d), "L1": float(d), "L0": float(pixels), "L0c": float(d)}[canonical_norm(norm)]


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
