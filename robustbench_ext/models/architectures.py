"""Architectures (untrained modules) that checkpoints load into; registered in ``ARCHITECTURES``.

``resnet18``, ``preact-resnet18`` and ``wrn-28-10`` are robustbench's own CIFAR definitions, so
RobustBench checkpoints and the reference ResNet-18 load with every key matched.
"""

from __future__ import annotations

import logging

import torch.nn.functional as F
from torch import nn

from .._compat import import_robustbench
from ..errors import RbxError
from ..registry import ARCHITECTURES

log = logging.getLogger(__name__)


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


class _Block(nn.Module):
    """ResNet basic block (He et al., CVPR 2016) with the parameter names of robustbench's CIFAR ResNet."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet18(nn.Module):
    """CIFAR ResNet-18 (3x3 stem, no max-pool, 4x4 average pool): rbx's own definition, key-compatible
    with robustbench's ``ResNet(BasicBlock, [2, 2, 2, 2])``; used where robustbench cannot be imported
    (e.g. a GPU image without it). A test checks both give the same logits on the reference checkpoint."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        widths, cin, layers = (64, 128, 256, 512), 64, []
        for i, w in enumerate(widths):
            layers.append(nn.Sequential(_Block(cin, w, 1 if i == 0 else 2), _Block(w, w, 1)))
            cin = w
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(F.avg_pool2d(out, 4).flatten(1))


@ARCHITECTURES.register("resnet18", summary="CIFAR ResNet-18 (robustbench's ResNet18: 3x3 stem, no max-pool)")
def resnet18(num_classes: int = 10) -> nn.Module:
    try:
        resnet = import_robustbench("model_zoo.architectures.resnet")
    except RbxError as exc:
        log.warning("robustbench unavailable (%s); using rbx's key-compatible CIFAR ResNet-18", exc)
        return CifarResNet18(num_classes)
    return resnet.ResNet(resnet.BasicBlock, [2, 2, 2, 2], num_classes=num_classes)


@ARCHITECTURES.register("torchvision", takes_arg=True, arg_name="NAME",
                        summary="any torchvision classifier, untrained (file:PATH --arch torchvision:resnet50 --normalize imagenet)")
def torchvision_arch(name: str, num_classes: int = 1000) -> nn.Module:
    import torchvision.models as tvm

    if name not in tvm.list_models(module=tvm):
        raise RbxError(f"unknown torchvision model '{name}'; see torchvision.models.list_models()")
    return tvm.get_model(name, weights=None, num_classes=num_classes)


@ARCHITECTURES.register("timm", takes_arg=True, arg_name="NAME",
                        summary="any timm model, untrained (file:PATH --arch timm:NAME --normalize ...)")
def timm_arch(name: str, num_classes: int = 1000) -> nn.Module:
    import timm

    if not timm.is_model(name):
        raise RbxError(f"unknown timm model '{name}'; see timm.list_models()")
    return timm.create_model(name, pretrained=False, num_classes=num_classes)


@ARCHITECTURES.register("preact-resnet18", summary="CIFAR PreAct ResNet-18 (robustbench's PreActResNet18)")
def preact_resnet18(num_classes: int = 10) -> nn.Module:
    resnet = import_robustbench("model_zoo.architectures.resnet")
    return resnet.PreActResNet(resnet.PreActBlock, [2, 2, 2, 2], num_classes=num_classes)


@ARCHITECTURES.register("wrn-28-10", summary="WideResNet-28-10 (robustbench's WideResNet)")
def wrn_28_10(num_classes: int = 10) -> nn.Module:
    wrn = import_robustbench("model_zoo.architectures.wide_resnet")
    return wrn.WideResNet(depth=28, widen_factor=10, num_classes=num_classes)
