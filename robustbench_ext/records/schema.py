"""Result records: one JSON record per run plus an ``.npz`` of per-sample flags; the one schema.

Record (``schema = "rbx.record/1"``), a :class:`RunRecord`:

- ``run_id``, ``suite`` (name or null), ``model`` (name, architecture, source, sha256, ...),
  ``dataset`` (name, source, location, split, n, selection, sha256 of the evaluated slice);
- ``n``, ``clean`` / ``union`` (:class:`Accuracy`: accuracy, count, n, 95% Wilson interval);
- ``threats``: per threat model its robust :class:`Accuracy` and the attack cascade
  (:class:`StageResult`: name, parameters, seconds, points attacked and broken, passes, loss curve; for
  black-box and decision-based attacks also ``queries``, the model queries they made); in a
  union-only run (``config.union_only``) the robust accuracy of every threat model but the first one run
  is ``null``, with ``not_measured`` saying why (and the flags npz then has ``measured`` [T] bool);
- ``sweeps``: with ``--eps-sweep``, per threat model the robust accuracy at each swept eps;
- ``union_attacks``: the union stage (multi-threat attacks run last on union-robust points), if any;
- ``multirobust`` (only where some threat-model type has robust accuracy at two strengths or more: an eps sweep,
  a ``--curve``, several threat models of one type): MultiRobustBench's CR_ind-avg, CR_ind-worst and stability
  constant (:mod:`robustbench_ext.records.multirobust`), derived from the accuracies, recomputed on read;
- ``config`` (seed, batch size, device) and ``provenance`` (rbx version, git commit, torch/CUDA
  versions, device name, start time, wall seconds, ...);
- ``flags_file`` and ``flags_sha256``: the companion npz (:class:`SampleFlags`);
- ``corruptions`` (only in a common-corruption run, :class:`CorruptionsResult`; absent otherwise, so older
  records read unchanged): the source of the corrupted images, the accuracy per corruption and severity,
  per corruption the mean over its severities, and the mean over all (RobustBench's corruptions accuracy
  when ``complete``: all 15 corruptions x 5 severities). Such a run has no threat models; its ``union``
  is its clean accuracy.

Flags npz arrays: ``index`` [N] (position in the dataset), ``y`` [N], ``clean_correct`` [N] bool,
``robust`` [N, T] bool (T threat models, in the record's order), ``union`` [N] bool,
``broken_by`` [N, T] int16 (index of the attack in that threat's cascade that broke the point;
:data:`ROBUST` = -1 if none did, :data:`MISCLASSIFIED` = -2 if the clean input was already wrong),
``threats`` [T] str; in a corruption run also ``corruption_correct`` [N, K] bool (correct on the image
under corruption/severity k) and ``corruption_keys`` [K] str (``"<corruption>/<severity>"``).

Both files are written atomically (temp file, fsync, rename), flags first, so a record that exists
always has its flags, and an interrupted run leaves nothing behind.

This module is the one place a record is assembled: :func:`build_record` (used by the runner and by
the merge of a streamed run) from a :class:`RunSettings`, the one frozen object that carries a run's
settings (timm's ``PretrainedCfg`` is the model); the record's ``config`` is derived from it. The union
rule (:func:`union_flags`) sits here, beside the per-sample flags it reads.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .accuracies import Accuracy, CorruptionAccuracy, CorruptionsResult, MeanAccuracy  # noqa: F401 (re-exported)
from .multirobust import record_block
from ..errors import ResultsError

SCHEMA = "rbx.record/1"
ROBUST = -1
MISCLASSIFIED = -2
#: ``not_measured`` of a threat model a union-only run attacked only on points robust under those before it.
NOT_MEASURED_UNION_ONLY = ("union-only run: attacked only the points robust under the threat models run before it, "
                           "so its robust accuracy was not measured (the union's is exact)")
#: How tables, boards and CSV show a robust accuracy that was not measured.
NOT_MEASURED = "n/m"


@dataclass(frozen=True)
class StageResult:
    """One stage of a cascade (one attack under one threat model, or a union-stage attack), as it ran."""

    attack: str
    params: dict[str, Any]
    seconds: float
    n_attacked: int
    n_broken: int
    robust_after: int
    n_forward: int = 0
    n_backward: int = 0
    loss_curve: tuple[float, ...] = ()
    nonfinite_grads: int = 0  # input-gradient entries that were NaN or inf, zeroed by the loop
    skipped: bool = False  # not run (--skip-stage after a failure): the threat's accuracy is an upper bound without it
    #: Black-box and decision-based attacks (those that read only outputs): model queries made, i.e. images passed
    #: forward, the contract's verification pass included (= n_forward; None for gradient attacks).
    queries: int | None = None
    population: int | None = None  # an audit stage: the robust points its random sample was drawn from

    @classmethod
    def from_dict(cls, d: dict) -> "StageResult":
        d = dict(d)
        d["loss_curve"] = tuple(d.get("loss_curve", ()))
        return cls(**d)


@dataclass(frozen=True)
class ThreatResult:
    """Robust accuracy under one threat model and the cascade that produced it.

    ``robust`` is None when it was not measured (a union-only run's later threat models); ``not_measured``
    then says why. Such a number is never shown as if it were one: tables print :data:`NOT_MEASURED`.
    """

    threat: str
    norm: str
    eps: float
    robust: Accuracy | None
    attacks: tuple[StageResult, ...]
    seconds: float
    not_measured: str | None = None

    @property
    def measured(self) -> bool:
        return self.robust is not None

    @classmethod
    def from_dict(cls, d: dict) -> "ThreatResult":
        robust = Accuracy.from_dict(d["robust"]) if d["robust"] is not None else None
        reason = d.get("not_measured") or (None if robust is not None else "not measured")
        return cls(d["threat"], d["norm"], float(d["eps"]), robust,
                   tuple(StageResult.from_dict(a) for a in d["attacks"]), float(d["seconds"]), reason)


@dataclass(frozen=True)
class RunRecord:
    """One evaluation of one model on one dataset slice under one or more threat models."""

    run_id: str
    suite: str | None
    model: dict[str, Any]
    dataset: dict[str, Any]
    n: int
    clean: Accuracy
    threats: tuple[ThreatResult, ...]
    union: Accuracy
    config: dict[str, Any]
    provenance: dict[str, Any]
    flags_file: str = ""
    flags_sha256: str = ""
    checks: dict[str, Any] = field(default_factory=dict)
    union_attacks: tuple[StageResult, ...] = ()
    sweeps: tuple[dict[str, Any], ...] = ()
    corruptions: CorruptionsResult | None = None
    schema: str = SCHEMA
    #: ``--curve``: per norm, robust accuracy vs eps from a minimum-norm attack and its fixed-eps checks
    #: (:mod:`robustbench_ext.evaluation.curves`); only runs with a curve carry the block.
    curves: tuple[dict[str, Any], ...] = ()
    #: ``audit=K``: per threat model, AutoAttack standard on a random sample of K robust points, what it broke and
    #: the 95% upper bound on the cascade's miss rate (:mod:`robustbench_ext.evaluation.escalation`).
    audit: tuple[dict[str, Any], ...] = ()
    #: The masking signs the pre-checks found and what the run added because of them (empty: none found).
    escalation: dict[str, Any] = field(default_factory=dict)
    #: MultiRobustBench's metrics (:func:`robustbench_ext.records.multirobust.record_block`), derived from the
    #: accuracies above whenever a record is built or read, never taken from the file; None (and absent from the
    #: JSON) unless some threat-model type has robust accuracy at two strengths or more.
    multirobust: dict[str, Any] | None = field(default=None, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "multirobust", record_block(self))

    @property
    def suite_label(self) -> str:
        """The suite name, or ``custom: <threats>`` for runs given threat models directly (``custom: corruptions``)."""
        if self.suite:
            return self.suite
        return "custom: " + ("corruptions" if self.corruptions is not None else " + ".join(t.threat for t in self.threats))

    def threat(self, label: str) -> ThreatResult:
        for t in self.threats:
            if t.threat == label:
                return t
        raise KeyError(label)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["corruptions"] is None:
            del d["corruptions"]  # only corruption runs carry the block: other records keep their exact shape
        if not d["curves"]:
            del d["curves"]
        for t in d["threats"]:
            if t["not_measured"] is None:
                del t["not_measured"]  # only union-only runs' later threat models carry it
            for a in t["attacks"]:
                if a.get("population") is None:
                    a.pop("population", None)  # only audit stages carry it
        for a in d["union_attacks"]:
            a.pop("population", None)
        for key in ("audit", "escalation", "multirobust"):
            if not d[key]:
                del d[key]  # only audited / escalated runs, and runs with a strength curve, carry these blocks
        return {"schema": d.pop("schema"), **d}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False, default=_json_default)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunRecord":
        schema = d.get("schema")
        if not isinstance(schema, str) or not schema.startswith("rbx.record/"):
            raise ResultsError(f"not an rbx record (schema {schema!r})")
        if schema != SCHEMA:
            raise ResultsError(f"record schema {schema} is not supported by this rbx (reads {SCHEMA}); upgrade rbx")
        try:
            return cls(
                run_id=d["run_id"], suite=d.get("suite"), model=d["model"], dataset=d["dataset"], n=int(d["n"]),
                clean=Accuracy.from_dict(d["clean"]),
                threats=tuple(ThreatResult.from_dict(t) for t in d["threats"]),
                union=Accuracy.from_dict(d["union"]), config=d["config"], provenance=d["provenance"],
                flags_file=d.get("flags_file", ""), flags_sha256=d.get("flags_sha256", ""),
                checks=d.get("checks", {}), schema=schema,
                union_attacks=tuple(StageResult.from_dict(a) for a in d.get("union_attacks", ())),
                sweeps=tuple(d.get("sweeps", ())),
                curves=tuple(d.get("curves", ())),
                audit=tuple(d.get("audit", ())), escalation=dict(d.get("escalation") or {}),
                corruptions=CorruptionsResult.from_dict(d["corruptions"]) if d.get("corruptions") else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ResultsError(f"malformed rbx record: {type(exc).__name__}: {exc}") from None


def union_flags(clean_correct: np.ndarray, robust: np.ndarray) -> np.ndarray:
    """The union rule: correct on the clean input AND robust under every threat model.

    ``clean_correct`` [N] bool, ``robust`` [N, T] bool -> [N] bool. With T = 0 it is clean accuracy.
    """
    clean_correct = np.asarray(clean_correct, dtype=bool)
    robust = np.asarray(robust, dtype=bool)
    if robust.ndim == 1:
        robust = robust[:, None]
    return clean_correct & robust.all(axis=1)


@dataclass
class SampleFlags:
    """Per-sample outcome of a run (see the module docstring for the arrays)."""

    index: np.ndarray
    y: np.ndarray
    clean_correct: np.ndarray
    robust: np.ndarray
    broken_by: np.ndarray
    threats: tuple[str, ...]
    sweep_robust: np.ndarray | None = None
    sweep_threats: tuple[str, ...] = ()
    corruption_correct: np.ndarray | None = None
    corruption_keys: tuple[str, ...] = ()
    #: [T] bool, union-only runs only: whether column t is a measured robust flag (else only "not broken by
    #: this threat model among the points it attacked"; the union is exact either way). None: all measured.
    measured: np.ndarray | None = None

    def is_measured(self, threat: str) -> bool:
        """Whether ``threat``'s column holds measured per-sample robustness (False in a union-only run's later threats)."""
        return self.measured is None or bool(self.measured[self.threats.index(threat)])

    @property
    def union(self) -> np.ndarray:
        return union_flags(self.clean_correct, self.robust)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {
            "index": self.index.astype(np.int64),
            "y": self.y.astype(np.int64),
            "clean_correct": self.clean_correct.astype(bool),
            "robust": self.robust.astype(bool),
            "union": self.union.astype(bool),
            "broken_by": self.broken_by.astype(np.int16),
            "threats": np.array(self.threats, dtype=str),
            "sweep_robust": (self.sweep_robust if self.sweep_robust is not None
                             else np.zeros((len(self.y), 0), bool)).astype(bool),
            "sweep_threats": np.array(self.sweep_threats, dtype=str),
            **({"corruption_correct": self.corruption_correct.astype(bool),
                "corruption_keys": np.array(self.corruption_keys, dtype=str)} if self.corruption_correct is not None else {}),
            **({"measured": np.asarray(self.measured, dtype=bool)} if self.measured is not None else {}),
        }

    @classmethod
    def load(cls, path: Path) -> "SampleFlags":
        try:
            with np.load(path, allow_pickle=False) as z:
                return cls(z["index"], z["y"], z["clean_correct"], z["robust"], z["broken_by"],
                           tuple(str(t) for t in z["threats"]),
                           z["sweep_robust"] if "sweep_robust" in z.files else None,
                           tuple(str(t) for t in z["sweep_threats"]) if "sweep_threats" in z.files else (),
                           z["corruption_correct"] if "corruption_correct" in z.files else None,
                           tuple(str(t) for t in z["corruption_keys"]) if "corruption_keys" in z.files else (),
                           z["measured"] if "measured" in z.files else None)
        except Exception as exc:
            raise ResultsError(f"cannot read flags file {path}: {exc}") from None


@dataclass(frozen=True)
class RunSettings:
    """A run's settings, passed through the runner as one frozen object; the record's ``config`` derives from it.

    ``threats``: per main threat model its label and the labels of its cascade's attack specs;
    ``search``: the engine switches (:meth:`SearchOptions.describe`); ``extra``: further config blocks
    (a streamed run's ``stream``).
    """

    suite: str | None
    threats: tuple[tuple[str, tuple[str, ...]], ...]
    union_attacks: tuple[str, ...] = ()
    seed: int = 0
    batch_size: int = 256
    device: str = "cpu"
    search: dict[str, Any] = field(default_factory=dict)
    distributed: dict[str, Any] | None = None
    notes: tuple[str, ...] = ()  # what the run had to adapt or leave out (capped targets, skipped stages)
    extra: dict[str, Any] = field(default_factory=dict)
    #: A randomized model's re-checks over draws (:meth:`robustbench_ext.evaluation.majority.Draws.describe`): R, seed, rule.
    draws: dict[str, Any] | None = None

    def config(self) -> dict[str, Any]:
        return {"seed": self.seed, "batch_size": self.batch_size, "device": self.device,
                "threats": [{"threat": t, "attacks": list(a)} for t, a in self.threats],
                "union_attacks": list(self.union_attacks), "search": dict(self.search),
                **({"distributed": dict(self.distributed)} if self.distributed else {}),
                **({"notes": list(self.notes)} if self.notes else {}),
                **({"draws": dict(self.draws)} if self.draws else {}), **self.extra}


def slug(text: str) -> str:
    """A file-name-safe short form of ``text``."""
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-")[:60] or "x"


def run_stem(started: str, model_name: str, suite: str | None, n: int) -> str:
    """File name stem (and run id) of a run's record and flags: ``<start time>_<model>_<suite>_n<N>``."""
    when = started.replace(":", "").replace("-", "")[:15]
    return "_".join([when, slug(model_name), slug(suite or "custom"), f"n{n}"])


def build_record(settings: RunSettings, *, model: dict[str, Any], dataset: dict[str, Any], flags: SampleFlags,
                 threats: Sequence[ThreatResult], provenance: dict[str, Any], checks: dict[str, Any] | None = None,
                 union_attacks: Sequence[StageResult] = (), sweeps: Sequence[dict[str, Any]] = (),
                 curves: Sequence[dict[str, Any]] = (), audit: Sequence[dict[str, Any]] = (),
                 escalation: dict[str, Any] | None = None,
                 corruption_source: dict[str, Any] | None = None, corruption_seconds: Sequence[float] = (),
                 corruptions_complete: bool = False) -> RunRecord:
    """The one record builder: accuracies (with intervals) recomputed from the flags, config from the settings.

    A corruption run passes flags with ``corruption_correct`` and the ``corruption_source`` block (plus the
    seconds per (corruption, severity) and whether all 15 x 5 were evaluated); its ``corruptions`` block is
    computed here from the flags like every other accuracy.
    """
    n = int(len(flags.y))
    corruptions = None
    if flags.corruption_correct is not None:
        corruptions = CorruptionsResult.from_flags(flags.corruption_correct, flags.corruption_keys, corruption_source or {},
                                                   corruption_seconds, corruptions_complete)
    return RunRecord(
        run_id=run_stem(provenance["started"], model["name"], settings.suite, n),
        suite=settings.suite, model=model, dataset=dataset, n=n,
        clean=Accuracy.from_flags(flags.clean_correct), threats=tuple(threats),
        union=Accuracy.from_flags(flags.union), config=settings.config(), provenance=provenance,
        checks=dict(checks or {}), union_attacks=tuple(union_attacks), sweeps=tuple(sweeps), curves=tuple(curves), corruptions=corruptions,
        audit=tuple(audit), escalation=dict(escalation or {}),
    )


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, (np.ndarray,)):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, tuple):
        return list(obj)
    return str(obj)
