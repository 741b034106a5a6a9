"""Engine switches for the attack search: reduced precision, channels_last, ``torch.compile``.

The search (every forward and backward an attack makes) may run on a faster version of the model;
the verdict never does: with any switch on, the runner recomputes every attack's success with the
plain float32 model on the returned points (which the attack contract has already checked to lie in
ball ∩ box in float32), so a bf16 rounding can cost attack strength but never report a false
success. The record's ``config.search`` says which switches were used.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import RbxError

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class SearchOptions:
    """How the attack search runs the model (the float32 verification is unaffected)."""

    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise RbxError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")

    @property
    def plain(self) -> bool:
        """True when the search runs the very model that verifies (nothing to re-verify)."""
        return self.precision == "fp32" and not self.compile and not self.channels_last

    def describe(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class SearchModel(nn.Module):
    """The model as the search sees it: autocast to ``dtype`` (logits back in float32), channels_last input."""

    def __init__(self, model: nn.Module, dtype: torch.dtype | None, channels_last: bool) -> None:
        super().__init__()
        self.model = model
        self.dtype = dtype
        self.channels_last = channels_last

    def forward(self, x: Tensor) -> Tensor:
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.dtype is None:
            return self.model(x)
        with torch.autocast(x.device.type, dtype=self.dtype):
            out = self.model(x)
        return out.float()


def search_model(model: nn.Module, opts: SearchOptions, device: torch.device) -> nn.Module:
    """The module attacks should call (``model`` itself when every switch is off)."""
    if opts.precision == "fp16" and device.type != "cuda":
        raise RbxError("--precision fp16 needs CUDA; on CPU use bf16 or fp32")
    if opts.plain:
        return model
    if opts.channels_last:  # a copy: the float32 model that verifies keeps its own layout
        model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    net: nn.Module = SearchModel(model, PRECISIONS[opts.precision], opts.channels_last)
    if opts.compile:
        if not hasattr(torch, "compile"):
            raise RbxError("--compile needs torch >= 2.0")
        # dynamic shapes: the active set shrinks as points are fooled
        net = torch.compile(net, dynamic=True)
    return net
