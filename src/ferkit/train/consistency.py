"""Consistency training: the model should give a face the same answer under a small change of its crop.

For each training batch a second view of the same faces is made by a small random change of the
kind ``benchmarks/bench_stability.py`` measures (:func:`ferkit.train.augment.small_change`: a shift
of up to +-4 px at 48 px, a zoom of 0.9-1.1, a horizontal flip), both views go through the model
in one forward pass, and the loss gains ``W x KL(p1 || p2)``: the KL divergence from the softmax on
the first view (detached: the target) to the softmax on the second (one-directional, as in UDA;
Xie et al. 2020)::

    loss = task loss(first view) + W * KL(softmax(logits_1).detach() || softmax(logits_2))

``--consistency W`` sets W (0, the default, is off: no second view, no extra draws).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import FerkitError


def consistency_loss(target_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(target_logits) || softmax(logits)), mean over the batch, in float32; the target
    side is detached (no gradient flows through it)."""
    target = torch.log_softmax(target_logits.detach().float(), 1)
    return F.kl_div(torch.log_softmax(logits.float(), 1), target, reduction="batchmean", log_target=True)


def check_consistency(weight: float, shift_px: float) -> None:
    if not (math.isfinite(weight) and weight >= 0):
        raise FerkitError(f"consistency must be 0 (off) or a positive weight (got {weight})")
    if not (math.isfinite(shift_px) and 0 <= shift_px <= 24):
        raise FerkitError(f"consistency-shift must be in [0, 24] pixels at 48 px (got {shift_px})")
