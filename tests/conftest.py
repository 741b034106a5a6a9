"""Shared fixtures: the small reference CNN, CIFAR-10 slices, tiny random models, isolated folders.

Everything here works on a fresh clone with nothing beside it: the small CNN and the 1,000-image
CIFAR-10 slice ship inside the package. Tests that need ../shared (the ResNet-18, the full JPEG copy)
use :func:`needs_shared`, which skips them with a message saying what is missing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

from robustbench_ext.data.datasets import EvalData
from robustbench_ext.errors import DataError, ModelLoadError
from robustbench_ext.models.loading import LoadedModel, find_checkpoint, load_model
from robustbench_ext.registry import DATASETS

# One intra-op thread for the tests, and for the rbx processes they start: their tensors are small, so a second
# thread buys little, while on a shared machine the threads' spin-waits cost a great deal. Measured on this
# project's 2-core machine under load (2026-12-04): aa-fab-t's contract calls took 0.37 s CPU / 10 s wall with one
# thread, 16 s CPU / 352 s wall with two. Results do not depend on it (every comparison is within a process or
# statistical).
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
#: The dataset every test evaluates on: the embedded slice (identical images to the JPEG copy's first 1,000).
DATA = "cifar10-1k"


def _missing(what: str) -> str | None:
    """Why ``what`` (``resnet18`` or ``cifar10-full``) is unavailable here, or None."""
    try:
        if what == "resnet18":
            find_checkpoint("cifar10_resnet18_linf_at.pt")
        elif what == "cifar10-full":
            from robustbench_ext.data.datasets import data_dirs

            if not any((d / "cifar10" / "test_jpeg.npz").is_file() or (d / "cifar-10-batches-py").is_dir() for d in data_dirs()):
                raise DataError("no local CIFAR-10 test set")
        else:
            raise ValueError(what)
    except (ModelLoadError, DataError) as exc:
        return str(exc)
    return None


def needs_shared(*what: str):
    """Skip unless the ../shared (or $RBX_MODELS / $RBX_DATA) assets ``what`` are present; the reason says which."""
    reasons = [f"{w}: {r}" for w in what if (r := _missing(w))]
    return pytest.mark.skipif(bool(reasons), reason="needs assets that do not ship with rbx: " + "; ".join(reasons))


@pytest.fixture(scope="session")
def small_cnn() -> LoadedModel:
    """The reference small CNN (shipped in the package; ../shared/models when present), eval mode, CPU."""
    return load_model("cifar10-smallcnn-linf-at")


@pytest.fixture(scope="session")
def cifar200() -> EvalData:
    """The first 200 CIFAR-10 test images of the embedded slice (class-balanced)."""
    return DATASETS.create(DATA, n_examples=200)


def tiny_model(seed: int = 0, num_classes: int = 10, in_shape=(3, 8, 8)) -> nn.Module:
    """A small random MLP for contract tests: fast, deterministic, easy to fool."""
    g = torch.Generator().manual_seed(seed)
    d = int(torch.tensor(in_shape).prod())
    net = nn.Sequential(nn.Flatten(), nn.Linear(d, 32), nn.ReLU(), nn.Linear(32, num_classes))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return net.eval()


def tiny_batch(n: int = 16, in_shape=(3, 8, 8), seed: int = 1, num_classes: int = 10):
    """Inputs in [0, 1] with some pixels exactly on the box faces, and labels the tiny model gets right."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n, *in_shape), generator=g)
    x[:, 0, 0, :] = 0.0
    x[:, 0, 1, :] = 1.0
    return x


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run in an empty temporary working directory (so ./results, ./data, ./models are fresh)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
