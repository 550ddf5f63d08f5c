"""A StarGAN-style expression editor for small gray faces (Choi et al. 2018), sized for a CPU.

The generator takes a face in [-1, 1] and a target expression (one-hot, broadcast to planes and
concatenated to the image) and returns the face with that expression: an encoder (7x7 conv, two
stride-2 convs), residual blocks, and a decoder (two transposed convs, 7x7 conv, tanh), with
instance norm, as in StarGAN. The discriminator is a PatchGAN (4x4 stride-2 convs, leaky ReLU,
spectral norm) with two heads: real/fake per patch, and the expression of the whole face.

With ``mask=True`` the generator is an attention-mask generator (GANimation, Pumarola et al.
2018): beside the change C (tanh) it outputs a mask M in [0, 1] (sigmoid) from the same last
features, and returns ``M * C + (1 - M) * x``: where the mask is 0 the input passes through
untouched (identity, background, hair), so an edit is local by construction. Training penalises
the mask's mean (sparsity) and its total variation (smoothness).

With ``residual=True`` the decoder's tanh output is a change added to the input,
``clamp(x + 2 * tanh(.), -1, 1)`` (residual image learning, Shen & Liu 2017): the input's detail
passes through wherever the change is 0, so the network spends itself on the edit, not on
redrawing the face.

Example::

    g = create_generator(num_classes=6, image_size=48, width=32, res_blocks=4)   # 1.5 M parameters
    edited = g(faces_in_minus1_1, target_labels)
    g = create_generator(6, 48, mask=True)
    edited, mask = g(faces_in_minus1_1, target_labels, return_mask=True)
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from ..errors import FerkitError

#: The one GAN family: name -> (generator arguments, discriminator arguments) with defaults.
GAN_ARCHS = {"stargan": ({"width": 32, "res_blocks": 4, "in_channels": 1, "mask": False, "residual": False},
                         {"width": 32, "layers": 4, "in_channels": 1})}
MIN_IMAGE_SIZE = 16


def _check_size(image_size: int, layers: int = 2) -> None:
    if image_size < MIN_IMAGE_SIZE or image_size % (2 ** max(layers, 2)):
        raise FerkitError(f"GAN image size {image_size} must be at least {MIN_IMAGE_SIZE} and divisible by "
                          f"{2 ** max(layers, 2)} (48 and 64 work)")


class _ResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(ch, ch, 3, padding=1, bias=False), nn.InstanceNorm2d(ch, affine=True),
                                  nn.ReLU(inplace=True), nn.Conv2d(ch, ch, 3, padding=1, bias=False),
                                  nn.InstanceNorm2d(ch, affine=True))

    def forward(self, x):
        return x + self.body(x)


class Generator(nn.Module):
    def __init__(self, num_classes: int, image_size: int, width: int = 32, res_blocks: int = 4,
                 in_channels: int = 1, mask: bool = False, residual: bool = False):
        super().__init__()
        _check_size(image_size)
        if mask and residual:
            raise FerkitError("a generator is either an attention-mask one (--mask) or a residual one "
                              "(--residual), not both")
        self.residual = bool(residual)
        if width < 1 or res_blocks < 0:
            raise FerkitError(f"generator width must be >= 1 and res_blocks >= 0 (got {width}, {res_blocks})")
        self.num_classes = num_classes
        w = width

        def norm_act(ch):
            return [nn.InstanceNorm2d(ch, affine=True), nn.ReLU(inplace=True)]
        self.net = nn.Sequential(
            nn.Conv2d(in_channels + num_classes, w, 7, padding=3, bias=False), *norm_act(w),
            nn.Conv2d(w, 2 * w, 4, stride=2, padding=1, bias=False), *norm_act(2 * w),
            nn.Conv2d(2 * w, 4 * w, 4, stride=2, padding=1, bias=False), *norm_act(4 * w),
            *[_ResBlock(4 * w) for _ in range(res_blocks)],
            nn.ConvTranspose2d(4 * w, 2 * w, 4, stride=2, padding=1, bias=False), *norm_act(2 * w),
            nn.ConvTranspose2d(2 * w, w, 4, stride=2, padding=1, bias=False), *norm_act(w),
            nn.Conv2d(w, in_channels, 7, padding=3), nn.Tanh())
        self.has_mask = bool(mask)
        # the attention head reads the features the change head reads (net[:-2]); a generator
        # without a mask keeps the state-dict names of the plain StarGAN generator
        self.mask_head = nn.Sequential(nn.Conv2d(w, 1, 7, padding=3), nn.Sigmoid()) if self.has_mask else None
        #: training's mask warm-up: the mask used is m + open * (1 - m), so 1 = fully open (a plain
        #: generator) and 0 = the mask as predicted (always 0 outside training; not saved)
        self.mask_open = 0.0

    def forward(self, x: torch.Tensor, target: torch.Tensor, return_mask: bool = False):
        """x: (N, C, S, S) in [-1, 1]; target: (N,) class indices. Returns (N, C, S, S) in [-1, 1]
        (and, with ``return_mask``, the mask (N, 1, S, S) in [0, 1]: all ones without a mask head)."""
        planes = nn.functional.one_hot(target, self.num_classes).to(x.dtype)[:, :, None, None]
        h = torch.cat([x, planes.expand(-1, -1, *x.shape[-2:])], 1)
        if not self.has_mask:
            out = self.net(h)
            if self.residual:   # the net's tanh output is a change of up to +-2 added to the input
                out = (x.to(out.dtype) + 2 * out).clamp(-1, 1)
            return (out, torch.ones_like(out[:, :1])) if return_mask else out
        h = self.net[:-2](h)
        change, m = self.net[-2:](h), self.mask_head(h)
        if self.mask_open > 0:
            m = m + self.mask_open * (1 - m)
        out = m * change + (1 - m) * x.to(change.dtype)
        return (out, m) if return_mask else out


class Discriminator(nn.Module):
    def __init__(self, num_classes: int, image_size: int, width: int = 32, layers: int = 4, in_channels: int = 1):
        super().__init__()
        _check_size(image_size, layers)
        blocks, cin = [], in_channels
        for i in range(layers):
            cout = width * 2 ** i
            blocks += [spectral_norm(nn.Conv2d(cin, cout, 4, stride=2, padding=1)), nn.LeakyReLU(0.01)]
            cin = cout
        self.body = nn.Sequential(*blocks)
        side = image_size // 2 ** layers
        self.src = spectral_norm(nn.Conv2d(cin, 1, 3, padding=1, bias=False))      # real/fake per patch
        self.cls = nn.Conv2d(cin, num_classes, side, bias=False)                   # expression of the face

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return self.src(h), self.cls(h).flatten(1)


def resolve_gan_args(arch: str, g_args: dict | None, d_args: dict | None) -> tuple[dict, dict]:
    if arch not in GAN_ARCHS:
        raise FerkitError(f"unknown GAN architecture {arch!r}; available: {', '.join(GAN_ARCHS)}")
    out = []
    for given, defaults, what in ((g_args, GAN_ARCHS[arch][0], "generator"), (d_args, GAN_ARCHS[arch][1],
                                                                              "discriminator")):
        unknown = sorted(set(given or {}) - set(defaults))
        if unknown:
            raise FerkitError(f"the {what} takes no argument {', '.join(unknown)} (accepted: "
                              f"{', '.join(f'{k}={v}' for k, v in defaults.items())})")
        out.append({**defaults, **(given or {})})
    return out[0], out[1]


def create_generator(num_classes: int, image_size: int, **args) -> Generator:
    return Generator(num_classes, image_size, **resolve_gan_args("stargan", args, None)[0])


def create_discriminator(num_classes: int, image_size: int, **args) -> Discriminator:
    return Discriminator(num_classes, image_size, **resolve_gan_args("stargan", None, args)[1])


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Generator output in [-1, 1] (N, 1, S, S) -> uint8 faces (N, S, S)."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)[:, 0].cpu().numpy()
