"""The benchmark runner: clean pass, per-threat attack cascades, the union rule, the record.

For a model, a dataset slice and threat models (each with an ordered attack list):

1. one clean pass classifies every sample;
2. per threat model, the attacks run as a cascade (AutoAttack-style): each attack only sees the
   points still robust, and a point broken by attack j is marked ``broken_by = j``;
3. a sample is union-robust iff it is classified correctly AND robust under every threat model
   (:func:`union_flags`);
4. every accuracy gets a 95% Wilson interval, and the run becomes a :class:`RunRecord` plus
   :class:`SampleFlags`.

The model runs in eval mode with its parameters frozen (no weight gradients are ever computed);
only the attacks' input gradients are taken. Each attack call gets a seed derived from the run
seed and its (threat, attack, batch) position, so the same seed gives the same flags on CPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from . import provenance
from .data import EvalData
from .errors import DataError, RbxError
from .models import LoadedModel
from .records import MISCLASSIFIED, ROBUST, Accuracy, AttackStage, RunRecord, SampleFlags, ThreatResult, write_run
from .suites import AttackSpec, ThreatSpec, build_union
from .threat import ThreatModel

log = logging.getLogger(__name__)


def union_flags(clean_correct: np.ndarray, robust: np.ndarray) -> np.ndarray:
    """The union rule: correct on the clean input AND robust under every threat model.

    ``clean_correct`` [N] bool, ``robust`` [N, T] bool -> [N] bool. With T = 0 it is clean accuracy.
    """
    clean_correct = np.asarray(clean_correct, dtype=bool)
    robust = np.asarray(robust, dtype=bool).reshape(clean_correct.shape[0], -1)
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
    """A 63-bit seed for one attack call, independent across (threat, attack, batch) keys."""
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


def _batches(idx: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    return list(idx.split(batch_size)) if idx.numel() else []


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
) -> Evaluation:
    """Run the clean pass, every threat model's cascade and the union stage; return record and flags.

    ``union_attacks`` (multi-threat attacks such as ``union-worst``) run last, on the points still
    union-robust, and break points per threat model: their ``broken_by`` index continues after that
    threat model's own cascade. Nothing is written.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise RbxError(f"--batch-size must be a positive integer, got {batch_size!r}")
    if not threats:
        raise RbxError("no threat models to evaluate: give --suite or at least one --threat")
    labels = [t.threat.label for t in threats]
    if len(set(labels)) != len(labels):
        raise RbxError(f"threat models repeat: {', '.join(labels)}")
    cascades = [spec.build() for spec in threats]  # fails fast on bad names, params or norms
    union_stages = build_union(tuple(union_attacks))
    dev = resolve_device(device)
    started, t0 = provenance.utc_now(), time.perf_counter()
    net = model.module.to(dev)
    x_all, y_all = data.x, data.y
    n, t_count = data.n, len(threats)

    with frozen(net):
        clean_correct = _clean_pass(net, x_all, y_all, batch_size, dev, data)
        still = torch.from_numpy(np.repeat(clean_correct[:, None], t_count, axis=1))  # [N, T] robust so far
        broken_by = np.full((n, t_count), ROBUST, dtype=np.int16)
        broken_by[~clean_correct] = MISCLASSIFIED
        per_threat: list[list[AttackStage]] = []
        seconds: list[float] = []
        for ti, (spec, stages) in enumerate(zip(threats, cascades)):
            done, t_threat = [], time.perf_counter()
            for ai, stage in enumerate(stages):
                col = still[:, ti]
                res = _run_stage(net, stage.attack, stage.label, x_all, y_all, col, spec.threat,
                                 lambda bi, ti=ti, ai=ai: derive_seed(seed, ti, ai, bi), batch_size, dev, progress)
                still[:, ti] = col
                broken_by[res.pop("broken"), ti] = ai
                done.append(AttackStage(attack=stage.label, params=stage.attack.params(), **res))
            per_threat.append(done)
            seconds.append(time.perf_counter() - t_threat)
            log.info("%s: robust %.2f%%", spec.threat.label, 100 * still[:, ti].float().mean().item())
        union_done = []
        for uj, (label, attack) in enumerate(union_stages):
            res, hits = _run_union_stage(net, attack, label, x_all, y_all, still, [t.threat for t in threats],
                                         lambda bi, uj=uj: derive_seed(seed, t_count, uj, bi), batch_size, dev, progress)
            for ti in range(t_count):
                broken_by[hits[ti], ti] = len(cascades[ti]) + uj
            union_done.append(AttackStage(attack=label, params=attack.params(), **res))

    robust = still.numpy()
    threat_results = tuple(
        ThreatResult(spec.threat.label, spec.threat.norm, spec.threat.eps, Accuracy.from_flags(robust[:, ti]),
                     tuple(per_threat[ti]), round(seconds[ti], 3))
        for ti, spec in enumerate(threats))
    union = union_flags(clean_correct, robust)
    flags = SampleFlags(np.arange(n), y_all.numpy(), clean_correct, robust, broken_by, tuple(labels))
    record = RunRecord(
        run_id="",
        suite=suite,
        model=model.describe(),
        dataset=data.describe(),
        n=n,
        clean=Accuracy.from_flags(clean_correct),
        threats=threat_results,
        union=Accuracy.from_flags(union),
        config={"seed": seed, "batch_size": batch_size, "device": str(dev),
                "threats": [{"threat": s.threat.label, "attacks": [a.label for a in s.attacks]} for s in threats],
                "union_attacks": [a.label for a in union_attacks]},
        provenance=provenance.collect(dev, seed, started, time.perf_counter() - t0),
        union_attacks=tuple(union_done),
    )
    ev = Evaluation(record, flags)
    ev.record = _with_run_id(record, ev.stem)
    return ev


def _with_run_id(record: RunRecord, stem: str) -> RunRecord:
    return dataclasses.replace(record, run_id=stem)


@torch.no_grad()
def _clean_pass(net: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, dev: torch.device,
                data: EvalData) -> np.ndarray:
    correct = np.zeros(x.shape[0], dtype=bool)
    for chunk in _batches(torch.arange(x.shape[0]), batch_size):
        logits = net(x[chunk].to(dev))
        if logits.ndim != 2:
            raise RbxError(f"the model must return logits [N, K], got shape {tuple(logits.shape)}")
        if not torch.isfinite(logits).all():
            raise RbxError("the model returned NaN or inf logits on clean inputs; check the checkpoint and its input scaling")
        k = logits.shape[1]
        yb = y[chunk]
        if int(yb.max()) >= k:
            raise DataError(f"label {int(yb.max())} is out of range for a model with {k} outputs; is this the right dataset?")
        correct[chunk.numpy()] = (logits.argmax(1).cpu() == yb).numpy()
    return correct


def _run_stage(net, attack, label: str, x_all, y_all, still: torch.Tensor, threat: ThreatModel, seed_for,
               batch_size: int, dev: torch.device, progress: bool) -> dict:
    """One attack over the points ``still`` robust (a [N] bool tensor, updated in place)."""
    idx = still.nonzero().squeeze(1)
    n_attacked, t0 = int(idx.numel()), time.perf_counter()
    n_fwd = n_bwd = 0
    curve_sum: list[float] = []
    curve_n: list[int] = []
    broken: list[np.ndarray] = []
    bar = tqdm(total=n_attacked, desc=f"{threat.label} {label}", unit="pt", leave=False, disable=not progress,
               dynamic_ncols=True)
    remaining = n_attacked
    for bi, chunk in enumerate(_batches(idx, batch_size)):
        res = attack(net, x_all[chunk].to(dev), y_all[chunk].to(dev), threat, seed=seed_for(bi))
        hit = chunk[res.success.cpu()]
        still[hit] = False
        broken.append(hit.numpy())
        n_fwd += res.n_forward
        n_bwd += res.n_backward
        for s, (v, c) in enumerate(zip(res.loss_sum, res.loss_count)):
            if s >= len(curve_sum):
                curve_sum.append(0.0)
                curve_n.append(0)
            curve_sum[s] += v
            curve_n[s] += c
        remaining -= int(hit.numel())
        bar.update(len(chunk))
        bar.set_postfix(robust=remaining)
    bar.close()
    return {
        "seconds": round(time.perf_counter() - t0, 3),
        "n_attacked": n_attacked,
        "n_broken": n_attacked - remaining,
        "robust_after": int(still.sum()),
        "n_forward": n_fwd,
        "n_backward": n_bwd,
        "loss_curve": tuple(round(s / c, 6) for s, c in zip(curve_sum, curve_n)),
        "broken": np.concatenate(broken) if broken else np.zeros(0, dtype=np.int64),
    }


def _run_union_stage(net, attack, label: str, x_all, y_all, still: torch.Tensor, threats, seed_for, batch_size: int,
                     dev: torch.device, progress: bool) -> tuple[dict, list[np.ndarray]]:
    """A multi-threat attack over the points robust under every threat model; updates ``still`` [N, T]."""
    idx = still.all(1).nonzero().squeeze(1)
    n_attacked, t0 = int(idx.numel()), time.perf_counter()
    n_fwd = n_bwd = 0
    hits: list[list[np.ndarray]] = [[] for _ in threats]
    bar = tqdm(total=n_attacked, desc=f"union {label}", unit="pt", leave=False, disable=not progress, dynamic_ncols=True)
    for bi, chunk in enumerate(_batches(idx, batch_size)):
        res = attack(net, x_all[chunk].to(dev), y_all[chunk].to(dev), threats, seed=seed_for(bi))
        success = res.success.cpu()
        for ti in range(len(threats)):
            hit = chunk[success[:, ti]]
            still[hit, ti] = False
            hits[ti].append(hit.numpy())
        n_fwd += res.n_forward
        n_bwd += res.n_backward
        bar.update(len(chunk))
    bar.close()
    robust_after = int(still[idx].all(1).sum()) if n_attacked else 0
    return ({
        "seconds": round(time.perf_counter() - t0, 3),
        "n_attacked": n_attacked,
        "n_broken": n_attacked - robust_after,
        "robust_after": robust_after,
        "n_forward": n_fwd,
        "n_backward": n_bwd,
    }, [np.concatenate(h) if h else np.zeros(0, dtype=np.int64) for h in hits])
