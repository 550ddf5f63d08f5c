"""Expression classifiers for small gray faces (48-64 px), one decorated builder each.

``seed`` is the reference implementation's CNN; ``tiny`` is for tests and quick looks; ``vgg`` and
``resnet`` are the families that reach the literature's FER2013 accuracy (see the README's
architecture table for parameters, MFLOPs and CPU speed at the sizes ferkit uses).
"""
from __future__ import annotations

from torch import nn

from .registry import register_model


@register_model("seed", min_image_size=24)
def seed_cnn(num_classes: int, image_size: int = 64) -> nn.Module:
    """The reference implementation's Keras CNN, layer for layer (3x3 'valid' convolutions).

    4,966,022 parameters at 64x64 with 6 classes.
    """
    side = ((((image_size - 4) // 2) - 2) // 2 - 2) // 2
    return nn.Sequential(
        nn.Conv2d(1, 32, 3), nn.ReLU(inplace=True),
        nn.Conv2d(32, 64, 3), nn.ReLU(inplace=True),
        nn.MaxPool2d(2), nn.Dropout(0.25),
        nn.Conv2d(64, 128, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(128, 128, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Dropout(0.25), nn.Flatten(),
        nn.Linear(128 * side * side, 1024), nn.ReLU(inplace=True), nn.Dropout(0.5),
        nn.Linear(1024, num_classes),  # logits; softmax lives in the loss / at prediction
    )


@register_model("tiny", min_image_size=8)
def tiny_cnn(num_classes: int, image_size: int = 64) -> nn.Module:
    """A small fast CNN (~60k parameters) for tests, quick experiments and laptops."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(64, num_classes),
    )


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True)]


def _stage_widths(width: int, depths) -> list[int]:
    depths = tuple(depths)
    if width < 1 or not depths or min(depths) < 1:
        raise ValueError(f"width and every depth must be at least 1 (got width={width}, depths={depths})")
    return [width * 2 ** i for i in range(len(depths))]


def _init(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model


@register_model("vgg", min_image_size=8)
def vgg_bn(num_classes: int, image_size: int = 48, width: int = 32, depths: tuple[int, ...] = (2, 2, 2, 2),
           dropout: float = 0.3, in_channels: int = 1) -> nn.Module:
    """VGG-style CNN with batch norm: stages of 3x3 conv-BN-ReLU (widths double, 2x2 max-pool between
    stages), global average pooling, dropout, one linear layer. width=32: 1.2 M parameters at 48 px."""
    widths = _stage_widths(width, depths)
    layers: list[nn.Module] = []
    cin = in_channels
    for i, (w, depth) in enumerate(zip(widths, depths)):
        if i:
            layers.append(nn.MaxPool2d(2))
        for _ in range(depth):
            layers += _conv_bn_relu(cin, w)
            cin = w
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(cin, num_classes)]
    return _init(nn.Sequential(*layers))


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        # No zero-initialised last norm here (Goyal et al. 2017): with weight decay on the norms'
        # scales, as in ferkit's recipes, the residual branches then barely grow (measured: a tiny
        # ResNet stalled at chance on toy data where the same net with scale 1 learnt in 3 epochs).
        self.body = nn.Sequential(*_conv_bn_relu(cin, cout, stride),
                                  nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(self.body(x) + self.shortcut(x))


class _ResNet(nn.Module):
    def __init__(self, num_classes: int, width: int, depths, dropout: float, in_channels: int):
        super().__init__()
        widths = _stage_widths(width, depths)
        # Small faces: a 3x3 stride-1 stem and no max-pool, unlike ImageNet's 7x7/2 stem + pool.
        self.stem = nn.Sequential(*_conv_bn_relu(in_channels, width))
        blocks, cin = [], width
        for i, (w, depth) in enumerate(zip(widths, depths)):
            for j in range(depth):
                blocks.append(_BasicBlock(cin, w, 2 if i and not j else 1))
                cin = w
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                                  nn.Linear(cin, num_classes))
        _init(self)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


@register_model("resnet", min_image_size=8)
def resnet(num_classes: int, image_size: int = 48, width: int = 32, depths: tuple[int, ...] = (2, 2, 2, 2),
           dropout: float = 0.0, in_channels: int = 1) -> nn.Module:
    """ResNet-style CNN for small faces (basic blocks, 3x3 stride-1 stem, no stem pooling); depths
    (2,2,2,2) is ResNet-18's layout. width=32: 2.8 M parameters at 48 px."""
    return _ResNet(num_classes, width, depths, dropout, in_channels)
