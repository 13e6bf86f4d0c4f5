"""VGG16, ResNet50 and MobileNetV2 in PyTorch, laid out like keras.applications' versions.

torchvision does not import beside the CPU build of torch that this machine has (see
README.md), so the three networks are written here, with the layers (and layer order) of
``keras.applications``: VGG16 with Flatten → 4096 → 4096 → classes and no dropout; ResNet50 v1
with the stride on the first 1×1 convolution of a block and biased convolutions; MobileNetV2
(α = 1) with ReLU6. Residual additions go through ``zennit.layer.Sum`` on stacked operands,
which is what Zennit's own torchvision canonizers make of a residual block. Convolutions are
initialised like torchvision's (Kaiming normal, fan-out), and every module is registered in the
order it runs, so that ``SequentialMergeBatchNorm`` finds each BatchNorm after its convolution.
"""

import torch
from torch import nn
from zennit.layer import Sum

__all__ = ["NAMES", "build"]

NAMES = ("VGG16", "ResNet50", "MobileNetV2")


class Residual(nn.Module):
    """``sum(branch(x), shortcut(x))`` through a ``zennit.layer.Sum`` (then ``after``)."""

    def __init__(self, branch, shortcut=None, after=None):
        super().__init__()
        self.branch = branch
        self.shortcut = shortcut if shortcut is not None else nn.Identity()
        self.sum = Sum()
        self.after = after if after is not None else nn.Identity()

    def forward(self, x):
        return self.after(self.sum(torch.stack([self.shortcut(x), self.branch(x)], dim=-1)))


def _conv_bn(in_channels, out_channels, kernel, stride=1, *, groups=1, bias=False,
             activation=None):
    layers = [nn.Conv2d(in_channels, out_channels, kernel, stride, padding=kernel // 2,
                        groups=groups, bias=bias), nn.BatchNorm2d(out_channels)]
    return nn.Sequential(*layers, *([activation()] if activation else []))


def vgg16(size, classes):
    layers, channels = [], 3
    for width, repeats in ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3)):
        for _ in range(repeats):
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
            channels = width
        layers.append(nn.MaxPool2d(2))
    features = 512 * (size // 32) ** 2
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(features, 4096), nn.ReLU(),
                         nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, classes))


def _bottleneck(in_channels, width, stride):
    out_channels = 4 * width
    branch = nn.Sequential(
        _conv_bn(in_channels, width, 1, stride, bias=True, activation=nn.ReLU),
        _conv_bn(width, width, 3, bias=True, activation=nn.ReLU),
        _conv_bn(width, out_channels, 1, bias=True))
    shortcut = None
    if stride != 1 or in_channels != out_channels:
        shortcut = _conv_bn(in_channels, out_channels, 1, stride, bias=True)
    return Residual(branch, shortcut, nn.ReLU())


def resnet50(size, classes):
    layers = [_conv_bn(3, 64, 7, 2, bias=True, activation=nn.ReLU),
              nn.MaxPool2d(3, 2, padding=1)]
    channels = 64
    for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for index in range(blocks):
            layers.append(_bottleneck(channels, width, stride if index == 0 else 1))
            channels = 4 * width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(channels, classes))


def _inverted_residual(in_channels, out_channels, stride, expansion):
    hidden = in_channels * expansion
    layers = []
    if expansion != 1:
        layers.append(_conv_bn(in_channels, hidden, 1, activation=nn.ReLU6))
    layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden, activation=nn.ReLU6),
               _conv_bn(hidden, out_channels, 1)]
    branch = nn.Sequential(*layers)
    if stride == 1 and in_channels == out_channels:
        return Residual(branch)
    return branch


def mobilenet_v2(size, classes):
    layers, channels = [_conv_bn(3, 32, 3, 2, activation=nn.ReLU6)], 32
    for expansion, width, repeats, stride in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2),
                                              (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                                              (6, 320, 1, 1)):
        for index in range(repeats):
            layers.append(_inverted_residual(channels, width, stride if index == 0 else 1,
                                             expansion))
            channels = width
    return nn.Sequential(*layers, _conv_bn(channels, 1280, 1, activation=nn.ReLU6),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1280, classes))


def _initialise(model):
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0, 0.01)
            nn.init.zeros_(module.bias)


def calibrate_batch_norm(model, batch):
    """Set every BatchNorm's running statistics to those of ``batch`` (as the TF side does)."""
    norms = [module for module in model.modules() if isinstance(module, nn.BatchNorm2d)]
    for norm in norms:
        norm.momentum = 1.0
    model.train()
    with torch.no_grad():
        model(batch)
    for norm in norms:
        norm.momentum = 0.1
    model.eval()


def build(name, size=224, classes=10, seed=0):
    """An untrained ``name`` (one of :data:`NAMES`) in eval mode, for ``size × size`` RGB."""
    constructors = {"VGG16": vgg16, "ResNet50": resnet50, "MobileNetV2": mobilenet_v2}
    if name not in constructors:
        raise ValueError(f"Expected a model name in {NAMES}. Received: name={name!r}")
    torch.manual_seed(seed)
    model = constructors[name](size, classes)
    _initialise(model)
    return model.eval()
