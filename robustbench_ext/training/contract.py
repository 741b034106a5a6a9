"""The defense contract: a training objective (and, where a defense changes inference, a model wrapper).

A :class:`Defense` is a dataclass of its parameters, registered in ``DEFENSES``. The training engine
(:mod:`robustbench_ext.training.engine`) calls, per batch, :meth:`Defense.loss` with the model in train mode;
the defense crafts its adversarial examples through :meth:`StepContext.adversary` (which runs an
rbx attack on the model in eval mode with frozen weights, seeded by the batch's position) and
returns the loss to minimize and a few statistics. Hooks at the start and end of each epoch serve
defenses that act per epoch (RAMP's gradient projection), and a defense with state of its own across
epochs (RAMP's natural-training optimizer) hands it to the engine's checkpoint through
:meth:`Defense.state_dict`. :attr:`Defense.recipe` is the optimizer and learning-rate schedule the
defense's paper trains with (the engine's default when ``rbx train`` is not told otherwise).
:meth:`Defense.wrap` returns the model as it must be used at inference (LTD's temperature), and the
engine saves what it needs to rebuild it; :meth:`Defense.saved_model_spec` names the model source that
loads the saved result (what ``rbx train``'s evaluation hook evaluates).
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Protocol

import torch
from torch import Tensor, nn

from ..attack.base import Attack
from ..runtime import derive_seed, frozen
from ..errors import RbxError
from ..registry import ATTACKS, _parameters
from ..attack.threat import ThreatModel


class EngineView(Protocol):
    """What a defense's hooks may use of the training engine (:class:`robustbench_ext.training.engine.Trainer`)."""

    model: nn.Module
    device: torch.device
    cfg: Any
    sched: Any

    def run_epoch(self, epoch: int, model: nn.Module, opt: torch.optim.Optimizer, sched: Any,
                  loss_fn: Callable[..., tuple[Tensor, dict[str, Tensor]]], desc: str) -> dict[str, float]: ...


#: The adversary multi-norm training uses (E-AT, MAX, RAMP): APGD-CE, 10 steps, as the RAMP authors'
#: training APGD (``autopgd_train.py apgd_train``, ``is_train=True``): it starts at the clean point, not at
#: a random one, and its L1 steps start at 5% sparsity instead of evaluation APGD's 20%.
TRAINING_APGD = "apgd-ce:steps=10,random_start=false,init_sparsity=0.05"


@dataclass
class StepContext:
    """What a defense's loss gets besides the batch: seeds, device, autocast, the running epoch and step."""

    seed: int
    epoch: int
    step: int
    autocast: bool = False
    generator: torch.Generator | None = None
    _calls: int = 0

    def adversary(self, attack: Attack, model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel) -> Tensor:
        """``attack``'s adversarial examples for (x, y) on ``model`` in eval mode (weights frozen), detached."""
        was_training = model.training
        self._calls += 1
        with frozen(model), self.autocast_ctx():
            x_adv = attack(model, x, y, threat, seed=derive_seed(self.seed, self._calls)).x_adv
        model.train(was_training)
        return x_adv.detach()

    def autocast_ctx(self):
        """bf16 autocast on CUDA when mixed precision is on; a no-op otherwise."""
        if self.autocast:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return torch.autocast("cpu", enabled=False)


@dataclass(frozen=True)
class Recipe:
    """The optimizer and learning-rate schedule a defense trains with unless ``rbx train`` is told otherwise.

    ``optimizer``: ``sgd`` (heavy-ball ``momentum``, Nesterov if ``nesterov``) or ``adamw`` (default betas;
    ``momentum`` and ``nesterov`` unused); ``lr``: the peak learning rate; ``weight_decay``: on weights only
    (never on biases and normalization layers); ``schedule``: one of ``training.SCHEDULES``, stepped per batch.
    """

    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "onecycle"


class Defense(ABC):
    """Base class of every defense and training baseline; subclasses are dataclasses of their parameters."""

    name: ClassVar[str] = "defense"
    #: How this defense's paper trains (optimizer, peak lr, weight decay, schedule); flags of ``rbx train`` override it.
    recipe: ClassVar[Recipe] = Recipe()
    #: Parameters for a quick but real run (the tests train every registered defense with them).
    smoke_params: ClassVar[dict[str, Any]] = {}
    #: The model a quick test run starts from, when the defense needs a particular one (else a fresh arch).
    smoke_init: ClassVar[str | None] = None
    #: The parameters that name the threat models this defense trains against, at their full budget (each a threat
    #: spec or a list of them): what a record of a model it trained says the model has *seen* (MultiRobustBench's
    #: stability constant, :func:`robustbench_ext.records.multirobust.training_threats`). ``()``: clean inputs
    #: only; None (the default): not declared, so a record cannot say (e.g. budgets drawn at random per batch).
    trains_on: ClassVar[tuple[str, ...] | None] = None

    def params(self) -> dict[str, Any]:
        return dataclasses.asdict(self) if dataclasses.is_dataclass(self) else {}

    def setup(self, trainer: EngineView) -> None:
        """Once before training (load a teacher, check the threat models, ...)."""

    @abstractmethod
    def loss(self, model: nn.Module, x: Tensor, y: Tensor, ctx: StepContext) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss to minimize on a batch (model in train mode) and statistics such as ``adv_acc``.

        Statistics are tensors (no host sync per step): scalars, averaged over the epoch's batches.
        """

    def epoch_start(self, trainer: EngineView, epoch: int) -> None:
        """Before each epoch's batches."""

    def epoch_end(self, trainer: EngineView, epoch: int) -> dict[str, float] | None:
        """After each epoch's batches (before the checkpoint); statistics returned go into the epoch's log row."""
        return None

    def state_dict(self) -> dict[str, Any] | None:
        """State the defense keeps across batches or epochs (MTARD's loss weights, RAMP's natural optimizer), saved
        in the training checkpoint so that a resumed run continues exactly; default: none. Values must be what
        ``torch.load(weights_only=True)`` reads back: numbers, strings, None, tensors, lists and dicts."""
        return None

    def load_state_dict(self, state: dict[str, Any] | None, trainer: EngineView) -> None:
        """Restore :meth:`state_dict` when a run resumes (after :meth:`setup`); ``state`` is None if there was none."""

    def trainable_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """The parameters this defense trains (default: all of them)."""
        return list(model.parameters())

    def save(self, out_dir, model: nn.Module) -> None:
        """Write extra artifacts beside the trained model (default: nothing)."""

    def wrap(self, model: nn.Module) -> nn.Module:
        """The model as used at inference (default: unchanged)."""
        return model

    def wrapper_spec(self) -> dict[str, Any] | None:
        """How to rebuild :meth:`wrap` from saved weights (stored beside the trained model)."""
        return None

    def saved_model_spec(self, out_dir, trainer: EngineView) -> str:
        """The model source that loads what the run saved in ``out_dir`` (default: ``trained:OUT_DIR``)."""
        return f"trained:{out_dir}"


def threat_list(texts: list[str] | tuple[str, ...] | str, name: str) -> list[ThreatModel]:
    """Parse a defense's threat-model parameter (one string or a list of them)."""
    items = [texts] if isinstance(texts, str) else list(texts)
    if not items:
        raise RbxError(f"defense '{name}': give at least one threat model")
    return [ThreatModel.parse(t) for t in items]


def build_attack(spec: str, name: str) -> Attack:
    """A training attack from its spec, with early stop off (training wants the highest-loss point).

    The setting goes through the factory, so it is validated and reaches an ensemble's components.
    """
    if "early_stop" not in _parameters(ATTACKS.get(spec).factory):
        raise RbxError(f"defense '{name}': attack '{spec}' cannot craft training examples (it has no early_stop "
                       "setting to return the highest-loss point); use an rbx attack such as pgd or apgd-ce")
    attack = ATTACKS.create(spec, early_stop=False)
    if not isinstance(attack, Attack):
        raise RbxError(f"defense '{name}': '{spec}' is not a single-threat attack")
    return attack
