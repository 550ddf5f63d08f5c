"""CPU-fast classifiers for 48 px faces (distillation students), beside ``vgg`` and ``resnet``.

``lite`` keeps the VGG layout (stages whose width doubles, a 2x2 max-pool between them) but uses
plain 3x3 convolutions only in the first stages, where there are few channels, and
depthwise-separable blocks (3x3 depthwise conv-BN-ReLU, then 1x1 conv-BN-ReLU) after them, where
a plain convolution's cost would grow with the square of the width. Every convolution is followed
by its batch norm inside an ``nn.Sequential``, so :func:`ferkit.runtime.fuse_for_inference` folds
all of them. ``separable_from=len(depths)`` gives a plain narrow VGG (the ``vgg`` layout).

Parameters, MFLOPs and faces/s against ``vgg`` are in ``docs/fast-model.md``.
"""
from __future__ import annotations

from torch import nn

from .classifiers import _conv_bn_relu, _init, _stage_widths
from .registry import register_model


def _separable(cin: int, cout: int) -> list[nn.Module]:
    """3x3 depthwise conv-BN-ReLU, then 1x1 pointwise conv-BN-ReLU (MobileNet v1's block)."""
    return [nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU(inplace=True),
            nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


@register_model("lite", min_image_size=8)
def lite(num_classes: int, image_size: int = 48, width: int = 16, depths: tuple[int, ...] = (2, 2, 2, 2),
         separable_from: int = 2, dropout: float = 0.2, in_channels: int = 1) -> nn.Module:
    """CPU-fast student: VGG stages (widths double, 2x2 max-pool between), plain 3x3 conv-BN-ReLU in
    the first ``separable_from`` stages, depthwise-separable blocks after. width=16: 0.05 M
    parameters, 31 MFLOP at 48 px (vgg width 48: 2.64 M, 528)."""
    widths = _stage_widths(width, depths)
    if not 0 <= separable_from <= len(depths):
        raise ValueError(f"separable_from must be between 0 and {len(depths)} (the number of stages)")
    layers: list[nn.Module] = []
    cin = in_channels
    for i, (w, depth) in enumerate(zip(widths, depths)):
        if i:
            layers.append(nn.MaxPool2d(2))
        for j in range(depth):
            # The very first layer is always a plain convolution: a depthwise one over the gray
            # input would be a single 3x3 filter.
            plain = i < separable_from or (i == 0 and j == 0)
            layers += _conv_bn_relu(cin, w) if plain else _separable(cin, w)
            cin = w
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(cin, num_classes)]
    return _init(nn.Sequential(*layers))
