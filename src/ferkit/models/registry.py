"""The architecture registry: one decorated builder per architecture.

A builder takes ``num_classes`` and ``image_size`` plus any keyword arguments of its own
(width, depth, dropout, input channels); :func:`create_model` checks those arguments against the
builder's signature, so a typo is one clear error instead of a TypeError deep inside torch::

    @register_model("tiny", min_image_size=8)
    def tiny(num_classes: int, image_size: int = 64, dropout: float = 0.2) -> nn.Module: ...

    create_model("tiny", num_classes=7, image_size=48, dropout=0.3)
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

from torch import nn

from ..errors import FerkitError

_FIXED = ("num_classes", "image_size")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    min_image_size: int

    def defaults(self) -> dict:
        """The builder's own arguments (beyond num_classes and image_size) with their defaults."""
        sig = inspect.signature(self.builder)
        return {k: p.default for k, p in sig.parameters.items() if k not in _FIXED}

    def summary(self) -> str:
        """The docstring's first paragraph, on one line."""
        return " ".join((inspect.getdoc(self.builder) or "").split("\n\n")[0].split())


_MODELS: dict[str, ModelEntry] = {}


def register_model(name: str, min_image_size: int = 8):
    """Decorator: register ``fn(num_classes, image_size, **args) -> nn.Module`` under ``name``."""
    def wrap(fn):
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        _MODELS[name] = ModelEntry(name, fn, min_image_size)
        return fn
    return wrap


def list_models() -> list[str]:
    return sorted(_MODELS)


def get_model_entry(name: str) -> ModelEntry:
    if name not in _MODELS:
        raise FerkitError(f"unknown architecture {name!r}; available: {', '.join(list_models())}")
    return _MODELS[name]


def resolve_model_args(name: str, image_size: int, model_args: dict | None = None) -> dict:
    """Check an architecture's name, image size and arguments; return the full argument dict
    (defaults filled in), which is what a checkpoint stores. Raises FerkitError naming what is accepted."""
    entry = get_model_entry(name)
    if image_size < entry.min_image_size:
        raise FerkitError(f"image size {image_size} is too small for architecture {name!r} "
                          f"(minimum {entry.min_image_size})")
    defaults = entry.defaults()
    unknown = sorted(set(model_args or {}) - set(defaults))
    if unknown:
        accepted = ", ".join(f"{k}={v!r}" for k, v in defaults.items()) or "none"
        raise FerkitError(f"architecture {name!r} takes no argument {', '.join(unknown)} (accepted: {accepted})")
    return {**defaults, **(model_args or {})}


def create_model(name: str, num_classes: int, image_size: int = 64, **model_args) -> nn.Module:
    """Build a registered architecture. Raises FerkitError for an unknown name, an argument the
    builder does not take, an image size below its minimum, or a value the builder refuses."""
    args = resolve_model_args(name, image_size, model_args)
    try:
        return _MODELS[name].builder(num_classes=num_classes, image_size=image_size, **args)
    except (TypeError, ValueError) as exc:
        raise FerkitError(f"architecture {name!r}: bad argument ({exc})") from None


def parse_model_args(items: list[str] | None) -> dict:
    """``["width=48", "depths=2,2,2,2", "dropout=0.3"]`` -> dict with ints, floats, tuples, bools."""
    out = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise FerkitError(f"model argument {item!r} is not NAME=VALUE (e.g. width=48)")
        out[key.strip().replace("-", "_")] = _parse_value(text.strip())
    return out


def _parse_value(text: str):
    if "," in text:
        return tuple(_parse_value(t) for t in text.split(",") if t.strip())
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
