"""Walking a compiled stage plan batch by batch (:class:`Executor`): each stage attacks the points still
robust in its columns, hits are verified (and, for a randomized model, judged by majority over draws),
the evaluation state is updated and saved, and progress is reported. :func:`robustbench_ext.evaluation.runner.execute`
builds the plan and the state and hands them here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..attack.base import SampleSeeds, verified_success
from ..data.datasets import EvalData
from ..runtime import stream_seed
from .distributed import Dist
from .majority import Draws, batch_seed, majority_min_norm, majority_wrong
from ..errors import RbxError
from .state import EvaluationState, StageTotals
from .request import RunRequest
from .plan import Stage, RunPlan, stage_names
from ..progress import PointBar, RunClock, log as progress_log, stage_line
from ..records.schema import StageResult

log = logging.getLogger(__name__)


def _batches(idx: np.ndarray, batch_size: int) -> list[np.ndarray]:
    return [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)]


@dataclass
class Executor:
    """Walks a :class:`RunPlan` with one index, batch by batch, saving the state after each batch.

    Everything about the run itself (seed, batch size, progress) is read from its ``request``; the rest is
    what the runner prepared: the model the attacks search on, the float32 model that re-verifies successes
    when the search model differs, the images, the device, how to save the state and where it lives.
    """

    plan: RunPlan
    state: EvaluationState
    net: nn.Module  # the model the attacks search on (maybe bf16 / channels_last / compiled)
    verify: nn.Module | None  # the float32 model that re-verifies every success, when the search model differs
    data: EvalData
    request: RunRequest
    dev: torch.device
    save: Any
    dist: Dist
    skip: tuple[str, ...] = ()
    state_path: Path | None = None
    draws: Draws | None = None  # a randomized model: every verdict by majority over draws
    captured: dict[int, np.ndarray] | None = None  # --curve: per stage, the minimal norms it reported (NaN: not seen)
    batch_override: int | None = None  # escalation: batch-independent evaluation (one image at a time)
    audit_size: int = 0  # an audit stage's sample size per threat model

    @property
    def seed(self) -> int:
        return self.request.seed

    @property
    def batch_size(self) -> int:
        return self.batch_override or self.request.batch_size

    @property
    def show_bar(self) -> bool:
        return self.request.show_progress(self.dist.is_main)

    def walk(self) -> None:
        state, plan = self.state, self.plan
        t0, base = time.perf_counter(), state.elapsed
        clock = RunClock(len(plan.threats) + (1 if any(s.kind == "union" for s in plan.stages) else 0), state.elapsed)
        while state.stage < len(plan.stages):
            stage = plan.stages[state.stage]
            if state.stage_points is None:
                state.stage_points = np.flatnonzero(state.robust[:, list(stage.pool_columns)].all(1))
                state.totals = StageTotals.fresh(len(stage.columns))
                if stage.kind == "audit":  # a seeded random sample of the points still robust
                    state.totals.population = int(len(state.stage_points))
                    state.stage_points = self._audit_sample(stage, state.stage_points)
            name = stage_names(plan)[state.stage]
            if name in self.skip:
                result = self._close_stage(stage, skipped=True)
            else:
                try:
                    self._run_stage(stage, lambda: self.save(base + time.perf_counter() - t0))
                except KeyboardInterrupt:
                    raise
                except Exception as exc:
                    raise self._failed(name, exc) from exc
                result = self._close_stage(stage)
            if self.dist.is_main:
                robust_now = int(state.robust[:, list(stage.pool_columns)].all(1).sum())
                progress_log.info(stage_line(stage.what, stage.label, result.n_attacked, result.n_broken, robust_now,
                                             self.data.n, result.seconds, clock, self._units_done(state.stage)))
            state.stage, state.batch, state.stage_points, state.totals = state.stage + 1, 0, None, None
            self.save(base + time.perf_counter() - t0)

    def _audit_sample(self, stage: Stage, robust: np.ndarray) -> np.ndarray:
        """``request.audit`` of the ``robust`` points (all if fewer), drawn with the run's audit seed stream."""
        k = min(int(self.audit_size), len(robust))
        rng = np.random.default_rng(stream_seed(self.seed, "audit", stage.columns[0]))
        return np.sort(rng.choice(robust, size=k, replace=False)) if k < len(robust) else robust

    def _failed(self, name: str, exc: Exception) -> RbxError:
        """The error for a stage that failed: which stage, that the finished ones are kept, how to go on."""
        i, n = self.state.stage, len(self.plan.stages)
        cause = str(exc) if isinstance(exc, RbxError) else f"internal error {type(exc).__name__}: {str(exc).strip()[:200]}"
        kept = (f"the {i} finished stages are kept in {self.state_path}: fix the cause and run the same command "
                f"again to resume, or finish without this stage with --skip-stage '{name}'"
                if self.state_path is not None else "nothing was saved (no state folder)")
        err = RbxError(f"stage {i + 1} of {n} ({name}) failed: {cause.splitlines()[0] if cause else ''}; {kept}")
        err.exit_code = exc.exit_code if isinstance(exc, RbxError) else 1
        return err

    def _units_done(self, index: int) -> float:
        """Threat models (then the union stage) finished once stage ``index`` is: for the ETA."""
        stage = self.plan.stages[index]
        if stage.kind == "union":
            return len(self.plan.threats) + 1
        own = self.plan.column_stages(stage.columns[0])
        return stage.columns[0] + (own.index(index) + 1) / len(own)

    def _run_stage(self, stage: Stage, save) -> None:
        state = self.state
        chunks = _batches(state.stage_points, self.batch_size)
        starts = np.cumsum([0] + [len(c) for c in chunks])
        bar = PointBar(len(state.stage_points), f"{stage.what} {stage.label}", initial=int(starts[state.batch]),
                       show=self.show_bar)
        for bi in range(state.batch, len(chunks)):
            chunk = chunks[bi]
            if self.dist.mine(bi):
                t_batch = time.perf_counter()
                hits, res = self._attack(stage, chunk, bar.batch(int(starts[bi]), len(chunk)), bi)
                for c, h in enumerate(hits):
                    state.totals.broken[c].extend(h)
                self._mark(stage, hits)
                state.totals.n_forward += res.n_forward
                state.totals.n_backward += res.n_backward
                state.totals.n_nonfinite += res.n_nonfinite
                state.totals.seconds += time.perf_counter() - t_batch
            state.batch = bi + 1
            bar.done_through(int(starts[bi + 1]))
            save()
        bar.close()
        if self.dist.world > 1:  # every rank gets every rank's hits and counts; the stage ends identically everywhere
            state.totals = StageTotals.merge(self.dist.all_gather(state.totals))
            self._mark(stage, state.totals.broken)

    def _attack(self, stage: Stage, chunk: np.ndarray, report, bi: int) -> tuple[list[list[int]], Any]:
        """Attack one batch; return the points broken per column (verified by the float32 model) and the result."""
        xb, yb = self.data.x[chunk].to(self.dev), self.data.y[chunk].to(self.dev)
        seed = stream_seed(self.seed, "stage", *stage.seed_key, bi)
        # Random starts are seeded per sample (by its dataset index), not per batch: a sample's outcome does
        # not depend on which points share its batch, so a union-only run's smaller pools give the same flags.
        samples = SampleSeeds(stream_seed(self.seed, "stage", *stage.seed_key), torch.as_tensor(chunk, dtype=torch.int64))
        if stage.kind == "union":
            threats = [self.plan.threats[c].threat for c in stage.columns]
            res = stage.attack(self.net, xb, yb, threats, seed=seed, progress=report, samples=samples)
            success = torch.stack([self._majority(xa, yb, self._verified(xa, yb, s), stage, bi, c)
                                   for c, (xa, s) in enumerate(zip(res.x_adv, res.success.unbind(1)))], 1)
            success = success.cpu().numpy()
            return [[int(i) for i in chunk[success[:, c]]] for c in range(len(stage.columns))], res
        res = stage.attack(self.net, xb, yb, stage.threat, seed=seed, progress=report, samples=samples)
        self.state.totals.add_curve(res.loss_sum, res.loss_count)
        if self.captured is not None and res.min_norm is not None:
            norms = res.min_norm
            if self.draws is not None:  # the curve's points judged like the flags: by majority, with this stage's draws
                norms = majority_min_norm(self.verify if self.verify is not None else self.net, xb, yb,
                                          res.min_norm_points, stage.threat, self.draws.r,
                                          batch_seed(self.draws, 1, *stage.seed_key, bi, 0))
            self.captured.setdefault(self.state.stage, np.full(self.data.n, np.nan))[chunk] = norms.cpu().numpy()
        success = self._majority(res.x_adv, yb, self._verified(res.x_adv, yb, res.success), stage, bi, 0)
        return [[int(i) for i in chunk[success.cpu().numpy()]]], res

    def _majority(self, x_adv: Tensor, y: Tensor, success: Tensor, stage: Stage, bi: int, column: int) -> Tensor:
        """``success`` for a deterministic model; for a randomized one, the majority verdict over the run's draws
        on every returned point (a single pass's lucky successes are dropped; points one pass missed but most
        draws misclassify count as broken)."""
        if self.draws is None:
            return success
        net = self.verify if self.verify is not None else self.net
        return majority_wrong(net, x_adv, y, self.draws.r, batch_seed(self.draws, 1, *stage.seed_key, bi, column))

    def _verified(self, x_adv: Tensor, y: Tensor, success: Tensor) -> Tensor:
        """The attack's success, or (search switches on) the float32 model's verdict on the same points."""
        if self.verify is None:
            return success
        with torch.no_grad():
            return verified_success(self.verify(x_adv), y)

    def _mark(self, stage: Stage, broken: Sequence[Sequence[int]]) -> None:
        """Mark the stage's broken points (idempotent: a point only ever goes from robust to broken here)."""
        for c, mark, hit in zip(stage.columns, stage.marks, broken):
            hit = np.asarray(hit, dtype=np.int64)
            self.state.robust[hit, c] = False
            self.state.broken_by[hit, c] = mark

    def _close_stage(self, stage: Stage, skipped: bool = False) -> StageResult:
        state, totals = self.state, self.state.totals
        n_attacked = len(state.stage_points)
        robust_after = int(state.robust[state.stage_points][:, list(stage.columns)].all(1).sum()) if n_attacked else 0
        if totals.n_nonfinite:
            log.warning("%s %s: %d non-finite input-gradient entries (NaN or inf) were zeroed: the model's gradient is "
                        "not finite everywhere (e.g. sqrt or log at 0); the count is in the record",
                        stage.what, stage.label, totals.n_nonfinite)
        result = StageResult(attack=stage.label, params=stage.attack.params(), seconds=round(totals.seconds, 3),
                             n_attacked=n_attacked, n_broken=n_attacked - robust_after, robust_after=robust_after,
                             n_forward=totals.n_forward, n_backward=totals.n_backward, loss_curve=totals.curve,
                             nonfinite_grads=totals.n_nonfinite, skipped=skipped,
                             queries=totals.n_forward if getattr(stage.attack, "black_box", False) else None,
                             population=totals.population)
        state.results.append(dataclasses.asdict(result))
        return result
