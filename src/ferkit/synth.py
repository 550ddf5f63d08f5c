"""Procedural facial-expression faces: ferkit's built-in data, no GAN and no downloaded weights.

Every face is a random *identity* (head, skin, eyes, brows, nose, lips, jaw, hair, glasses,
beard, age lines; drawn from ``np.random.default_rng([seed, identity_id])``) making an
*expression* built from FACS action units (AUs) with intensities in [0, 1]:

==========  ======================================  ==========  ==========================
happy       AU6 + AU12 (+ AU25 lips part, often)    sad         AU1 + AU4 + AU15
surprised   AU1 + AU2 + AU5 + AU26                  fearful     AU1+2+4+5+7+20+26
angry       AU4 + AU5 + AU7 + AU23                  disgusted   AU9 + AU15 + AU16
neutral     no AUs (small random leaks only)        contempt    unilateral AU12 + AU14
==========  ======================================  ==========  ==========================

Each AU moves geometry parametrically (brows, lids, cheeks, nose, lip corners, jaw), so a class
is not a sticker: per face the prototype's intensity is drawn from ``intensity=(lo, hi)``, every
AU is jittered, and other AUs "leak" weakly, so classes overlap like real expressions and a low
range such as ``(0.05, 0.2)`` makes the task genuinely hard. Nuisances (roll/yaw, scale, shift,
lighting direction and contrast, cluttered background, blur, sensor noise, JPEG artefacts, and
optionally occluders) are drawn per face. Faces are rendered with OpenCV primitives at 2x and
downsampled, with soft 3-D-ish shading from a blurred height map, framed like FER2013 crops.

Every face is reproducible: ``metadata.csv`` stores, per file, the readable parameters (AUs,
pose, lighting) and the full parameter JSON, and ``render_face(json.loads(row["params"]), size,
color)`` gives back the exact pixels.

Example::

    ferkit synth faces --out data/synth --per-class 200

    from ferkit.synth import generate_faces, generate_splits, write_preview
    generate_faces("data/synth", per_class=200)
    generate_splits("data/synth_splits", {"train": 150, "val": 30, "test": 60})
    write_preview("preview.png")
"""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np

from .errors import FerkitError
from .labels import EXPRESSIONS, parse_classes

__all__ = [
    "DEFAULT_CLASSES", "AUS", "PROTOTYPES", "sample_face_params", "render_face",
    "generate_faces", "generate_splits", "write_preview",
]

#: The six basic expressions plus neutral (FER2013's classes).
DEFAULT_CLASSES: tuple[str, ...] = EXPRESSIONS[:7]

#: Action units the renderer understands, in metadata column order.
AUS: tuple[str, ...] = ("AU1", "AU2", "AU4", "AU5", "AU6", "AU7", "AU9", "AU12", "AU14", "AU15",
                        "AU16", "AU20", "AU23", "AU25", "AU26")

#: Prototype AUs per expression (relative weights; multiplied by the per-face intensity).
PROTOTYPES: dict[str, dict[str, float]] = {
    "happy": {"AU6": 0.9, "AU12": 1.0},
    "sad": {"AU1": 1.0, "AU4": 0.8, "AU15": 1.0},
    "surprised": {"AU1": 1.0, "AU2": 1.0, "AU5": 1.0, "AU26": 1.0},
    "fearful": {"AU1": 1.0, "AU2": 0.8, "AU4": 0.8, "AU5": 1.0, "AU7": 0.6, "AU20": 1.0,
                "AU26": 0.7},
    "angry": {"AU4": 1.0, "AU5": 0.7, "AU7": 1.0, "AU23": 1.0},
    "disgusted": {"AU9": 1.0, "AU15": 0.8, "AU16": 0.8},
    "neutral": {},
    "contempt": {"AU12": 0.8, "AU14": 1.0},
}
#: Lip-corner AUs that can act on one side only (contempt is the unilateral case).
_SIDED = ("AU12", "AU14", "AU15", "AU20")
_PARAMS_VERSION = 1
_SS = 2  # supersampling factor: draw at 2x then INTER_AREA down (4x costs ~3x time for no gain)


# ----------------------------------------------------------------------------- parameters
def _r(x, nd: int = 4):
    """Round to plain Python floats so params are JSON-clean and compact; the renderer uses
    the rounded values, so regenerating from the JSON is exact."""
    if isinstance(x, (list, tuple, np.ndarray)):
        return [_r(v, nd) for v in x]
    return round(float(x), nd)


def _sample_identity(seed: int, identity_id: int) -> dict:
    """All the things that make a person look like themselves, from their own RNG."""
    g = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(identity_id), 0x1D])
    u = g.uniform
    tone = u(0, 1)
    skin = np.array([238, 205, 180]) * (1 - tone) + np.array([110, 75, 55]) * tone
    skin = np.clip(skin * u(0.93, 1.05) + g.normal(0, 6, 3), 40, 250)
    hair_kind = g.choice(["dark", "brown", "blond", "grey", "black"], p=[.3, .25, .15, .1, .2])
    hair = {"dark": (45, 35, 30), "brown": (95, 65, 40), "blond": (190, 160, 110),
            "grey": (165, 160, 155), "black": (25, 22, 20)}[str(hair_kind)]
    hair = np.clip(np.array(hair) * u(0.8, 1.2), 10, 240)
    lip = skin * np.array([0.82, 0.62, 0.62]) * u(0.85, 1.05)
    return {
        "wc": u(0.86, 0.98), "htop": u(1.05, 1.22), "ych": u(0.80, 0.92), "chin_w": u(0.1, 0.26),
        "jaw_p": u(1.7, 3.3), "skin": _r(skin, 1), "lip": _r(lip, 1), "hair": _r(hair, 1),
        "brow_col": _r(np.minimum(hair, skin * 0.55) * u(0.7, 1.0), 1),
        "eye_y": u(-0.34, -0.26), "eye_x": u(0.35, 0.43), "eye_w": u(0.14, 0.18),
        "eye_h": u(0.06, 0.085), "eye_lo": u(0.03, 0.045), "eye_tilt": u(-0.02, 0.035),
        "iris_r": u(0.062, 0.075), "iris": u(25, 110), "sclera": u(195, 235),
        "brow_dy": u(0.12, 0.17), "brow_th": u(0.03, 0.065), "brow_arch": u(0.01, 0.06),
        "brow_in": u(0.08, 0.14), "brow_tilt": u(-0.03, 0.03),
        "nose_y": u(0.04, 0.13), "nose_w": u(0.11, 0.16), "nose_len": u(0.8, 1.2),
        "mouth_y": u(0.42, 0.5), "mouth_w": u(0.2, 0.27), "lip_u": u(0.03, 0.055),
        "lip_l": u(0.045, 0.075), "mouth_rest": u(-0.02, 0.025), "cupid": u(0.0, 0.02),
        "hair_style": int(g.choice(5, p=[.1, .35, .25, .2, .1])), "hairline": u(-0.9, -0.62),
        "hairline_k": u(0.05, 0.35), "hair_vol": u(0.05, 0.2),
        "glasses": bool(u() < 0.15), "glasses_dark": u(20, 70),
        "beard": int(g.choice(3, p=[.8, .1, .1])),  # 0 none, 1 stubble/full beard, 2 moustache
        "age": u(0, 1) ** 2, "ears": u(0.6, 1.0),
    }


def _sample_aus(g: np.random.Generator, expression: str, intensity) -> tuple[dict, float, float]:
    """Prototype AUs at a random intensity, each jittered, plus weak leaks of the others."""
    lo, hi = float(intensity[0]), float(intensity[1])
    level = g.uniform(lo, hi)
    proto = dict(PROTOTYPES[expression])
    if expression == "happy" and g.uniform() < 0.6:   # most real smiles part the lips
        proto["AU25"] = g.uniform(0.4, 1.0)
    aus = {}
    for au in AUS:
        leak = g.uniform(0, 0.22) if g.uniform() < 0.3 else 0.0
        w = proto.get(au, 0.0)
        val = w * level * g.uniform(0.8, 1.2) if w else 0.0
        aus[au] = _r(min(1.0, max(val, leak)), 3)
    # sided AUs: contempt acts on one side; everyone else is only slightly asymmetric
    asym = g.choice([-1.0, 1.0]) if expression == "contempt" else g.normal(0, 0.12)
    return aus, level, float(np.clip(asym, -1, 1))


def sample_face_params(rng, expression: str, identity_id: int, seed: int = 0,
                       intensity=(0.5, 1.0), occluders: bool = False) -> dict:
    """Draw one face's parameters (a JSON-serialisable dict that `render_face` renders).

    ``rng`` (a ``np.random.Generator``, an int, or a list of ints) drives the per-face draws:
    expression intensity, AU jitter and leaks, pose, lighting, camera, background. The identity
    comes from ``(seed, identity_id)`` alone, so the same identity looks the same in every face.
    """
    expression = parse_classes([expression])[0]
    g = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    aus, level, asym = _sample_aus(g, expression, intensity)
    u = g.uniform
    return {
        "version": _PARAMS_VERSION, "expression": expression, "identity": int(identity_id),
        "seed": int(seed), "intensity": _r(level, 3), "aus": aus, "asym": _r(asym, 3),
        "identity_params": {k: (_r(v) if isinstance(v, float) else v)
                            for k, v in _sample_identity(seed, identity_id).items()},
        "pose": {"roll": _r(g.normal(0, 5), 2), "yaw": _r(u(-0.2, 0.2), 3),
                 "scale": _r(u(0.86, 1.0), 3), "tx": _r(g.normal(0, 0.025), 3),
                 "ty": _r(g.normal(0.03, 0.025), 3),
                 "gaze": _r([g.normal(0, 0.2), g.normal(0, 0.15)], 3)},
        "light": {"azimuth": _r(u(0, 360), 1), "elevation": _r(u(0.45, 0.9), 3),
                  "ambient": _r(u(0.35, 0.6), 3), "gradient": _r(u(0, 0.25), 3),
                  "contrast": _r(u(0.75, 1.25), 3), "brightness": _r(g.normal(0, 12), 1),
                  "gamma": _r(u(0.8, 1.25), 3)},
        "camera": {"blur": _r(u(0, 0.8), 3), "noise": _r(u(0, 6), 2),
                   "jpeg": int(g.integers(25, 96)) if u() < 0.7 else 0,
                   "noise_seed": int(g.integers(0, 2**31))},
        "background": {"kind": int(g.integers(0, 4)), "seed": int(g.integers(0, 2**31))},
        "occluder": _sample_occluder(g) if occluders and u() < 0.3 else None,
    }


def _sample_occluder(g: np.random.Generator) -> dict:
    """A hand-, microphone- or bar-like blob over part of the face (off by default)."""
    return {"kind": int(g.integers(0, 3)), "x": _r(g.uniform(-0.9, 0.9)),
            "y": _r(g.uniform(-0.2, 0.9)), "r": _r(g.uniform(0.18, 0.4)),
            "angle": _r(g.uniform(0, 180), 1), "grey": _r(g.uniform(30, 230), 1)}


# ----------------------------------------------------------------------------- drawing kit
def _bez(p0, p1, p2, n: int = 10) -> np.ndarray:
    """Quadratic Bezier through control point p1 (the workhorse for lids, lips and brows)."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    return (1 - t) ** 2 * np.asarray(p0) + 2 * (1 - t) * t * np.asarray(p1) + t ** 2 * np.asarray(p2)


def _ell(cx, cy, rx, ry, n: int = 20, a0: float = 0.0, a1: float = 2 * math.pi) -> np.ndarray:
    t = np.linspace(a0, a1, n)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1)


class _Canvas:
    """Maps face units (x right, y down; cheeks at about x = +-0.9, chin at y ~ 0.85) to
    pixels through yaw, roll, scale and shift, and draws anti-aliased primitives with it."""

    def __init__(self, S: int, pose: dict, color: bool):
        self.S, self.color = S, color
        self.k = S / 2 * pose["scale"]
        rad = math.radians(pose["roll"])
        self.c, self.s = math.cos(rad), math.sin(rad)
        self.cy, self.sy = math.cos(pose["yaw"]), math.sin(pose["yaw"])
        self.ox, self.oy = S / 2 + pose["tx"] * S, S / 2 + pose["ty"] * S

    def px(self, pts, depth: float = 0.0) -> np.ndarray:
        p = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
        x, y = p[:, 0], p[:, 1]
        # yaw: points on a rounded head (radius 1.1) swing round; protruding ones (nose) more
        z = np.sqrt(np.maximum(1.21 - x * x, 0.0)) - 1.1 + depth
        x = x * self.cy + z * self.sy
        X = self.ox + self.k * (self.c * x - self.s * y)
        Y = self.oy + self.k * (self.s * x + self.c * y)
        return np.stack([X, Y], 1)

    def col(self, rgb):
        if isinstance(rgb, (int, float)):
            return (float(rgb),) * 3 if self.color else float(rgb)
        r, g, b = rgb
        return (float(b), float(g), float(r)) if self.color else 0.299 * r + 0.587 * g + 0.114 * b

    def _ip(self, pts, depth=0.0):
        return [np.round(self.px(pts, depth) * 8).astype(np.int32)]  # shift=3: 1/8 px precision

    def poly(self, img, pts, value, depth=0.0, aa=True):
        v = self.col(value) if img.dtype == np.uint8 else float(value)
        cv2.fillPoly(img, self._ip(pts, depth), v, cv2.LINE_AA if aa else cv2.LINE_8, 3)

    def line(self, img, pts, value, width, depth=0.0, closed=False):
        v = self.col(value) if img.dtype == np.uint8 else float(value)
        th = max(1, int(round(width * self.k)))
        cv2.polylines(img, self._ip(pts, depth), closed, v, th, cv2.LINE_AA, 3)

    def circle(self, img, cx, cy, r, value, depth=0.0):
        v = self.col(value) if img.dtype == np.uint8 else float(value)
        c = self.px([cx, cy], depth)[0]
        cv2.circle(img, (int(round(c[0] * 8)), int(round(c[1] * 8))), max(1, int(round(r * self.k * 8))),
                   v, -1, cv2.LINE_AA, 3)


def _shade(rgb, f: float):
    return tuple(float(min(255.0, c * f)) for c in rgb)
