"""The attack contract (Foolbox 3's ``base.py``): one base for every attack, and the one cascade.

:class:`AttackBase` holds what every attack has: its registry name, its parameters (the dataclass
fields), the parameters of a quick real run, and the call preamble (input checks, a seeded generator,
counted passes). Two kinds share it:

- :class:`Attack` searches one threat model: ``attack(model, x, y, threat, seed=...)`` validates its
  input, calls the subclass's :meth:`Attack.run` (the search, nothing else), re-checks in float32 that
  every returned point lies in the eps-ball ∩ [0, 1] box and recomputes per-sample success from the
  model's own predictions. A subclass cannot report a success the model does not confirm, nor a point
  outside the threat model;
- :class:`MultiThreatAttack` searches several threat models at once (union / multi-lp attacks), under
  the same contract per threat model.

Every path checks the same things (a direct call, the runner, ``rbx check``, the training adversary): the
parameters when the attack is built (their types from the dataclass fields, ranges in each attack's
``__post_init__``), and what the attack needs of the model and the data in :meth:`AttackBase.fit`, which
the runner calls for every stage before any attack runs and :meth:`Attack.__call__` calls again on the
call's own inputs (a no-op for an attack already fitted). Every call works whatever the caller's autograd
context (``torch.no_grad()``, ``torch.inference_mode()``).

Every forward and backward pass through the model is counted (:class:`CountingModel`), also inside
foreign code. The shared first-order loop lives in :mod:`robustbench_ext.attack.iterative` (Foolbox's
``gradient_descent_base.py``), cascades and ensembles in :mod:`robustbench_ext.attack.cascade`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import types
import typing
import weakref
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import AttackContractError, RbxError, UnsupportedNormError
from ..progress import StepReport
from ..runtime import autograd_on, autograd_tensor, check_autograd_model
from .threat import LP_NORMS, NORMS, ThreatModel, box_advice
from .context import AttackContext, AttackResult, CountingModel, SampleSeeds, _draw_mean, _unwrap  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)
#: Notes of direct calls already logged (each once per process).
_NOTED: set[str] = set()


# ---- the contract ----------------------------------------------------------------------------------
@dataclass(eq=False)
class AttackBase(ABC):
    """What every attack has, single- or multi-threat. Subclasses are dataclasses whose fields are their parameters.

    Subclasses set ``name`` (the registry name), optionally ``norms`` (the norms they support) and
    ``smoke_params`` (parameters for a quick but real run: the contract tests use them).

    ``eot`` (every attack's setting, keyword only; ``pgd:eot=10``): expectation over transformation for
    randomized models -- every input gradient and every objective value the attack's search takes through
    its :class:`AttackContext` is the mean over ``eot`` forward(+backward) passes. 1 (the default) is the
    plain attack, bit for bit. Attacks whose search takes no gradient through the context (black-box
    ones, foreign code that cannot average) set ``eot_note`` to say why they refuse ``eot`` > 1.
    """

    eot: int = field(default=1, kw_only=True)
    #: None: the attack supports ``eot`` > 1; else the reason it does not (the error message says it).
    eot_note: ClassVar[str | None] = None

    name: ClassVar[str] = "attack"
    #: The norms the attack supports; by default the lp norms (L0 attacks say so: ``norms = ("L0", "L0c")``).
    norms: ClassVar[tuple[str, ...]] = LP_NORMS
    smoke_params: ClassVar[dict[str, Any]] = {}
    #: Whether the attack searches for the smallest adversarial perturbation and reports ``min_norm``
    #: (it must then set ``ctx.min_norm_points`` in :meth:`run`; see :mod:`robustbench_ext.attack.min_norm`).
    minimum_norm: ClassVar[bool] = False
    #: Whether the attack reads only the model's outputs, never an input gradient (a black-box attack: Square,
    #: Sparse-RS, RayS, HopSkipJump); its stage records then say how many queries it made.
    black_box: ClassVar[bool] = False
    #: Whether the attack reads only the predicted label (argmax), never a score: the attacks a label-only
    #: model allows (decision-based: RayS, HopSkipJump).
    label_only: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A subclass's own ``__post_init__`` runs after the base checks (:meth:`__post_init__`: parameter types
        and ``eot``) even when it does not call ``super().__post_init__()``: a plugin cannot skip them by
        forgetting the call (the checks are idempotent, so one that does call it is checked twice, cheaply)."""
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("__post_init__")
        if own is not None and not getattr(own, "_rbx_checked", False):
            @functools.wraps(own)
            def __post_init__(self, *args: Any, **kw: Any) -> None:
                AttackBase.__post_init__(self)
                own(self, *args, **kw)

            __post_init__._rbx_checked = True  # type: ignore[attr-defined]
            cls.__post_init__ = __post_init__  # type: ignore[method-assign]

    def __post_init__(self) -> None:
        """Checks every attack's parameters get when it is built: each parameter's type from its dataclass field
        (:func:`check_param_types`: ints are ints, floats finite numbers, flags true or false) and ``eot`` a
        positive int. A subclass's ``__post_init__`` calls this first, then checks its own ranges."""
        check_param_types(self)
        eot = getattr(self, "eot", 1)
        if isinstance(eot, bool) or not isinstance(eot, int) or eot < 1:
            raise RbxError(f"attack '{self.name}': eot must be a positive integer (passes averaged per gradient), got {eot!r}")

    def params(self) -> dict[str, Any]:
        """The attack's parameters, as written to result records (``eot`` only when it is not 1, so that records
        of plain runs read as before EOT existed)."""
        out = dataclasses.asdict(self) if dataclasses.is_dataclass(self) else {}
        if out.get("eot", 1) == 1:
            out.pop("eot", None)
        return out

    def check_eot(self) -> None:
        """Raise a clear :class:`RbxError` unless ``eot`` is a positive int this attack supports."""
        eot = getattr(self, "eot", 1)
        if isinstance(eot, bool) or not isinstance(eot, int) or eot < 1:
            raise RbxError(f"attack '{self.name}': eot must be a positive integer (passes averaged per gradient), got {eot!r}")
        note = self.eot_note_for() if eot > 1 else None  # (ensembles build their parts to answer: only when asked)
        if note:
            raise RbxError(f"attack '{self.name}' does not take eot={eot}: {note}")

    def eot_note_for(self) -> str | None:
        """Why this attack cannot average over ``eot`` draws (None: it can). Default: the class's ``eot_note``."""
        return self.eot_note

    def supports(self, threat: ThreatModel) -> bool:
        return threat.norm in self.norms

    def require(self, threat: ThreatModel) -> None:
        """Raise :class:`UnsupportedNormError` unless this attack supports ``threat``."""
        if not self.supports(threat):
            raise UnsupportedNormError(
                f"attack '{self.name}' does not support {threat.norm}; it supports: {', '.join(self.norms)}"
            )

    def fit(self, num_classes: int, input_shape: Sequence[int], threat: ThreatModel | None) -> tuple["AttackBase", str | None]:
        """This attack as it runs on a ``num_classes``-way model with ``input_shape`` inputs ``[C, H, W]``.

        The one place for what an attack needs of the model, the data and the threat model (a size, a class
        count, an option range that depends on the norm): every path goes through it. The runner calls it for
        every stage before any attack of a run starts (:func:`robustbench_ext.evaluation.plan.fit_plan`), and
        every call (:meth:`Attack.__call__`) calls it again on its own inputs. An attack that cannot run there
        raises an :class:`RbxError` naming itself (so nothing is lost mid-run); one that must adapt (fewer
        target classes than asked) returns its adapted self and a note for the record. Fitting a fitted attack
        returns it unchanged. Default: runs as it is.
        """
        return self, None

    @property
    def fit_needs_classes(self) -> bool:
        """Whether :meth:`fit` depends on the model's class count (it does when a subclass overrides it): a
        direct call then learns the count from one image, once per model (:func:`model_num_classes`)."""
        return type(self).fit is not AttackBase.fit

    def fit_to_call(self, model: nn.Module, x: Tensor, threats: Sequence[ThreatModel | None]) -> tuple["AttackBase", int | None]:
        """This attack fitted to one call's model and inputs ``x`` ``[N, C, H, W]`` under each of ``threats``
        (:meth:`fit`); the model's class count if it was needed. A note (targets capped) is logged as a warning,
        once per process (a training loop calls its attack every step)."""
        k = model_num_classes(model, x) if self.fit_needs_classes else None
        fitted = self
        for threat in threats:
            fitted, note = fitted.fit(k if k is not None else 0, tuple(x.shape[1:]), threat)
            if note and note not in _NOTED:
                _NOTED.add(note)
                log.warning("%s", note)
        return fitted, k

    def _prepare(self, x: Tensor, y: Tensor, model: nn.Module) -> tuple[Tensor, Tensor]:
        """The call preamble both kinds share (called with autograd on): input checks; ``x`` detached, labels cast
        to int64 at the boundary, tensors made under ``torch.inference_mode()`` copied into normal ones; a model
        whose weights are inference tensors refused in one line."""
        check_inputs(x, y)
        check_autograd_model(_unwrap(model), f"model {type(_unwrap(model)).__name__}")
        return autograd_tensor(x.detach()), autograd_tensor(y.long())

    def _context(self, model: nn.Module, x: Tensor, seed: int, progress: StepReport | None,
                 threat: ThreatModel | None = None, threats: Sequence[ThreatModel] = (),
                 samples: SampleSeeds | None = None, num_classes: int | None = None) -> AttackContext:
        """A context with a generator seeded by ``seed``, the per-sample seeds (if any) and this attack's
        ``eot`` (checked here)."""
        self.check_eot()
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**64:
            # torch wraps a negative seed to 2**64 + seed: refused, so that distinct seeds never share a stream
            raise RbxError(f"attack '{self.name}': seed must be an integer from 0 to 2**64 - 1, got {seed!r}")
        if samples is not None and len(samples.keys) != x.shape[0]:
            raise RbxError(f"per-sample seeds: {len(samples.keys)} keys for a batch of {x.shape[0]}")
        ctx = AttackContext(model, threat, torch.Generator(device=x.device).manual_seed(int(seed)), progress, threats,
                            samples, eot=getattr(self, "eot", 1))
        ctx.num_classes = num_classes
        return ctx


class Attack(AttackBase):
    """An attack under one threat model; implement :meth:`run`, call as ``attack(model, x, y, threat, seed=0)``."""

    @abstractmethod
    def run(self, ctx: AttackContext, x: Tensor, y: Tensor) -> Tensor:
        """Search for adversarial examples; return candidates ``[N, ...]`` (the base class checks them)."""

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, *, seed: int = 0,
                 progress: StepReport | None = None, samples: SampleSeeds | None = None) -> AttackResult:
        """Attack ``model`` at ``x`` ``[N, C, H, W]`` (values in [0, 1]) with labels ``y`` ``[N]`` under ``threat``.

        ``seed`` fixes every random choice of the attack: the same seed gives the same result on CPU.
        ``samples`` (per-sample seeds) makes the random starts each sample's own (:class:`SampleSeeds`).
        ``progress``, if given, is called with the fraction of the work done as the attack steps.

        The attack is fitted to this call first (:meth:`AttackBase.fit`: what it cannot run on is refused in one
        line before it starts; targets beyond K - 1 are capped, with a warning). It works whatever the caller's
        autograd context: gradients are on inside, and inputs made under ``torch.inference_mode()`` are copied.
        """
        self.require(threat)
        with autograd_on():
            x, y = self._prepare(x, y, model)
            if not threat.is_lp:
                threat.transform.check_input(x.shape[1:])
            if x.shape[0] == 0:
                empty = torch.zeros(0, dtype=torch.float64, device=x.device) if self.minimum_norm else None
                params = None if threat.is_lp else threat.transform.identity(x.float())
                return AttackResult(x.float().clone(), torch.zeros(0, dtype=torch.bool, device=x.device), min_norm=empty,
                                    min_norm_points=x.float().clone() if self.minimum_norm else None, params=params)
            attack, k = self.fit_to_call(model, x, [threat])
            ctx = attack._context(model, x, seed, progress, threat=threat, samples=samples, num_classes=k)
            params = None
            if threat.is_lp:
                x_adv = check_in_threat_model(self.name, x, attack.run(ctx, x, y), threat)
            else:
                params, x_adv = check_transform_params(self.name, x, attack.run(ctx, x, y), threat)
            min_norm = min_points = None
            if self.minimum_norm:
                if ctx.min_norm_points is None:
                    raise AttackContractError(f"attack '{self.name}' is a minimum-norm attack but reported no points")
                min_norm = verified_min_norm(self.name, ctx, x, y, ctx.min_norm_points)
                min_points = ctx.min_norm_points.detach().to(torch.float32)
            success = verified_success(ctx.verification_logits(x_adv), y)
            ctx.report(1.0)
        return AttackResult(x_adv, success, ctx.n_forward, ctx.n_backward, *ctx.loss_trace(), n_nonfinite=ctx.n_nonfinite,
                            min_norm=min_norm, min_norm_points=min_points, params=params)


def verified_success(logits: Tensor, y: Tensor) -> Tensor:
    """``[N]`` bool: the model's prediction differs from ``y``; NaN or inf logits are an error, not a success."""
    if not torch.isfinite(logits).all():
        raise RbxError("the model returned NaN or inf logits on adversarial inputs: its outputs are not usable "
                       "for a robustness evaluation (check its numerics, e.g. a log of zero)")
    return logits.argmax(1) != y


def verified_min_norm(name: str, ctx: AttackContext, x: Tensor, y: Tensor, x_min: Tensor) -> Tensor:
    """``[N]`` float64: ``||x_min - x||`` (the threat model's norm) where the model misclassifies ``x_min``, else inf.

    ``x_min`` must be finite and in the [0, 1] box (it may lie outside the eps-ball: it is the closest
    adversarial point found at any radius). Its logits go through ``ctx.logits``, so the verification
    of returned points identical to ``x_min`` (those inside the ball) reuses this forward pass.
    """
    if not isinstance(x_min, Tensor) or x_min.shape != x.shape:
        raise AttackContractError(f"attack '{name}' reported minimum-norm points of shape {getattr(x_min, 'shape', None)} "
                                  f"for input {tuple(x.shape)}")
    x_min = x_min.detach().to(torch.float32)
    if not torch.isfinite(x_min).all() or (x_min.numel() and (x_min.min() < 0 or x_min.max() > 1)):
        raise AttackContractError(f"attack '{name}' reported minimum-norm points that are not finite or leave the [0, 1] box")
    fooled = verified_success(ctx.logits(x_min), y)
    norms = ctx.geometry.norm_of(x_min.double() - x.double())
    return torch.where(fooled, norms, torch.full_like(norms, math.inf))


# ---- what every path checks: parameter types, the model's class count -------------------------------
@functools.lru_cache(maxsize=None)
def _field_types(cls: type) -> dict[str, Any]:
    """The resolved annotations of a dataclass's init fields (``from __future__ import annotations`` strings)."""
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # an annotation that does not resolve (a third-party plugin's): checked by its own code
        return {}
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init and f.name in hints}


def _allowed(tp: Any) -> tuple[set[type], bool]:
    """The plain kinds (int, float, bool, str, list) a field's annotation allows, and whether it allows None."""
    args = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    kinds = {typing.get_origin(a) or a for a in args if a is not type(None)}
    return {k for k in kinds if k in (int, float, bool, str, list)}, type(None) in args


def check_param_types(attack: Any) -> None:
    """Raise a one-line :class:`RbxError` for a parameter of the wrong type, read from the attack's dataclass
    fields: an ``int`` field takes an int (not a bool), a ``float`` field a finite number (NaN and inf crash the
    search later), a ``bool`` field true or false, a ``str`` field a string, a ``list`` field a list. Fields
    with other annotations are left to the attack's own checks."""
    if not dataclasses.is_dataclass(attack):
        return
    for name, tp in _field_types(type(attack)).items():
        kinds, optional = _allowed(tp)
        if not kinds:
            continue
        value = getattr(attack, name)
        if value is None and optional:
            continue
        if bool in kinds and isinstance(value, bool):
            continue
        if int in kinds and isinstance(value, int) and not isinstance(value, bool):
            continue
        if float in kinds and isinstance(value, (int, float)) and not isinstance(value, bool):
            if math.isfinite(value):
                continue
            raise RbxError(f"attack '{attack.name}': {name} must be a finite number, got {value!r}")
        if str in kinds and isinstance(value, str):
            continue
        if list in kinds and isinstance(value, (list, tuple)):
            continue
        want = " or ".join(sorted({int: "an integer", float: "a number", bool: "true or false", str: "a string",
                                   list: "a list"}[k] for k in kinds)) + (" (or left unset)" if optional else "")
        raise RbxError(f"attack '{attack.name}': {name} must be {want}, got {value!r}")


#: The class count of each model an attack was called on (learned once per model object; the runner, which knows
#: it from the model/data agreement check, tells it here first: :func:`remember_num_classes`).
_NUM_CLASSES: "weakref.WeakKeyDictionary[nn.Module, int]" = weakref.WeakKeyDictionary()


def remember_num_classes(model: nn.Module, num_classes: int) -> None:
    """Tell the attacks ``model``'s class count (so that no call has to learn it from an extra forward pass)."""
    try:
        _NUM_CLASSES[_unwrap(model)] = int(num_classes)
    except TypeError:  # not weak-referenceable: learned per call instead
        pass


def model_num_classes(model: nn.Module, x: Tensor) -> int:
    """The class count K of ``model``'s logits ``[N, K]``, from one image of ``x`` (no gradients; torch's global RNG
    left as it was), once per model object."""
    base = _unwrap(model)
    try:
        return _NUM_CLASSES[base]
    except (KeyError, TypeError):
        pass
    with torch.no_grad(), torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        out = base(x[:1])
    if not isinstance(out, Tensor) or out.ndim != 2:
        raise RbxError(f"the model must return logits [N, K], got {type(out).__name__} of shape "
                       f"{tuple(getattr(out, 'shape', ()))} for inputs {tuple(x[:1].shape)}")
    remember_num_classes(base, int(out.shape[1]))
    return int(out.shape[1])


def require_positive_ints(attack: Any, *fields: str) -> None:
    """Raise a clear :class:`RbxError` unless each named parameter of ``attack`` is an int >= 1."""
    for name in fields:
        value = getattr(attack, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise RbxError(f"attack '{attack.name}': {name} must be a positive integer, got {value!r}")


def check_transform_params(name: str, x: Tensor, params: Tensor, threat: ThreatModel) -> tuple[Tensor, Tensor]:
    """For a non-lp threat model: ``(params, x_adv)`` after checking the attack's returned parameters.

    An attack on a transformation threat model returns the transformation's parameters ``[N, *param_shape]``
    (:mod:`robustbench_ext.attack.transforms`); they must be finite and inside the budget box (a violation raises
    :class:`AttackContractError`: a bug in the attack). The adversarial images are rendered here from the
    parameters, so that every returned image is a member of the threat model's set.
    """
    tf = threat.transform
    want = (x.shape[0], *tf.param_shape(x.shape[1:]))
    if not isinstance(params, Tensor) or tuple(params.shape) != want:
        raise AttackContractError(f"attack '{name}' returned shape {tuple(getattr(params, 'shape', ()))} for {threat.label}: "
                                  f"an attack on a {threat.norm} threat model returns its parameters {want}")
    params = params.detach().to(torch.float32)
    if not torch.isfinite(params).all():
        raise AttackContractError(f"attack '{name}' returned NaN or inf {threat.norm} parameters")
    used = tf.budget_used(params, threat)
    bad = used > 1 + tf.rtol
    if bad.any():
        raise AttackContractError(f"attack '{name}' returned {int(bad.sum())} parameter sets outside the {threat.label} "
                                  f"budget ({used.max().item():.6g} x the budget): a bug in the attack")
    with torch.no_grad():
        x_adv = tf.apply(x.float(), params).detach().to(torch.float32)
    return params, x_adv


def check_in_threat_model(name: str, x: Tensor, x_adv: Tensor, threat: ThreatModel) -> Tensor:
    """``x_adv`` as float32 after checking it is in ball ∩ box (norms accumulated in float64).

    A violation raises :class:`AttackContractError`: it is a bug in the attack named ``name``.
    """
    if not isinstance(x_adv, Tensor) or x_adv.shape != x.shape:
        raise AttackContractError(f"attack '{name}' returned shape {getattr(x_adv, 'shape', None)} for input {tuple(x.shape)}")
    x_adv = x_adv.detach().to(torch.float32)
    if not torch.isfinite(x_adv).all():
        raise AttackContractError(f"attack '{name}' returned NaN or inf pixels")
    if x_adv.numel() and (x_adv.min() < 0 or x_adv.max() > 1):
        raise AttackContractError(
            f"attack '{name}' left the [0, 1] box (range {x_adv.min().item():.4g}..{x_adv.max().item():.4g})"
        )
    geom = threat.geometry
    norms = geom.norm_of(x_adv.double() - x.double())
    bad = norms > geom.tolerance(threat.eps, x[0].numel())
    if bad.any():
        raise AttackContractError(
            f"attack '{name}' returned {int(bad.sum())} points outside the {threat.label} ball "
            f"(largest {threat.norm} norm {norms.max().item():.6g} > eps {threat.eps:.6g}): a bug in the attack"
        )
    return x_adv


def check_transform_params(name: str, x: Tensor, params: Tensor, threat: ThreatModel) -> tuple[Tensor, Tensor]:
    """For a non-lp threat model: ``(params, x_adv)`` after checking the attack's returned parameters.

    An attack on a transformation threat model returns the transformation's parameters ``[N, *param_shape]``
    (:mod:`robustbench_ext.attack.transforms`); they must be finite and inside the budget box (a violation raises
    :class:`AttackContractError`: a bug in the attack). The adversarial images are rendered here from the
    parameters, so that every returned image is a member of the threat model's set.
    """
    tf = threat.transform
    want = (x.shape[0], *tf.param_shape(x.shape[1:]))
    if not isinstance(params, Tensor) or tuple(params.shape) != want:
        raise AttackContractError(f"attack '{name}' returned shape {tuple(getattr(params, 'shape', ()))} for {threat.label}: "
                                  f"an attack on a {threat.norm} threat model returns its parameters {want}")
    params = params.detach().to(torch.float32)
    if not torch.isfinite(params).all():
        raise AttackContractError(f"attack '{name}' returned NaN or inf {threat.norm} parameters")
    used = tf.budget_used(params, threat)
    bad = used > 1 + tf.rtol
    if bad.any():
        raise AttackContractError(f"attack '{name}' returned {int(bad.sum())} parameter sets outside the {threat.label} "
                                  f"budget ({used.max().item():.6g} x the budget): a bug in the attack")
    with torch.no_grad():
        x_adv = tf.apply(x.float(), params).detach().to(torch.float32)
    return params, x_adv


def check_inputs(x: Tensor, y: Tensor) -> None:
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise RbxError("x and y must be torch tensors")
    if x.ndim < 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise RbxError(f"expected x [N, C, H, W] and y [N]; got x {tuple(x.shape)} and y {tuple(y.shape)}")
    if not x.is_floating_point():
        lo, hi = (int(x.min()), int(x.max())) if x.numel() and not x.is_complex() and x.dtype != torch.bool else (0, 0)
        advice = ("divide by 255: x.float() / 255" if x.dtype == torch.uint8 or (0 <= lo and 1 < hi <= 255)
                  else "x.float()" if 0 <= lo and hi <= 1 else "convert them to floats in [0, 1]")
        raise RbxError(f"x must be floating point in [0, 1], got {x.dtype} (values {lo}..{hi}): {advice}")
    if x.numel() and (x.min() < 0 or x.max() > 1):
        lo, hi = x.min().item(), x.max().item()
        advice = box_advice(lo, hi, uint8="divide by 255",
                            normalize="wrap it: robustbench_ext.models.loading.Normalize(model, mean, std)")
        raise RbxError(f"inputs must lie in [0, 1], got range {lo:.4g}..{hi:.4g}" + (f": {advice}" if advice else ""))
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        whole = bool(y.is_floating_point() and torch.isfinite(y).all() and (y == y.round()).all() and (y >= 0).all())
        raise RbxError(f"labels must be integer class indices, got {y.dtype}"
                       + (" (whole numbers: cast them with y.long())" if whole else
                          " (not whole non-negative numbers: pass each image's class index)"))


# ---- several threat models at once -----------------------------------------------------------------
@dataclass(frozen=True)
class MultiThreatResult:
    """What a :class:`MultiThreatAttack` returns for a batch under T threat models.

    ``x_adv[t]``: ``[N, C, H, W]`` inside threat model t's ball ∩ box (checked); ``success``: ``[N, T]``
    bool from the model's predictions; ``loss``: ``[N, T]`` cross-entropy at each ``x_adv[t]``;
    ``worst``: ``[N]`` the threat model whose adversarial is worst for the model (a success if
    any, else the highest loss) -- what a MAX-style multi-norm training step uses.
    """

    x_adv: tuple[Tensor, ...]
    success: Tensor
    loss: Tensor
    worst: Tensor
    n_forward: int = 0
    n_backward: int = 0
    n_nonfinite: int = 0

    @property
    def union_success(self) -> Tensor:
        """``[N]``: broken under at least one threat model (not union-robust)."""
        return self.success.any(1)

    def x_worst(self) -> Tensor:
        """``[N, ...]``: each sample's adversarial under its worst threat model."""
        stacked = torch.stack(self.x_adv)  # [T, N, ...]
        return stacked[self.worst, torch.arange(stacked.shape[1], device=stacked.device)]


class MultiThreatAttack(AttackBase):
    """An attack that searches several threat models at once; the contract holds per threat model.

    Implement :meth:`run`; ``ctx.threats`` are the threat models, ``ctx.model`` the counting model.
    """

    name: ClassVar[str] = "multi"

    @abstractmethod
    def run(self, ctx: AttackContext, x: Tensor, y: Tensor) -> list[Tensor]:
        """Return one candidate ``[N, ...]`` per threat model of ``ctx.threats``, in order."""

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, threats: Sequence[ThreatModel], *,
                 seed: int = 0, progress: StepReport | None = None, samples: SampleSeeds | None = None) -> MultiThreatResult:
        threats = list(threats)
        if not threats:
            raise RbxError(f"attack '{self.name}' needs at least one threat model")
        for t in threats:
            self.require(t)
        with autograd_on():
            x, y = self._prepare(x, y, model)
            attack, k = self.fit_to_call(model, x, threats) if x.shape[0] else (self, None)
            ctx = attack._context(model, x, seed, progress, threats=threats, samples=samples, num_classes=k)
            cands = attack.run(ctx, x, y) if x.shape[0] else [x.clone() for _ in threats]
            if len(cands) != len(threats):
                raise AttackContractError(f"attack '{self.name}' returned {len(cands)} candidates for {len(threats)} threat models")
            x_adv = tuple(check_in_threat_model(self.name, x, c, t) for c, t in zip(cands, threats))
            success, losses = [], []
            with torch.no_grad():
                for xa in x_adv:
                    logits = ctx.model(xa)
                    success.append(verified_success(logits, y))
                    losses.append(nn.functional.cross_entropy(logits.float(), y, reduction="none"))
            success_t = torch.stack(success, 1) if x.shape[0] else torch.zeros((0, len(threats)), dtype=torch.bool, device=x.device)
            loss_t = torch.stack(losses, 1) if x.shape[0] else torch.zeros((0, len(threats)), device=x.device)
            # Worst threat model per sample: the first success, else the highest loss.
            score = loss_t.masked_fill(success_t, math.inf)
            worst = score.argmax(1) if x.shape[0] else torch.zeros(0, dtype=torch.long, device=x.device)
            ctx.report(1.0)
        return MultiThreatResult(x_adv, success_t, loss_t, worst, ctx.n_forward, ctx.n_backward, ctx.n_nonfinite)
