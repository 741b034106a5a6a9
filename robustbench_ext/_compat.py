"""The one place rbx imports robustbench.

robustbench's ``__init__`` imports ``robustbench.eval``, which does ``from autoattack import
AutoAttack`` and ``from autoattack.state import EvaluationState``. On PyPI, AutoAttack ships as
``pyautoattack``, so those names are aliased to it in ``sys.modules`` here, before robustbench is
imported. rbx uses robustbench for ``load_model``, its architectures and its leaderboard format,
never for ``robustbench.eval.benchmark`` (it passes ``log_path=``, which pyautoattack rejects).
"""

from __future__ import annotations

import importlib
import sys
import warnings
from types import ModuleType

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
