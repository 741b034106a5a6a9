"""The bad-input matrix: every case gives one line on stderr, a non-zero exit code, and writes nothing.

The same table is in docs/guide/guarantees.md ("What rbx guarantees"); keep them in step.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from robustbench_ext.cli import cli
from robustbench_ext.models.loading import LoadedModel
from robustbench_ext.registry import MODELS

SMALL = ["--model", "cifar10-smallcnn-linf-at", "--dataset", "cifar10-1k", "--n-examples", "20", "--batch-size", "10", "--no-progress",
         "--threat", "Linf:8/255", "--attack", "pgd:steps=2"]


class _Probabilities(nn.Module):
    """A model that ends in a softmax: it returns probabilities instead of logits."""

    def __init__(self, base):
        super().__init__()
        self.base = base

    def forward(self, x):
        return self.base(x).softmax(1)


class _NaNOnAdversarial(nn.Module):
    """Finite on clean inputs, NaN as soon as an input moves off the clean images (log of a negative number)."""

    def __init__(self, base, clean):
        super().__init__()
        self.base = base
        self.register_buffer("clean", clean)

    def forward(self, x):
        out = self.base(x)
        moved = (x - self.clean[: x.shape[0]]).abs().flatten(1).amax(1) > 0 if x.shape[0] <= self.clean.shape[0] else None
        if moved is None or moved.any():
            out = out + torch.log(torch.tensor(-1.0))
        return out


@pytest.fixture
def test_models(small_cnn, cifar200):
    """Register two broken models for the duration of a test."""
    def probs(arch_override=None, num_classes=10):
        return LoadedModel(_Probabilities(small_cnn.module).eval(), "test-probabilities", "smallcnn+softmax", "test")

    def nan(arch_override=None, num_classes=10):
        return LoadedModel(_NaNOnAdversarial(small_cnn.module, cifar200.x[:20]).eval(), "test-nan", "smallcnn+nan", "test")

    MODELS.register("test-probabilities")(probs)
    MODELS.register("test-nan")(nan)
    yield
    MODELS.unregister("test-probabilities")
    MODELS.unregister("test-nan")


def _files(tmp: Path):
    return _files_under(tmp / "res")


def _files_under(d: Path):
    return sorted(p for p in d.rglob("*") if p.is_file()) if d.exists() else []


def _npz(tmp: Path, name: str, x, y) -> str:
    path = tmp / name
    np.savez(path, x=x, y=y)
    return f"npz:{path}"


CASES = {
    "unknown attack": (["--attack", "nope"], "unknown attack 'nope'"),
    "unknown model": (["--model", "nope"], "unknown model 'nope'"),
    "unknown dataset": (["--dataset", "nope"], "unknown dataset 'nope'"),
    "unknown suite": (["--suite", "nope"], "unknown suite 'nope'"),
    "eps zero": (["--threat", "L2:0"], "eps must be > 0"),
    "eps negative": (["--threat", "L1:-3"], "eps must be > 0"),
    "eps NaN": (["--threat", "Linf:nan"], "eps must be finite"),
    "eps inf": (["--threat", "L2:inf"], "eps must be finite"),
    "eps covering the whole box": (["--threat", "Linf:8"], "did you mean Linf:8/255?); give a smaller radius, or pass --allow-meaningless-eps"),
    "n-examples zero": (["--n-examples", "0"], "--n-examples must be a positive integer"),
    "n-examples above the dataset": (["--n-examples", "1001"], "more than the 1000 images"),
    "batch size zero": (["--batch-size", "0"], "--batch-size must be a positive integer"),
    "model returns probabilities": (["--model", "test-probabilities"], "returns probabilities, not logits"),
    "NaN logits": (["--model", "test-nan"], "NaN or inf logits"),
    "inputs outside [0, 1]": ("0..255", "looks like 0..255"),
    "labels outside the class range": ("labels", "out of range for a model with 10 outputs"),
    "missing checkpoint": ("missing", "checkpoint not found"),
    "reference model not on this machine": ("no-resnet", "or use the embedded model: --model cifar10-smallcnn-linf-at"),
    "dataset neither local nor downloadable": ("offline", "or evaluate the embedded 1,000-image slice: --dataset cifar10-1k"),
    "truncated checkpoint": ("truncated", "is truncated or corrupt (1,000 bytes): delete it and download it again"),
    "wrong-architecture checkpoint": ("wrong-arch", "does not fit architecture 'resnet18'"),
    "unwritable results directory": ("unwritable", "cannot write to results directory"),
    "resume without a saved state": (["--resume"], "no saved evaluation state of this run"),
    "CIFAR-100 neither local nor downloadable": ("offline-cifar100", "put cifar-100-python/ or cifar100/test_jpeg.npz in ./data or set RBX_DATA=DIR"),
    "ImageNet not on this machine": ("no-imagenet", "it cannot be downloaded (its licence requires registration at image-net.org)"),
    "corruption set given as plain images": (["--dataset", "cifar10-c:base=cifar10-1k"], "is a set of common corruptions, not one image set"),
    "attack options with a corruption suite": (["--suite", "cifar10-corruptions-s3"], "--threat, --attack do not apply to the corruption suite"),
}


def _args(case, tmp: Path, small_cnn, monkeypatch):
    extra, _ = CASES[case]
    if isinstance(extra, list):
        return extra
    if extra == "no-resnet":  # a user's machine: no ../shared, no $RBX_MODELS, only the package's own model
        import robustbench_ext.models.loading as models_mod

        monkeypatch.setattr(models_mod, "model_dirs", lambda: [tmp / "models", models_mod.ASSETS])
        return ["--model", "cifar10-resnet18-linf-at"]
    if extra == "offline":  # no local CIFAR-10 and no network
        import torchvision.datasets as tvd

        import robustbench_ext.data.datasets as data_mod

        def no_network(root, train, download):
            Path(root).mkdir(parents=True, exist_ok=True)
            raise RuntimeError("Failed to download (no network)")

        monkeypatch.setattr(data_mod, "data_dirs", lambda: [tmp / "nowhere"])
        monkeypatch.setattr(tvd, "CIFAR10", no_network)
        return ["--dataset", "cifar10"]
    if extra == "offline-cifar100":
        import torchvision.datasets as tvd

        import robustbench_ext.data.datasets as data_mod

        def no_network_100(root, train, download):
            Path(root).mkdir(parents=True, exist_ok=True)
            raise RuntimeError("Failed to download (no network)")

        monkeypatch.setattr(data_mod, "data_dirs", lambda: [tmp / "nowhere"])
        monkeypatch.setattr(tvd, "CIFAR100", no_network_100)
        return ["--dataset", "cifar100"]
    if extra == "no-imagenet":
        import robustbench_ext.data.datasets as data_mod

        monkeypatch.setattr(data_mod, "data_dirs", lambda: [tmp / "nowhere"])
        return ["--dataset", "imagenet"]
    ckpt = tmp / "model.pt"
    torch.save(small_cnn.module.state_dict(), ckpt)
    if extra == "0..255":
        return ["--dataset", _npz(tmp, "wide.npz", np.full((20, 3, 32, 32), 128.0, np.float32), np.zeros(20, np.int64))]
    if extra == "labels":
        return ["--dataset", _npz(tmp, "labels.npz", np.zeros((20, 32, 32, 3), np.uint8), np.full(20, 12, np.int64))]
    if extra == "missing":
        return ["--model", f"file:{tmp / 'nope.pt'}", "--arch", "smallcnn"]
    if extra == "truncated":
        short = tmp / "short.pt"
        short.write_bytes(ckpt.read_bytes()[:1000])
        return ["--model", f"file:{short}", "--arch", "smallcnn"]
    if extra == "wrong-arch":
        return ["--model", f"file:{ckpt}", "--arch", "resnet18"]
    if extra == "unwritable":
        (tmp / "res").write_text("a file where the results directory should be")
        return []
    raise AssertionError(case)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_matrix(case, in_tmp, small_cnn, test_models, monkeypatch):
    args = _args(case, in_tmp, small_cnn, monkeypatch)
    before = _files(in_tmp) if (in_tmp / "res").is_dir() else []
    res = CliRunner().invoke(cli, ["run", *SMALL, *args, "--results-dir", str(in_tmp / "res")])
    assert res.exit_code != 0, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rbx: error: "), res.stderr
    assert CASES[case][1] in lines[0]
    assert _files(in_tmp) == before  # nothing written (a checkpoint included)
    assert not (in_tmp / "data").exists() and not (in_tmp / "models").exists()  # no empty ./data or ./models either


def test_eps_covering_the_box_runs_only_when_allowed_and_warns(in_tmp):
    res = CliRunner().invoke(cli, ["run", *SMALL[:-4], "--threat", "Linf:1", "--attack", "pgd:steps=2",
                                   "--allow-meaningless-eps", "--results-dir", str(in_tmp / "res")])
    assert res.exit_code == 0
    assert "contains the whole [0, 1] box" in res.stderr and "meaningless" in res.stderr
    assert "meaningless: the ball covers the [0, 1] box" in res.stdout
    assert len(list((in_tmp / "res" / "records").glob("*.json"))) == 1


def test_readme_lists_every_case():
    """The matrix is documented (the docs' "Bad input and errors" page, which the README links)."""
    root = Path(__file__).resolve().parents[1]
    docs = "\n".join(p.read_text() for p in [root / "README.md", *sorted((root / "docs").rglob("*.md"))])
    for case in CASES:
        assert f"| {case} |" in docs, case
