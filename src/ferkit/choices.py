"""Vocabularies shared by the command line and the Python API, in one place (cheap to import).

The CLI builds its choices and help texts from these, so a new value is one edit.
"""
from __future__ import annotations

from .errors import FerkitError

PRECISIONS = ("auto", "fp32", "bf16")
#: Test-time augmentation: none; flip (image + mirror image); crops (5 shifted crops x mirror = 10 views).
TTA_MODES = ("none", "flip", "crops")
#: Label modes of vote-label data (FER+): the FER+ majority protocol (hard labels, faces without a
#: majority dropped) or the vote distribution itself (soft targets). See ferkit.votes.vote_targets.
LABEL_MODES = ("majority", "soft")
DEVICE_HELP = "auto (CUDA when present), cpu, cuda, cuda:N"


def check_device_name(name: str) -> str:
    """Validate a device name's spelling without touching the hardware (for up-front checks)."""
    text = (name or "auto").strip().lower()
    if text in ("auto", "cpu", "cuda") or (text.startswith("cuda:") and text[5:].isdigit()):
        return text
    raise FerkitError(f"unknown device {name!r}; accepted: {DEVICE_HELP}")


def show_value(value) -> str:
    """An option's value as help texts and listings show it: a tuple as 2,2,2, a float in the
    shortest form (:g), None as "default"."""
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return "default" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def check_choice(what: str, value, accepted) -> None:
    """One clear line naming what is accepted."""
    if value not in accepted:
        raise FerkitError(f"unknown {what} {value!r}; accepted: {', '.join(map(str, accepted))}")
