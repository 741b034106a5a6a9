"""The runtime spine: devices, seeds and frozen models, which every layer needs.

Anything that needs a seed or a device imports this module, never the runner.

Seeds. A run has one seed; every random number rbx draws comes from :func:`stream_seed` (``run seed``,
``stream``, keys...), where the stream is one row of :data:`SEED_STREAMS`. The table is the one place that
says which key belongs to what, so no two uses share numbers by accident; its values never change, so
records made with them stay reproducible.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np
import torch
from torch import nn

from .errors import RbxError


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


#: Seed streams: name -> the key that starts every seed of that stream (see the module docstring). The
#: attack stages of a threat model start with its flag column (0, 1, ...), the union stages with the
#: ``union`` key: both are followed by the stage's position in its cascade and the batch index.
SEED_STREAMS: dict[str, tuple[int, ...]] = {
    "stage": (),              # an attack call in a threat model's cascade: (column, position, batch)
    "union": (1_000_003,),    # a union-stage attack call: (union, position, batch)
    "shard": (2_000_003,),    # a shard's run seed in a streamed evaluation: (shard, k)
    "samples": (7919,),       # a cascade stage's per-sample seeds inside an ensemble: (samples, i)
    "sample": (),             # one sample's random draw within an attack call: (sample key, draw number)
    "draws": (0x44524157,),   # "DRAW": majority re-checks of a randomized model: (draws, 0 clean / 1 stage / 2 and 3 --curve, ...; evaluation/majority.py)
    "curve": (0x43555256,),   # "CURV": --curve's extra minimum-norm and reference runs
    "audit": (0x41554454,),   # "AUDT": the audit's random sample of robust points: (audit, column)
    "checks": (0x43484B53,),  # "CHKS": the attack-based masking checks: (checks, 0, stage[, batch > 0]), (checks, 1[, batch > 0])
                              # for the black box, (checks, 2, batch > 0) for draw_spread's later batches
    "train-order": (1,),      # training: the shuffle and augmentation of an epoch: (1, epoch)
    "train-step": (2,),       # training: one step's attacks: (2, epoch, step), then the call number
}


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed from a seed and integer keys (prefer :func:`stream_seed`, which names the keys).

    Only the low 32 bits of ``seed`` enter (a derived 63-bit seed is keyed by them); that is why a run's own
    seed is checked to lie in [0, 2**32) where it enters rbx (:func:`check_seed`): distinct run seeds must
    never share a stream.
    """
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *keys]).generate_state(2, dtype=np.uint32).view(np.uint64)[0] >> 1)


def stream_seed(seed: int, stream: str, *keys: int) -> int:
    """The seed of one use of randomness: run ``seed``, a row of :data:`SEED_STREAMS`, and that use's keys."""
    try:
        prefix = SEED_STREAMS[stream]
    except KeyError:
        raise RbxError(f"unknown seed stream {stream!r}; known: {', '.join(SEED_STREAMS)}") from None
    return derive_seed(seed, *prefix, *keys)


#: Seeds are unsigned 32-bit integers (what numpy's seed sequences and the records take).
MAX_SEED = 2**32 - 1


def check_seed(seed: object, flag: str = "seed") -> int:
    """The one check of a seed: an int in [0, 2**32 - 1] (distinct seeds give distinct streams)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) <= MAX_SEED:
        raise RbxError(f"{flag} must be an integer from 0 to {MAX_SEED} (2**32 - 1), got {seed!r}")
    return int(seed)


# ---- the caller's autograd context --------------------------------------------------------------------
#: Attacks need input gradients whatever grad mode the caller is in: under ``torch.no_grad()`` they turn
#: gradients on where they take them; ``torch.inference_mode()`` is left for the duration of an rbx call
#: (:func:`outside_inference_mode`), inputs created under it are cloned into normal tensors
#: (:func:`autograd_tensor`), and a model whose own weights were created under it is refused in one line
#: (:func:`check_autograd_model`): autograd cannot differentiate through inference tensors.


def outside_inference_mode():
    """A context manager (and decorator): inference mode off for its duration, grad mode left as the caller set it."""
    return torch.inference_mode(False)


@contextlib.contextmanager
def autograd_on() -> Iterator[None]:
    """Inference mode off and gradients on, whatever the caller's context (``no_grad``, ``inference_mode``)."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


def autograd_tensor(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself, or a normal copy of it if it was created under ``torch.inference_mode()`` (call this outside
    inference mode: a copy made inside it is an inference tensor again)."""
    return t.clone() if isinstance(t, torch.Tensor) and t.is_inference() else t


def check_autograd_model(model: object, name: str = "the model") -> None:
    """Raise a one-line :class:`RbxError` if ``model`` holds weights or buffers created under ``torch.inference_mode()``."""
    tensors = [*getattr(model, "parameters", lambda: [])(), *getattr(model, "buffers", lambda: [])()] \
        if isinstance(model, nn.Module) else []
    if any(t.is_inference() for t in tensors):
        raise RbxError(f"{name} holds weights created under torch.inference_mode() (inference tensors), which autograd "
                       "cannot differentiate through, so no attack can take its input gradient: create or load the model "
                       "outside inference_mode (torch.no_grad() is fine), or pass copy.deepcopy(model) made outside it")


def seed_arg(text: str) -> int:
    """An ``argparse`` type for a ``--seed`` option (the benchmarks' scripts): :func:`check_seed` on the integer, so that a
    script refuses the seeds ``rbx`` refuses (argparse prints the message as a usage error)."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a seed is an integer from 0 to {MAX_SEED}, got {text!r}") from None
    try:
        return check_seed(value)
    except RbxError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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


def check_batch_size(batch_size: object, flag: str = "--batch-size") -> int:
    """The one check of a batch size: a positive int (bools are not ints here)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise RbxError(f"{flag} must be a positive integer, got {batch_size!r}")
    return batch_size
