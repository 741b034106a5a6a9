"""A small randomized defense for tests and demos: a classifier behind Gaussian input noise.

    f(x) = model(clip(x + sigma * n, 0, 1)),  n ~ N(0, I) drawn afresh at every forward pass

(the inference of randomized smoothing without the vote, Cohen et al. 2019; also the "random noise"
defenses that EOT attacks were made for, Athalye et al. 2018). Two passes on the same input give
different logits, so rbx's pre-check ``deterministic`` flags it, and single-run attack numbers on it are
optimistic: it is the test subject for EOT attacks and majority re-checks, not a defense to rank.

Model source: ``noisy:MODEL[,sigma=S][,seed=K]`` (``MODEL`` any other model spec without commas).
The noise comes from the module's own generator when ``seed`` is given (re-seeded by :meth:`reseed`,
so a run that seeds it is reproducible), else from torch's global RNG (reproducible under
``torch.manual_seed``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from robustbench_ext.errors import RbxError
from robustbench_ext.models.loading import LoadedModel, load_model
from robustbench_ext.registry import MODELS
from robustbench_ext.runtime import check_seed


class GaussianNoiseInput(nn.Module):
    """``model(clip(x + sigma * N(0, I), 0, 1))`` with fresh noise at every call; ``x`` ``[N, C, H, W]`` in [0, 1].

    Gradients flow through the noisy input to ``x`` (the noise is a constant of each pass).
    """

    def __init__(self, model: nn.Module, sigma: float, seed: int | None = None) -> None:
        super().__init__()
        if not sigma >= 0:
            raise RbxError(f"noisy: sigma must be >= 0, got {sigma!r}")
        if seed is not None:
            check_seed(seed, "noisy: seed")  # torch takes any 64-bit value, but wraps negatives: refused, like rbx's seeds
        self.model = model
        self.sigma = float(sigma)
        self.seed = seed
        self._generator: torch.Generator | None = None

    def reseed(self, seed: int) -> None:
        """Restart the noise sequence from ``seed`` (makes the following passes reproducible)."""
        self.seed = check_seed(seed, "noisy: seed")
        self._generator = None

    def _noise(self, x: Tensor) -> Tensor:
        if self.seed is None:
            return torch.randn(x.shape, device=x.device, dtype=x.dtype)
        if self._generator is None or self._generator.device != x.device:
            self._generator = torch.Generator(device=x.device).manual_seed(self.seed)
        return torch.randn(x.shape, generator=self._generator, device=x.device, dtype=x.dtype)

    def forward(self, x: Tensor) -> Tensor:
        if self.sigma == 0:
            return self.model(x)
        return self.model((x + self.sigma * self._noise(x)).clamp(0.0, 1.0))


def _parse(arg: str) -> tuple[str, float, int | None]:
    head, *opts = [p.strip() for p in arg.split(",")]
    if not head:
        raise RbxError("noisy: write noisy:MODEL[,sigma=S][,seed=K], e.g. noisy:cifar10-smallcnn-linf-at,sigma=0.1")
    values: dict[str, str] = {}
    for o in opts:
        k, eq, v = o.partition("=")
        if not eq or k.strip() not in ("sigma", "seed"):
            raise RbxError(f"noisy: cannot read option '{o}'; known options: sigma=S, seed=K")
        values[k.strip()] = v.strip()
    try:
        sigma = float(values.get("sigma", 0.1))
        seed = int(values["seed"]) if "seed" in values else None
    except ValueError:
        raise RbxError(f"noisy: sigma must be a number and seed an integer, got {values}") from None
    if not sigma >= 0:
        raise RbxError(f"noisy: sigma must be >= 0, got {sigma}")
    if seed is not None:
        check_seed(seed, "noisy: seed")
    return head, sigma, seed


@MODELS.register("noisy", takes_arg=True, arg_name="MODEL[,sigma=S][,seed=K]",
                 summary="MODEL behind Gaussian input noise (fresh noise every pass): a randomized model for EOT tests")
def noisy_model(arg: str, arch_override: str | None = None, num_classes: int | None = None) -> LoadedModel:
    spec, sigma, seed = _parse(arg)
    base = load_model(spec, arch=arch_override, num_classes=num_classes)
    module = GaussianNoiseInput(base.module, sigma, seed).eval()
    return LoadedModel(module, f"noisy({base.name}, sigma={sigma:g})", base.architecture, base.source, base.sha256,
                       extra={"randomized": {"kind": "gaussian-input-noise", "sigma": sigma, "seed": seed, "base": base.name}})
