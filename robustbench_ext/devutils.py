"""Small leaf helpers that every layer needs: devices, seeds, frozen models (after foolbox's ``devutils``).

Anything that needs a seed or a device imports this module, never the runner.
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


def check_batch_size(batch_size: object, flag: str = "--batch-size") -> int:
    """The one check of a batch size: a positive int (bools are not ints here)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise RbxError(f"{flag} must be a positive integer, got {batch_size!r}")
    return batch_size
