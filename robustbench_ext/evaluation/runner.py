"""The plain run (``kind == "threats"``): checks, clean pass, the stage plan walked batch by batch, the record.

:func:`execute` runs a validated :class:`~robustbench_ext.evaluation.request.RunRequest` whose plan is made
(:attr:`RunRequest.planned`). For a model, a dataset slice and threat models (each with an ordered attack
cascade):

0. the model and data are prepared once (:func:`prepare`: the model loaded and wrapped in the model adapter,
   the model/data agreement checked, every attack fitted to them); cheap sanity checks on a first batch
   (:mod:`robustbench_ext.evaluation.checks`): a model that returns probabilities is refused, other findings
   are warned about and stored in the record;
1. one clean pass classifies every sample;
2. the executor (:class:`~robustbench_ext.evaluation.executor.Executor`) walks the stage plan: every threat
   model's cascade (ensembles expanded), then the eps-sweep threat models' cascades, then the union-stage
   attacks. A stage attacks only the points still robust in its columns, and marks a broken point with its
   position in its cascade (``broken_by``);
3. a sample is union-robust iff it is classified correctly AND robust under every threat model
   (:func:`robustbench_ext.records.schema.union_flags`); :func:`robustbench_ext.records.schema.build_record` makes
   the record, with a 95% Wilson interval on every accuracy.

The model runs in eval mode with its parameters frozen (no weight gradients are ever computed); only
the attacks' input gradients are taken. Each attack call's seed comes from the run seed and its
(threat, stage, batch) position (:data:`robustbench_ext.runtime.SEED_STREAMS`), so the same seed gives the
same flags on CPU.

Crash safety: with a state folder, the evaluation state (:mod:`robustbench_ext.evaluation.state`) is written
atomically after every batch. A killed run resumes from the last finished batch; since every batch is
seeded by its position, the resumed run's flags and accuracies equal an uninterrupted run's.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..records import provenance
from ..attack.search import SearchOptions, search_model
from .checks import cheap_checks, check_unbounded, summarize
from ..data.datasets import EvalData, as_eval_data, check_labels_fit
from ..attack.base import remember_num_classes
from ..progress import resumable
from ..runtime import MAX_SEED, check_autograd_model, frozen, resolve_device
from .majority import DEFAULT_DRAWS, Draws, batch_seed, majority_wrong
from .distributed import Dist
from ..errors import RbxError
from .state import EvaluationState, evaluation_desc, run_key
from ..models.loading import LoadedModel, as_loaded_model, load_model
from ..records.schema import MISCLASSIFIED, NOT_MEASURED_UNION_ONLY, ROBUST, Accuracy, RunSettings, SampleFlags, StageResult, ThreatResult, build_record
from ..paths import atomic_write_bytes, remove_if_empty
from .result import Evaluation
from ..models.adapter import LabelOnly, ModelAdapter, check_agreement, is_label_only
from .curves import build_curves, check_curve_plan
from .plan import RunPlan, fit_plan, stage_names
from .request import RunRequest
from .suites import ThreatSpec, plan_benchmark
from ..attack.threat import LP_NORMS, ThreatModel
from ..registry import ATTACKS
from .escalation import Escalation, audit_block, decide, extend_plan, resolve_audit
from .executor import Executor, _batches

log = logging.getLogger(__name__)

#: Images the pre-evaluation checks look at.
CHECK_BATCH = 64
#: The attack of the pre-run ``unbounded`` probe (cheap: 10 steps on the check batch).
PROBE_ATTACK = "pgd:steps=10"


# ---- preparing the model and the data: once, for every kind of run ------------------------------------
@dataclasses.dataclass
class Prepared:
    """A request's model and data, loaded once: the model (and its adapter ``net`` on ``device``), the images,
    the class count the agreement check found, and the stage plan fitted to them (with notes for the record)."""

    loaded: LoadedModel
    data: EvalData
    net: ModelAdapter
    num_classes: int
    device: torch.device
    plan: RunPlan | None
    notes: tuple[str, ...] = ()


def load_requested_model(request: RunRequest) -> LoadedModel:
    """The request's model, loaded once (a spec through its model source; an object wrapped as it is)."""
    if isinstance(request.model, str):
        return load_model(request.model, arch=request.arch, normalize=request.normalize, num_classes=request.num_classes,
                          arch_kwargs=dict(request.arch_kwargs), trust_pickle=request.trust_pickle)
    return as_loaded_model(request.model, request.normalize)


def prepare(request: RunRequest) -> Prepared:
    """Load the model and the data once and check that they agree (channels, input size, class count;
    :func:`~robustbench_ext.models.adapter.check_agreement`); fit every planned attack to them
    (:func:`~robustbench_ext.evaluation.plan.fit_plan`: targeted attacks capped at K - 1 targets with a note,
    impossible ones refused by name). Nothing is written."""
    planned = request.planned
    loaded = load_requested_model(request)
    if request.is_label_only and not is_label_only(loaded.module):  # --label-only: the model answers with labels only
        loaded.module = LabelOnly(loaded.module).eval()
        loaded.extra = {**loaded.extra, "label_only": True}
    dataset = request.data if request.data is not None else (loaded.dataset or planned.dataset)
    data = as_eval_data(dataset, request.n_examples)
    dev = resolve_device(request.device)
    if planned.plan is not None:  # attacks take input gradients: a model made under inference_mode cannot give them
        check_autograd_model(loaded.module, f"model '{loaded.name}'")
    net = ModelAdapter(loaded.module.to(dev), loaded.name, request.output)
    with frozen(net):
        k = check_agreement(net, loaded, data, dev, request.allow_class_subset, request.batch_size)
    remember_num_classes(net, k)  # (so the attacks' own fit on each call needs no forward pass to learn it)
    loaded.num_classes = loaded.num_classes or k
    plan, notes = (None, ()) if planned.plan is None else fit_plan(planned.plan, k, tuple(data.x.shape[1:]))
    return Prepared(loaded, data, net, k, dev, plan, notes)


# ---- the run ---------------------------------------------------------------------------------------
def execute(request: RunRequest, prepared: Prepared | None = None) -> Evaluation:
    """Run a ``threats`` request (see the module docstring); ``prepared``: its model and data if already loaded."""
    bench = request.planned.bench
    p = prepared or prepare(request)
    loaded, data, net, dev, plan = p.loaded, p.data, p.net, p.device, p.plan
    dist = request.dist if request.dist is not None else Dist.current()
    meaningless = _meaningless_threats(plan, data, request.allow_meaningless)
    if request.curve:
        check_curve_plan(plan)
    _check_skips(plan, request.skip_stages)  # unknown stage names fail before anything runs
    audit = resolve_audit(request.audit, data.n)
    # (a stream's part runs with a derived 63-bit seed: its low 32 bits key the draws, as stream_seed keys everything)
    draw_setting = Draws(request.draws, (request.seed & MAX_SEED) if request.draw_seed is None else int(request.draw_seed))
    state_path = _state_path(request, loaded, data, plan, dev, dist, draw_setting, audit)
    t0 = time.perf_counter()
    # an interruption (Ctrl-C, SIGTERM) from here on names the saved evaluation state, if there is one by then
    with frozen(net), resumable(state_path if dist.is_main else None, "evaluation state"):
        state = _start_or_resume(net, data, plan, state_path, request, dev, dist, draw_setting)
        # what the pre-checks call for (decided again from the saved checks on resume: the same plan)
        escalation = decide(state.checks, request.escalate)
        notes = p.notes
        if escalation.active or audit:
            plan, more = extend_plan(plan, escalation, audit, p.num_classes, tuple(data.x.shape[1:]))
            notes += more
        if escalation.flagged and not escalation.active:
            log.warning("masking signs (%s) but escalation is off (--no-escalate): the robust accuracies are upper "
                        "bounds that gradient attacks may be far above", ", ".join(r["sign"] for r in escalation.reasons))
        elif escalation.active:
            log.warning("escalating: %s", "; ".join(f"{r['sign']} -> {r['action']}" for r in escalation.reasons))
        skip = _check_skips(plan, request.skip_stages)
        notes += tuple(f"stage '{name}' was skipped on request (--skip-stage): its threat model's robust accuracy "
                       "is an upper bound without it" for name in skip)
        settings = RunSettings(
            suite=bench.suite, threats=tuple((t.threat.label, tuple(a.label for a in t.attacks)) for t in bench.threats),
            union_attacks=tuple(a.label for a in bench.union), seed=request.seed, batch_size=request.batch_size,
            device=str(dev), search=request.search.describe(), distributed=dist.describe() if dist.world > 1 else None,
            notes=notes, extra={**({"meaningless": meaningless} if meaningless else {}), **_union_only_config(plan),
                                **({"audit": audit} if audit else {}),
                                **({"label_only": True} if request.is_label_only else {})})
        rule = _draws_for(state.checks, request.randomized, draw_setting, warn=True)
        if rule is not None:
            settings = dataclasses.replace(settings, draws=rule.describe())
        save = _saver(state_path if dist.is_main else None, state, every_batch=dist.world == 1)
        search = search_model(net, request.search, dev)
        remember_num_classes(search, p.num_classes)
        executor = Executor(plan, state, search, None if request.search.plain else net,
                            data, request, dev, save, dist, skip, state_path, rule, {} if request.curve else None,
                            batch_override=escalation.batch_size if escalation.active else None, audit_size=audit)
        executor.walk()
        curves = _curves(plan, net, data, state, executor.captured, request, dev, p.num_classes, rule) if request.curve else ()
    wall = state.elapsed + time.perf_counter() - t0
    ev = _finish(loaded, data, plan, state, settings, provenance.collect(dev, request.seed, state.started, wall), curves,
                 escalation)
    if state_path is not None and dist.is_main:
        state_path.unlink(missing_ok=True)
        remove_if_empty(state_path.parent)
    return ev


def _state_path(request: RunRequest, loaded: LoadedModel, data: EvalData, plan: RunPlan, dev: torch.device, dist: Dist,
                draws: Draws, audit: int = 0) -> Path | None:
    """Where this run's evaluation state lives (None: no state folder): keyed by everything that makes it this run."""
    folder = request.state_folder()
    if folder is None:
        return None
    bench = request.planned.bench
    desc = evaluation_desc(loaded, plan.threats, bench.union, request.seed, request.batch_size) | _union_only_config(plan)
    if request.randomized is not None or request.draws != DEFAULT_DRAWS or request.draw_seed is not None:
        desc["draws"] = [request.randomized, request.draws, draws.seed]  # (kept out of plain runs' keys: they resume as before)
    if audit or not request.escalate:
        desc["audit_escalate"] = [audit, request.escalate]
    key = run_key(desc, data.sha256(), dev, plan.n_main,
                  request.search.describe() if request.search != SearchOptions() else None, dist.world)
    return Path(folder) / f"{key}.npz"


def _curves(plan: RunPlan, net: nn.Module, data: EvalData, state: EvaluationState, captured, request: RunRequest,
            dev: torch.device, num_classes: int, draws: Draws | None = None) -> tuple[dict[str, Any], ...]:
    """The record's ``curves`` (:func:`robustbench_ext.evaluation.curves.build_curves`); the reference cascade for a
    threat model whose own cascade is only minimum-norm attacks is the suite's (default suite's) for its norm.
    ``draws``: the run's re-check rule (a randomized model): the curve judges points by the same majority."""
    shape = tuple(data.x.shape[1:])
    suite = request.planned.bench.suite

    def reference(threat: ThreatModel):
        spec = plan_benchmark(suite if suite and suite != "custom" else None, [threat], ()).threats[0]
        spec = ThreatSpec(threat, tuple(a for a in spec.attacks if not getattr(a.build(), "minimum_norm", False)))
        return [dataclasses.replace(st, attack=st.attack.fit(num_classes, shape, threat)[0]) for st in spec.build()]

    with frozen(net):
        return build_curves(plan, net, data, state.clean_correct, state.robust, captured or {}, request.seed,
                            request.batch_size, dev, reference, draws)


def _union_only_config(plan: RunPlan) -> dict[str, Any]:
    """The record's (and the state key's) ``union_only`` block: the order the threat models ran in; {} for a full run."""
    if not plan.union_only:
        return {}
    return {"union_only": {"order": [plan.threats[c].threat.label for c in plan.union_only],
                           "exact": [plan.threats[c].threat.label for c in plan.exact_columns]}}


def meaningless_message(covering: Sequence[ThreatModel], shape: tuple[int, ...]) -> str:
    """What is wrong with threat models whose ball covers the [0, 1] box of ``shape`` inputs (with a hint when the
    radius reads like a /255 one given without it)."""
    hints = [f"{t.norm}:{t.eps:g}/255" for t in covering
             if t.norm in LP_NORMS and not ThreatModel(t.norm, t.eps / 255).covers_box(shape)]
    hint = f" (did you mean {' and '.join(hints)}?)" if hints else ""
    labels = ", ".join(t.label for t in covering)
    return (f"{labels}: the ball contains the whole [0, 1] box of these {shape} inputs, so every input "
            f"can be turned into any other and robust accuracy is meaningless{hint}")


def _meaningless_threats(plan: RunPlan, data: EvalData, allowed: bool = False) -> list[str]:
    """Threat models whose ball covers the whole [0, 1] box: every input can be turned into any other, so robust
    accuracy says nothing. Refused before anything runs unless ``allowed`` (``--allow-meaningless-eps``); then
    warned about, and the record is marked (tables mark the row, leaderboards leave the record out)."""
    shape = tuple(data.x.shape[1:])
    covering = [t.threat for t in plan.threats[:plan.n_main] if t.threat.covers_box(shape)]
    if not covering:
        return []
    what = meaningless_message(covering, shape)
    if not allowed:
        raise RbxError(f"{what}; give a smaller radius, or pass --allow-meaningless-eps (allow_meaningless=True) to run "
                       "it anyway (the record is then marked so and leaderboards leave it out)")
    log.warning("%s; the record is marked so and leaderboards leave it out", what)
    return [t.label for t in covering]


def _check_skips(plan: RunPlan, skip: Sequence[str]) -> tuple[str, ...]:
    names = stage_names(plan)
    bad = [s for s in skip if s not in names]
    if bad:
        raise RbxError(f"--skip-stage {bad[0]!r} names no stage of this run; its stages: {'; '.join(names)}")
    return tuple(skip)


def _draws_for(checks: dict[str, Any] | None, randomized: bool | None, setting: Draws, warn: bool = False) -> Draws | None:
    """The re-check rule of a run: ``setting`` when the user declares the model randomized, or leaves it open
    and the determinism pre-check failed; None (single-pass verdicts) otherwise."""
    detected = any(r["name"] == "deterministic" and not r["passed"] for r in (checks or {}).get("results", []))
    if randomized is None and detected:
        return dataclasses.replace(setting, source="detected")
    if randomized is False and detected and warn:
        log.warning("the model is randomized but re-checks over draws are off (randomized=False): every verdict rests "
                    "on one forward pass and robust accuracy is unreliable in both directions")
    return setting if randomized else None


@torch.no_grad()
def _majority_clean(net: nn.Module, data: EvalData, batch_size: int, dev: torch.device, rule: Draws) -> np.ndarray:
    """``[N]`` bool: correct unless misclassified in a strict majority of ``rule.r`` seeded fresh passes."""
    correct = np.zeros(data.n, dtype=bool)
    for bi, chunk in enumerate(_batches(np.arange(data.n), batch_size)):
        xb, yb = data.x[chunk].to(dev), data.y[chunk].to(dev)
        correct[chunk] = ~majority_wrong(net, xb, yb, rule.r, batch_seed(rule, 0, bi)).cpu().numpy()
    return correct


def _start_or_resume(net: nn.Module, data: EvalData, plan: RunPlan, path: Path | None, request: RunRequest,
                     dev: torch.device, dist: Dist, draws: Draws) -> EvaluationState:
    resume, batch_size = request.resume, request.batch_size
    if path is not None and resume is not False and path.is_file():
        state = EvaluationState.from_file(path, path.stem)
        if state is not None:
            log.warning("resuming from %s (stage %d of %d, batch %d)", path, state.stage + 1, len(plan.stages), state.batch)
            return state
    if resume:
        raise RbxError(f"--resume: no saved evaluation state of this run in {path.parent if path else 'the results directory'}; "
                       "run without --resume")
    clean = _clean_pass(net, data.x, data.y, batch_size, dev, dist)  # validates labels and logits first
    checks = _run_checks(net, data, dev, plan, batch_size, request.is_label_only)
    escalation = decide(checks, request.escalate)
    if escalation.active and escalation.batch_size:  # a batch-dependent model: judged one image at a time
        clean = _clean_pass(net, data.x, data.y, escalation.batch_size, dev, dist)
    rule = _draws_for(checks, request.randomized, draws)
    if rule is not None:  # a randomized model: clean accuracy by majority over draws too
        clean = _majority_clean(net, data, batch_size, dev, rule)
    robust = np.repeat(clean[:, None], len(plan.threats), axis=1)
    broken_by = np.full((data.n, len(plan.threats)), ROBUST, dtype=np.int16)
    broken_by[~clean] = MISCLASSIFIED
    return EvaluationState(clean, robust, broken_by, provenance.utc_now(), checks)


def _saver(path: Path | None, state: EvaluationState, every_batch: bool = True):
    def save(elapsed: float) -> None:
        if path is None or (state.batch and not every_batch):
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, dataclasses.replace(state, elapsed=elapsed).to_bytes(path.stem))

    return save


def _run_checks(net: nn.Module, data: EvalData, dev: torch.device, plan: RunPlan, batch_size: int,
                label_only: bool = False) -> dict[str, Any]:
    """The cheap checks on the first :data:`CHECK_BATCH` images (in batches of at most ``batch_size``), and the
    ``unbounded`` probe: PGD-10 at a radius covering the [0, 1] box under the first threat model's norm must break
    (almost) every point, else the gradient cannot be followed (Lp threat models of a model that gives scores)."""
    x, y = data.x[:CHECK_BATCH].to(dev), data.y[:CHECK_BATCH].to(dev)
    results = cheap_checks(net, x, y, batch_size=batch_size, label_only=label_only)
    first = plan.threats[0].threat if plan.n_main else None
    if (first is not None and first.norm in LP_NORMS and not label_only
            and next(r for r in results if r.name == "deterministic").passed):
        results.append(check_unbounded(net, x, y, first, [ATTACKS.create(PROBE_ATTACK)], batch_size=batch_size))
    for r in results:
        if r.name == "probabilities" and not r.passed:
            raise RbxError(r.message)
        if not r.passed:
            log.warning("check %s: %s", r.name, r.message)
    return summarize(results)


def _finish(model: LoadedModel, data: EvalData, plan: RunPlan, state: EvaluationState, settings: RunSettings,
            prov: dict[str, Any], curves: Sequence[dict[str, Any]] = (), escalation: Escalation | None = None) -> Evaluation:
    results = [StageResult.from_dict(r) for r in state.results]
    columns = []
    for ti, spec in enumerate(plan.threats):
        own = tuple(results[i] for i in plan.column_stages(ti))
        exact = ti in plan.exact_columns
        columns.append(ThreatResult(spec.threat.label, spec.threat.norm, spec.threat.eps,
                                    Accuracy.from_flags(state.robust[:, ti]) if exact else None, own,
                                    round(sum(s.seconds for s in own), 3), None if exact else NOT_MEASURED_UNION_ONLY))
    main, sweeps = columns[:plan.n_main], columns[plan.n_main:]
    n_main = plan.n_main
    measured = None if not plan.union_only else np.isin(np.arange(n_main), plan.exact_columns)
    flags = SampleFlags(np.arange(data.n), data.y.numpy(), state.clean_correct, state.robust[:, :n_main],
                        state.broken_by[:, :n_main], tuple(t.threat for t in main), sweep_robust=state.robust[:, n_main:],
                        sweep_threats=tuple(r.threat for r in sweeps), measured=measured)
    union = tuple(r for r, s in zip(results, plan.stages) if s.kind == "union")
    audit = tuple(audit_block(plan.threats[s.columns[0]].threat.label, r.population or 0, r.n_attacked, r.n_broken, data.n,
                              s.label.partition("/")[2])
                  for r, s in zip(results, plan.stages) if s.kind == "audit")
    record = build_record(settings, model=model.describe(), dataset=data.describe(), flags=flags, threats=main,
                          provenance=prov, checks=state.checks, union_attacks=union, sweeps=_sweeps(main, sweeps),
                          curves=curves, audit=audit,
                          escalation=escalation.describe() if escalation is not None and escalation.flagged else None)
    return Evaluation(record, flags)


def _sweeps(main: Sequence[ThreatResult], extra: Sequence[ThreatResult]) -> tuple[dict, ...]:
    """Per main threat model: robust accuracy at each swept eps (the main result at factor 1)."""
    out = []
    for t in main:
        points = [r for r in [t, *extra] if r.norm == t.norm]
        if len(points) == 1:
            continue
        out.append({"threat": t.threat, "norm": t.norm, "points": [
            {"eps": r.eps, "label": r.threat, "factor": round(r.eps / t.eps, 6), "robust": dataclasses.asdict(r.robust),
             "seconds": r.seconds} for r in sorted(points, key=lambda r: r.eps)]})
    return tuple(out)


@torch.no_grad()
def _clean_pass(net: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, dev: torch.device,
                dist: Dist = Dist()) -> np.ndarray:
    correct = np.zeros(x.shape[0], dtype=bool)
    mine = []
    for bi, chunk in enumerate(_batches(np.arange(x.shape[0]), batch_size)):
        if not dist.mine(bi):
            continue
        logits = net(x[chunk].to(dev))
        if logits.ndim != 2:
            raise RbxError(f"the model must return logits [N, K], got shape {tuple(logits.shape)}")
        if not torch.isfinite(logits).all():
            raise RbxError("the model returned NaN or inf logits on clean inputs; check the checkpoint and its input scaling")
        k = logits.shape[1]
        yb = y[chunk]
        if int(yb.max()) >= k:
            check_labels_fit(y, k)  # (the whole label set: the advice depends on what the labels look like)
        correct[chunk] = (logits.argmax(1).cpu() == yb).numpy()
        mine.append(chunk)
    if dist.world > 1:
        for pairs in dist.all_gather([(c, correct[c]) for c in mine]):
            for c, f in pairs:
                correct[c] = f
    return correct
