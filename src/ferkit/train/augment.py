"""Batched augmentation in torch: whole batches at once, on the batch's device, no per-image loop.

Every random draw comes from one ``torch.Generator`` (on the CPU, so CPU and CUDA runs draw the
same numbers), which makes a run reproducible for its seed and resumable from a saved generator
state. With the reference values (rotate 10, shift 0.08, zoom 0.08, aspect 0) :func:`geometric`
draws and computes exactly what ferkit 0.1's ``--augment`` did.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def _rand(gen: torch.Generator, *shape, device) -> torch.Tensor:
    return torch.rand(*shape, generator=gen).to(device)


def geometric(x: torch.Tensor, gen: torch.Generator, rotate: float = 10.0, shift: float = 0.08,
              zoom: float = 0.08, aspect: float = 0.0) -> torch.Tensor:
    """Random horizontal flip, rotation (+-rotate degrees), shift (+-shift of the half-side), zoom
    (+-zoom) and aspect change (+-aspect), as one affine resampling per image (borders replicated).

    Args:
        x: float batch (N, C, H, W).
    Returns:
        a batch of the same shape, dtype and device.
    """
    n = x.shape[0]
    r = _rand(gen, n, 4, device=x.device)
    angle = (r[:, 0] - 0.5) * (2 * math.radians(rotate))
    scale = 1 + (r[:, 1] - 0.5) * (2 * zoom)
    flip = torch.where(_rand(gen, n, device=x.device) < 0.5, -1.0, 1.0)
    sx, sy = scale, scale
    if aspect > 0:
        a = 1 + (_rand(gen, n, device=x.device) - 0.5) * (2 * aspect)
        sx, sy = scale * a, scale / a
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([cos / sx * flip, -sin / sy, (r[:, 2] - 0.5) * (2 * shift)], 1),
                         torch.stack([sin / sx * flip, cos / sy, (r[:, 3] - 0.5) * (2 * shift)], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_erase(x: torch.Tensor, gen: torch.Generator, p: float, area=(0.02, 0.25),
                 ratio=(0.3, 3.3)) -> torch.Tensor:
    """Random erasing (Zhong et al. 2020): with probability ``p`` per image, one rectangle of
    ``area`` (fraction of the image) and aspect ``ratio`` is filled with standard-normal noise
    (the input is normalised, so that is noise around the data mean)."""
    if p <= 0:
        return x
    n, _, h, w = x.shape
    r = _rand(gen, n, 5, device=x.device)
    s = (area[0] + r[:, 0] * (area[1] - area[0])) * h * w
    log_ratio = math.log(ratio[0]) + r[:, 1] * (math.log(ratio[1]) - math.log(ratio[0]))
    eh = torch.sqrt(s * torch.exp(log_ratio)).round().clamp(1, h)
    ew = torch.sqrt(s / torch.exp(log_ratio)).round().clamp(1, w)
    top = (r[:, 2] * (h - eh + 1)).floor()
    left = (r[:, 3] * (w - ew + 1)).floor()
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    inside = ((rows >= top.view(-1, 1, 1)) & (rows < (top + eh).view(-1, 1, 1))
              & (cols >= left.view(-1, 1, 1)) & (cols < (left + ew).view(-1, 1, 1)))
    mask = (inside & (r[:, 4] < p).view(-1, 1, 1)).unsqueeze(1)
    noise = torch.randn(x.shape, generator=gen).to(x.device, x.dtype)
    return torch.where(mask, noise, x)


def mix(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator, mixup: float = 0.0, cutmix: float = 0.0):
    """Mixup (Zhang et al. 2018) or cutmix (Yun et al. 2019) of a batch with a permutation of itself.

    Returns ``(x, y_a, y_b, lam)``: the loss is ``lam * CE(y_a) + (1 - lam) * CE(y_b)``. With both
    alphas positive, each batch uses one of the two with equal probability.
    """
    if mixup <= 0 and cutmix <= 0:
        return x, y, y, 1.0
    draw = torch.rand(2, generator=gen)
    seed = int(torch.randint(0, 2 ** 31 - 1, (1,), generator=gen))
    use_cutmix = cutmix > 0 and (mixup <= 0 or draw[0] < 0.5)
    alpha = cutmix if use_cutmix else mixup
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    perm = torch.randperm(x.shape[0], generator=gen).to(x.device)
    if not use_cutmix:
        return lam * x + (1 - lam) * x[perm], y, y[perm], lam
    h, w = x.shape[-2:]
    ch, cw = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
    cy, cx = np.random.default_rng(seed + 1).integers(0, [h, w])
    top, bottom = max(cy - ch // 2, 0), min(cy + ch // 2, h)
    left, right = max(cx - cw // 2, 0), min(cx + cw // 2, w)
    x = x.clone()
    x[..., top:bottom, left:right] = x[perm][..., top:bottom, left:right]
    lam = 1 - (bottom - top) * (right - left) / (h * w)
    return x, y, y[perm], lam


def affine_view(x: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, scale: torch.Tensor,
                flip: torch.Tensor) -> torch.Tensor:
    """The batch ``x`` (N, C, H, W) seen under a per-image change of the crop: content moved by
    ``dx``/``dy`` (fractions of the side, + = right/down), zoomed by ``scale`` about the centre
    (> 1 = closer) and mirrored where ``flip`` is true; borders replicated, as
    benchmarks/bench_stability.py measures. All four are (N,) tensors; zero shift, scale 1 and no
    flip give the batch back (up to rounding)."""
    sign = torch.where(flip.to(torch.bool), -1.0, 1.0).to(x.device)
    inv = 1.0 / scale.to(x.device, torch.float32)
    zero = torch.zeros_like(inv)
    # output -> input coordinates in [-1, 1] (the side is 2 units): x_in = (x_out - 2 dx) / scale
    theta = torch.stack([torch.stack([inv * sign, zero, -2 * dx.to(x.device, torch.float32) * inv], 1),
                         torch.stack([zero, inv, -2 * dy.to(x.device, torch.float32) * inv], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def small_change(x: torch.Tensor, gen: torch.Generator, shift_px: float = 4.0, zoom: float = 0.1) -> torch.Tensor:
    """A random small change of each crop, of the kinds bench_stability.py measures: a shift of up
    to +-``shift_px`` pixels at 48 px in each direction (scaled to the image size), a zoom in
    [1 - zoom, 1 + zoom] and a horizontal flip with probability 1/2."""
    n = x.shape[0]
    r = torch.rand(n, 4, generator=gen)
    frac = shift_px / 48.0
    return affine_view(x, (r[:, 0] - 0.5) * (2 * frac), (r[:, 1] - 0.5) * (2 * frac),
                       1 + (r[:, 2] - 0.5) * (2 * zoom), r[:, 3] < 0.5)
