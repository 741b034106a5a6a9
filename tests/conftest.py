"""Shared fixtures: the small reference CNN, CIFAR-10 slices, tiny random models, isolated folders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from robustbench_ext.data import EvalData, cifar10
from robustbench_ext.models import LoadedModel, load_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def small_cnn() -> LoadedModel:
    """The reference small CNN (../shared/models), eval mode, CPU."""
    return load_model("cifar10-smallcnn-linf-at")


@pytest.fixture(scope="session")
def cifar200() -> EvalData:
    """The first 200 CIFAR-10 test images (class-balanced in the JPEG copy)."""
    return cifar10(200)


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
