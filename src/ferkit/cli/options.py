"""Argument types and option builders shared by the command modules: one clear usage line for a
bad value (argparse exit status 2), and options made from config dataclass fields."""
from __future__ import annotations

import argparse

from ..choices import LABEL_MODES, PRECISIONS


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def nonneg_int(text: str) -> int:
    value = int(text) if text.lstrip("-").isdecimal() else None
    if value is None or value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


MAX_SEED = 2 ** 32 - 1


def random_seed(text: str) -> int:
    """A random seed: a whole number 0 .. 2^32-1 (what every generator ferkit seeds accepts)."""
    value = int(text) if text.strip().isdecimal() else None
    if value is None or value > MAX_SEED:
        raise argparse.ArgumentTypeError(f"a seed must be a whole number from 0 to {MAX_SEED}, got {text!r}")
    return value


def open_fraction(text: str) -> float:
    """A number strictly between 0 and 1."""
    value = finite_float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1 (exclusive), got {text!r}")
    return value


def nonneg_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text!r}")
    return value


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _default_detector() -> str:
    from ..predict.detect import DEFAULT_DETECTOR

    return DEFAULT_DETECTOR


def add_face_options(p) -> None:
    """Face finding and cropping options shared by `predict` and `evaluate --detect`."""
    p.add_argument("--detector", choices=("blazeface", "haar", "dlib"), default=None,
                   help="face detector: blazeface (MediaPipe's, bundled: scores and six keypoints; the crop is "
                        "levelled by its eyes), haar (OpenCV's bundled cascade) or dlib (HOG; needs "
                        "pip install 'ferkit[dlib]'); default: " + _default_detector())
    p.add_argument("--no-align", action="store_true",
                   help="do not turn face crops so the eyes are level (OpenCV's bundled eye cascades)")
    p.add_argument("--fallback", choices=("none", "whole"), default="none",
                   help="a photo where no face is found (after padded, upscaled and turned retries): none "
                        "(default: no row, listed) or whole (classify the whole image)")


def config_option(group, f, text: str, shown: str) -> None:
    """One option from a config dataclass field (type and choices from the field); default None
    means "the config's (or recipe's) value", which ``shown`` spells out in the help."""
    from ..train.config import MONITORS, OPTIMIZERS, SCHEDULES

    flag = "--" + f.name.replace("_", "-")
    text = f"{text} ({shown})" if shown else text
    kinds = {"int": positive_int, "int | None": positive_int, "float": finite_float}
    choices = {"monitor": tuple(MONITORS), "optimizer": OPTIMIZERS, "schedule": SCHEDULES,
               "precision": PRECISIONS, "labels": LABEL_MODES}.get(f.name)
    if f.type == "bool":
        group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
    elif f.name in ("seed", "patience", "held_out"):
        group.add_argument(flag, type=random_seed if f.name == "seed" else nonneg_int, default=None,
                           help=text)
    else:
        group.add_argument(flag, type=kinds.get(f.type, str), choices=choices, default=None,
                           help=text)


def config_from_args(cls, a, **values):
    """A config dataclass ``cls`` from parsed arguments: every field that has an option of the same
    name takes its value; ``values`` give the others (options named differently, negated flags)."""
    from dataclasses import fields

    given = {f.name: getattr(a, f.name) for f in fields(cls) if f.init and hasattr(a, f.name)}
    return cls(**{**given, **values})
