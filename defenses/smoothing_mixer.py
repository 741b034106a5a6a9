"""The adaptive smoothing mixer and MixedNUTS: one classifier from a standard model g and a robust model h.

    out(x) = log[ (1 - alpha(x)) * m_g(s_g g(x)) + alpha(x) * softmax(s_h m(h(x))) ]

(Bai et al., "Improving the accuracy-robustness trade-off of classifiers via adaptive smoothing",
SIMODS 2024; Bai, Zhou, Patel & Sojoudi, "MixedNUTS", TMLR 2024). Mixing happens in probability space;
the output is a log-probability, so rbx's attacks and the runner use it as logits. Three kinds of alpha:

- a constant (``alpha=0.7``): the zero-training mixed classifier; alpha = 0 is g, alpha = 1 is h;
  m_g is the softmax;
- MixedNUTS (``nuts=PARAMS.json``): a constant alpha and the nonlinear map m of the robust logits
  (float64, as the authors' ``LNClampPowerScaleMap``): layer-norm over the top-k logits (unbiased
  variance), u = GELU(z + c), v = sign(u)|u|^p, m = s v. :func:`fit_mixednuts` chooses (s, p, c, alpha) on
  held-out images from the robust model alone. In the authors' best setting (the default, ``std_map=onehot``)
  m_g is the one-hot vector of g's prediction (their ``HardMaxMap``); ``std_map=softmax`` keeps g's softmax.
  The map is steep, so attacks differentiate a smooth surrogate while the value stays exact (straight-
  through, :func:`value_with_grad_of`). Gradient modes (option ``grad=``):

  * ``surrogate`` (default; the authors' adaptive attack with ``--disable_nonlin_for_grad``):
    (1 - a_d) softmax(g) + a_d (0.9 softmax(h) + 0.1 softmax(m(h))), a_d = the fitted ``alpha_diffable``
    (the alpha a mixture without the map would get at the same beta), or ``alpha_grad=``;
  * ``nonlin`` (their ``--use_nonlin_for_grad``): (1 - alpha) softmax(g) + alpha softmax(m(h));
  * ``rbx-bypass`` (rbx's earlier attack, kept as an alternative): (1 - 0.9) softmax(g) + 0.9 softmax(h),
    0.9 or ``alpha_grad=``; the map is skipped entirely;
  * ``exact``: the classifier's own gradient (``bypass=false`` is an old spelling of it).

- a mixing network (``mixnet=DIR`` or ``alpha=net``): alpha(x) from M, which reads intermediate feature
  maps of both base models: gamma = BN(M(features)) * gamma_scale + gamma_bias, alpha = sigmoid(gamma). As
  in the authors' ``CompositeModel``, training and inference use different constants
  (:class:`MixnetSettings`): in training (and the training attack) (2, 0.4), with M's output clamped to its
  batch mean +- 0.6 std in train mode; at inference (eval mode) (3, 20), then alpha is mapped into
  [alpha_min, alpha_max] = [0.2, 0.95] (their CIFAR-10 ResNet-18 AT configuration). The settings are saved
  beside the network (``mixnet.json``); a mixing network saved without them gets these defaults.
  ``eval_settings=false`` evaluates with the training constants and an unbounded alpha instead. Gradients
  flow through alpha(x): attacks are end-to-end. It is trained with ``rbx train --defense
  adaptive-smoothing`` (base models frozen): clean images labelled 0 ("use g"), adversarial images from
  APGD against the whole composite with a random radius labelled 1 ("use h"), per-sample loss
  BCE(gamma, label) + 0.5 CE(out, y) + 0.1 BCE*CE, clean samples weighted 2; AdamW, lr 1e-4, weight decay
  1e-5, warm-up and cosine decay (the authors' recipe).

Model source: ``mix:STD+ROB[,alpha=A | ,nuts=FILE[,grad=..][,std_map=..] | ,mixnet=DIR | ,alpha=net][,s_std=..,s_rob=..]``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustbench_ext.training.contract import Defense, Recipe, build_attack
from robustbench_ext.errors import ModelLoadError, RbxError
from robustbench_ext.attack.losses import accuracy
from robustbench_ext.models.loading import LoadedModel, file_sha256, load_model, read_state_dict
from robustbench_ext.registry import DEFENSES, MODELS
from robustbench_ext.attack.threat import ThreatModel

log = logging.getLogger(__name__)

#: Modules whose outputs feed the mixing network, per base architecture (early, late).
FEATURES = {"smallcnn": ("4", "9"), "resnet18": ("layer1", "layer2"), "preact-resnet18": ("layer1", "layer2")}
GELU_MIN = -0.7517916  # GELU decreases below this point: the map is monotone above it
#: How the gradient of a MixedNUTS composite is taken (see the module docstring).
GRAD_MODES = ("surrogate", "nonlin", "rbx-bypass", "exact")
#: What the standard model's logits become before mixing in a MixedNUTS composite.
STD_MAPS = ("onehot", "softmax")
#: Share of the raw robust probabilities in the authors' surrogate (their ``raw_ratio``).
RAW_RATIO = 0.9
#: Surrogate alpha when neither ``alpha_grad=`` nor a fitted ``alpha_diffable`` is given (rbx's earlier value).
DEFAULT_ALPHA_GRAD = 0.9


# ---- the MixedNUTS map -------------------------------------------------------------------------------
def nuts_map(z: Tensor, s: float, p: float, c: float, k: int = 250) -> Tensor:
    """MixedNUTS' nonlinear logit map ``[N, K] -> [N, K]`` float64: layer-norm over the top-k logits (unbiased
    variance, as ``torch.var``'s default in the authors' ``normalize_topk``), GELU(. + c), sign-power p, scale s."""
    z = z.double()
    k = min(k, z.shape[1])
    top = z.topk(k, dim=1).values
    zn = (z - top.mean(1, keepdim=True)) / torch.sqrt(top.var(1, keepdim=True) + 1e-8)
    u = F.gelu(zn + c)
    return s * torch.sign(u) * u.abs().pow(p)


def log_mix(log_p_std: Tensor, log_p_rob: Tensor, alpha: Tensor | float) -> Tensor:
    """log((1 - a) p_std + a p_rob), stable, for a scalar or per-sample alpha in [0, 1] (``-inf`` entries allowed)."""
    a = torch.as_tensor(alpha, dtype=log_p_std.dtype, device=log_p_std.device)
    if a.ndim == 0:
        if float(a) <= 0:
            return log_p_std
        if float(a) >= 1:
            return log_p_rob
        a = a.expand(log_p_std.shape[0])
    a = a.reshape(-1, 1).clamp(1e-12, 1 - 1e-12)
    return torch.logaddexp(torch.log1p(-a) + log_p_std, torch.log(a) + log_p_rob)


def log_one_hot(z: Tensor) -> Tensor:
    """``[N, K]``: log of the one-hot vector of ``z``'s argmax (0 there, -inf elsewhere): the authors' ``HardMaxMap``."""
    hot = F.one_hot(z.argmax(1), z.shape[1]).bool()
    return torch.zeros_like(z).masked_fill(~hot, float("-inf"))


class _ValueWithGradOf(torch.autograd.Function):
    @staticmethod
    def forward(ctx, value: Tensor, surrogate: Tensor) -> Tensor:
        return value.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):
        return None, grad


def value_with_grad_of(value: Tensor, surrogate: Tensor) -> Tensor:
    """``value`` bit for bit, with the gradient of ``surrogate`` (same shape).

    Unlike ``value.detach() + surrogate - surrogate.detach()``, which rounds (up to ~2e-6 here), the forward
    result IS ``value``: the logits an attack sees in gradient mode are the model's own.
    """
    return _ValueWithGradOf.apply(value.detach(), surrogate)


def _submodule(model: nn.Module, name: str) -> nn.Module:
    for m in (model, getattr(model, "model", None)):
        if m is not None:
            try:
                return m.get_submodule(name)
            except AttributeError:
                continue
    raise RbxError(f"no module '{name}' in the base model (mixing-network features)")


# ---- the mixing network -----------------------------------------------------------------------------
@dataclass(frozen=True)
class MixnetSettings:
    """How a mixing network's output becomes alpha (Bai et al., ``models/comp_model.py``; defaults: their
    CIFAR-10 ResNet-18 AT configuration ``configs/cifar10_at_apgd.yaml``).

    Training (and the training attack): gamma = BN(M) * ``gamma_scale`` + ``gamma_bias``, alpha = sigmoid(gamma),
    M's raw output clamped to mean +- ``clamp_std`` std of the batch in train mode (0: no clamp). Inference:
    gamma = BN(M) * ``eval_gamma_scale`` + ``eval_gamma_bias``, alpha = alpha_min + (alpha_max - alpha_min)
    sigmoid(gamma) (their alpha_bias = 0.2 and alpha_scale = 0.75).
    """

    gamma_scale: float = 2.0
    gamma_bias: float = 0.4
    eval_gamma_scale: float = 3.0
    eval_gamma_bias: float = 20.0
    alpha_min: float = 0.2
    alpha_max: float = 0.95
    clamp_std: float = 0.6

    def __post_init__(self) -> None:
        if not 0 <= self.alpha_min <= self.alpha_max <= 1:
            raise RbxError(f"mixing network: need 0 <= alpha_min <= alpha_max <= 1, got {self.alpha_min}, {self.alpha_max}")
        if self.clamp_std < 0:
            raise RbxError(f"mixing network: clamp_std must be >= 0, got {self.clamp_std}")

    @classmethod
    def read(cls, path: Path) -> "MixnetSettings":
        """From a ``mixnet.json``; a missing file gives the defaults (mixing networks saved before the settings were)."""
        if not path.is_file():
            log.info("no %s: the mixing network gets the default inference settings %s", path, cls())
            return cls()
        try:
            obj = json.loads(path.read_text())
            return cls(**{f.name: float(obj[f.name]) for f in dataclasses.fields(cls) if f.name in obj})
        except (OSError, ValueError, TypeError) as exc:
            raise ModelLoadError(f"cannot read the mixing-network settings {path}: {exc}") from None


class MixingNet(nn.Module):
    """alpha(x) from the two base models' early and late feature maps (early maps are 2x the late size).

    ``calibrated`` (default True): eval mode applies the inference settings; False gives the training attack's
    composite (eval-mode BN, training constants, unbounded alpha), as the authors' ``eval(scale_alpha=False)``.
    """

    def __init__(self, c_early: int, c_late: int, width: int = 64, settings: MixnetSettings | None = None):
        super().__init__()
        self.early = nn.Sequential(nn.Conv2d(c_early, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.late = nn.Sequential(nn.Conv2d(c_late, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(width, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 1, bias=False))
        self.norm = nn.BatchNorm1d(1, affine=False, momentum=0.01)
        self.settings = settings or MixnetSettings()
        self.calibrated = True

    def forward(self, early: Tensor, late: Tensor) -> tuple[Tensor, Tensor]:
        """``(gamma, alpha)``, both ``[N]``: the pre-sigmoid mixing logit (what the BCE term supervises) and
        the robust model's weight."""
        st = self.settings
        g = self.body(self.early(early) + self.late(late))  # [N, 1]
        if self.training and st.clamp_std > 0 and g.shape[0] > 1:
            # Keeps the BN statistics of gamma away from outliers (the bounds are constants, as the authors' .item()).
            mean, std = g.mean().detach(), g.std().detach()
            g = torch.clamp(g, min=mean - st.clamp_std * std, max=mean + st.clamp_std * std)
        infer = not self.training and self.calibrated
        scale, bias = (st.eval_gamma_scale, st.eval_gamma_bias) if infer else (st.gamma_scale, st.gamma_bias)
        gamma = (self.norm(g) * scale + bias).squeeze(1)
        alpha = torch.sigmoid(gamma)
        if infer:
            alpha = st.alpha_min + (st.alpha_max - st.alpha_min) * alpha
        return gamma, alpha

    @contextlib.contextmanager
    def training_attack(self) -> Iterator["MixingNet"]:
        """Within: the composite as the training attack sees it (no inference settings in eval mode)."""
        was, self.calibrated = self.calibrated, False
        try:
            yield self
        finally:
            self.calibrated = was


class MixedClassifier(nn.Module):
    """The composite model (see the module docstring); base models stay frozen and in eval mode."""

    def __init__(self, std: nn.Module, rob: nn.Module, *, alpha: float | None = None, mixnet: MixingNet | None = None,
                 nuts: dict[str, float] | None = None, s_std: float = 1.0, s_rob: float = 1.0,
                 features: tuple[tuple[str, str], tuple[str, str]] | None = None, grad: str = "surrogate",
                 alpha_grad: float | None = None, std_map: str = "onehot") -> None:
        super().__init__()
        if (alpha is None) == (mixnet is None):
            raise RbxError("a mixed classifier needs exactly one of a constant alpha and a mixing network")
        if alpha is not None and not 0 <= alpha <= 1:
            raise RbxError(f"alpha must be in [0, 1], got {alpha}")
        if grad not in GRAD_MODES:
            raise RbxError(f"mix: unknown grad '{grad}'; known: {', '.join(GRAD_MODES)}")
        if std_map not in STD_MAPS:
            raise RbxError(f"mix: unknown std_map '{std_map}'; known: {', '.join(STD_MAPS)}")
        if nuts is not None and std_map == "onehot" and alpha is not None and alpha <= 0:
            raise RbxError("mix: a MixedNUTS composite with std_map=onehot needs alpha > 0 (else its output is a one-hot)")
        self.std, self.rob, self.mixnet = std, rob, mixnet
        for p in list(std.parameters()) + list(rob.parameters()):
            p.requires_grad_(False)
        self.alpha, self.nuts, self.s_std, self.s_rob = alpha, nuts, s_std, s_rob
        self.grad, self.std_map = grad, std_map
        if alpha_grad is None:
            alpha_grad = float((nuts or {}).get("alpha_diffable", DEFAULT_ALPHA_GRAD)) if grad == "surrogate" else DEFAULT_ALPHA_GRAD
        if not 0 <= alpha_grad <= 1:
            raise RbxError(f"alpha_grad must be in [0, 1], got {alpha_grad}")
        self.alpha_grad = alpha_grad
        self._feats: dict[str, Tensor] = {}
        self._hooks = []
        if mixnet is not None:
            if features is None:
                raise RbxError("a mixing network needs the base models' feature layers")
            for tag, model, names in (("g", std, features[0]), ("h", rob, features[1])):
                for i, name in enumerate(names):
                    self._hooks.append(_submodule(model, name).register_forward_hook(self._keep(f"{tag}{i}")))
        self.last_gamma: Tensor | None = None
        self.last_alpha: Tensor | None = None

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
        lg, lh = F.log_softmax(zg, 1), F.log_softmax(zh, 1)
        if self.mixnet is not None:
            gamma, alpha = self.mixnet(torch.cat([self._feats["g0"], self._feats["h0"]], 1),
                                       torch.cat([self._feats["g1"], self._feats["h1"]], 1))
            self.last_gamma, self.last_alpha = gamma, alpha
            return log_mix(lg, lh, alpha)
        if self.nuts is None:
            return log_mix(lg, lh, self.alpha)
        return self._nuts_forward(zg, lg, zh, lh)

    def _nuts_forward(self, zg: Tensor, lg: Tensor, zh: Tensor, lh: Tensor) -> Tensor:
        lm = F.log_softmax(nuts_map(zh, self.nuts["s"], self.nuts["p"], self.nuts["c"]), 1).float()
        straight = self.grad != "exact" and torch.is_grad_enabled()
        with torch.no_grad() if straight else contextlib.nullcontext():
            out = log_mix(log_one_hot(zg) if self.std_map == "onehot" else lg, lm, self.alpha)
        if not straight:
            return out
        if self.grad == "surrogate":
            surrogate = log_mix(lg, log_mix(lh, lm, 1 - RAW_RATIO), self.alpha_grad)
        elif self.grad == "nonlin":
            surrogate = log_mix(lg, lm, self.alpha)
        else:  # rbx-bypass: the map skipped entirely
            surrogate = log_mix(lg, lh, self.alpha_grad)
        return value_with_grad_of(out, surrogate)


# ---- fitting MixedNUTS -------------------------------------------------------------------------------
def _prob_margin(z: Tensor) -> Tensor:
    top2 = z.softmax(1).topk(2, dim=1).values
    return top2[:, 0] - top2[:, 1]


def fit_mixednuts(z_clean_wrong: Tensor, z_adv_correct: Tensor, beta: float = 98.5,
                  s_grid: Sequence[float] = tuple(np.geomspace(0.1, 10, 8)),
                  p_grid: Sequence[float] = tuple(np.linspace(1, 6, 8)),
                  c_grid: Sequence[float] = tuple(np.linspace(-3, 1, 8)),
                  beta_diffable: float | None = None) -> dict[str, float]:
    """Choose (s, p, c, alpha) from robust-model logits (the official rule, ``calc_spca.py``).

    ``z_clean_wrong``: logits on clean held-out images the robust model gets wrong; ``z_adv_correct``: logits on
    attacked held-out images it still gets right. For each grid point, ``cutoff`` is the (100 - beta)-th
    percentile of the mapped top-1 minus top-2 probability margins on the attacked-correct images; the
    objective is the share of clean-wrong images whose margin reaches the cutoff (lower: the robust model
    is unsure where it is wrong, so the standard model can take over there; a cutoff is capped at 1 - 1e-9
    for the objective, as the authors do). ``alpha = 1 / (1 + cutoff)`` keeps every attacked-correct image
    whose margin reaches the cutoff correct in the mixture. ``alpha_diffable`` is the same rule without the
    map (raw softmax margins) at ``beta_diffable`` (default: ``beta``): the alpha of the authors' attack
    surrogate (their ``alpha_diffable``, from the ``none`` map's entry).
    """
    beta_diffable = beta if beta_diffable is None else beta_diffable
    if not 0 < beta < 100 or not 0 < beta_diffable < 100:
        raise RbxError(f"beta must be in (0, 100), got {beta} (beta_diffable {beta_diffable})")
    if len(z_adv_correct) == 0 or len(z_clean_wrong) == 0:
        raise RbxError("fitting MixedNUTS needs clean-wrong and attacked-correct held-out images")
    best = None
    for s, p, c in itertools.product(s_grid, p_grid, c_grid):
        m_adv = _prob_margin(nuts_map(z_adv_correct, s, p, c))
        cutoff = float(torch.quantile(m_adv, 1 - beta / 100))
        m_wrong = _prob_margin(nuts_map(z_clean_wrong, s, p, c))
        obj = float((m_wrong >= min(cutoff, 1 - 1e-9)).float().mean())
        key = (obj, -cutoff)
        if best is None or key < best[0]:
            best = (key, {"s": float(s), "p": float(p), "c": float(c), "cutoff": cutoff, "objective": obj})
    params = best[1]
    params["alpha"] = 1.0 / (1.0 + params["cutoff"])
    params["beta"] = beta
    raw_cutoff = float(torch.quantile(_prob_margin(z_adv_correct.double()), 1 - beta_diffable / 100))
    params["alpha_diffable"] = 1.0 / (1.0 + raw_cutoff)
    params["beta_diffable"] = beta_diffable
    return params


# ---- the model source ---------------------------------------------------------------------------------
MIX_OPTIONS = ("alpha", "nuts", "mixnet", "s_std", "s_rob", "grad", "std_map", "alpha_grad", "bypass", "eval_settings")


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
    unknown = set(options) - set(MIX_OPTIONS)
    if unknown:
        raise RbxError(f"mix: unknown options {sorted(unknown)}; known: {', '.join(MIX_OPTIONS)}")
    if "bypass" in options:  # the old spelling: bypass=false is grad=exact, bypass=true rbx's bypass
        if "grad" in options:
            raise RbxError("mix: give grad= or the old bypass=, not both")
        options["grad"] = "rbx-bypass" if options.pop("bypass").lower() != "false" else "exact"
    return std, rob, options


def _flag(o: dict[str, str], key: str, default: bool) -> bool:
    v = o.get(key)
    if v is None:
        return default
    if v.lower() not in ("true", "false"):
        raise RbxError(f"mix: {key} must be true or false, got {v!r}")
    return v.lower() == "true"


@MODELS.register("mix", takes_arg=True, arg_name="STD+ROB[,alpha=A|,nuts=FILE|,mixnet=DIR|,alpha=net]",
                 summary="adaptive smoothing / MixedNUTS composite of a standard and a robust model")
def mix_model(arg: str, arch_override: str | None = None, num_classes: int | None = None) -> LoadedModel:
    std_spec, rob_spec, o = _parse_mix(arg)
    std, rob = load_model(std_spec), load_model(rob_spec)
    try:
        kw: dict[str, Any] = {"s_std": float(o.get("s_std", 1.0)), "s_rob": float(o.get("s_rob", 1.0)),
                              "alpha_grad": float(o["alpha_grad"]) if "alpha_grad" in o else None}
    except ValueError:
        raise RbxError(f"mix: s_std, s_rob and alpha_grad must be numbers, got {o}") from None
    source = {"std": std.source, "rob": rob.source}
    ident = [std.sha256, rob.sha256]  # the composite's identity: its parts' files and its options
    extra: dict[str, Any] = {"std": std.name, "rob": rob.name, **o}
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
            mixnet.settings = MixnetSettings.read(path.with_name("mixnet.json"))
            source["mixnet"] = str(path)
            ident.append(file_sha256(path))
        mixnet.calibrated = _flag(o, "eval_settings", True)
        extra["mixnet_settings"] = {**dataclasses.asdict(mixnet.settings), "applied_at_inference": mixnet.calibrated}
        kind = "mixnet" if mixnet.calibrated else "mixnet, training alpha"
    elif "nuts" in o:
        try:
            nuts = json.loads(Path(o["nuts"]).read_text())
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot read MixedNUTS parameters {o['nuts']}: {exc}") from None
        composite = MixedClassifier(std.module, rob.module, alpha=float(nuts["alpha"]), nuts=nuts,
                                    grad=o.get("grad", "surrogate"), std_map=o.get("std_map", "onehot"), **kw)
        source["nuts"] = o["nuts"]
        ident.append(hashlib.sha256(Path(o["nuts"]).read_bytes()).hexdigest())
        extra.update(grad=composite.grad, std_map=composite.std_map, alpha_grad=composite.alpha_grad)
        # Another classifier (std_map) or another attack (grad) than the authors' setting: its own leaderboard row.
        kind = "mixednuts" + ("" if composite.std_map == "onehot" else ", softmax std") + \
            ("" if composite.grad == "surrogate" else f", {composite.grad} gradients")
    else:
        if "grad" in o or "std_map" in o:
            raise RbxError("mix: grad= and std_map= apply to MixedNUTS composites (nuts=FILE)")
        try:
            alpha = float(o.get("alpha", 0.5))
        except ValueError:
            raise RbxError(f"mix: alpha must be a number in [0, 1] or 'net', got {o.get('alpha')!r}") from None
        composite = MixedClassifier(std.module, rob.module, alpha=alpha, **kw)
        kind = f"constant alpha={alpha:g}"
    ident.append(sorted(o.items()))
    sha = hashlib.sha256(json.dumps(ident).encode()).hexdigest()
    return LoadedModel(composite.eval(), f"mix({std.name}+{rob.name}, {kind})", f"mix[{std.architecture}+{rob.architecture}]",
                       json.dumps(source), sha, extra={"mix": {**extra, "kind": kind}})


def _no_features(m: LoadedModel):
    raise RbxError(f"no mixing-network features known for architecture '{m.architecture}'; known: {', '.join(FEATURES)}")


@torch.no_grad()
def _new_mixnet(std: nn.Module, rob: nn.Module, features, settings: MixnetSettings | None = None) -> MixingNet:
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
    return MixingNet(shapes["g0"][1] + shapes["h0"][1], shapes["g1"][1] + shapes["h1"][1], settings=settings)


# ---- training the mixing network ------------------------------------------------------------------------
@DEFENSES.register("adaptive-smoothing", summary="train the mixing network of a mix:STD+ROB,alpha=net composite (Bai et al.)")
@dataclass(eq=False)
class AdaptiveSmoothing(Defense):
    """BCE + CE + product loss on clean (label 0) and composite-adversarial (label 1) images; only M trains.

    The training attack sees the composite as the authors' does (eval-mode BN, the training gamma constants,
    alpha not bounded); the gamma constants, the clamp and the inference settings are this defense's
    parameters (:class:`MixnetSettings`) and are saved beside the network (``mixnet.json``).
    """

    name: ClassVar[str] = "adaptive-smoothing"
    smoke_params: ClassVar[dict] = {"attack": "apgd-ce:steps=2"}
    smoke_init: ClassVar[str | None] = "mix:cifar10-smallcnn-linf-at+cifar10-smallcnn-linf-at,alpha=net"
    #: The authors' optimizer (``adaptive_smoothing/trainer.py``): AdamW, lr 1e-4, weight decay 1e-5, warm-up + cosine.
    recipe: ClassVar[Recipe] = Recipe(optimizer="adamw", lr=1e-4, weight_decay=1e-5, schedule="cosine")

    threat: str = "Linf:8/255"
    attack: str = "apgd-ce:steps=10"
    eps_low: float = 0.4  # the attack's radius is eps * U(eps_low, eps_high) per batch
    eps_high: float = 1.1
    c_bce: float = 1.0
    c_ce: float = 0.5
    c_prod: float = 0.1
    clean_weight: float = 2.0
    gamma_scale: float = MixnetSettings.gamma_scale
    gamma_bias: float = MixnetSettings.gamma_bias
    eval_gamma_scale: float = MixnetSettings.eval_gamma_scale
    eval_gamma_bias: float = MixnetSettings.eval_gamma_bias
    alpha_min: float = MixnetSettings.alpha_min
    alpha_max: float = MixnetSettings.alpha_max
    clamp_std: float = MixnetSettings.clamp_std

    def __post_init__(self) -> None:
        self._threat = ThreatModel.parse(self.threat)
        self._attack = build_attack(self.attack, self.name)
        if not 0 < self.eps_low <= self.eps_high:
            raise RbxError("defense 'adaptive-smoothing': need 0 < eps_low <= eps_high")
        self._settings = MixnetSettings(**{f.name: float(getattr(self, f.name)) for f in dataclasses.fields(MixnetSettings)})

    def trainable_parameters(self, model: nn.Module):
        if not isinstance(model, MixedClassifier) or model.mixnet is None:
            raise RbxError("defense 'adaptive-smoothing' trains a mixing network: use --init 'mix:STD+ROB,alpha=net'")
        return list(model.mixnet.parameters())

    def save(self, out_dir, model) -> None:
        import io

        from robustbench_ext.paths import atomic_write_bytes, atomic_write_text

        buf = io.BytesIO()
        torch.save(model.mixnet.state_dict(), buf)
        atomic_write_bytes(Path(out_dir) / "mixnet.pt", buf.getvalue())
        atomic_write_text(Path(out_dir) / "mixnet.json", json.dumps(dataclasses.asdict(self._settings), indent=2) + "\n")

    def saved_model_spec(self, out_dir, trainer) -> str:
        init = trainer.cfg.init or ""
        head, *opts = init.split(",")
        kept = [o for o in opts if o.split("=", 1)[0].strip() not in ("alpha", "mixnet")]
        return ",".join([head, *kept, f"mixnet={out_dir}"])

    def loss(self, model, x, y, ctx):
        model.mixnet.settings = self._settings  # the composite trains under this defense's constants
        factor = self.eps_low + (self.eps_high - self.eps_low) * float(torch.rand(1, generator=ctx.generator))
        threat = ThreatModel(self._threat.norm, self._threat.eps * factor)
        with model.mixnet.training_attack():
            x_adv = ctx.adversary(self._attack, model, x, y, threat)
        inputs = torch.cat([x, x_adv])
        labels = torch.cat([y, y])
        sup = torch.cat([torch.zeros(len(x)), torch.ones(len(x))]).to(x.device)
        weight = torch.cat([torch.full((len(x),), self.clean_weight), torch.ones(len(x))]).to(x.device)
        out = model(inputs)
        bce = F.binary_cross_entropy_with_logits(model.last_gamma.float(), sup, reduction="none")
        ce = F.nll_loss(out, labels, reduction="none")
        per = self.c_bce * bce + self.c_ce * ce + self.c_prod * bce * ce
        alpha = model.last_alpha.detach()
        return (weight * per).sum() / weight.sum(), {
            "clean_acc": accuracy(out[: len(x)], y), "adv_acc": accuracy(out[len(x):], y),
            "alpha_clean": alpha[: len(x)].mean(), "alpha_adv": alpha[len(x):].mean()}
