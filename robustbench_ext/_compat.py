"""The one place rbx adapts third-party packages: robustbench (and AutoAttack under it) and imagecorruptions.

robustbench's ``__init__`` imports ``robustbench.eval``, which does ``from autoattack import
AutoAttack`` and ``from autoattack.state import EvaluationState``. On PyPI, AutoAttack ships as
``pyautoattack``, so those names are aliased to it in ``sys.modules`` here, before robustbench is
imported. rbx uses robustbench for ``load_model``, its architectures and its leaderboard format,
never for ``robustbench.eval.benchmark`` (it passes ``log_path=``, which pyautoattack rejects).
Files robustbench ships (the ImageNet evaluation-subset id list, the wnid -> class index map) are found
with :func:`robustbench_helper_file` without importing robustbench.

imagecorruptions 1.1.2 (Michaelis et al. 2019, the maintained packaging of Hendrycks & Dietterich's
ImageNet-C code; its latest release) predates scikit-image 0.19 and NumPy 2:

- ``glass_blur`` and ``gaussian_blur`` call ``skimage.filters.gaussian(..., multichannel=True)``
  (removed in scikit-image 0.19 in favour of ``channel_axis``): TypeError;
- ``fog`` allocates with ``np.float_`` (removed in NumPy 2.0): AttributeError;
- ``impulse_noise`` calls ``skimage.util.random_noise`` without a seed; since scikit-image 0.19 that
  draws from a fresh ``default_rng()`` instead of NumPy's global RNG, so the corruption silently stops
  being reproducible under ``np.random.seed``. The shim passes ``rng=`` a number drawn from the global
  RNG, so seeding it determines the noise again.

:func:`import_imagecorruptions` replaces those names *inside imagecorruptions' own module* (its
``gaussian``, its ``np`` and its ``sk``, by proxies that add or wrap one attribute and delegate the rest),
never in numpy or scikit-image themselves, so no other code sees a change.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

from .errors import RbxError


def _alias_autoattack() -> None:
    if "autoattack" in sys.modules and getattr(sys.modules["autoattack"], "AutoAttack", None) is not None:
        return  # a real `autoattack` (fra31's git install) is already imported: use it
    pyautoattack = import_pyautoattack()
    state = importlib.import_module("pyautoattack.state")
    sys.modules.setdefault("autoattack", pyautoattack)
    sys.modules.setdefault("autoattack.state", state)


def import_pyautoattack() -> ModuleType:
    """The ``pyautoattack`` package (AutoAttack on PyPI), with a clear error when it is missing."""
    try:
        return importlib.import_module("pyautoattack")
    except ImportError as exc:
        raise RbxError(f"pyautoattack is not installed ({exc}): pip install pyautoattack") from None


def import_robustbench(submodule: str = "") -> ModuleType:
    """Import ``robustbench`` (or ``robustbench.<submodule>``) with the autoattack alias in place."""
    _alias_autoattack()
    name = "robustbench" + (f".{submodule}" if submodule else "")
    with warnings.catch_warnings():
        # robustbench and its imports warn about pkg_resources and torch.jit.interface at import time.
        warnings.simplefilter("ignore", category=UserWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        try:
            return importlib.import_module(name)
        except ImportError as exc:
            raise RbxError(f"cannot import {name} ({exc}): pip install robustbench 'setuptools<81'") from None


def import_timm() -> ModuleType:
    """Import ``timm`` without its import-time warnings (``torch.jit.interface`` is deprecated) in the user's output."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=FutureWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        try:
            return importlib.import_module("timm")
        except ImportError as exc:
            raise RbxError(f"cannot import timm ({exc}): pip install timm") from None


def robustbench_helper_file(name: str) -> Path | None:
    """``robustbench/helper_files/<name>`` of the installed robustbench, found without importing it; None if absent."""
    try:
        spec = importlib.util.find_spec("robustbench")
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "helper_files" / name
        if path.is_file():
            return path
    return None


# ---- imagecorruptions -----------------------------------------------------------------------------
#: What to install when imagecorruptions is missing (the optional extra that pulls it in).
CORRUPTIONS_EXTRA = "pip install 'robustbench-ext[corruptions]'"


class _ModuleProxy(ModuleType):
    """A module as imagecorruptions sees it: ``overrides`` first, every other name delegated to ``base``."""

    def __init__(self, base: ModuleType, **overrides: Any) -> None:
        super().__init__(base.__name__)
        self._rbx_base = base
        for key, value in overrides.items():
            setattr(self, key, value)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._rbx_base, name)


def _random_noise_from_global_rng(random_noise, numpy: ModuleType):
    """``skimage.util.random_noise`` seeded from NumPy's global RNG when no ``rng``/``seed`` is given."""
    takes = inspect.signature(random_noise).parameters
    key = "rng" if "rng" in takes else "seed"

    @functools.wraps(random_noise)
    def wrapped(image, *args, **kwargs):
        if kwargs.get(key) is None:
            kwargs[key] = int(numpy.random.randint(0, 2**31 - 1))
        return random_noise(image, *args, **kwargs)

    return wrapped


def _gaussian_with_multichannel(gaussian):
    """``skimage.filters.gaussian`` that also takes the pre-0.19 ``multichannel=True`` (-> ``channel_axis=-1``)."""
    @functools.wraps(gaussian)
    def wrapped(image, *args, multichannel: bool | None = None, **kwargs):
        if multichannel is not None and "channel_axis" not in kwargs:
            kwargs["channel_axis"] = -1 if multichannel else None
        return gaussian(image, *args, **kwargs)

    wrapped._rbx_shim = True  # type: ignore[attr-defined]
    return wrapped


def import_imagecorruptions() -> ModuleType:
    """The ``imagecorruptions`` package with the compatibility shim applied (see the module docstring).

    A missing package is a one-line :class:`RbxError` naming the extra that installs it.
    """
    with warnings.catch_warnings():
        # imagecorruptions imports pkg_resources and scipy.ndimage.interpolation, both deprecated.
        warnings.simplefilter("ignore", category=UserWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        try:
            package = importlib.import_module("imagecorruptions")
            module = importlib.import_module("imagecorruptions.corruptions")
        except ImportError as exc:
            raise RbxError(f"generating common corruptions needs imagecorruptions ({exc}): {CORRUPTIONS_EXTRA}") from None
    gaussian = getattr(module, "gaussian", None)
    if gaussian is not None and not getattr(gaussian, "_rbx_shim", False) \
            and "multichannel" not in inspect.signature(gaussian).parameters:
        module.gaussian = _gaussian_with_multichannel(gaussian)
    numpy = module.np
    if not isinstance(numpy, _ModuleProxy) and not hasattr(numpy, "float_"):
        module.np = _ModuleProxy(numpy, float_=numpy.float64)
    sk = module.sk
    if not isinstance(sk, _ModuleProxy):
        module.sk = _ModuleProxy(sk, util=_ModuleProxy(sk.util, random_noise=_random_noise_from_global_rng(
            sk.util.random_noise, numpy)))
    return package
