"""The model boundary: what crosses from the user's model into rbx, and the model/data agreement checked first.

:class:`ModelAdapter` wraps every model the runner and ``rbx check`` evaluate:

- **one output adapter** (documented, the same everywhere): a logits tensor passes through; from a tuple
  or list the first tensor is taken (``(logits, features)``); from a mapping its ``logits`` key; from an
  object its ``logits`` attribute (Hugging Face style); ``output=KEY|INDEX`` (``--output``) picks another
  entry. Anything else is one clear error saying what the model returned;
- **errors in the user's model are the user's**: an exception raised inside the model's forward on the
  user's data becomes a one-line :class:`ModelError` that names the model and the input shape (exit 2),
  never an rbx "internal error".

:func:`check_agreement` runs before any attack and before anything is written: the normalization's
channel count against the data's, one tiny forward pass (does the model take the data's inputs at all?
it names what the model expects and what the data has), and the model's output count against the
dataset's class count (``allow_class_subset`` for data whose classes are a subset of the model's).
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import Tensor, nn

from ..data.datasets import EvalData
from ..errors import RbxError
from .loading import LoadedModel


class ModelError(RbxError):
    """The user's model failed on the user's data, or returned something that is not logits."""


class ModelAdapter(nn.Module):
    """The user's model as rbx calls it: logits out (see the module docstring), errors named.

    ``name`` is the model's name in messages; ``output`` selects the logits from a structured output.
    """

    def __init__(self, model: nn.Module, name: str, output: str | int | None = None) -> None:
        super().__init__()
        self.model = model
        self.name = name
        self.output = output
        self.training = model.training  # mirror the model's mode, so frozen() restores the user's model as it was

    def forward(self, x: Tensor) -> Tensor:
        try:
            out = self.model(x)
        except RbxError:
            raise
        except Exception as exc:
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise ModelError(f"model '{self.name}' failed on inputs of shape {list(x.shape)} "
                             f"({type(exc).__name__}: {text[:200]})") from exc
        return select_logits(out, self.name, self.output)


def select_logits(out: Any, name: str, output: str | int | None = None) -> Tensor:
    """The logits in a model's output (see the module docstring for the rule)."""
    if output is not None:
        try:
            if isinstance(output, int) or (isinstance(output, str) and output.lstrip("-").isdigit()):
                picked = out[int(output)]
            elif isinstance(out, dict):
                picked = out[output]
            else:
                picked = getattr(out, output)
        except (KeyError, IndexError, AttributeError, TypeError):
            raise ModelError(f"model '{name}' returned {_kind(out)}, which has no output {output!r} (--output)") from None
        if isinstance(picked, Tensor):
            return picked
        raise ModelError(f"model '{name}': its output {output!r} is {_kind(picked)}, not a logits tensor")
    if isinstance(out, Tensor):
        return out
    if isinstance(out, (tuple, list)):
        for item in out:
            if isinstance(item, Tensor):
                return item
    elif isinstance(out, dict):
        if isinstance(out.get("logits"), Tensor):
            return out["logits"]
    elif isinstance(getattr(out, "logits", None), Tensor):
        return out.logits
    raise ModelError(f"model '{name}' returned {_kind(out)}, not logits [N, K]: return a tensor, a tuple whose first "
                     "tensor is the logits, a dict or object with 'logits', or pick one with --output KEY|INDEX")


def _kind(obj: Any) -> str:
    if isinstance(obj, Tensor):
        return f"a tensor of shape {list(obj.shape)}"
    if isinstance(obj, dict):
        return f"a dict with keys {sorted(map(str, obj))[:6]}"
    if isinstance(obj, (tuple, list)):
        return f"a {type(obj).__name__} of {len(obj)} ({', '.join(type(o).__name__ for o in obj[:4])})"
    return f"a {type(obj).__name__}"


def expected_channels(module: nn.Module) -> int | None:
    """The input channels a model's first convolution takes, if it has one."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            return int(m.in_channels)
    return None


@torch.no_grad()
def check_agreement(net: nn.Module, loaded: LoadedModel, data: EvalData, device: torch.device,
                    allow_class_subset: bool = False, batch_size: int = 2) -> int:
    """Check the model and the data fit each other (see the module docstring); return the model's class count K.

    The forward pass takes at most ``batch_size`` images (and at most 2): a run's batch size is never exceeded.
    Each hint in the messages follows from what was seen (a channel count, the model's own error text).
    """
    c, shape = int(data.x.shape[1]), list(data.x.shape[1:])
    if loaded.normalization and len(loaded.normalization["mean"]) != c:
        raise ModelError(f"the normalization of model '{loaded.name}' has {len(loaded.normalization['mean'])} channels "
                         f"(mean {loaded.normalization['mean']}), the data has {c} ({shape}): give a --normalize for "
                         f"{c}-channel inputs")
    want = expected_channels(loaded.module)
    if want is not None and want != c:
        advice = {(3, 1): "the data is grayscale: repeat its channel three times (x.repeat(1, 3, 1, 1)) or evaluate the "
                          "model on its own dataset (--dataset)",
                  (1, 3): "the model takes grayscale inputs: convert the data to one channel or evaluate the model on its "
                          "own dataset (--dataset)"}.get((want, c), "evaluate it on its own dataset (--dataset)")
        raise ModelError(f"model '{loaded.name}' expects {want}-channel inputs, the data has {c} channels ({shape}): {advice}")
    n_probe = max(1, min(2, int(batch_size)))
    try:
        logits = net(data.x[:n_probe].to(device))
    except ModelError as exc:
        text = str(exc)
        if not _SIZE_WORDS.search(str(exc.__cause__ or "")):  # the model failed for another reason: its error says which
            raise
        hint = f" (its first layer takes {want} channels)" if want else ""
        raise ModelError(f"{text}; the model{hint} does not take the data's {shape} inputs: evaluate it on data of "
                         "the size it was made for (--dataset, or the dataset's preprocessing)") from None
    if logits.ndim != 2:
        raise ModelError(f"model '{loaded.name}' must return logits [N, K], got shape {list(logits.shape)} "
                         f"on inputs {[n_probe, *shape]}")
    k = int(logits.shape[1])
    n = data.num_classes
    if n is not None and n != k and not (allow_class_subset and n < k):
        hint = ("; if the data's classes are a subset of the model's (labels are model class indices), "
                "pass --allow-class-subset" if n < k else "")
        raise ModelError(f"model '{loaded.name}' has {k} outputs but the data ({data.source}) has {n} classes: "
                         f"evaluate it on its own dataset (--dataset){hint}")
    return k


#: Words in a model's error that say the input's size or shape did not fit (then the size hint applies).
_SIZE_WORDS = re.compile(r"shape|size|mat1|mat2|dimension|channel|kernel", re.IGNORECASE)
class LabelOnly(nn.Module):
    """A model that answers with its predicted label only: one-hot rows ``[N, K]`` (float32), no scores.

    What a label-only (decision-based) evaluation sees of a model (``labels:MODEL``, ``rbx run --label-only``).
    The output is computed without gradient tracking, so nothing can be backpropagated through it: an attack
    that tries fails instead of silently reading scores. ``argmax`` of the output is the model's prediction.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.training = model.training

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            out = self.model(x)
            logits = out if isinstance(out, Tensor) else select_logits(out, type(self.model).__name__)
            pred = logits.argmax(1)
            return torch.zeros(logits.shape, dtype=torch.float32, device=logits.device).scatter_(1, pred[:, None], 1.0)


def is_label_only(module: nn.Module) -> bool:
    """Whether ``module`` (or a model it wraps, through ``.model``) answers with labels only (:class:`LabelOnly`)."""
    seen = 0
    while module is not None and seen < 16:
        if isinstance(module, LabelOnly):
            return True
        module, seen = getattr(module, "model", None), seen + 1
    return False
