"""Model registry and self-describing checkpoints.

Adding an architecture is one decorated function::

    @register_model("tiny")
    def tiny(num_classes: int, image_size: int = 64) -> nn.Module: ...

A checkpoint is one ``.safetensors`` file: the weights, plus a JSON record in the file's
metadata (architecture and its arguments, ordered class names, image size, preprocessing,
training config, validation metrics, ferkit version). Loading never unpickles anything.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from . import __version__
from .errors import FerkitError
from .files import atomic_path

_MODELS: dict[str, Callable[..., nn.Module]] = {}
CHECKPOINT_FORMAT = "ferkit-checkpoint-1"


def register_model(name: str):
    """Decorator: register a builder ``fn(num_classes, image_size) -> nn.Module`` under ``name``."""
    def wrap(fn):
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        _MODELS[name] = fn
        return fn
    return wrap


def list_models() -> list[str]:
    return sorted(_MODELS)


def create_model(name: str, num_classes: int, image_size: int = 64) -> nn.Module:
    """Build a registered architecture (raises FerkitError for an unknown name)."""
    if name not in _MODELS:
        raise FerkitError(f"unknown architecture {name!r}; available: {', '.join(list_models())}")
    return _MODELS[name](num_classes=num_classes, image_size=image_size)


@register_model("seed")
def seed_cnn(num_classes: int, image_size: int = 64) -> nn.Module:
    """The reference implementation's Keras CNN, layer for layer (3x3 'valid' convolutions).

    4,966,022 parameters at 64x64 with 6 classes.
    """
    side = ((((image_size - 4) // 2) - 2) // 2 - 2) // 2
    if side < 1:
        raise FerkitError(f"image size {image_size} is too small for the seed model (minimum 22)")
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


@register_model("tiny")
def tiny_cnn(num_classes: int, image_size: int = 64) -> nn.Module:
    """A small fast CNN (~60k parameters) for tests, quick experiments and laptops."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(64, num_classes),
    )


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ----------------------------------------------------------------------------- checkpoints
def save_checkpoint(model: nn.Module, path: str | os.PathLike, record: dict) -> Path:
    """Write weights + JSON record atomically (temp file, then rename).

    ``record`` must hold at least ``arch``, ``classes`` and ``image_size``.
    """
    from safetensors.torch import save_file

    for key in ("arch", "classes", "image_size"):
        if key not in record:
            raise ValueError(f"checkpoint record lacks {key!r}")
    full = {"format": CHECKPOINT_FORMAT, "ferkit_version": __version__, **record}
    path = Path(path)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"ferkit": json.dumps(full)})
    return path


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A run folder means its best checkpoint; a file is taken as is."""
    p = Path(path)
    if p.is_dir():
        for name in ("best.safetensors", "last.safetensors"):
            if (p / name).is_file():
                return p / name
        raise FerkitError(f"{p} is a folder without best.safetensors or last.safetensors: not a ferkit run folder")
    if not p.exists():
        raise FerkitError(f"checkpoint {p} does not exist")
    return p


def read_checkpoint_record(path: str | os.PathLike) -> dict:
    """Read only the JSON record of a checkpoint (cheap: the header, not the weights)."""
    from safetensors import safe_open

    p = resolve_checkpoint(path)
    try:
        with safe_open(str(p), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for non-safetensors files
        raise FerkitError(f"{p} is not a safetensors checkpoint ({str(exc).splitlines()[0][:120]})") from None
    if "ferkit" not in meta:
        raise FerkitError(f"{p} is a safetensors file but not a ferkit checkpoint (no ferkit metadata)")
    try:
        record = json.loads(meta["ferkit"])
        _ = record["arch"], record["classes"], record["image_size"]
    except (ValueError, KeyError, TypeError):
        raise FerkitError(f"{p}: ferkit metadata is damaged") from None
    return record


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model named in a checkpoint and load its weights (eval mode).

    Returns (model, record). Raises FerkitError if the file is not a ferkit checkpoint or its
    weights do not fit the architecture it names.
    """
    from safetensors.torch import load_file

    p = resolve_checkpoint(path)
    record = read_checkpoint_record(p)
    model = create_model(record["arch"], len(record["classes"]), int(record["image_size"]))
    state = load_file(str(p), device=str(device))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise FerkitError(f"{p}: weights do not match architecture {record['arch']!r}: {first[:160]}") from None
    return model.to(device).eval(), record
