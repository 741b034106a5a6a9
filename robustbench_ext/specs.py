"""The one spec grammar: how a plugin is named on the command line, in suites and in records.

A spec is ``NAME``, ``NAME:K=V,K=V,...`` (parameters) or, for plugins registered with ``takes_arg=True``,
``NAME:ARG`` where everything after the first colon is one argument (a path, a model id, a composite
such as ``mix:STD+ROB,alpha=0.5``). Which of the two readings applies is the registry's knowledge (it
knows whether ``NAME`` takes an argument), so registries parse specs (:meth:`Registry.parse`) and
:meth:`Registry.create` is the single factory for every kind of plugin.

Parameter values are TOML literals (numbers, ``true``/``false``, quoted strings, lists), else plain
strings. Quote a value that holds commas: ``union-worst:attack="apgd-ce:steps=50,restarts=2"``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Mapping

from .errors import RbxError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass(frozen=True)
class Spec:
    """A parsed spec: the plugin's ``name``, its ``params`` (``K=V``) and, for argument-taking plugins, ``arg``."""

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)
    arg: str | None = None

    @classmethod
    def parse(cls, text: "str | Spec", *, takes_arg: bool = False) -> "Spec":
        """``name``, ``name:K=V,...`` or (``takes_arg``) ``name:ARG``."""
        if isinstance(text, Spec):
            return text
        name, sep, rest = str(text).strip().partition(":")
        if takes_arg:
            return cls(name, {}, rest if sep else None)
        return cls(name, parse_params(rest, str(text)))

    @classmethod
    def from_mapping(cls, obj: Any, where: str) -> "Spec":
        """A suite file's attack entry: a spec string or a table ``{ name = "pgd", steps = 20 }``."""
        if isinstance(obj, str):
            return cls.parse(obj)
        if isinstance(obj, dict) and isinstance(obj.get("name"), str):
            return cls(obj["name"], {k: v for k, v in obj.items() if k != "name"})
        raise RbxError(f"{where}: each attack must be a name or a table with a 'name' key, got {obj!r}")

    @property
    def label(self) -> str:
        """How records and tables show it: ``pgd(steps=50, restarts=2)``, ``npz:PATH``."""
        if self.arg is not None:
            return f"{self.name}:{self.arg}"
        if not self.params:
            return self.name
        return f"{self.name}(" + ", ".join(f"{k}={v}" for k, v in self.params.items()) + ")"

    def text(self) -> str:
        """The spec written back in the grammar it was parsed from."""
        if self.arg is not None:
            return f"{self.name}:{self.arg}"
        if not self.params:
            return self.name
        return f"{self.name}:" + ",".join(f"{k}={_toml(v)}" for k, v in self.params.items())


def parse_params(text: str, whole: str = "") -> dict[str, Any]:
    """``K=V,K=V`` -> dict (commas inside quotes do not split)."""
    params: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in _split_outside_quotes(text))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise RbxError(f"cannot parse parameter '{item}' in '{whole or text}': write NAME:KEY=VALUE,KEY=VALUE")
        params[key.strip()] = _literal(value.strip())
    return params


def _split_outside_quotes(text: str) -> list[str]:
    """Split on commas that are not inside single or double quotes."""
    parts, buf, quote = [], [], None
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == ",":
            parts.append("".join(buf))
            buf = []
            continue
        buf.append(ch)
    parts.append("".join(buf))
    return parts


def _literal(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"' if any(c in value for c in ",=\"' ") else value
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) if not isinstance(v, str) else f'"{v}"' for v in value) + "]"
    return str(value)
