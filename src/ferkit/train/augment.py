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


# ----------------------------------------------------------------------------- real-photo conditions
#: JPEG's standard luminance quantisation table (ITU T.81, Annex K), scaled by quality as libjpeg does.
_JPEG_LUMA = torch.tensor([
    [16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55], [14, 13, 16, 24, 40, 57, 69, 56],
    [14, 17, 22, 29, 51, 87, 80, 62], [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99]], dtype=torch.float32)


def _dct8() -> torch.Tensor:
    k, i = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    c = torch.cos(math.pi * (2 * i + 1) * k / 16) * math.sqrt(2 / 8)
    c[0] /= math.sqrt(2)
    return c


def jpeg(x: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """JPEG's lossy step on a [0, 1] gray batch (N, 1, H, W): 8x8 block DCT, quantisation by the
    luminance table at each image's ``quality`` (N,) in 1..100, and back (no chroma, no entropy
    coding: those lose nothing more in gray). Blocking and ringing come out as a real encoder's do."""
    n, c, h, w = x.shape
    ph, pw = -h % 8, -w % 8
    y = F.pad(x, (0, pw, 0, ph), mode="replicate") * 255 - 128 if ph or pw else x * 255 - 128
    dct = _dct8().to(x.device, x.dtype)
    blocks = y.unflatten(2, (-1, 8)).unflatten(4, (-1, 8)).transpose(3, 4)      # N, C, H/8, W/8, 8, 8
    q = quality.to(x.device, x.dtype).clamp(1, 100)
    scale = torch.where(q < 50, 5000 / q, 200 - 2 * q) / 100
    table = (_JPEG_LUMA.to(x.device, x.dtype) * scale.view(-1, 1, 1, 1, 1, 1) + 0.5).floor().clamp(1, 255)
    coef = torch.round(dct @ blocks @ dct.T / table) * table
    back = (dct.T @ coef @ dct).transpose(3, 4).reshape(n, c, h + ph, w + pw)
    return ((back + 128) / 255)[..., :h, :w].clamp(0, 1)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each image of (N, 1, H, W) with its own Gaussian ``sigma`` (N,) in pixels (separable,
    one grouped convolution per axis; borders replicated)."""
    n, c, h, w = x.shape
    radius = max(1, int(math.ceil(3 * float(sigma.max()))))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t.view(1, -1) / sigma.to(x.device, x.dtype).clamp_min(1e-3).view(-1, 1)) ** 2)
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)                    # N*C, 2r+1
    y = F.pad(x.reshape(1, n * c, h, w), (radius, radius, radius, radius), mode="replicate")
    y = F.conv2d(y, k.view(n * c, 1, 1, -1), groups=n * c)
    y = F.conv2d(y, k.view(n * c, 1, -1, 1), groups=n * c)
    return y.view(n, c, h, w)


def photo_conditions(x: torch.Tensor, gen: torch.Generator, p: float) -> torch.Tensor:
    """Conditions of real photos and video frames, each applied to an image with probability ``p``
    (independently), in the order a camera meets them:

    - an occluder: a flat patch (a hand, a microphone: 8-25% of the face, any place, any gray) or a
      dark band across the eyes (sunglasses);
    - light: gamma in [0.5, 2] and gain in [0.35, 1.1] (low light, over-exposure);
    - blur: Gaussian, sigma 0.4-1.6 px at 48 px (focus, motion);
    - low resolution: down to 20-60% of the side and back up (small faces, far from the camera);
    - sensor noise: Gaussian, sigma 1-8% of full scale;
    - JPEG compression at quality 8-60.

    ``x`` holds pixels in [0, 1], (N, 1, H, W); so does the result. Every draw comes from ``gen``.
    """
    if p <= 0:
        return x
    n, _, h, w = x.shape
    dev = x.device
    r = _rand(gen, n, 16, device=dev)
    on = r[:, :6] < p                                                  # which conditions, per image
    size = h / 48.0
    # occluder
    if on[:, 0].any():
        band = r[:, 6] < 0.35
        area = 0.08 + r[:, 7] * 0.17
        ratio = torch.exp((r[:, 8] - 0.5) * 1.6)
        ph = torch.where(band, (0.12 + 0.08 * r[:, 9]) * h, torch.sqrt(area * h * w * ratio)).clamp(2, h)
        pw = torch.where(band, (0.65 + 0.3 * r[:, 10]) * w, torch.sqrt(area * h * w / ratio)).clamp(2, w)
        top = torch.where(band, (0.28 + 0.14 * r[:, 11]) * h, r[:, 11] * (h - ph))
        left = torch.where(band, (w - pw) / 2, r[:, 12] * (w - pw))
        value = torch.where(band, 0.02 + 0.2 * r[:, 13], r[:, 13])
        rows = torch.arange(h, device=dev).view(1, h, 1)
        cols = torch.arange(w, device=dev).view(1, 1, w)
        inside = ((rows >= top.view(-1, 1, 1)) & (rows < (top + ph).view(-1, 1, 1))
                  & (cols >= left.view(-1, 1, 1)) & (cols < (left + pw).view(-1, 1, 1)))
        mask = (inside & on[:, 0].view(-1, 1, 1)).unsqueeze(1)
        x = torch.where(mask, value.view(-1, 1, 1, 1).to(x.dtype), x)
    # light
    if on[:, 1].any():
        gamma = torch.exp((r[:, 14] - 0.5) * 2 * math.log(2))
        gain = 0.35 + 0.75 * r[:, 15]
        lit = x.clamp_min(0).pow(gamma.view(-1, 1, 1, 1)) * gain.view(-1, 1, 1, 1)
        x = torch.where(on[:, 1].view(-1, 1, 1, 1), lit.clamp(0, 1), x)
    r2 = _rand(gen, n, 4, device=dev)
    if on[:, 2].any():
        sigma = (0.4 + 1.2 * r2[:, 0]) * size
        x = torch.where(on[:, 2].view(-1, 1, 1, 1), gaussian_blur(x, sigma), x)
    if on[:, 3].any():   # one factor per batch, so the batch stays one interpolation
        f = 0.2 + 0.4 * float(r2[0, 1])
        small = F.interpolate(x, size=(max(2, round(h * f)), max(2, round(w * f))), mode="area")
        x = torch.where(on[:, 3].view(-1, 1, 1, 1), F.interpolate(small, size=(h, w), mode="bilinear",
                                                                   align_corners=False), x)
    if on[:, 4].any():
        sigma = 0.01 + 0.07 * r2[:, 2]
        noise = torch.randn(x.shape, generator=gen).to(dev, x.dtype) * sigma.view(-1, 1, 1, 1)
        x = torch.where(on[:, 4].view(-1, 1, 1, 1), (x + noise).clamp(0, 1), x)
    if on[:, 5].any():
        x = torch.where(on[:, 5].view(-1, 1, 1, 1), jpeg(x, 8 + 52 * r2[:, 3]), x)
    return x
