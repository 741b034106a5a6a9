"""Common corruptions as a (non-adversarial) threat model: accuracy per corruption and severity, and their mean.

RobustBench's "corruptions" threat model (Hendrycks & Dietterich, ICLR 2019; Croce et al. 2021) scores a
model by its accuracy on the test images under each of 15 common corruptions at 5 severities, and ranks
by the mean of those 75 accuracies. :func:`evaluate_corruptions` measures exactly that (or any chosen
subset), on a :class:`~robustbench_ext.data.corrupted.CorruptionSet` (published CIFAR-10-C / CIFAR-100-C
files, or corruptions generated with imagecorruptions; see :mod:`robustbench_ext.data.corrupted`):

1. one clean pass over the base images (clean accuracy; the labels and logits are validated here);
2. per corruption, per severity: the corrupted images (loaded or generated, one set at a time), one
   forward pass, the per-sample correctness; one progress line per corruption;
3. :func:`robustbench_ext.records.schema.build_record` makes the record, with the optional ``corruptions`` block
   (accuracy with a Wilson interval per cell, the mean per corruption and over all, the source) and the
   per-sample correctness in the flags npz (``corruption_correct``).

Nothing here is random except the generation of corrupted images, which the corruption set seeds per image.
"""

from __future__ import annotations

import logging
import time
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..records import provenance
from ..data.corrupted import CORRUPTIONS, SEVERITIES, CorruptionSet, check_selection, generated_from
from ..data.datasets import EvalData, as_eval_data, check_labels_fit
from ..runtime import check_batch_size, frozen, resolve_device
from ..errors import DataError, RbxError
from ..models.loading import LoadedModel
from ..progress import PointBar, RunClock, fmt_seconds, log as progress_log
from ..records.schema import RunSettings, SampleFlags, build_record
from .result import Evaluation
from ..registry import DATASETS
from .request import RunRequest
from .runner import load_requested_model
from .suites import Suite

log = logging.getLogger(__name__)


#: A finished corruption run: the same object as an attack evaluation's (record + flags, ``write``).
CorruptionEvaluation = Evaluation


def is_corruption_dataset(spec: str) -> bool:
    """Whether the dataset ``spec`` names a corruption set (``cifar10-c``, ``cifar100-c``)."""
    return bool(DATASETS.get(spec).tags.get("corruptions"))


def corruption_set(spec: str, n_examples: int | None = None, *, seed: int = 0, base: str | None = None) -> CorruptionSet:
    """Create the corruption set ``spec`` names; ``seed`` and ``base`` fill in what the spec does not set itself."""
    parsed = DATASETS.parse(spec)
    if not is_corruption_dataset(spec):
        known = ", ".join(e.name for e in DATASETS.entries() if e.tags.get("corruptions"))
        raise DataError(f"dataset '{spec}' is not a set of common corruptions; use one of {known}, "
                        f"or give it as base= (e.g. cifar10-c:base={spec})")
    settings = {"seed": seed} if "seed" not in parsed.params else {}
    if base is not None:
        if "base" in parsed.params:
            raise DataError(f"dataset '{spec}' already names its base images; do not give another")
        settings["base"] = base
    return DATASETS.create(parsed, n_examples=n_examples, **settings)


def evaluate_corruptions(
    model: LoadedModel | nn.Module | str,
    data_c: CorruptionSet | str | EvalData | tuple[Tensor, Tensor] = "cifar10-c",
    *,
    corruptions: Sequence[str] | None = None,
    severities: Sequence[int] | None = None,
    suite: str | None = None,
    normalize: str | None = None,
    n_examples: int | None = None,
    seed: int = 0,
    batch_size: int = 256,
    device: str | torch.device = "auto",
    progress: bool | None = None,
) -> CorruptionEvaluation:
    """Accuracy of ``model`` on ``data_c`` under each chosen corruption and severity, and their means.

    - ``model``: as :func:`robustbench_ext.evaluation.runner.evaluate` takes it (``nn.Module`` on ``[N, C, H, W]`` in
      [0, 1] returning logits, a :class:`LoadedModel`, or a model spec);
    - ``data_c``: a :class:`CorruptionSet` or a corruption dataset spec (``cifar10-c``,
      ``cifar10-c:base=cifar10-1k,source=generated``), of whose base images the first ``n_examples`` are used;
      ``seed`` is the generation seed unless the spec sets its own; or images of one's own (an
      :class:`EvalData`, a pair of tensors), whose corruptions are then generated with ``seed``;
    - ``corruptions`` / ``severities``: the subset to evaluate (default: the 15 x 5 of RobustBench, whose
      mean is then its corruptions accuracy; the record says whether the set was complete).

    The record has no threat models (its ``union`` is the clean accuracy) and a ``corruptions`` block.
    """
    check_batch_size(batch_size)
    chosen, levels = check_selection(corruptions, severities)
    if isinstance(data_c, str):
        data_c = corruption_set(data_c, n_examples, seed=seed)
    elif isinstance(data_c, CorruptionSet):
        data_c = data_c.first(n_examples)
    else:  # images of one's own (an EvalData or tensors): their corruptions are generated
        data_c = generated_from(as_eval_data(data_c, n_examples), seed)
    selection = Suite(name=suite or "", dataset=data_c.name, threats=(), kind="corruptions", corruptions=tuple(chosen),
                      severities=tuple(levels))
    return run_corruptions(RunRequest(model=model, data=data_c, suite=selection, normalize=normalize, seed=seed,
                                      batch_size=batch_size, device=device, progress=progress))


def run_corruptions(request: RunRequest) -> CorruptionEvaluation:
    """A ``corruptions`` request (``rbx run --suite cifar10-corruptions``): the suite's corruptions and severities
    on ``request.data`` -- a corruption dataset, plain images to generate the suite's corruptions from (a
    dataset spec such as ``cifar10-1k``), or a ready :class:`CorruptionSet` -- else on the suite's dataset."""
    suite = request.planned.corruption_suite
    n, seed = request.n_examples, request.seed
    data = request.data
    if data is None:
        data_c = corruption_set(suite.dataset, n, seed=seed)
    elif isinstance(data, str):
        data_c = (corruption_set(data, n, seed=seed) if is_corruption_dataset(data)
                  else corruption_set(suite.dataset, n, seed=seed, base=data))
    elif isinstance(data, CorruptionSet):
        data_c = data.first(n)
    else:
        data_c = generated_from(as_eval_data(data, n), seed)
    chosen, levels = check_selection(suite.corruptions or None, suite.severities or None)
    loaded = load_requested_model(request)
    batch_size, progress = request.batch_size, request.show_progress()
    dev = resolve_device(request.device)
    net = loaded.module.to(dev)
    clean_data = data_c.clean
    n = clean_data.n
    keys = [f"{c}/{s}" for c in chosen for s in levels]
    correct = np.zeros((n, len(keys)), dtype=bool)
    seconds = [0.0] * len(keys)
    started, t0 = provenance.utc_now(), time.perf_counter()
    clock = RunClock(len(chosen))
    with frozen(net):
        clean = _correct(net, clean_data.x, clean_data.y, batch_size, dev)
        progress_log.info("clean: accuracy %d/%d (%.1f%%) in %s", int(clean.sum()), n, 100.0 * clean.mean() if n else 0.0,
                          fmt_seconds(time.perf_counter() - t0))
        for ci, c in enumerate(chosen):
            bar = PointBar(n * len(levels), f"corruption {c}", show=progress)
            t_c = time.perf_counter()
            for si, s in enumerate(levels):
                col = ci * len(levels) + si
                t_cell = time.perf_counter()
                correct[:, col] = _correct(net, data_c.images(c, s), clean_data.y, batch_size, dev)
                seconds[col] = time.perf_counter() - t_cell
                bar.done_through(n * (si + 1))
            bar.close()
            progress_log.info(corruption_line(c, levels, correct[:, ci * len(levels):(ci + 1) * len(levels)],
                                              time.perf_counter() - t_c, clock, ci + 1))
    wall = time.perf_counter() - t0
    flags = SampleFlags(np.arange(n), clean_data.y.numpy(), clean, np.zeros((n, 0), dtype=bool),
                        np.zeros((n, 0), dtype=np.int16), (), corruption_correct=correct, corruption_keys=tuple(keys))
    settings = RunSettings(suite=suite.name or None, threats=(), seed=seed, batch_size=batch_size, device=str(dev),
                           extra={"corruptions": {"dataset": data_c.name, "corruptions": list(chosen),
                                                  "severities": list(levels)}})
    dataset = {**clean_data.describe(), "name": data_c.name, "source": data_c.description(),
               "sha256": data_c.sha256(chosen, levels), "clean_sha256": clean_data.sha256()}
    complete = set(chosen) == set(CORRUPTIONS) and set(levels) == set(SEVERITIES)
    record = build_record(settings, model=loaded.describe(), dataset=dataset, flags=flags, threats=(),
                          provenance=provenance.collect(dev, seed, started, wall), corruption_source=data_c.source(chosen),
                          corruption_seconds=seconds, corruptions_complete=complete)
    return CorruptionEvaluation(record, flags)


def corruption_line(corruption: str, severities: Sequence[int], correct: np.ndarray, seconds: float,
                    clock: RunClock | None = None, done: float = 0.0) -> str:
    """The progress line printed when one corruption (all its severities) is done; ``correct`` [N, S] bool."""
    n = correct.shape[0]
    per = ", ".join(f"s{s} {100.0 * correct[:, i].mean() if n else 0.0:.1f}%" for i, s in enumerate(severities))
    line = (f"corruption {corruption}: accuracy {per}; mean {100.0 * correct.mean() if correct.size else 0.0:.1f}% "
            f"on {n} images in {fmt_seconds(seconds)}")
    return line + (f"; {clock.summary(done)}" if clock is not None else "")


@torch.no_grad()
def _correct(net: nn.Module, x: Tensor, y: Tensor, batch_size: int, dev: torch.device) -> np.ndarray:
    """Per-sample correctness ``[N]`` bool of ``net`` on ``x``; logits and labels are checked on the way."""
    out = np.zeros(x.shape[0], dtype=bool)
    for i in range(0, x.shape[0], batch_size):
        logits = net(x[i:i + batch_size].to(dev))
        if logits.ndim != 2:
            raise RbxError(f"the model must return logits [N, K], got shape {tuple(logits.shape)}")
        if not torch.isfinite(logits).all():
            raise RbxError("the model returned NaN or inf logits; check the checkpoint and its input scaling")
        yb = y[i:i + batch_size]
        if len(yb) and int(yb.max()) >= logits.shape[1]:
            check_labels_fit(y, logits.shape[1])  # (the whole label set: the advice follows what the labels look like)
        out[i:i + batch_size] = (logits.argmax(1).cpu() == yb).numpy()
    return out
