"""Knowledge distillation: a frozen teacher's softened outputs as soft targets for the student.

A label is a distribution (vote labels, mixup, teachers alike), so distillation is one more term of
the same loss, not a new loop::

    loss = (1 - alpha) * CE(student, labels) + alpha * T^2 * CE(student / T, softmax(teacher / T))

(Hinton et al. 2015; CE against a distribution is the KL divergence plus a constant.) The teacher
sees each training batch exactly as augmented for the student, converted to its own input contract
(scaling, normalisation, image size). Several teachers (``--teacher a,b``) are averaged in
probability: an ensemble. Their classes must cover the student's; they are matched by name.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import FerkitError
from ..models import InputSpec


@dataclass
class Teacher:
    models: list[torch.nn.Module]
    specs: list[InputSpec]
    columns: list[list[int]]       # per teacher: its output index of each student class
    alpha: float
    temperature: float

    @torch.no_grad()
    def targets(self, x: torch.Tensor, spec: InputSpec) -> torch.Tensor:
        """Averaged softened probabilities (N, student classes) for the student's normalised batch ``x``."""
        mean = torch.tensor(spec.mean[:1], device=x.device).view(1, 1, 1, 1)
        std = torch.tensor(spec.std[:1], device=x.device).view(1, 1, 1, 1)
        x01 = x[:, :1].float() * std + mean
        out = 0.0
        for model, tspec, cols in zip(self.models, self.specs, self.columns):
            xt = x01 if x01.shape[-1] == tspec.image_size else F.interpolate(
                x01, size=(tspec.image_size, tspec.image_size), mode="bilinear", align_corners=False, antialias=True)
            logits = model(tspec.normalize(xt).contiguous(memory_format=torch.channels_last)).float()[:, cols]
            out = out + torch.softmax(logits / self.temperature, 1)
        return out / len(self.models)

    def loss(self, logits: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
        """The distillation term: T^2 x cross-entropy of the softened student against ``soft``."""
        t = self.temperature
        return t * t * F.cross_entropy(logits.float() / t, soft)


def load_teacher(spec: str, classes: tuple[str, ...], device: torch.device, alpha: float,
                 temperature: float) -> Teacher:
    """Open the teacher(s) named in ``spec`` (comma-separated: run folders, checkpoints, bundled names)."""
    from ..models import open_model

    check_distill(alpha, temperature)
    models, specs, columns = [], [], []
    for name in [s.strip() for s in spec.split(",") if s.strip()]:
        opened = open_model(name, device=device, backend="torch")
        model, record = opened.module, opened.record
        missing = [c for c in classes if c not in record.classes]
        if missing:
            raise FerkitError(f"teacher {name} has no class {', '.join(missing)} (its classes: "
                              f"{', '.join(record.classes)}; the student's: {', '.join(classes)})")
        for p in model.parameters():
            p.requires_grad_(False)
        models.append(model.to(memory_format=torch.channels_last).eval())
        specs.append(record.input)
        columns.append([record.classes.index(c) for c in classes])
    if not models:
        raise FerkitError("--teacher is empty")
    return Teacher(models, specs, columns, alpha, temperature)


def check_distill(alpha: float, temperature: float) -> None:
    if not (math.isfinite(alpha) and 0 <= alpha <= 1):
        raise FerkitError(f"distill-alpha must be in [0, 1] (got {alpha})")
    if not (math.isfinite(temperature) and temperature > 0):
        raise FerkitError(f"distill-temperature must be a positive number (got {temperature})")
