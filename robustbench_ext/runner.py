"""The benchmark runner: checks, clean pass, per-threat attack cascades, the union rule, the record.

For a model, a dataset slice and threat models (each with an ordered attack list):

0. cheap sanity checks on a first batch (:mod:`robustbench_ext.checks`); a model that returns
   probabilities is refused, other findings are warned about and stored in the record;
1. one clean pass classifies every sample;
2. per threat model, the attacks run as a cascade (AutoAttack-style): each attack only sees the
   points still robust, and a point broken by stage j is marked ``broken_by = j``;
3. optional union-stage attacks (multi-threat) run on the points still union-robust;
4. a sample is union-robust iff it is classified correctly AND robust under every threat model
   (:func:`union_flags`); every accuracy gets a 95% Wilson interval; the run becomes a
   :class:`RunRecord` plus :class:`SampleFlags`.

The model runs in eval mode with its parameters frozen (no weight gradients are ever computed);
only the attacks' input gradients are taken. Each attack call gets a seed derived from the run
seed and its (threat, stage, batch) position, so the same seed gives the same flags on CPU.

Crash safety: with a ``checkpoint_dir``, the progress (flags so far, the stage and batch reached, the
finished stages) is written atomically after every batch. A run that was killed resumes from the
last finished batch; since every batch is seeded by its position, the resumed run's flags and
accuracies are identical to an uninterrupted run's, and no sample is lost or counted twice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from . import provenance
from .acceleration import SearchOptions, search_model
from .attack import verified_success
from .checks import cheap_checks, summarize
from .data import EvalData
from .distributed import Dist
from .errors import DataError, RbxError, ResultsError
from .models import LoadedModel
from .progress import PointBar, RunClock, log as progress_log, stage_line
from .records import (MISCLASSIFIED, ROBUST, Accuracy, AttackStage, RunRecord, SampleFlags, ThreatResult,
                      atomic_write_bytes, remove_if_empty, write_run)
from .suites import AttackSpec, ThreatSpec, build_union
from .threat import ThreatModel

log = logging.getLogger(__name__)

#: Images the pre-evaluation checks look at.
CHECK_BATCH = 64
#: Seed key of the union stage (threat models use their index).
UNION_KEY = 1_000_003


def union_flags(clean_correct: np.ndarray, robust: np.ndarray) -> np.ndarray:
    """The union rule: correct on the clean input AND robust under every threat model.

    ``clean_correct`` [N] bool, ``robust`` [N, T] bool -> [N] bool. With T = 0 it is clean accuracy.
    """
    clean_correct = np.asarray(clean_correct, dtype=bool)
    robust = np.asarray(robust, dtype=bool)
    if robust.ndim == 1:
        robust = robust[:, None]
    return clean_correct & robust.all(axis=1)


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without CUDA is an error."""
    if isinstance(spec, torch.device):
        return spec
    text = str(spec).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(text)
    except RuntimeError:
        raise RbxError(f"unknown device '{spec}'; use auto, cpu or cuda[:N]") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RbxError("--device cuda was asked for but CUDA is not available; use --device cpu or auto")
    if dev.type not in ("cpu", "cuda"):
        raise RbxError(f"unsupported device '{spec}'; use auto, cpu or cuda[:N]")
    return dev


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed for one attack call, independent across (threat, stage, batch) keys."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *keys]).generate_state(2, dtype=np.uint32).view(np.uint64)[0] >> 1)


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and ``requires_grad=False`` on every parameter for the duration; restored after."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, r in flags:
            p.requires_grad_(r)
        model.train(was_training)


@dataclass
class Evaluation:
    """A finished run: the record (files not yet written) and the per-sample flags."""

    record: RunRecord
    flags: SampleFlags

    @property
    def stem(self) -> str:
        """File name stem for this run's record and flags."""
        started = self.record.provenance["started"].replace(":", "").replace("-", "")[:15]
        parts = [started, _slug(self.record.model["name"]), _slug(self.record.suite or "custom"), f"n{self.record.n}"]
        return "_".join(parts)

    def write(self, results_dir: Path) -> Path:
        """Write ``records/<stem>.{npz,json}`` atomically; return the JSON path."""
        return write_run(self.record, self.flags, results_dir, self.stem)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-")[:60] or "x"


def _batches(idx: np.ndarray, batch_size: int) -> list[np.ndarray]:
    return [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)]


# ---- progress and checkpoints ----------------------------------------------------------------------
@dataclass
class Progress:
    """Everything needed to continue a run: the state after the last finished batch.

    ``phase`` is the threat model being attacked (``T`` = the union stage, ``T + 1`` = done), ``stage``
    the stage within it, ``batch`` the next batch of ``stage_idx`` (the points the stage started with).
    ``acc`` accumulates the running stage's seconds, passes, loss curve and broken points.
    """

    clean_correct: np.ndarray
    still: np.ndarray
    broken_by: np.ndarray
    started: str
    checks: dict[str, Any] = field(default_factory=dict)
    done: list[list[dict]] = field(default_factory=list)
    union_done: list[dict] = field(default_factory=list)
    threat_seconds: list[float] = field(default_factory=list)
    phase: int = 0
    stage: int = 0
    batch: int = 0
    stage_idx: np.ndarray | None = None
    acc: dict[str, Any] = field(default_factory=dict)
    elapsed: float = 0.0

    _ARRAYS = ("clean_correct", "still", "broken_by", "stage_idx")

    def to_bytes(self, key: str) -> bytes:
        meta = {k: v for k, v in dataclasses.asdict(self).items() if k not in self._ARRAYS}
        arrays = {k: getattr(self, k) for k in self._ARRAYS if getattr(self, k) is not None}
        buf = io.BytesIO()
        np.savez(buf, meta=np.array(json.dumps({"key": key, **meta})), **arrays)
        return buf.getvalue()

    @classmethod
    def from_file(cls, path: Path, key: str) -> "Progress | None":
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                if meta.pop("key") != key:
                    return None
                arrays = {k: z[k] for k in cls._ARRAYS if k in z.files}
        except Exception as exc:
            raise ResultsError(f"cannot read checkpoint {path} ({exc}); delete it to start over") from None
        return cls(**arrays, **meta)


def evaluation_desc(model: LoadedModel, threats: Sequence[ThreatSpec], union: Sequence[AttackSpec], seed: int,
                    batch_size: int) -> dict[str, Any]:
    """The model, attacks and their parameters, seed and batching: what makes two evaluations comparable."""
    return {"model": [model.name, model.source, model.sha256, model.normalization],
            "threats": [[t.threat.label, [[a.name, a.params] for a in t.attacks]] for t in threats],
            "union": [[a.name, a.params] for a in union], "seed": seed, "batch_size": batch_size}


def run_key(model: LoadedModel, data: EvalData, threats: Sequence[ThreatSpec], union: Sequence[AttackSpec],
            seed: int, batch_size: int, device: torch.device, n_main: int | None = None,
            search: SearchOptions | None = None, world: int = 1) -> str:
    """What makes two runs the same run: model, data slice, attacks and their parameters, seed, batching, device."""
    desc = {**evaluation_desc(model, threats, union, seed, batch_size), "data": data.sha256(),
            "device": device.type, "n_main": n_main}
    if search is not None and search != SearchOptions():
        desc["search"] = search.describe()
    if world > 1:
        desc["world"] = world
    return hashlib.sha256(json.dumps(desc, sort_keys=True, default=str).encode()).hexdigest()[:20]


# ---- the run ---------------------------------------------------------------------------------------
def evaluate(
    model: LoadedModel,
    data: EvalData,
    threats: Sequence[ThreatSpec],
    *,
    union_attacks: Sequence[AttackSpec] = (),
    suite: str | None = None,
    seed: int = 0,
    batch_size: int = 256,
    device: str | torch.device = "auto",
    progress: bool = True,
    checkpoint_dir: Path | None = None,
    resume: bool | None = None,
    eps_sweep: Sequence[float] = (),
    search: SearchOptions = SearchOptions(),
    dist: Dist | None = None,
) -> Evaluation:
    """Run the checks, the clean pass, every threat model's cascade and the union stage.

    ``eps_sweep`` (factors such as 0.25, 0.5, 2) also runs every threat model's cascade at
    ``eps * factor`` on all clean-correct points; the results go to the record's ``sweeps`` (for
    robust-accuracy-vs-eps plots) and never into the union.

    ``union_attacks`` (multi-threat attacks such as ``union-worst``) run last, on the points still
    union-robust; their ``broken_by`` index continues after each threat model's own cascade.
    With ``checkpoint_dir``, progress is saved after every batch; ``resume`` None continues a matching
    checkpoint if there is one, True requires one, False starts over. Nothing else is written.

    ``search``: engine switches for the attacks' own passes (bf16, channels_last, compile); with any of
    them on, every success is re-verified with the float32 model. ``dist`` (default: the initialized
    ``torch.distributed`` group, if any): every stage's batches are dealt round-robin to the ranks and
    the hits exchanged after the stage, so every rank ends with the flags a single process would
    compute (the batches and their seeds are the same); checkpoints are then written by rank 0 at
    stage boundaries only.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise RbxError(f"--batch-size must be a positive integer, got {batch_size!r}")
    if not threats:
        raise RbxError("no threat models to evaluate: give --suite or at least one --threat")
    labels = [t.threat.label for t in threats]
    if len(set(labels)) != len(labels):
        raise RbxError(f"threat models repeat: {', '.join(labels)}")
    sweep_specs = _sweep_specs(threats, eps_sweep)
    n_main = len(threats)
    threats = list(threats) + sweep_specs
    cascades = [spec.build() for spec in threats]  # fails fast on bad names, params or norms
    union_stages = build_union(tuple(union_attacks))
    dev = resolve_device(device)
    dist = dist if dist is not None else Dist.current()
    for t in threats:
        if t.threat.covers_box(data.x[0].numel()):
            log.warning("%s: the ball contains the whole [0, 1] box, so every input can be turned into any "
                        "other and the robust accuracy is meaningless", t.threat.label)
    net = model.module.to(dev)
    ckpt_path = None
    if checkpoint_dir is not None:
        key = run_key(model, data, threats, union_attacks, seed, batch_size, dev, n_main, search, dist.world)
        ckpt_path = Path(checkpoint_dir) / f"{key}.npz"
    t0 = time.perf_counter()
    with frozen(net):
        prog = None
        if ckpt_path is not None and resume is not False and ckpt_path.is_file():
            prog = Progress.from_file(ckpt_path, ckpt_path.stem)
            if prog is not None:
                log.warning("resuming from %s (threat %d, stage %d, batch %d)", ckpt_path, prog.phase, prog.stage, prog.batch)
        if prog is None:
            if resume:
                raise RbxError(f"--resume: no checkpoint of this run in {checkpoint_dir}; run without --resume")
            clean = _clean_pass(net, data.x, data.y, batch_size, dev, dist)  # validates labels and logits first
            checks = _run_checks(net, data, dev)
            still = np.repeat(clean[:, None], len(threats), axis=1)
            broken_by = np.full((data.n, len(threats)), ROBUST, dtype=np.int16)
            broken_by[~clean] = MISCLASSIFIED
            prog = Progress(clean, still, broken_by, provenance.utc_now(), checks, done=[[] for _ in threats])
        save = _saver(ckpt_path if dist.is_main else None, prog, every_batch=dist.world == 1)
        snet = search_model(net, search, dev)
        verify = None if search.plain else net
        _run_all(snet, data, threats, n_main, cascades, union_stages, prog, seed, batch_size,
                 dev, progress and dist.is_main, save, t0, dist, verify)

    ev = _finish(model, data, threats, n_main, union_attacks, suite, seed, batch_size, dev, prog,
                 prog.elapsed + time.perf_counter() - t0, search, dist)
    if ckpt_path is not None and dist.is_main:
        ckpt_path.unlink(missing_ok=True)
        remove_if_empty(ckpt_path.parent)
    return ev


def _sweep_specs(threats: Sequence[ThreatSpec], factors: Sequence[float]) -> list[ThreatSpec]:
    """Each threat model's cascade at ``eps * factor`` (skipping radii the main threat models already cover)."""
    bad = [f for f in factors if not (isinstance(f, (int, float)) and f > 0 and np.isfinite(f))]
    if bad:
        raise RbxError(f"--eps-sweep factors must be positive numbers, got {bad}")
    main = {t.threat.label for t in threats}
    out, seen = [], set()
    for t in threats:
        for f in sorted(set(float(f) for f in factors)):
            tm = ThreatModel(t.threat.norm, t.threat.eps * f)
            if f != 1.0 and tm.label not in main and tm.label not in seen:
                seen.add(tm.label)
                out.append(ThreatSpec(tm, t.attacks))
    return out


def _saver(path: Path | None, prog: Progress, every_batch: bool = True):
    def save(elapsed: float) -> None:
        if path is None or (prog.batch and not every_batch):
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        snapshot = dataclasses.replace(prog, elapsed=elapsed)
        atomic_write_bytes(path, snapshot.to_bytes(path.stem))

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


def _verified(verify: nn.Module | None, x_adv: torch.Tensor, y: torch.Tensor, success: torch.Tensor) -> torch.Tensor:
    """The attack's success, or (search switches on) the float32 model's verdict on the same points."""
    if verify is None:
        return success
    with torch.no_grad():
        return verified_success(verify(x_adv), y)


def _run_all(net, data, threats, n_main, cascades, union_stages, prog: Progress, seed, batch_size, dev, progress, save, t0,
             dist: Dist, verify: nn.Module | None):
    n_threats = len(threats)  # the main threat models, then the eps-sweep ones
    threat_models = [t.threat for t in threats]
    main_models = threat_models[:n_main]
    base_elapsed = prog.elapsed
    clock = RunClock(n_threats + (1 if union_stages else 0), prog.elapsed)
    while prog.phase <= n_threats:
        union_phase = prog.phase == n_threats
        stages = union_stages if union_phase else cascades[prog.phase]
        if prog.stage >= len(stages):  # this threat model (or the union stage) is done
            if not union_phase:
                prog.threat_seconds.append(round(sum(s["seconds"] for s in prog.done[prog.phase]), 3))
            prog.phase, prog.stage, prog.batch, prog.stage_idx = prog.phase + 1, 0, 0, None
            save(base_elapsed + time.perf_counter() - t0)
            continue
        if prog.stage_idx is None:
            mask = prog.still[:, :n_main].all(1) if union_phase else prog.still[:, prog.phase]
            prog.stage_idx = np.flatnonzero(mask)
            prog.acc = _fresh_acc(n_main if union_phase else 0)
        if union_phase:
            label, attack = union_stages[prog.stage]
        else:
            label, attack = stages[prog.stage].label, stages[prog.stage].attack
        chunks = _batches(prog.stage_idx, batch_size)
        desc = f"union {label}" if union_phase else f"{threats[prog.phase].threat.label} {label}"
        starts = np.cumsum([0] + [len(c) for c in chunks])
        bar = PointBar(len(prog.stage_idx), desc, initial=int(starts[prog.batch]), show=progress)
        for bi in range(prog.batch, len(chunks)):
            chunk = chunks[bi]
            if not dist.mine(bi):  # another rank's batch
                prog.batch = bi + 1
                bar.done_through(int(starts[bi + 1]))
                continue
            t_batch = time.perf_counter()
            xb, yb = data.x[chunk].to(dev), data.y[chunk].to(dev)
            report = bar.batch(int(starts[bi]), len(chunk))
            if union_phase:
                res = attack(net, xb, yb, main_models, seed=derive_seed(seed, UNION_KEY, prog.stage, bi), progress=report)
                success = torch.stack([_verified(verify, xa, yb, s) for xa, s in zip(res.x_adv, res.success.unbind(1))], 1)
                success = success.cpu().numpy()
                hits = [[int(i) for i in chunk[success[:, ti]]] for ti in range(n_main)]
                for ti in range(n_main):
                    prog.acc["broken"][ti].extend(hits[ti])
            else:
                ti = prog.phase
                res = attack(net, xb, yb, threat_models[ti], seed=derive_seed(seed, ti, prog.stage, bi), progress=report)
                hits = [int(i) for i in chunk[_verified(verify, res.x_adv, yb, res.success).cpu().numpy()]]
                prog.acc["broken"].extend(hits)
                for s, (v, c) in enumerate(zip(res.loss_sum, res.loss_count)):
                    if s >= len(prog.acc["curve_sum"]):
                        prog.acc["curve_sum"].append(0.0)
                        prog.acc["curve_n"].append(0)
                    prog.acc["curve_sum"][s] += v
                    prog.acc["curve_n"][s] += c
            _apply_hits(prog, union_phase, n_main, cascades, hits)
            prog.acc["n_forward"] += res.n_forward
            prog.acc["n_backward"] += res.n_backward
            prog.acc["seconds"] += time.perf_counter() - t_batch
            prog.batch = bi + 1
            bar.done_through(int(starts[bi + 1]))
            save(base_elapsed + time.perf_counter() - t0)
        bar.close()
        if dist.world > 1:  # every rank gets every rank's hits and counts; the stage ends identically everywhere
            prog.acc = _merge_accs(dist.all_gather(prog.acc), n_main if union_phase else 0)
            _apply_hits(prog, union_phase, n_main, cascades, prog.acc["broken"])
        n_attacked = len(prog.stage_idx)
        if union_phase:
            robust_after = int(prog.still[prog.stage_idx, :n_main].all(1).sum()) if n_attacked else 0
        else:
            robust_after = int(prog.still[prog.stage_idx, prog.phase].sum()) if n_attacked else 0
        stage = AttackStage(
            attack=label, params=attack.params(), seconds=round(prog.acc["seconds"], 3), n_attacked=n_attacked,
            n_broken=n_attacked - robust_after, robust_after=robust_after, n_forward=prog.acc["n_forward"], n_backward=prog.acc["n_backward"],
            loss_curve=tuple(round(s / c, 6) for s, c in zip(prog.acc["curve_sum"], prog.acc["curve_n"])),
        )
        (prog.union_done if union_phase else prog.done[prog.phase]).append(dataclasses.asdict(stage))
        if dist.is_main:
            what = "union" if union_phase else threats[prog.phase].threat.label
            robust_now = int((prog.still[:, :n_main].all(1) if union_phase else prog.still[:, prog.phase]).sum())
            done = prog.phase + (prog.stage + 1) / len(stages)  # threat models (then the union stage) finished
            progress_log.info(stage_line(what, label, n_attacked, stage.n_broken, robust_now, data.n, stage.seconds,
                                         clock, done))
        prog.stage, prog.batch, prog.stage_idx, prog.acc = prog.stage + 1, 0, None, {}
        save(base_elapsed + time.perf_counter() - t0)


def _fresh_acc(n_union: int) -> dict[str, Any]:
    """A stage's running totals (``n_union`` > 0: the union stage, broken points per threat model)."""
    return {"seconds": 0.0, "n_forward": 0, "n_backward": 0, "curve_sum": [], "curve_n": [],
            "broken": [[] for _ in range(n_union)] if n_union else []}


def _apply_hits(prog: Progress, union_phase: bool, n_main: int, cascades, broken) -> None:
    """Mark the stage's broken points (idempotent: a point is only ever set from robust to broken here)."""
    if union_phase:
        for ti in range(n_main):
            hit = np.asarray(broken[ti], dtype=np.int64)
            prog.still[hit, ti] = False
            prog.broken_by[hit, ti] = len(cascades[ti]) + prog.stage
    else:
        hit = np.asarray(broken, dtype=np.int64)
        prog.still[hit, prog.phase] = False
        prog.broken_by[hit, prog.phase] = prog.stage


def _merge_accs(accs: list[dict[str, Any]], n_union: int = 0) -> dict[str, Any]:
    """One stage's totals from every rank's: passes and losses add up, seconds is the slowest rank's."""
    out = _fresh_acc(n_union)
    union = n_union > 0
    for a in accs:
        out["seconds"] = max(out["seconds"], a["seconds"])
        out["n_forward"] += a["n_forward"]
        out["n_backward"] += a["n_backward"]
        for s, (v, c) in enumerate(zip(a["curve_sum"], a["curve_n"])):
            if s >= len(out["curve_sum"]):
                out["curve_sum"].append(0.0)
                out["curve_n"].append(0)
            out["curve_sum"][s] += v
            out["curve_n"][s] += c
        if union:
            for ti, b in enumerate(a["broken"]):
                out["broken"][ti].extend(b)
        else:
            out["broken"].extend(a["broken"])
    out["broken"] = [sorted(b) for b in out["broken"]] if union else sorted(out["broken"])
    return out


def _finish(model, data, threats, n_main, union_attacks, suite, seed, batch_size, dev, prog: Progress,
            wall: float, search: SearchOptions = SearchOptions(), dist: Dist = Dist()) -> Evaluation:
    results = [
        ThreatResult(spec.threat.label, spec.threat.norm, spec.threat.eps, Accuracy.from_flags(prog.still[:, ti]),
                     tuple(AttackStage.from_dict(s) for s in prog.done[ti]), prog.threat_seconds[ti])
        for ti, spec in enumerate(threats)]
    threat_results, sweep_results = tuple(results[:n_main]), results[n_main:]
    threats = threats[:n_main]
    robust = prog.still[:, :n_main]
    labels = [t.threat.label for t in threats]
    union = union_flags(prog.clean_correct, robust)
    flags = SampleFlags(np.arange(data.n), data.y.numpy(), prog.clean_correct, robust, prog.broken_by[:, :n_main],
                        tuple(labels), sweep_robust=prog.still[:, n_main:],
                        sweep_threats=tuple(r.threat for r in sweep_results))
    record = RunRecord(
        run_id="",
        suite=suite,
        model=model.describe(),
        dataset=data.describe(),
        n=data.n,
        clean=Accuracy.from_flags(prog.clean_correct),
        threats=threat_results,
        union=Accuracy.from_flags(union),
        config={"seed": seed, "batch_size": batch_size, "device": str(dev),
                "threats": [{"threat": s.threat.label, "attacks": [a.label for a in s.attacks]} for s in threats],
                "union_attacks": [a.label for a in union_attacks], "search": search.describe(),
                **({"distributed": dist.describe()} if dist.world > 1 else {})},
        provenance={**provenance.collect(dev, seed, prog.started, wall)},
        checks=prog.checks,
        union_attacks=tuple(AttackStage.from_dict(s) for s in prog.union_done),
        sweeps=_sweeps(threat_results, sweep_results),
    )
    ev = Evaluation(record, flags)
    ev.record = dataclasses.replace(record, run_id=ev.stem)
    return ev


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
