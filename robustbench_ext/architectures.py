"""Architectures (untrained modules) that checkpoints load into; registered in ``ARCHITECTURES``.

``resnet18``, ``preact-resnet18`` and ``wrn-28-10`` are robustbench's own CIFAR definitions, so
RobustBench checkpoints and the reference ResNet-18 load with every key matched.
"""

from __future__ import annotations

from torch import nn

from ._compat import import_robustbench
from .registry import ARCHITECTURES


@ARCHITECTURES.register("smallcnn", summary="small CIFAR CNN: 4 conv (32,32,64,64) + 3 linear (256,256,K); the CPU test subject")
def smallcnn(num_classes: int = 10) -> nn.Module:
    """The reference small CNN, as an ``nn.Sequential`` whose state-dict keys are its indices."""
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 8 * 8, 256), nn.ReLU(),
        nn.Linear(256, 256), nn.ReLU(),
        nn.Linear(256, num_classes),
    )


@ARCHITECTURES.register("resnet18", summary="CIFAR ResNet-18 (robustbench's ResNet18: 3x3 stem, no max-pool)")
def resnet18(num_classes: int = 10) -> nn.Module:
    resnet = import_robustbench("model_zoo.architectures.resnet")
    return resnet.ResNet(resnet.BasicBlock, [2, 2, 2, 2], num_classes=num_classes)


@ARCHITECTURES.register("preact-resnet18", summary="CIFAR PreAct ResNet-18 (robustbench's PreActResNet18)")
def preact_resnet18(num_classes: int = 10) -> nn.Module:
    resnet = import_robustbench("model_zoo.architectures.resnet")
    return resnet.PreActResNet(resnet.PreActBlock, [2, 2, 2, 2], num_classes=num_classes)


@ARCHITECTURES.register("wrn-28-10", summary="WideResNet-28-10 (robustbench's WideResNet)")
def wrn_28_10(num_classes: int = 10) -> nn.Module:
    wrn = import_robustbench("model_zoo.architectures.wide_resnet")
    return wrn.WideResNet(depth=28, widen_factor=10, num_classes=num_classes)
