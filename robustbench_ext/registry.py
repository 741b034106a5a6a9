"""Registries: names are rbx's public API (timm-style ``register`` / ``create`` / ``list``).

There is one :class:`Registry` per kind of plugin:

========================  ===================  ==========================================
registry                  entry-point group    what ``create(spec, ...)`` returns
========================  ===================  ==========================================
:data:`ATTACKS`           ``rbx.attacks``      an :class:`~robustbench_ext.attack.Attack`
:data:`DEFENSES`          ``rbx.defenses``     a defense (training objective / wrapper)
:data:`MODELS`            ``rbx.models``       a :class:`~robustbench_ext.models.LoadedModel`
:data:`ARCHITECTURES`     ``rbx.architectures`` an untrained ``torch.nn.Module``
:data:`DATASETS`          ``rbx.datasets``     a :class:`~robustbench_ext.data.EvalData`
:data:`SUITES`            ``rbx.suites``       a :class:`~robustbench_ext.suites.Suite`
========================  ===================  ==========================================

A spec is a name (``pgd``) or, for entries registered with ``takes_arg=True``, ``name:ARG``
(``npz:/data/x.npz``, ``robustbench:Carmon2019Unlabeled``, ``file:ckpt.pt``).

Third-party packages add plugins by declaring an entry point in one of the groups above. The
entry point may name a module (importing it runs its ``@register`` decorators) or a callable
(registered under the entry point's name)::

    [project.entry-points."rbx.attacks"]
    my_attacks = "my_package.attacks"          # a module whose import registers attacks
    fgsm-plus = "my_package.attacks:make_fgsm"  # a factory registered as 'fgsm-plus'
"""

from __future__ import annotations

import fnmatch
import importlib
import logging
import types
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable, Generic, Iterable, TypeVar

from .errors import UnknownNameError

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Modules whose import registers rbx's built-in plugins (imported on first use of any registry).
_BUILTIN_MODULES = (
    "robustbench_ext.architectures",
    "robustbench_ext.models",
    "robustbench_ext.data",
    "robustbench_ext.suites",
    "attacks",
    "defenses",
)
_builtins_loaded = False


def _load_builtins() -> None:
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True
    for mod in _BUILTIN_MODULES:
        importlib.import_module(mod)


@dataclass
class Entry(Generic[T]):
    """One registered plugin: a factory and what the listing shows about it."""

    name: str
    factory: Callable[..., T]
    takes_arg: bool = False
    arg_name: str = "ARG"
    summary: str = ""
    tags: dict[str, Any] = field(default_factory=dict)

    @property
    def display(self) -> str:
        return f"{self.name}:{self.arg_name}" if self.takes_arg else self.name


class Registry(Generic[T]):
    """Names -> factories for one kind of plugin; see the module docstring."""

    def __init__(self, kind: str, group: str) -> None:
        self.kind = kind
        self.group = group
        self._entries: dict[str, Entry[T]] = {}
        self._entry_points_loaded = False

    # ---- registering --------------------------------------------------------------------------
    def register(
        self,
        name: str | None = None,
        *,
        takes_arg: bool = False,
        arg_name: str = "ARG",
        summary: str | None = None,
        replace: bool = False,
        **tags: Any,
    ) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: register a factory (function or class) under ``name`` (default: its ``name`` attribute)."""

        def deco(factory: Callable[..., T]) -> Callable[..., T]:
            key = name or getattr(factory, "name", None) or factory.__name__
            self.add(Entry(key, factory, takes_arg, arg_name, summary if summary is not None else _first_line(factory), tags), replace=replace)
            return factory

        return deco

    def add(self, entry: Entry[T], *, replace: bool = False) -> None:
        if entry.name in self._entries and not replace and self._entries[entry.name].factory is not entry.factory:
            raise ValueError(f"{self.kind} '{entry.name}' is already registered")
        self._entries[entry.name] = entry

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    # ---- looking up ---------------------------------------------------------------------------
    def _ensure_loaded(self) -> None:
        _load_builtins()
        if not self._entry_points_loaded:
            self._entry_points_loaded = True
            self._load_entry_points()

    def _load_entry_points(self) -> None:
        for ep in _entry_points(self.group):
            try:
                obj = ep.load()
            except Exception as exc:  # a broken third-party plugin must not break rbx
                log.warning("could not load %s plugin '%s' (%s): %s", self.kind, ep.name, ep.value, exc)
                continue
            if callable(obj) and not isinstance(obj, types.ModuleType) and ep.name not in self._entries:
                self.add(Entry(ep.name, obj, summary=_first_line(obj)))

    def split(self, spec: str) -> tuple[Entry[T], str | None]:
        """Resolve ``name`` or ``name:ARG`` to its entry and argument; unknown names raise UnknownNameError."""
        self._ensure_loaded()
        spec = str(spec).strip()
        if spec in self._entries:
            entry = self._entries[spec]
            if entry.takes_arg:
                raise UnknownNameError(f"{self.kind} '{spec}' needs an argument: write {entry.display}")
            return entry, None
        head, sep, arg = spec.partition(":")
        if sep and head in self._entries and self._entries[head].takes_arg:
            if not arg:
                raise UnknownNameError(f"{self.kind} '{spec}' needs an argument: write {self._entries[head].display}")
            return self._entries[head], arg
        raise UnknownNameError(f"unknown {self.kind} '{spec}'; known: {', '.join(self.names(display=True))}")

    def get(self, spec: str) -> Entry[T]:
        return self.split(spec)[0]

    def create(self, spec: str, **kwargs: Any) -> T:
        """Build the plugin named by ``spec`` (``name`` or ``name:ARG``), passing ``kwargs`` to its factory."""
        entry, arg = self.split(spec)
        if entry.takes_arg:
            return entry.factory(arg, **kwargs)
        return entry.factory(**kwargs)

    def names(self, pattern: str = "*", *, display: bool = False) -> list[str]:
        """Registered names matching a glob ``pattern``, sorted (``display`` shows ``name:ARG`` forms)."""
        self._ensure_loaded()
        return sorted(
            (e.display if display else e.name) for e in self._entries.values() if fnmatch.fnmatch(e.name, pattern)
        )

    def entries(self) -> list[Entry[T]]:
        self._ensure_loaded()
        return [self._entries[k] for k in sorted(self._entries)]

    def has(self, name: str) -> bool:
        """Whether ``name`` is registered now (no loading of built-ins or entry points)."""
        return name in self._entries

    def __contains__(self, spec: str) -> bool:
        try:
            self.split(spec)
        except UnknownNameError:
            return False
        return True


def _first_line(obj: Any) -> str:
    doc = getattr(obj, "__doc__", None) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def _entry_points(group: str) -> Iterable[metadata.EntryPoint]:
    return metadata.entry_points(group=group)


ATTACKS: Registry = Registry("attack", "rbx.attacks")
DEFENSES: Registry = Registry("defense", "rbx.defenses")
MODELS: Registry = Registry("model", "rbx.models")
ARCHITECTURES: Registry = Registry("architecture", "rbx.architectures")
DATASETS: Registry = Registry("dataset", "rbx.datasets")
SUITES: Registry = Registry("suite", "rbx.suites")

#: The registries by the plural the CLI uses (``rbx list attacks``).
REGISTRIES: dict[str, Registry] = {
    "attacks": ATTACKS,
    "defenses": DEFENSES,
    "models": MODELS,
    "architectures": ARCHITECTURES,
    "datasets": DATASETS,
    "suites": SUITES,
}
