"""The benchmark runner: checks, clean pass, the stage plan walked batch by batch, the record.

For a model, a dataset slice and threat models (each with an ordered attack cascade):

0. cheap sanity checks on a first batch (:mod:`robustbench_ext.checks`); a model that returns
   probabilities is refused, other findings are warned about and stored in the record;
1. one clean pass classifies every sample;
2. the run is compiled into a flat, typed list of stages (:func:`compile_plan`): every threat model's
   cascade (ensembles expanded), then the eps-sweep threat models' cascades, then the union-stage
   attacks. Each stage names the flag columns it can break points in; one index walks the list
   (AutoAttack's flat loop over ``robust_flags``, made explicit). A stage attacks only the points still
   robust in its columns, and marks a broken point with its position in its cascade (``broken_by``);
3. a sample is union-robust iff it is classified correctly AND robust under every threat model
   (:func:`robustbench_ext.records.union_flags`); :func:`robustbench_ext.records.build_record` makes the
   record, with a 95% Wilson interval on every accuracy.

The model runs in eval mode with its parameters frozen (no weight gradients are ever computed); only
the attacks' input gradients are taken. Each attack call's seed is derived from the run seed and its
(threat, stage, batch) position, so the same seed gives the same flags on CPU.

Crash safety: with a ``state_dir``, the evaluation state (:mod:`robustbench_ext.eval_state`) is written
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
from torch import Tensor, nn

from . import provenance
from .acceleration import SearchOptions, search_model
from .checks import cheap_checks, summarize
from .data import EvalData, as_eval_data
from .devutils import check_batch_size, frozen, resolve_device
from .draws import DEFAULT_DRAWS, Draws, batch_seed, majority_wrong
from .distributed import Dist
from .errors import DataError, RbxError
from .eval_state import EvaluationState, evaluation_desc, run_key
from .models import LoadedModel, as_loaded_model
from .records import MISCLASSIFIED, NOT_MEASURED_UNION_ONLY, ROBUST, Accuracy, RunSettings, SampleFlags, StageResult, ThreatResult, build_record
from .record_io import Evaluation, atomic_write_bytes, remove_if_empty
from .boundary import ModelBoundary, check_agreement
from .curve_run import build_curves, check_curve_plan
from .plan import StagePlan, compile_plan, fit_plan, stage_names
from .suites import AttackSpec, ThreatSpec, default_suite, plan_benchmark
from .threat import ThreatModel
from .walk import StageWalk, _batches

log = logging.getLogger(__name__)

#: Images the pre-evaluation checks look at.
CHECK_BATCH = 64


# ---- the run ---------------------------------------------------------------------------------------
def evaluate(
    model: LoadedModel | nn.Module | str,
    data: EvalData | tuple[Tensor, Tensor] | str,
    threats: Sequence[ThreatSpec | ThreatModel | str] | ThreatModel | str | None = None,
    *,
    suite: str | None = None,
    attacks: Sequence[str] = (),
    union_attacks: Sequence[AttackSpec | str] = (),
    normalize: str | None = None,
    n_examples: int | None = None,
    seed: int = 0,
    batch_size: int = 256,
    device: str | torch.device = "auto",
    progress: bool = True,
    state_dir: Path | None = None,
    resume: bool | None = None,
    eps_sweep: Sequence[float] = (),
    search: SearchOptions = SearchOptions(),
    dist: Dist | None = None,
    output: str | int | None = None,
    allow_class_subset: bool = False,
    skip_stages: Sequence[str] = (),
    randomized: bool | None = None,
    draws: int = DEFAULT_DRAWS,
    draw_seed: int | None = None,
    curve: bool = False,
    union_only: bool | None = None,
    union_order: Sequence[str] | None = None,
) -> Evaluation:
    """Evaluate a model: clean accuracy, robust accuracy per threat model and union robust accuracy.

    ``rbx run`` is this function: every ``rbx run`` invocation has an ``evaluate`` call that gives the
    same record. What it takes:

    - ``model``: a plain ``nn.Module`` (``[N, C, H, W]`` in [0, 1] -> logits; ``normalize`` wraps one that
      expects normalized inputs), a :class:`LoadedModel`, or a model spec (``cifar10-smallcnn-linf-at``,
      ``file:ckpt.pt``, ``robustbench:ID``);
    - ``data``: an :class:`EvalData`, a pair of tensors ``(x [N, C, H, W] in [0, 1], y [N])``, or a dataset
      spec (``cifar10-1k``), of which the first ``n_examples`` are taken;
    - ``threats``: threat strings (``"Linf:8/255"``) or :class:`ThreatModel` s, each attacked with
      ``attacks`` if given, else the cascade ``suite`` (default ``cifar10-union``) uses for its norm; or
      :class:`ThreatSpec` s with their cascades; or None for the suite's threat models
      (:func:`robustbench_ext.suites.plan_benchmark` is the rule);
    - ``union_attacks``: multi-threat attacks (``union-worst``) run last on the points still union-robust;
      their ``broken_by`` index continues after each threat model's own cascade;
    - ``eps_sweep`` (factors such as 0.25, 0.5, 2): also every threat model's cascade at ``eps * factor``
      on all clean-correct points, into the record's ``sweeps`` (never into the union);
    - ``union_only`` (default: the suite's ``union_only``, else False): only union robust accuracy counts, so
      the threat models run in ``union_order`` (default: the suite's measured ``union_order``) and each
      attacks only the points robust under all the others so far (:mod:`robustbench_ext.plan`). The union
      flags equal a full run's on the same images and seed; only the first threat model's robust accuracy
      is exact, the others are recorded as not measured (``robust: null``).

    Before anything runs, the model and data must agree (:func:`robustbench_ext.boundary.check_agreement`:
    channels, input size, class count; ``allow_class_subset`` for data whose classes are a subset of the
    model's) and every attack must be able to run on them (:func:`robustbench_ext.plan.fit_plan`: targeted
    attacks capped at K - 1 targets with a note, impossible ones refused by name). ``output`` picks the
    logits from a model that returns a tuple, dict or object (:mod:`robustbench_ext.boundary`).

    With ``state_dir``, the evaluation state is saved after every batch; ``resume`` None continues a
    matching state if there is one, True requires one, False starts over. Nothing else is written. A stage
    that fails leaves the finished ones in the state, and the error names it: the same call resumes, and
    ``skip_stages`` (``"THREAT ATTACK"`` as the error prints it) finishes the run without that stage (the
    record says so).
    ``search``: engine switches for the attacks' own passes (bf16, channels_last, compile); with any of
    them on, every success is re-verified with the float32 model. ``dist`` (default: the initialized
    ``torch.distributed`` group, if any): every stage's batches are dealt round-robin to the ranks and
    the hits exchanged after the stage, so every rank ends with the flags a single process computes.

    Randomized models (:mod:`robustbench_ext.draws`): with ``randomized`` True, or None and the determinism
    pre-check failing, every verdict -- clean and after each attack batch -- is the majority over ``draws``
    fresh forward passes seeded from ``draw_seed`` (default: ``seed``); the record's ``config.draws`` says
    so. ``randomized`` False keeps single-pass verdicts even for a model found randomized (a warning).
    ``curve`` (:mod:`robustbench_ext.curve_run`): with a minimum-norm attack in the cascade, the record's
    ``curves`` hold robust accuracy vs eps from its per-point minimal norms, checked at each threat
    model's eps against a fixed-eps cascade.
    """
    check_batch_size(batch_size)
    if isinstance(threats, (str, ThreatModel, ThreatSpec)):
        threats = [threats]
    if suite is None and not threats:  # the data's own suite (a CIFAR-100 run gets cifar100-union)
        named = data.name if isinstance(data, EvalData) else data if isinstance(data, str) else None
        if data is None:
            model = as_loaded_model(model, normalize)
            named = model.dataset
        suite = default_suite(named)
    bench = plan_benchmark(suite, tuple(threats or ()), attacks, union_attacks)
    union_only = bench.union_only if union_only is None else bool(union_only)
    order = tuple(bench.union_order if union_order is None else union_order)
    plan = compile_plan(bench.threats, bench.union, eps_sweep, union_only=union_only, order=order)
    loaded = as_loaded_model(model, normalize)
    data = as_eval_data(data if data is not None else (loaded.dataset or bench.dataset), n_examples)
    dev = resolve_device(device)
    dist = dist if dist is not None else Dist.current()
    meaningless = _meaningless_threats(plan, data)
    net = ModelBoundary(loaded.module.to(dev), loaded.name, output)
    with frozen(net):
        k = check_agreement(net, loaded, data, dev, allow_class_subset)
    loaded.num_classes = loaded.num_classes or k
    plan, notes = fit_plan(plan, k, tuple(data.x.shape[1:]))
    if curve:
        check_curve_plan(plan)
    skip = _check_skips(plan, skip_stages)
    notes += tuple(f"stage '{name}' was skipped on request (--skip-stage): its threat model's robust accuracy is "
                   "an upper bound without it" for name in skip)
    settings = RunSettings(
        suite=bench.suite, threats=tuple((t.threat.label, tuple(a.label for a in t.attacks)) for t in bench.threats),
        union_attacks=tuple(a.label for a in bench.union), seed=seed, batch_size=batch_size, device=str(dev),
        search=search.describe(), distributed=dist.describe() if dist.world > 1 else None, notes=notes,
        extra={**({"meaningless": meaningless} if meaningless else {}), **_union_only_config(plan)})
    draw_setting = Draws(draws, seed if draw_seed is None else int(draw_seed))  # checks R before anything runs
    state_path = None
    if state_dir is not None:
        desc = evaluation_desc(loaded, plan.threats, bench.union, seed, batch_size) | _union_only_config(plan)
        if randomized is not None or draws != DEFAULT_DRAWS or draw_seed is not None:
            desc["draws"] = [randomized, draws, draw_setting.seed]  # (kept out of plain runs' keys: they resume as before)
        key = run_key(desc, data.sha256(), dev, plan.n_main, search.describe() if search != SearchOptions() else None,
                      dist.world)
        state_path = Path(state_dir) / f"{key}.npz"
    t0 = time.perf_counter()
    with frozen(net):
        state = _start_or_resume(net, data, plan, state_path, resume, batch_size, dev, dist, randomized, draw_setting)
        rule = _draws_for(state.checks, randomized, draw_setting, warn=True)
        if rule is not None:
            settings = dataclasses.replace(settings, draws=rule.describe())
        save = _saver(state_path if dist.is_main else None, state, every_batch=dist.world == 1)
        runner = StageWalk(plan, state, search_model(net, search, dev), None if search.plain else net, data, seed,
                       batch_size, dev, progress and dist.is_main, save, dist, skip, state_path, rule,
                       {} if curve else None)
        runner.walk()
        curves = _curves(plan, net, data, state, runner.captured, seed, batch_size, dev, bench.suite, k) if curve else ()
    wall = state.elapsed + time.perf_counter() - t0
    ev = _finish(loaded, data, plan, state, settings, provenance.collect(dev, seed, state.started, wall), curves)
    if state_path is not None and dist.is_main:
        state_path.unlink(missing_ok=True)
        remove_if_empty(state_path.parent)
    return ev


def _curves(plan: StagePlan, net: nn.Module, data: EvalData, state: EvaluationState, captured, seed: int,
            batch_size: int, dev: torch.device, suite: str | None, num_classes: int) -> tuple[dict[str, Any], ...]:
    """The record's ``curves`` (:func:`robustbench_ext.curve_run.build_curves`); the reference cascade for a
    threat model whose own cascade is only minimum-norm attacks is the suite's (default suite's) for its norm."""
    shape = tuple(data.x.shape[1:])

    def reference(threat: ThreatModel):
        spec = plan_benchmark(suite if suite and suite != "custom" else None, [threat], ()).threats[0]
        spec = ThreatSpec(threat, tuple(a for a in spec.attacks if not getattr(a.build(), "minimum_norm", False)))
        return [dataclasses.replace(st, attack=st.attack.fit(num_classes, shape, threat)[0]) for st in spec.build()]

    with frozen(net):
        return build_curves(plan, net, data, state.clean_correct, state.robust, captured or {}, seed, batch_size, dev,
                            reference)


def _union_only_config(plan: StagePlan) -> dict[str, Any]:
    """The record's (and the state key's) ``union_only`` block: the order the threat models ran in; {} for a full run."""
    if not plan.union_only:
        return {}
    return {"union_only": {"order": [plan.threats[c].threat.label for c in plan.union_only],
                           "exact": [plan.threats[c].threat.label for c in plan.exact_columns]}}


def _meaningless_threats(plan: StagePlan, data: EvalData) -> list[str]:
    """Threat models whose ball covers the whole [0, 1] box: warned about, and marked in the record."""
    out = []
    for t in plan.threats[:plan.n_main]:
        if t.threat.covers_box(data.x[0].numel()):
            hint = f" (did you mean {t.threat.norm}:{t.threat.eps:g}/255?)" if t.threat.norm == "Linf" and t.threat.eps >= 1 else ""
            log.warning("%s: the ball contains the whole [0, 1] box, so every input can be turned into any other and "
                        "the robust accuracy is meaningless%s; the record is marked so and leaderboards leave it out",
                        t.threat.label, hint)
            out.append(t.threat.label)
    return out


def _check_skips(plan: StagePlan, skip: Sequence[str]) -> tuple[str, ...]:
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


def _start_or_resume(net: nn.Module, data: EvalData, plan: StagePlan, path: Path | None, resume: bool | None,
                     batch_size: int, dev: torch.device, dist: Dist, randomized: bool | None = None,
                     draws: Draws = Draws()) -> EvaluationState:
    if path is not None and resume is not False and path.is_file():
        state = EvaluationState.from_file(path, path.stem)
        if state is not None:
            log.warning("resuming from %s (stage %d of %d, batch %d)", path, state.stage + 1, len(plan.stages), state.batch)
            return state
    if resume:
        raise RbxError(f"--resume: no checkpoint of this run in {path.parent if path else 'the results directory'}; "
                       "run without --resume")
    clean = _clean_pass(net, data.x, data.y, batch_size, dev, dist)  # validates labels and logits first
    checks = _run_checks(net, data, dev)
    rule = _draws_for(checks, randomized, draws)
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


def _run_checks(net: nn.Module, data: EvalData, dev: torch.device) -> dict[str, Any]:
    x, y = data.x[:CHECK_BATCH].to(dev), data.y[:CHECK_BATCH].to(dev)
    results = cheap_checks(net, x, y)
    for r in results:
        if r.name == "probabilities" and not r.passed:
            raise RbxError(r.message)
        if not r.passed:
            log.warning("check %s: %s", r.name, r.message)
    return summarize(results)


def _finish(model: LoadedModel, data: EvalData, plan: StagePlan, state: EvaluationState, settings: RunSettings,
            prov: dict[str, Any], curves: Sequence[dict[str, Any]] = ()) -> Evaluation:
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
    record = build_record(settings, model=model.describe(), dataset=data.describe(), flags=flags, threats=main,
                          provenance=prov, checks=state.checks, union_attacks=union, sweeps=_sweeps(main, sweeps),
                          curves=curves)
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
            raise DataError(f"label {int(yb.max())} is out of range for a model with {k} outputs; is this the right dataset?")
        correct[chunk] = (logits.argmax(1).cpu() == yb).numpy()
        mine.append(chunk)
    if dist.world > 1:
        for pairs in dist.all_gather([(c, correct[c]) for c in mine]):
            for c, f in pairs:
                correct[c] = f
    return correct
