"""The adaptive smoothing mixer and MixedNUTS: one classifier from a standard model g and a robust model h.

    out(x) = log[ (1 - alpha(x)) * softmax(s_g g(x)) + alpha(x) * softmax(s_h m(h(x))) ]

(Bai et al., "Improving the accuracy-robustness trade-off of classifiers via adaptive smoothing",
SIMODS 2024; Bai, Zhou, Patel & Sojoudi, "MixedNUTS", TMLR 2024). Mixing happens in probability space;
the output is a log-probability, so rbx's attacks and the runner use it as logits. Three kinds of alpha:

- a constant (``alpha=0.7``): the zero-training mixed classifier; alpha = 0 is g, alpha = 1 is h;
- MixedNUTS (``nuts=PARAMS.json``): a constant alpha and the nonlinear map m of the robust logits:
  layer-norm over the top-k logits, u = GELU(z + c), v = sign(u)|u|^p, m = s v. :func:`fit_mixednuts`
  chooses (s, p, c, alpha) on held-out images from the robust model alone. The map is steep, so by
  default gradients bypass it (as the authors' adaptive attack does): the forward value is exact, the
  gradient is that of the mixture with the raw robust probabilities and alpha_grad = 0.9;
- a mixing network (``mixnet=DIR`` or ``alpha=net``): alpha(x) = sigmoid(BN(M(features)) * scale + bias),
  where M reads intermediate feature maps of both base models. Gradients flow through alpha(x): attacks
  are end-to-end. It is trained with ``rbx train --defense adaptive-smoothing`` (base models frozen):
  clean images labelled 0 ("use g"), adversarial images from APGD against the whole composite with a
  random radius labelled 1 ("use h"), per-sample loss BCE(gamma, label) + 0.5 CE(out, y) + 0.1 BCE*CE,
  clean samples weighted 2.

Model source: ``mix:STD+ROB[,alpha=A | ,nuts=FILE | ,mixnet=DIR | ,alpha=net][,s_std=..,s_rob=..]``.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustbench_ext.defense import Defense, build_attack
from robustbench_ext.errors import ModelLoadError, RbxError
from robustbench_ext.losses import accuracy
from robustbench_ext.models import LoadedModel, load_model, read_state_dict
from robustbench_ext.registry import DEFENSES, MODELS
from robustbench_ext.threat import ThreatModel

#: Modules whose outputs feed the mixing network, per base architecture (early, late).
FEATURES = {"smallcnn": ("4", "9"), "resnet18": ("layer1", "layer2"), "preact-resnet18": ("layer1", "layer2")}
GELU_MIN = -0.7517916  # GELU decreases below this point: the map is monotone above it


# ---- the MixedNUTS map -------------------------------------------------------------------------------
def nuts_map(z: Tensor, s: float, p: float, c: float, k: int = 250) -> Tensor:
    """MixedNUTS' nonlinear logit map: layer-norm over the top-k logits, GELU(. + c), sign-power p, scale s."""
    z = z.float()
    k = min(k, z.shape[1])
    top = z.topk(k, dim=1).values
    zn = (z - top.mean(1, keepdim=True)) / torch.sqrt(top.var(1, unbiased=False, keepdim=True) + 1e-8)
    u = F.gelu(zn + c)
    return s * torch.sign(u) * u.abs().pow(p)


def log_mix(log_p_std: Tensor, log_p_rob: Tensor, alpha: Tensor | float) -> Tensor:
    """log((1 - a) p_std + a p_rob), stable, for a scalar or per-sample alpha in [0, 1]."""
    a = torch.as_tensor(alpha, dtype=log_p_std.dtype, device=log_p_std.device)
    if a.ndim == 0:
        if float(a) <= 0:
            return log_p_std
        if float(a) >= 1:
            return log_p_rob
        a = a.expand(log_p_std.shape[0])
    a = a.reshape(-1, 1).clamp(1e-12, 1 - 1e-12)
    return torch.logaddexp(torch.log1p(-a) + log_p_std, torch.log(a) + log_p_rob)


def _submodule(model: nn.Module, name: str) -> nn.Module:
    for m in (model, getattr(model, "model", None)):
        if m is not None:
            try:
                return m.get_submodule(name)
            except AttributeError:
                continue
    raise RbxError(f"no module '{name}' in the base model (mixing-network features)")


class MixingNet(nn.Module):
    """alpha(x) from the two base models' early and late feature maps (early maps are 2x the late size)."""

    def __init__(self, c_early: int, c_late: int, width: int = 64, gamma_scale: float = 2.0, gamma_bias: float = 0.4):
        super().__init__()
        self.early = nn.Sequential(nn.Conv2d(c_early, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.late = nn.Sequential(nn.Conv2d(c_late, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(width, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 1, bias=False))
        self.norm = nn.BatchNorm1d(1, affine=False, momentum=0.01)
        self.gamma_scale, self.gamma_bias = gamma_scale, gamma_bias

    def gamma(self, early: Tensor, late: Tensor) -> Tensor:
        """The pre-sigmoid mixing logit ``[N]`` (what the BCE term supervises)."""
        g = self.body(self.early(early) + self.late(late))
        return (self.norm(g) * self.gamma_scale + self.gamma_bias).squeeze(1)


class MixedClassifier(nn.Module):
    """The composite model (see the module docstring); base models stay frozen and in eval mode."""

    def __init__(self, std: nn.Module, rob: nn.Module, *, alpha: float | None = None, mixnet: MixingNet | None = None,
                 nuts: dict[str, float] | None = None, s_std: float = 1.0, s_rob: float = 1.0,
                 features: tuple[tuple[str, str], tuple[str, str]] | None = None, grad_bypass: bool = True,
                 alpha_grad: float = 0.9) -> None:
        super().__init__()
        if (alpha is None) == (mixnet is None):
            raise RbxError("a mixed classifier needs exactly one of a constant alpha and a mixing network")
        if alpha is not None and not 0 <= alpha <= 1:
            raise RbxError(f"alpha must be in [0, 1], got {alpha}")
        self.std, self.rob, self.mixnet = std, rob, mixnet
        for p in list(std.parameters()) + list(rob.parameters()):
            p.requires_grad_(False)
        self.alpha, self.nuts, self.s_std, self.s_rob = alpha, nuts, s_std, s_rob
        self.grad_bypass, self.alpha_grad = grad_bypass, alpha_grad
        self._feats: dict[str, Tensor] = {}
        self._hooks = []
        if mixnet is not None:
            if features is None:
                raise RbxError("a mixing network needs the base models' feature layers")
            for tag, model, names in (("g", std, features[0]), ("h", rob, features[1])):
                for i, name in enumerate(names):
                    self._hooks.append(_submodule(model, name).register_forward_hook(self._keep(f"{tag}{i}")))
        self.last_gamma: Tensor | None = None

    def _keep(self, key: str):
        def hook(module, inputs, output):
            self._feats[key] = output
        return hook

    def train(self, mode: bool = True) -> "MixedClassifier":
        super().train(mode)
        self.std.eval()
        self.rob.eval()
        return self

    def forward(self, x: Tensor) -> Tensor:
        self._feats.clear()
        zg, zh = self.std(x).float() * self.s_std, self.rob(x).float() * self.s_rob
        lg = F.log_softmax(zg, 1)
        if self.mixnet is not None:
            gamma = self.mixnet.gamma(torch.cat([self._feats["g0"], self._feats["h0"]], 1),
                                      torch.cat([self._feats["g1"], self._feats["h1"]], 1))
            self.last_gamma = gamma
            return log_mix(lg, F.log_softmax(zh, 1), torch.sigmoid(gamma))
        if self.nuts is None:
            return log_mix(lg, F.log_softmax(zh, 1), self.alpha)
        out = log_mix(lg, F.log_softmax(nuts_map(zh, self.nuts["s"], self.nuts["p"], self.nuts["c"]), 1), self.alpha)
        if not self.grad_bypass or not torch.is_grad_enabled():
            return out
        # Exact value, gradient of the smooth surrogate (raw robust probabilities, alpha_grad): no masking by the map.
        surrogate = log_mix(lg, F.log_softmax(zh, 1), self.alpha_grad)
        return out.detach() + surrogate - surrogate.detach()


# ---- fitting MixedNUTS -------------------------------------------------------------------------------
def _prob_margin(z: Tensor) -> Tensor:
    top2 = z.softmax(1).topk(2, dim=1).values
    return top2[:, 0] - top2[:, 1]


def fit_mixednuts(z_clean_wrong: Tensor, z_adv_correct: Tensor, beta: float = 98.5,
                  s_grid: Sequence[float] = tuple(np.geomspace(0.1, 10, 8)),
                  p_grid: Sequence[float] = tuple(np.linspace(1, 6, 8)),
                  c_grid: Sequence[float] = tuple(np.linspace(-3, 1, 8))) -> dict[str, float]:
    """Choose (s, p, c, alpha) from robust-model logits (the official rule, ``calc_spca.py``).

    ``z_clean_wrong``: logits on clean held-out images the robust model gets wrong; ``z_adv_correct``: logits on
    attacked held-out images it still gets right. For each grid point, ``cutoff`` is the (100 - beta)-th
    percentile of the mapped top-1 minus top-2 probability margins on the attacked-correct images; the
    objective is the share of clean-wrong images whose margin reaches the cutoff (lower: the robust model
    is unsure where it is wrong, so the standard model can take over there). ``alpha = 1 / (1 + cutoff)``
    keeps every attacked-correct image whose margin reaches the cutoff correct in the mixture.
    """
    if not 0 < beta < 100:
        raise RbxError(f"beta must be in (0, 100), got {beta}")
    if len(z_adv_correct) == 0 or len(z_clean_wrong) == 0:
        raise RbxError("fitting MixedNUTS needs clean-wrong and attacked-correct held-out images")
    best = None
    for s, p, c in itertools.product(s_grid, p_grid, c_grid):
        m_adv = _prob_margin(nuts_map(z_adv_correct, s, p, c))
        cutoff = float(torch.quantile(m_adv, 1 - beta / 100))
        m_wrong = _prob_margin(nuts_map(z_clean_wrong, s, p, c))
        obj = float((m_wrong >= cutoff).float().mean())
        key = (obj, -cutoff)
        if best is None or key < best[0]:
            best = (key, {"s": float(s), "p": float(p), "c": float(c), "cutoff": cutoff, "objective": obj})
    params = best[1]
    params["alpha"] = 1.0 / (1.0 + params["cutoff"])
    params["beta"] = beta
    return params


# ---- the model source ---------------------------------------------------------------------------------
def _parse_mix(arg: str) -> tuple[str, str, dict[str, str]]:
    head, *opts = arg.split(",")
    if "+" not in head:
        raise RbxError(f"mix:{arg}: write mix:STD+ROB[,alpha=A|,nuts=FILE|,mixnet=DIR|,alpha=net]")
    std, rob = head.split("+", 1)
    options = {}
    for o in opts:
        k, eq, v = o.partition("=")
        if not eq:
            raise RbxError(f"mix: cannot parse option '{o}' (write KEY=VALUE)")
        options[k.strip()] = v.strip()
    unknown = set(options) - {"alpha", "nuts", "mixnet", "s_std", "s_rob", "bypass", "alpha_grad"}
    if unknown:
        raise RbxError(f"mix: unknown options {sorted(unknown)}; known: alpha, nuts, mixnet, s_std, s_rob, bypass, alpha_grad")
    return std, rob, options


@MODELS.register("mix", takes_arg=True, arg_name="STD+ROB[,alpha=A|,nuts=FILE|,mixnet=DIR|,alpha=net]",
                 summary="adaptive smoothing / MixedNUTS composite of a standard and a robust model")
def mix_model(arg: str, arch_override: str | None = None, num_classes: int | None = None) -> LoadedModel:
    std_spec, rob_spec, o = _parse_mix(arg)
    std, rob = load_model(std_spec), load_model(rob_spec)
    kw: dict[str, Any] = {"s_std": float(o.get("s_std", 1.0)), "s_rob": float(o.get("s_rob", 1.0)),
                          "grad_bypass": o.get("bypass", "true").lower() != "false", "alpha_grad": float(o.get("alpha_grad", 0.9))}
    source = {"std": std.source, "rob": rob.source}
    if "mixnet" in o or o.get("alpha") == "net":
        features = tuple(FEATURES.get(m.architecture) or _no_features(m) for m in (std, rob))
        mixnet = _new_mixnet(std.module, rob.module, features)
        composite = MixedClassifier(std.module, rob.module, mixnet=mixnet, features=features, **kw)
        if "mixnet" in o:
            path = Path(o["mixnet"])
            path = path / "mixnet.pt" if path.is_dir() else path
            if not path.is_file():
                raise ModelLoadError(f"mixing network not found: {path} (train one with `rbx train --defense adaptive-smoothing`)")
            mixnet.load_state_dict(read_state_dict(path))
            source["mixnet"] = str(path)
        kind = "mixnet"
    elif "nuts" in o:
        try:
            nuts = json.loads(Path(o["nuts"]).read_text())
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot read MixedNUTS parameters {o['nuts']}: {exc}") from None
        composite = MixedClassifier(std.module, rob.module, alpha=float(nuts["alpha"]), nuts=nuts, **kw)
        source["nuts"] = o["nuts"]
        kind = "mixednuts"
    else:
        try:
            alpha = float(o.get("alpha", 0.5))
        except ValueError:
            raise RbxError(f"mix: alpha must be a number in [0, 1] or 'net', got {o.get('alpha')!r}") from None
        composite = MixedClassifier(std.module, rob.module, alpha=alpha, **kw)
        kind = f"constant alpha={alpha:g}"
    if kind == "mixednuts" and not composite.grad_bypass:
        kind += ", exact gradients"  # the same classifier attacked without the bypass: its own leaderboard row
    return LoadedModel(composite.eval(), f"mix({std.name}+{rob.name}, {kind})", f"mix[{std.architecture}+{rob.architecture}]",
                       json.dumps(source), None, extra={"mix": {"std": std.name, "rob": rob.name, "kind": kind, **o}})


def _no_features(m: LoadedModel):
    raise RbxError(f"no mixing-network features known for architecture '{m.architecture}'; known: {', '.join(FEATURES)}")


@torch.no_grad()
def _new_mixnet(std: nn.Module, rob: nn.Module, features) -> MixingNet:
    """A mixing network sized by a probe pass through both base models' feature layers."""
    shapes = {}
    hooks = []
    for tag, model, names in (("g", std, features[0]), ("h", rob, features[1])):
        for i, name in enumerate(names):
            hooks.append(_submodule(model, name).register_forward_hook(
                lambda mod, inp, out, key=f"{tag}{i}": shapes.__setitem__(key, out.shape)))
    probe = torch.zeros(2, 3, 32, 32, device=next(std.parameters()).device)
    std.eval()(probe)
    rob.eval()(probe)
    for h in hooks:
        h.remove()
    return MixingNet(shapes["g0"][1] + shapes["h0"][1], shapes["g1"][1] + shapes["h1"][1])


# ---- training the mixing network ------------------------------------------------------------------------
@DEFENSES.register("adaptive-smoothing", summary="train the mixing network of a mix:STD+ROB,alpha=net composite (Bai et al.)")
@dataclass(eq=False)
class AdaptiveSmoothing(Defense):
    """BCE + CE + product loss on clean (label 0) and composite-adversarial (label 1) images; only M trains."""

    name: ClassVar[str] = "adaptive-smoothing"
    smoke_params: ClassVar[dict] = {"attack": "apgd-ce:steps=2"}
    smoke_init: ClassVar[str | None] = "mix:cifar10-smallcnn-linf-at+cifar10-smallcnn-linf-at,alpha=net"

    threat: str = "Linf:8/255"
    attack: str = "apgd-ce:steps=10"
    eps_low: float = 0.4  # the attack's radius is eps * U(eps_low, eps_high) per batch
    eps_high: float = 1.1
    c_bce: float = 1.0
    c_ce: float = 0.5
    c_prod: float = 0.1
    clean_weight: float = 2.0

    def __post_init__(self) -> None:
        self._threat = ThreatModel.parse(self.threat)
        self._attack = build_attack(self.attack, self.name)
        if not 0 < self.eps_low <= self.eps_high:
            raise RbxError("defense 'adaptive-smoothing': need 0 < eps_low <= eps_high")

    def trainable_parameters(self, model: nn.Module):
        if not isinstance(model, MixedClassifier) or model.mixnet is None:
            raise RbxError("defense 'adaptive-smoothing' trains a mixing network: use --init 'mix:STD+ROB,alpha=net'")
        return list(model.mixnet.parameters())

    def save(self, out_dir, model) -> None:
        import io

        from robustbench_ext.records import atomic_write_bytes

        buf = io.BytesIO()
        torch.save(model.mixnet.state_dict(), buf)
        atomic_write_bytes(Path(out_dir) / "mixnet.pt", buf.getvalue())

    def loss(self, model, x, y, ctx):
        factor = self.eps_low + (self.eps_high - self.eps_low) * float(torch.rand(1, generator=ctx.generator))
        threat = ThreatModel(self._threat.norm, self._threat.eps * factor)
        x_adv = ctx.adversary(self._attack, model, x, y, threat)
        inputs = torch.cat([x, x_adv])
        labels = torch.cat([y, y])
        sup = torch.cat([torch.zeros(len(x)), torch.ones(len(x))]).to(x.device)
        weight = torch.cat([torch.full((len(x),), self.clean_weight), torch.ones(len(x))]).to(x.device)
        out = model(inputs)
        bce = F.binary_cross_entropy_with_logits(model.last_gamma.float(), sup, reduction="none")
        ce = F.nll_loss(out, labels, reduction="none")
        per = self.c_bce * bce + self.c_ce * ce + self.c_prod * bce * ce
        alpha = torch.sigmoid(model.last_gamma.detach())
        return (weight * per).sum() / weight.sum(), {
            "clean_acc": accuracy(out[: len(x)], y), "adv_acc": accuracy(out[len(x):], y),
            "alpha_clean": alpha[: len(x)].mean(), "alpha_adv": alpha[len(x):].mean()}
