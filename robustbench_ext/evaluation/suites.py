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

    union_order = ["L1:12", "Linf:8/255"]   # optional: the order a union-only run attacks in (measured)
    union_only = false                      # optional: true = the suite runs union-only by default

A corruption suite (``kind = "corruptions"``) evaluates common corruptions instead of threat models
(:mod:`robustbench_ext.evaluation.corruptions`): a corruption dataset and, optionally, which corruptions and severities
(default: the 15 x 5 of RobustBench's corruptions threat model)::

    name = "cifar10-corruptions"
    kind = "corruptions"
    dataset = "cifar10-c"
    corruptions = ["gaussian_noise", "fog"]   # optional
    severities = [1, 3, 5]                    # optional

Suites are found in ``$RBX_SUITES`` (``os.pathsep``-separated), ``./benchmarks``, ``<repo>/benchmarks``
and ``<prefix>/share/rbx/benchmarks`` (where ``pip install`` puts the built-in ones); the first file
defining a name wins. ``--suite`` also takes a path to a ``.toml`` file.

Attack specs use the one spec grammar (:mod:`robustbench_ext.specs`): ``NAME[:KEY=VALUE,...]``, e.g.
``pgd:steps=50,restarts=2``; quote a value that holds commas: ``union-worst:attack="apgd-ce:steps=50,restarts=2"``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..attack.base import Attack, MultiThreatAttack
from ..attack.cascade import LabelledAttack, cascade_stages
from ..data.corrupted import check_selection
from ..errors import RbxError
from ..paths import search_path
from ..registry import ATTACKS, SUITES
from ..specs import Spec
from ..attack.threat import ThreatModel

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class AttackSpec(Spec):
    """An attack spec (the one grammar, :mod:`robustbench_ext.specs`), buildable into an :class:`Attack`."""

    @classmethod
    def parse(cls, text: "str | Spec", *, takes_arg: bool = False) -> "AttackSpec":
        spec = Spec.parse(text)
        return cls(spec.name, dict(spec.params))

    def build(self, **settings: Any) -> Attack | MultiThreatAttack:
        """Create the attack through the registry (unknown names or parameters: an error listing the valid ones)."""
        return ATTACKS.create(self, **settings)


@dataclass(frozen=True)
class ThreatSpec:
    """One threat model of a suite and the attacks that run on it, as a cascade, in order."""

    threat: ThreatModel
    attacks: tuple[AttackSpec, ...]

    def build(self) -> list[LabelledAttack]:
        """The cascade's stages: every attack built and checked against this threat model's norm,
        ensembles expanded into their components (so records say which component broke a point)."""
        stages: list[LabelledAttack] = []
        for spec in self.attacks:
            attack = spec.build()
            if isinstance(attack, MultiThreatAttack):
                raise RbxError(f"attack '{spec.name}' searches several threat models at once: use it as a union attack "
                               "([union] attacks in a suite, or --union-attack)")
            stages += cascade_stages(spec.name, attack, self.threat)
        return stages


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
    """A named benchmark: a dataset and threat models with their attack cascades.

    A corruption suite (``kind == "corruptions"``) has no threat models; ``corruptions`` and ``severities``
    (empty: all) choose what :func:`robustbench_ext.evaluation.corruptions.evaluate_corruptions` measures.
    """

    name: str
    dataset: str
    threats: tuple[ThreatSpec, ...]
    description: str = ""
    path: str | None = None
    union: tuple[AttackSpec, ...] = ()
    kind: str = "threats"
    corruptions: tuple[str, ...] = ()
    severities: tuple[int, ...] = ()
    union_only: bool = False  # run union-only by default (rbx run --union-only)
    union_order: tuple[str, ...] = ()  # the threat models' order in a union-only run (fastest to empty the pool first)

    def attacks_for(self, norm: str) -> tuple[AttackSpec, ...] | None:
        """The attack list this suite uses for ``norm`` (the first threat of that norm), if any."""
        for spec in self.threats:
            if spec.threat.norm == norm:
                return spec.attacks
        return None


#: The suite a run uses when none is named and its dataset has no union suite of its own.
DEFAULT_SUITE = "cifar10-union"


def default_suite(dataset: str | None) -> str:
    """The suite a run on ``dataset`` uses when none is named: ``DATASET-union`` where one is registered
    (``cifar100`` -> ``cifar100-union``, ``imagenet`` -> ``imagenet-union``), else :data:`DEFAULT_SUITE`
    (CIFAR-10 and its slices, or a dataset rbx has no suite for: give ``--threat`` there)."""
    if dataset:
        candidate = f"{dataset.partition(':')[0]}-union"
        if SUITES.has(candidate):
            return candidate
    return DEFAULT_SUITE


@dataclass(frozen=True)
class Benchmark:
    """What one run evaluates, as planned from a suite and/or threat models and attacks.

    ``suite`` is the suite's name when the run is that suite unchanged, else None (a custom run, whose
    record is labelled by its threat models); ``dataset`` is the suite's dataset (the default when the
    caller names none); ``threats`` are the cascades per threat model; ``union`` the union-stage attacks.
    """

    suite: str | None
    dataset: str
    threats: tuple[ThreatSpec, ...]
    union: tuple[AttackSpec, ...] = ()
    union_only: bool = False
    union_order: tuple[str, ...] = ()


def suite_attacks_for(norm: str) -> tuple[AttackSpec, ...] | None:
    """The cascade of the first registered suite (by name) with a threat model of ``norm``: what a threat model
    the chosen suite has no cascade for gets (``L0:10`` takes cifar10-union-l0's; ``L0c`` takes the L0 cascade,
    whose attacks serve both). None if no suite has one."""
    for want in (norm, "L0") if norm == "L0c" else (norm,):
        for name in sorted(SUITES.names()):
            try:
                found = load_suite(name)
            except RbxError:
                continue
            if found.kind == "threats" and found.attacks_for(want):
                return found.attacks_for(want)
    return None


def plan_benchmark(suite: "str | Suite | None" = None, threats: Sequence["str | ThreatModel | ThreatSpec"] = (),
                   attacks: Sequence["str | Spec"] = (), union_attacks: Sequence["str | Spec"] = ()) -> Benchmark:
    """The one planning rule behind ``rbx run`` and :func:`robustbench_ext.evaluation.runner.evaluate`.

    - no ``threats``: the suite's (default :data:`DEFAULT_SUITE`) threat models and cascades;
    - ``threats`` as strings or :class:`ThreatModel`: each gets ``attacks`` if given, else the cascade the
      suite (or the default suite, or the first suite that has the norm: :func:`suite_attacks_for`) uses for
      its norm, else ``pgd`` -- a custom run;
    - ``threats`` as :class:`ThreatSpec` (cascades already chosen): used as they are; ``suite``, if a
      string, is then only the record's label;
    - ``attacks`` replace every threat model's cascade, ``union_attacks`` the suite's union stage; either
      makes the run custom.

    Attacks are named here, not built: :func:`robustbench_ext.evaluation.plan.compile_plan` builds each once
    (a :class:`~robustbench_ext.evaluation.request.RunRequest` plans with both, so bad names, parameters or
    norms fail before any model or data is loaded).
    """
    full = bool(threats) and all(isinstance(t, ThreatSpec) for t in threats)
    if full and not isinstance(suite, Suite):
        specs = tuple(threats)  # type: ignore[arg-type]
        if attacks:
            specs = tuple(ThreatSpec(t.threat, tuple(AttackSpec.parse(a) for a in attacks)) for t in specs)
        union = tuple(AttackSpec.parse(a) for a in union_attacks)
        bench = Benchmark(suite if isinstance(suite, str) else None, "cifar10", specs, union)
    else:
        loaded = suite if isinstance(suite, Suite) else (load_suite(suite or DEFAULT_SUITE) if (suite or not threats) else None)
        if loaded is not None and loaded.kind == "corruptions":
            raise RbxError(f"suite '{loaded.name}' evaluates common corruptions, not threat models: run it alone "
                           f"(rbx run --suite {loaded.name}) or with robustbench_ext.evaluation.corruptions.evaluate_corruptions")
        cascade = tuple(AttackSpec.parse(a) for a in attacks)
        if threats:
            specs_l = []
            for t in threats:
                if isinstance(t, ThreatSpec):
                    specs_l.append(ThreatSpec(t.threat, cascade or t.attacks))
                    continue
                tm = ThreatModel.parse(t)
                default = ((loaded.attacks_for(tm.norm) if loaded else None) or load_suite(DEFAULT_SUITE).attacks_for(tm.norm)
                           or (None if cascade else suite_attacks_for(tm.norm)))
                specs_l.append(ThreatSpec(tm, cascade or default or (AttackSpec("pgd"),)))
            specs = tuple(specs_l)
        else:
            assert loaded is not None
            specs = tuple(ThreatSpec(t.threat, cascade or t.attacks) for t in loaded.threats)
        union = (tuple(AttackSpec.parse(a) for a in union_attacks) if union_attacks
                 else (loaded.union if loaded and not threats else ()))
        same = loaded is not None and not threats and not attacks and not union_attacks
        run_labels = {t.threat.label for t in specs}
        order = tuple(o for o in loaded.union_order if o in run_labels) if loaded else ()
        bench = Benchmark(loaded.name if same else None, loaded.dataset if loaded else "cifar10", specs, union,
                          bool(loaded and loaded.union_only), order)
    labels = [t.threat.label for t in bench.threats]
    if not labels:
        raise RbxError("no threat models to evaluate: give --suite or at least one --threat")
    if len(set(labels)) != len(labels):
        raise RbxError(f"threat models repeat: {', '.join(labels)}")
    return bench


def read_suite(path: Path) -> Suite:
    """Parse one suite file; errors name the file and what is wrong."""
    try:
        raw = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise RbxError(f"cannot read suite file {path}: {exc}") from None
    where = str(path)
    kind = raw.get("kind", "threats")
    if kind == "corruptions":
        return _read_corruption_suite(raw, path)
    if kind != "threats":
        raise RbxError(f"{where}: kind must be \"threats\" (the default) or \"corruptions\", got {kind!r}")
    threats_raw = raw.get("threats")
    if not isinstance(threats_raw, list) or not threats_raw:
        raise RbxError(f"{where}: a suite needs at least one [[threats]] table")
    threats = []
    for i, t in enumerate(threats_raw):
        if not isinstance(t, dict) or "threat" not in t:
            raise RbxError(f"{where}: threats[{i}] needs a 'threat' key such as \"Linf:8/255\"")
        attacks = t.get("attacks") or ["pgd"]
        threats.append(ThreatSpec(ThreatModel.parse(t["threat"]),
                                  tuple(AttackSpec.parse(Spec.from_mapping(a, f"{where} threats[{i}]")) for a in attacks)))
    union_raw = raw.get("union", {})
    if not isinstance(union_raw, dict):
        raise RbxError(f"{where}: [union] must be a table with an 'attacks' list")
    union = tuple(AttackSpec.parse(Spec.from_mapping(a, f"{where} [union]")) for a in union_raw.get("attacks", []))
    union_only, order = raw.get("union_only", False), raw.get("union_order", [])
    if not isinstance(union_only, bool):
        raise RbxError(f"{where}: union_only must be true or false, got {union_only!r}")
    if not isinstance(order, list) or not all(isinstance(o, str) for o in order):
        raise RbxError(f"{where}: union_order must be a list of threat models, e.g. [\"L1:12\", \"Linf:8/255\"]")
    labels = [t.threat.label for t in threats]
    order_labels = []
    for o in order:
        label = ThreatModel.parse(o).label
        if label not in labels:
            raise RbxError(f"{where}: union_order names {o!r}, which is not one of the suite's threat models ({', '.join(labels)})")
        order_labels.append(label)
    return Suite(
        name=str(raw.get("name") or Path(path).stem),
        dataset=str(raw.get("dataset", "cifar10")),
        threats=tuple(threats),
        description=str(raw.get("description", "")),
        path=str(path),
        union=union,
        union_only=union_only,
        union_order=tuple(order_labels),
    )


def _read_corruption_suite(raw: dict[str, Any], path: Path) -> Suite:
    """A ``kind = "corruptions"`` suite: a corruption dataset, optional corruptions and severities, no threats."""
    where = str(path)
    if "threats" in raw or "union" in raw:
        raise RbxError(f"{where}: a corruption suite has no [[threats]] or [union]; it lists corruptions and severities")
    dataset = raw.get("dataset")
    if not isinstance(dataset, str) or not dataset:
        raise RbxError(f"{where}: a corruption suite needs dataset = \"cifar10-c\" (or another corruption dataset)")
    corruptions, severities = raw.get("corruptions", []), raw.get("severities", [])
    if not isinstance(corruptions, list) or not isinstance(severities, list):
        raise RbxError(f"{where}: corruptions and severities must be lists, e.g. corruptions = [\"fog\"], severities = [3]")
    try:
        chosen, levels = check_selection(corruptions, severities)
    except RbxError as exc:
        raise RbxError(f"{where}: {exc}") from None
    return Suite(name=str(raw.get("name") or Path(path).stem), dataset=dataset, threats=(),
                 description=str(raw.get("description", "")), path=str(path), kind="corruptions",
                 corruptions=tuple(corruptions) and chosen, severities=tuple(severities) and levels)


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


@SUITES.add_hint
def _path_hint(text: str) -> tuple[str, str] | None:
    """An unknown suite name that is a path without its ``.toml`` (``suites/mine`` where ``suites/mine.toml`` exists)."""
    toml = Path(text + ".toml")
    if toml.is_file():
        return str(toml), "a suite file is named with its .toml ending"
    if ("/" in text or "\\" in text) and Path(text).parent.is_dir():
        return f"{text}.toml", f"a suite file ends in .toml; there is no {toml.name} in {Path(text).parent}"
    return None


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


_register_suite_files()
