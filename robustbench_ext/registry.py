"""Registries: names are rbx's public API (timm-style ``register`` / ``create`` / ``list``).

There is one :class:`Registry` per kind of plugin:

========================  ===================  ==========================================
registry                  entry-point group    what ``create(spec, ...)`` returns
========================  ===================  ==========================================
:data:`ATTACKS`           ``rbx.attacks``      an :class:`~robustbench_ext.attack.base.Attack`
:data:`DEFENSES`          ``rbx.defenses``     a defense (training objective / wrapper)
:data:`MODELS`            ``rbx.models``       a :class:`~robustbench_ext.models.loading.LoadedModel`
:data:`ARCHITECTURES`     ``rbx.architectures`` an untrained ``torch.nn.Module``
:data:`DATASETS`          ``rbx.datasets``     a :class:`~robustbench_ext.data.datasets.EvalData`
:data:`SUITES`            ``rbx.suites``       a :class:`~robustbench_ext.evaluation.suites.Suite`
========================  ===================  ==========================================

A spec (:mod:`robustbench_ext.specs`, the one grammar) is a name (``pgd``), a name with parameters
(``pgd:steps=50,restarts=2``) or, for entries registered with ``takes_arg=True``, ``name:ARG``
(``npz:/data/x.npz``, ``robustbench:Carmon2019Unlabeled``, ``file:ckpt.pt``); with ``optional_arg=True`` as
well, the bare name is accepted too and the factory gets ``None`` (``imagenet``, ``imagenet:PATH``). :meth:`Registry.create`
is the single factory: it parses the spec, checks its parameters against the factory's signature (a bad
key is an error listing the valid ones) and calls the factory.

Third-party packages add plugins by declaring an entry point in one of the groups above. The
entry point may name a module (importing it runs its ``@register`` decorators) or a callable
(registered under the entry point's name)::

    [project.entry-points."rbx.attacks"]
    my_attacks = "my_package.attacks"          # a module whose import registers attacks
    fgsm-plus = "my_package.attacks:make_fgsm"  # a factory registered as 'fgsm-plus'
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import inspect
import logging
import pkgutil
import types
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Generic, Iterable, TypeVar

from .errors import RbxError, UnknownNameError
from .specs import Spec

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The plugin packages installed from the repository's top level (``attacks/``, ``defenses/``); the engine's
#: own sub-packages are found by walking the package (:func:`_builtin_packages`).
PLUGIN_PACKAGES = ("robustbench_ext.attacks", "robustbench_ext.defenses")
#: Sub-packages that register nothing (the command line sits above every registry user).
_NOT_PLUGINS = frozenset({"cli"})
_builtins_loaded = False


def _builtin_packages() -> list[str]:
    """Every sub-package of rbx (found, not listed) and the plugin packages: importing a package registers
    what it holds, since its ``__init__`` imports its registering modules. A new dataset, model source or
    suite module inside a package needs no list edit here."""
    here = str(Path(__file__).resolve().parent)
    found = [f"robustbench_ext.{m.name}" for m in pkgutil.iter_modules([here])
             if m.ispkg and m.name not in _NOT_PLUGINS and not m.name.startswith("_")]
    return list(dict.fromkeys(found + list(PLUGIN_PACKAGES)))


def _load_builtins() -> None:
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True
    for mod in _builtin_packages():
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
        self._hints: list[Callable[[str], tuple[str, str] | None]] = []

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

    def add_hint(self, hint: Callable[[str], tuple[str, str] | None]) -> Callable[[str], tuple[str, str] | None]:
        """Register ``hint(text)``: for an unknown name, the spec the user most likely meant and why (``("file:./m.pt",
        "a state-dict checkpoint: give its --arch too")`` for a path to a checkpoint), or None. A hint must follow from
        what it sees (the text, a file that exists), so that no message sends the user the wrong way; usable as a
        decorator."""
        self._hints.append(hint)
        return hint

    def _unknown(self, text: str) -> UnknownNameError:
        """The error for an unknown name: a registered hint if one applies (the spec meant, without the list of every
        name), else the known names, then close matches of a misspelled one."""
        for hint in self._hints:
            meant = hint(text)
            if meant:
                spec, why = meant
                return UnknownNameError(f"unknown {self.kind} '{text}'; did you mean {spec}? ({why})")
        names = self.names(display=True)
        close = difflib.get_close_matches(text, names, n=3, cutoff=0.75)
        typo = f"; did you mean {' or '.join(close)}?" if close else ""
        return UnknownNameError(f"unknown {self.kind} '{text}'; known: {', '.join(names)}{typo}")

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

    def parse(self, spec: "str | Spec") -> Spec:
        """Parse ``spec`` in the one grammar; unknown names raise :class:`UnknownNameError` listing the known ones."""
        self._ensure_loaded()
        text = spec.text() if isinstance(spec, Spec) else str(spec).strip()
        head = spec.name if isinstance(spec, Spec) else text.partition(":")[0]
        entry = self._entries.get(head)
        if entry is None:
            raise self._unknown(text)
        if isinstance(spec, Spec):
            parsed = spec
        else:
            try:
                parsed = Spec.parse(text, takes_arg=entry.takes_arg)
            except RbxError as exc:
                raise UnknownNameError(f"{self.kind} '{head}' takes no argument, only KEY=VALUE parameters: {exc}") from None
        if entry.takes_arg and not parsed.arg and not entry.tags.get("optional_arg"):
            raise UnknownNameError(f"{self.kind} '{parsed.name}' needs an argument: write {entry.display}")
        return parsed

    def split(self, spec: str) -> tuple[Entry[T], str | None]:
        """The entry and argument of ``spec`` (``name`` or ``name:ARG``)."""
        parsed = self.parse(spec)
        return self._entries[parsed.name], parsed.arg

    def get(self, spec: "str | Spec") -> Entry[T]:
        return self._entries[self.parse(spec).name]

    def create(self, spec: "str | Spec", **kwargs: Any) -> T:
        """Build the plugin named by ``spec``: the single factory for every registry.

        ``kwargs`` are settings passed with the spec's own parameters (spec parameters win over nothing:
        a key given twice is an error). Parameters that the factory does not take give an error that lists
        the ones it does.
        """
        parsed = self.parse(spec)
        entry = self._entries[parsed.name]
        args = (parsed.arg,) if entry.takes_arg else ()
        clash = set(parsed.params) & set(kwargs)
        if clash:
            raise RbxError(f"{self.kind} '{parsed.name}': {', '.join(sorted(clash))} given twice")
        params = {**parsed.params, **kwargs}
        try:
            inspect.signature(entry.factory).bind(*args, **params)
        except TypeError as exc:
            raise RbxError(f"{self.kind} '{parsed.name}': bad parameters {dict(parsed.params)} ({exc}); "
                           f"parameters: {', '.join(_parameters(entry.factory)) or 'none'}") from None
        except ValueError:  # no signature to check (a builtin); let the call decide
            pass
        return entry.factory(*args, **params)

    def parameters(self, spec: "str | Spec") -> list[str]:
        """The keyword parameters the factory of ``spec`` takes (a dataclass's fields, else its signature's names)."""
        return _parameters(self.get(spec).factory)

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
            self.parse(spec)
        except UnknownNameError:
            return False
        return True


def _parameters(factory: Callable[..., Any]) -> list[str]:
    """The keyword parameters a factory takes (a dataclass's fields, else its signature's names)."""
    fields = getattr(factory, "__dataclass_fields__", None)
    if fields:
        return [k for k, f in fields.items() if f.init]
    try:
        return [p.name for p in inspect.signature(factory).parameters.values()
                if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        return []


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
