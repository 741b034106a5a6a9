"""What users call: :func:`evaluate` (``rbx run``), :func:`check` (``rbx check``) and :func:`run`, the one entry
point every kind of run goes through.

Each builds one :class:`~robustbench_ext.evaluation.request.RunRequest` (validated in its constructor),
plans it once and hands it to the engine: the plain run (:func:`~robustbench_ext.evaluation.runner.execute`),
the corruption evaluation or the shard stream. ``rbx run`` and ``rbx check`` build the same request from
their options, so every command line has a Python call that gives the same record.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from ..attack.search import SearchOptions
from ..attack.threat import ThreatModel
from ..data.datasets import EvalData
from ..errors import RbxError
from ..models.loading import LoadedModel
from ..progress import RunClock, fmt_seconds, log as progress_log
from ..runtime import frozen, outside_inference_mode
from .checks import CheckResult, full_checks, summarize
from .corruptions import run_corruptions
from .distributed import Dist
from .majority import DEFAULT_DRAWS
from .request import RunRequest, _UNSET
from .result import Evaluation
from .runner import execute, meaningless_message, prepare
from .streaming import run_stream
from .suites import AttackSpec, ThreatSpec

log = logging.getLogger(__name__)

#: The black-box attack ``rbx check`` runs after the white-box cascade, per norm: rbx's own Square (1,000 queries,
#: as aa-square:budget=0.2 ran) for Linf and L2, pyautoattack's Square for L1 (rbx's Square has no L1 version),
#: Sparse-RS for L0.
DEFAULT_BLACK_BOXES = {"Linf": "square:queries=1000", "L2": "square:queries=1000", "L1": "aa-square:budget=0.2",
                       "L0": "sparse-rs:queries=1000", "L0c": "sparse-rs:queries=1000", "spatial-rt": "spatial-grid"}
#: The Linf/L2 default (kept for callers of rbx 0.2).
DEFAULT_BLACK_BOX = DEFAULT_BLACK_BOXES["Linf"]


@outside_inference_mode()
def run(request: RunRequest) -> Evaluation | None:
    """Run a validated request of any kind; the finished run (None on a non-main rank of a stream).

    Like :func:`evaluate` and :func:`check`, it works whatever the caller's autograd context: it leaves
    ``torch.inference_mode()`` for its duration and the attacks turn gradients on where they take them."""
    if request.kind == "corruptions":
        return run_corruptions(request)
    if request.kind == "stream":
        out = run_stream(request)
        return None if out is None else out[0]
    return execute(request)


@outside_inference_mode()
def evaluate(
    model: LoadedModel | nn.Module | str | RunRequest,
    data: EvalData | tuple[Tensor, Tensor] | str | None = None,
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
    progress: bool | None = None,
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
    label_only: bool = False,
    union_only: bool | None = None,
    union_order: Sequence[str] | None = None,
    allow_meaningless: bool = False,
    audit: int | None = None,
    escalate: bool = True,
    checkpoint_dir: Path | None = _UNSET,
    arch: str | None = None,
    arch_kwargs: dict[str, Any] | None = None,
    trust_pickle: bool = False,
) -> Evaluation:
    """Evaluate a model: clean accuracy, robust accuracy per threat model and union robust accuracy.

    ``rbx run`` is this function: every ``rbx run`` invocation has an ``evaluate`` call that gives the
    same record (both build the same :class:`RunRequest`; ``evaluate(request)`` takes one ready-made).

    - ``model``: a plain ``nn.Module`` (``[N, C, H, W]`` in [0, 1] -> logits; ``normalize`` wraps one that
      expects normalized inputs), a :class:`LoadedModel`, or a model spec (``cifar10-smallcnn-linf-at``,
      ``file:ckpt.pt``, ``torchscript:PATH``, ``hf:ORG/NAME``, ``robustbench:ID``; see
      :func:`~robustbench_ext.models.load_model`) with, for a state dict, ``arch`` and ``arch_kwargs``
      (``--arch``, ``--arch-kwargs``) and, for ``pickle:PATH``, ``trust_pickle`` (``--trust-pickle``);
    - ``data``: an :class:`EvalData`, a pair of tensors ``(x [N, C, H, W] in [0, 1], y [N])``, or a dataset
      spec (``cifar10-1k``), of which the first ``n_examples`` are taken; None: the model's own dataset, else
      the suite's;
    - ``threats``: threat strings (``"Linf:8/255"``) or :class:`ThreatModel` s, each attacked with
      ``attacks`` if given, else the cascade ``suite`` (default: the dataset's ``DATASET-union`` suite,
      else ``cifar10-union``) uses for its norm; or :class:`ThreatSpec` s with their cascades; or None for the
      suite's threat models (:func:`robustbench_ext.evaluation.suites.plan_benchmark` is the rule);
    - ``union_attacks``: multi-threat attacks (``union-worst``) run last on the points still union-robust;
      their ``broken_by`` index continues after each threat model's own cascade;
    - ``eps_sweep`` (factors such as 0.25, 0.5, 2): also every threat model's cascade at ``eps * factor``
      on all clean-correct points, into the record's ``sweeps`` (never into the union);
    - ``union_only`` (default: the suite's ``union_only``, else False): only union robust accuracy counts, so
      the threat models run in ``union_order`` (default: the suite's measured ``union_order``) and each
      attacks only the points robust under all the others so far (:mod:`robustbench_ext.evaluation.plan`).
      The union flags equal a full run's on the same images and seed; only the first threat model's robust
      accuracy is exact, the others are recorded as not measured (``robust: null``).

    Before anything runs, the model and data must agree (:func:`robustbench_ext.models.adapter.check_agreement`:
    channels, input size, class count; ``allow_class_subset`` for data whose classes are a subset of the
    model's) and every attack must be able to run on them (:func:`robustbench_ext.evaluation.plan.fit_plan`:
    targeted attacks capped at K - 1 targets with a note, impossible ones refused by name). ``output`` picks
    the logits from a model that returns a tuple, dict or object (:mod:`robustbench_ext.models.adapter`).

    With ``state_dir``, the evaluation state is saved after every batch; ``resume`` None continues a
    matching state if there is one, True requires one, False starts over. Nothing else is written. A stage
    that fails leaves the finished ones in the state, and the error names it: the same call resumes, and
    ``skip_stages`` (``"THREAT ATTACK"`` as the error prints it) finishes the run without that stage (the
    record says so). (``checkpoint_dir``, its name before rbx 0.2, still works with a DeprecationWarning.)
    ``search``: engine switches for the attacks' own passes (bf16, channels_last, compile); with any of
    them on, every success is re-verified with the float32 model. ``dist`` (default: the initialized
    ``torch.distributed`` group, if any): every stage's batches are dealt round-robin to the ranks and
    the hits exchanged after the stage, so every rank ends with the flags a single process computes.
    ``progress`` None: bars when stderr is a terminal (the CLI's rule).

    Randomized models (:mod:`robustbench_ext.evaluation.majority`): with ``randomized`` True, or None and the
    determinism pre-check failing, every verdict -- clean and after each attack batch -- is the majority over
    ``draws`` fresh forward passes seeded from ``draw_seed`` (default: ``seed``); the record's ``config.draws``
    says so. ``randomized`` False keeps single-pass verdicts even for a model found randomized (a warning).
    ``curve`` (:mod:`robustbench_ext.evaluation.curves`): with a minimum-norm attack in the cascade, the record's
    ``curves`` hold robust accuracy vs eps from its per-point minimal norms, checked at each threat
    model's eps against a fixed-eps cascade.
    ``label_only``: the model answers with labels only (a ``labels:MODEL`` model always does): its outputs are
    read as the predicted label and never as scores, no gradient is taken (the pre-checks that need one are
    skipped) and only decision-based attacks are allowed (``rays``, ``hsj``; the ``cifar10-labelonly`` suite);
    their stage records say the ``queries`` they made.

    A threat model whose ball covers the whole [0, 1] box (``Linf:8``: eps written without its ``/255``) is
    refused before anything runs, since its robust accuracy is meaningless; ``allow_meaningless`` runs it anyway,
    with the record marked (``config.meaningless``), the table's row marked and leaderboards leaving it out.

    Masking (:mod:`robustbench_ext.evaluation.escalation`): when the pre-checks find zero or non-finite gradients,
    an unbounded attack that does not reach ~0%, randomness or batch dependence, the run escalates by itself (a
    black-box Square stage, EOT, one image at a time) and the record says what and why; ``escalate=False`` keeps
    the plan (the record then says its numbers are upper bounds). ``audit`` (K; None: 20 for runs of at least
    1,000 images, else 0): AutoAttack standard on a random sample of K points left robust per threat model, the
    points it breaks counted as broken, and a 95% upper bound on the cascade's miss rate in the record.

    Returns an :class:`Evaluation`: ``print(ev)`` shows the run's table, ``ev.record`` / ``ev.flags`` hold the
    record and per-sample flags, ``ev.write(results_dir)`` writes them.
    """
    if isinstance(model, RunRequest):
        if data is not None or threats is not None:
            raise RbxError("give a RunRequest alone, or a model and data without one")
        return run(model)
    if checkpoint_dir is not _UNSET:
        warnings.warn("evaluate(checkpoint_dir=...) is now evaluate(state_dir=...); the old keyword goes in rbx 0.3",
                      DeprecationWarning, stacklevel=2)
        if state_dir is not None and checkpoint_dir is not None:
            raise RbxError("give state_dir or its old name checkpoint_dir, not both")
        state_dir = checkpoint_dir if checkpoint_dir is not None else state_dir
    request = RunRequest(
        model=model, data=data, threats=threats or (), suite=suite, attacks=attacks, union_attacks=union_attacks,
        normalize=normalize, n_examples=n_examples, seed=seed, batch_size=batch_size, device=device, progress=progress,
        state_dir=state_dir, resume=resume, eps_sweep=eps_sweep, search=search, dist=dist, output=output,
        allow_class_subset=allow_class_subset, skip_stages=skip_stages, randomized=randomized, draws=draws,
        draw_seed=draw_seed, curve=curve, label_only=label_only, union_only=union_only, union_order=union_order,
        allow_meaningless=allow_meaningless, audit=audit, escalate=escalate, arch=arch,
        arch_kwargs=arch_kwargs or (), trust_pickle=trust_pickle)
    if request.kind != "threats":
        raise RbxError(f"suite '{suite}' evaluates common corruptions, not threat models: run it with "
                       f"robustbench_ext.evaluation.evaluate_corruptions or rbx run --suite {suite}")
    return execute(request)


@outside_inference_mode()
def check(
    model: LoadedModel | nn.Module | str,
    data: EvalData | tuple[Tensor, Tensor] | str = "cifar10",
    threat: ThreatModel | str = "Linf:8/255",
    *,
    attacks: Sequence[str] = (),
    black_box: str | None = None,
    n_examples: int | None = 100,
    normalize: str | None = None,
    arch: str | None = None,
    device: str | torch.device = "auto",
    batch_size: int = 256,
    randomized: bool | None = None,
    draws: int = DEFAULT_DRAWS,
    on_result: Callable[[CheckResult, float], None] | None = None,
    arch_kwargs: dict[str, Any] | None = None,
    trust_pickle: bool = False,
) -> CheckReport:
    """Gradient-masking checks on ``model`` (``rbx check``): the cheap checks, then the attack-based ones
    (eps monotone, unbounded radius, black box after white box, seed spread; see
    :mod:`robustbench_ext.evaluation.checks`). ``attacks``: the white-box cascade (default: the suite's for
    the norm); ``black_box``: the black-box attack (default: :data:`DEFAULT_BLACK_BOXES` for the norm). Model, data
    and attacks go through the same request, preparation and fitting as a run (``arch``, ``arch_kwargs``,
    ``trust_pickle``: as for :class:`RunRequest`).
    ``batch_size``: no forward pass of any check sees more images than this (GPU memory).
    ``on_result(result, seconds)`` is called as each check finishes. Returns a :class:`CheckReport`
    (``report.passed``: every check passed)."""
    request = RunRequest(model=model, data=data, threats=(threat,), attacks=attacks, n_examples=n_examples,
                         normalize=normalize, arch=arch, arch_kwargs=arch_kwargs or (), trust_pickle=trust_pickle,
                         device=device, batch_size=batch_size, randomized=randomized, draws=draws)
    if request.is_label_only:
        raise RbxError("rbx check looks for gradient masking with gradient attacks and input gradients; a label-only "
                       "model gives neither: evaluate it with rbx run --label-only (decision-based attacks)")
    th = request.planned.bench.threats[0].threat
    black_spec = black_box or DEFAULT_BLACK_BOXES.get(th.norm)
    # a bad spec fails before loading; a threat model rbx has no black-box attack for gets a black_box check that
    # says it could not run (and flags: no evidence)
    black = ThreatSpec(th, (AttackSpec.parse(black_spec),)).build()[0].attack if black_spec else None
    p = prepare(request)
    if th.covers_box(tuple(p.data.x.shape[1:])):  # as rbx run refuses it: no check can say anything there
        raise RbxError(f"{meaningless_message([th], tuple(p.data.x.shape[1:]))}; give a smaller radius")
    attacks_ = [s.attack for s in p.plan.stages]
    black = black.fit(p.num_classes, tuple(p.data.x.shape[1:]), th)[0] if black is not None else None
    clock, done = RunClock(9), [0]  # the 5 cheap checks (batch independence included) and the 4 attack-based ones

    def report(r: CheckResult, seconds: float) -> None:
        done[0] += 1
        progress_log.info("check %s: %s in %s; %s", r.name, "ok" if r.passed else "FLAG", fmt_seconds(seconds),
                          clock.summary(done[0]))
        if on_result is not None:
            on_result(r, seconds)

    with frozen(p.net):
        results = full_checks(p.net, p.data.x.to(p.device), p.data.y.to(p.device), th, attacks_, black, report,
                              randomized=randomized, draws=draws, batch_size=request.batch_size)
    return CheckReport(p.loaded.name, th.label, p.data.source, p.data.n, tuple(results))


@dataclass(frozen=True)
class CheckReport:
    """What :func:`check` found: the model, threat model and images, and each check's result."""

    model: str
    threat: str
    data: str
    n: int
    results: tuple[CheckResult, ...]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        """What ``rbx check --json`` prints."""
        return {"model": self.model, "threat": self.threat, "n": self.n, **summarize(self.results)}

    def __str__(self) -> str:
        lines = [f"model {self.model}, {self.data} first {self.n}, {self.threat}"]
        for r in self.results:
            value = "" if r.value is None else f"{r.value:.4g}"
            lines.append(f"{r.name:<15} {'ok' if r.passed else 'FLAG':<5} {value:>8}  {r.message}")
        return "\n".join(lines)
