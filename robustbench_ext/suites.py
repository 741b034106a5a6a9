"""Benchmark suites: declarative TOML files naming a dataset and, per threat model, an ordered attack list.

A suite file (``benchmarks/<name>.toml``)::

    name = "cifar10-union"
    description = "..."
    dataset = "cifar10"

    [[threats]]
    threat = "Linf:8/255"
    attacks = [{ name = "pgd", steps = 20 }]

    [union]                      # optional: multi-threat attacks run last, on points still union-robust
    attacks = ["union-worst:attack=apgd-ce"]

Suites are found in ``$RBX_SUITES`` (``os.pathsep``-separated), ``./benchmarks``, ``<repo>/benchmarks``
and ``<prefix>/share/rbx/benchmarks`` (where ``pip install`` puts the built-in ones); the first file
defining a name wins. ``--suite`` also takes a path to a ``.toml`` file.

Attack specs on the command line use ``NAME[:KEY=VALUE,...]``, e.g. ``pgd:steps=50,restarts=2``;
values are read as TOML literals (numbers, ``true``/``false``, quoted strings), else as plain strings.
Quote a value that holds commas: ``union-worst:attack="apgd-ce:steps=50,restarts=2"``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .attack import Attack, Ensemble, MultiThreatAttack
from .errors import RbxError, UnsupportedNormError
from .paths import search_path
from .registry import ATTACKS, SUITES
from .threat import ThreatModel

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass(frozen=True)
class AttackSpec:
    """An attack name and its parameters, buildable into an :class:`Attack`."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> "AttackSpec":
        """``pgd`` or ``pgd:steps=50,restarts=2``."""
        name, _, rest = str(text).strip().partition(":")
        params: dict[str, Any] = {}
        for item in filter(None, (p.strip() for p in _split_outside_quotes(rest))):
            key, eq, value = item.partition("=")
            if not eq or not key.strip():
                raise RbxError(f"cannot parse attack parameter '{item}' in '{text}': write NAME:KEY=VALUE,KEY=VALUE")
            params[key.strip()] = _literal(value.strip())
        return cls(name, params)

    @classmethod
    def from_mapping(cls, obj: Any, where: str) -> "AttackSpec":
        if isinstance(obj, str):
            return cls.parse(obj)
        if isinstance(obj, dict) and isinstance(obj.get("name"), str):
            return cls(obj["name"], {k: v for k, v in obj.items() if k != "name"})
        raise RbxError(f"{where}: each attack must be a name or a table with a 'name' key, got {obj!r}")

    def build(self) -> Attack | MultiThreatAttack:
        """Create the attack; unknown names or parameters give an error that lists the valid ones."""
        entry = ATTACKS.get(self.name)
        try:
            return entry.factory(**self.params)
        except TypeError as exc:
            fields = getattr(entry.factory, "__dataclass_fields__", {})
            known = ", ".join(k for k in fields) or "none"
            raise RbxError(f"attack '{self.name}': bad parameters {self.params} ({exc}); parameters: {known}") from None

    @property
    def label(self) -> str:
        if not self.params:
            return self.name
        return f"{self.name}(" + ", ".join(f"{k}={v}" for k, v in self.params.items()) + ")"


@dataclass(frozen=True)
class ThreatSpec:
    """One threat model of a suite and the attacks that run on it, as a cascade, in order."""

    threat: ThreatModel
    attacks: tuple[AttackSpec, ...]

    def build(self) -> list[Stage]:
        """The cascade's stages: every attack built and checked against this threat model's norm,
        ensembles expanded into their components (so records say which component broke a point)."""
        stages: list[Stage] = []
        for spec in self.attacks:
            attack = spec.build()
            if isinstance(attack, MultiThreatAttack):
                raise RbxError(f"attack '{spec.name}' searches several threat models at once: use it as a union attack "
                               "([union] attacks in a suite, or --union-attack)")
            self._require(spec.name, attack)
            if isinstance(attack, Ensemble):
                for part in attack.components(self.threat):
                    self._require(f"{spec.name}/{part.name}", part)
                    stages.append(Stage(f"{spec.name}/{part.name}", part))
            else:
                stages.append(Stage(spec.name, attack))
        return stages

    def _require(self, label: str, attack: Attack) -> None:
        if not attack.supports(self.threat):
            raise UnsupportedNormError(
                f"attack '{label}' does not support {self.threat.norm} (threat {self.threat.label}); "
                f"it supports: {', '.join(attack.norms)}"
            )


@dataclass(frozen=True)
class Stage:
    """One attack of a cascade as it runs: its label in records (``pma+/apgd-t`` for ensemble parts) and the attack."""

    label: str
    attack: Attack


def build_union(specs: tuple[AttackSpec, ...]) -> list[tuple[str, MultiThreatAttack]]:
    """The union stage's attacks: each must search several threat models (e.g. ``union-worst``)."""
    out = []
    for spec in specs:
        attack = spec.build()
        if not isinstance(attack, MultiThreatAttack):
            raise RbxError(f"attack '{spec.name}' attacks one threat model at a time; as a union attack use "
                           f"union-worst:attack={spec.name}")
        out.append((spec.name, attack))
    return out


@dataclass(frozen=True)
class Suite:
    """A named benchmark: a dataset and threat models with their attack cascades."""

    name: str
    dataset: str
    threats: tuple[ThreatSpec, ...]
    description: str = ""
    path: str | None = None
    union: tuple[AttackSpec, ...] = ()

    def attacks_for(self, norm: str) -> tuple[AttackSpec, ...] | None:
        """The attack list this suite uses for ``norm`` (the first threat of that norm), if any."""
        for spec in self.threats:
            if spec.threat.norm == norm:
                return spec.attacks
        return None


def read_suite(path: Path) -> Suite:
    """Parse one suite file; errors name the file and what is wrong."""
    try:
        raw = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise RbxError(f"cannot read suite file {path}: {exc}") from None
    where = str(path)
    threats_raw = raw.get("threats")
    if not isinstance(threats_raw, list) or not threats_raw:
        raise RbxError(f"{where}: a suite needs at least one [[threats]] table")
    threats = []
    for i, t in enumerate(threats_raw):
        if not isinstance(t, dict) or "threat" not in t:
            raise RbxError(f"{where}: threats[{i}] needs a 'threat' key such as \"Linf:8/255\"")
        attacks = t.get("attacks") or ["pgd"]
        threats.append(ThreatSpec(ThreatModel.parse(t["threat"]),
                                  tuple(AttackSpec.from_mapping(a, f"{where} threats[{i}]") for a in attacks)))
    union_raw = raw.get("union", {})
    if not isinstance(union_raw, dict):
        raise RbxError(f"{where}: [union] must be a table with an 'attacks' list")
    union = tuple(AttackSpec.from_mapping(a, f"{where} [union]") for a in union_raw.get("attacks", []))
    return Suite(
        name=str(raw.get("name") or Path(path).stem),
        dataset=str(raw.get("dataset", "cifar10")),
        threats=tuple(threats),
        description=str(raw.get("description", "")),
        path=str(path),
        union=union,
    )


def suite_dirs() -> list[Path]:
    return search_path("RBX_SUITES", "benchmarks", shared=False,
                       extra=(Path(sys.prefix) / "share" / "rbx" / "benchmarks",))


def load_suite(spec: str) -> Suite:
    """A registered suite name, or a path to a suite ``.toml`` file."""
    p = Path(spec)
    if spec.endswith(".toml") or p.is_file():
        if not p.is_file():
            raise RbxError(f"no such suite file: {spec}")
        return read_suite(p)
    return SUITES.create(spec)


def _register_suite_files() -> None:
    for d in suite_dirs():
        if not d.is_dir():
            continue
        for f in sorted(p.resolve() for p in d.glob("*.toml")):
            try:
                raw = tomllib.loads(f.read_text())
            except Exception:
                continue  # a broken file is reported when someone asks for it by path
            name = str(raw.get("name") or f.stem)
            if not SUITES.has(name):
                SUITES.register(name, summary=str(raw.get("description", "")), path=str(f))(lambda f=f: read_suite(f))


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


_register_suite_files()
