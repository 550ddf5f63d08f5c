"""Procedural facial-expression faces: ferkit's built-in data, no GAN and no downloaded weights.

Every face is a random *identity* (head, skin, eyes, brows, nose, lips, jaw, hair, glasses,
beard, age lines; drawn from its own RNG seeded by ``(seed, identity_id)``) making an
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
optionally occluders: off by default because they hide the very cues being learnt) are drawn
per face from an RNG keyed by ``(seed, class, index)``, so output never depends on ``workers``.
Faces are rendered with OpenCV primitives at 2x and
downsampled, with soft 3-D-ish shading from a blurred height map, framed like FER2013 crops.

Every face is reproducible: ``metadata.csv`` has one row per file with ``file`` (relative
path), ``class``, ``identity``, ``index``, ``seed``, ``size``, ``color``, ``intensity``, one
column per AU (AU1 ... AU26), ``asym`` (lip-corner AU side bias), pose (``roll`` degrees,
``yaw`` radians, ``scale``, ``tx``, ``ty``), ``light_*`` and ``cam_*`` (blur, noise, JPEG
quality, 0 = none), ``occluder`` (0/1), and ``params``: the full parameter JSON, so
``render_face(json.loads(row["params"]), int(row["size"]), bool(int(row["color"])))`` gives back
the exact pixels (RGB when colour; files are written BGR by OpenCV).

Speed: drawing is deferred and vectorised (see `_Canvas`); on one core a 64x64 face costs about
3 ms including the PNG, so ``workers=2`` reaches ~500 faces/s on an idle 2-core machine.

Example::

    ferkit synth faces --out data/synth --per-class 200

    from ferkit.synth import generate_faces, generate_splits, write_preview
    generate_faces("data/synth", per_class=200)
    generate_splits("data/synth_splits", {"train": 150, "val": 30, "test": 60})
    write_preview("preview.png")
"""
from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path

import cv2
import numpy as np

from ..errors import FerkitError
from ..files import make_dir
from ..labels import EXPRESSIONS, parse_classes
from .writer import AtomicDataset, check_out_dir, write_metadata, write_png

__all__ = [
    "DEFAULT_CLASSES", "AUS", "PROTOTYPES", "sample_face_params", "render_face",
    "generate_faces", "generate_splits", "write_preview", "META_COLUMNS",
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
        return [round(float(v), nd) for v in x]
    return round(float(x), nd)


def _key_int(key) -> int:
    """Pack a seed key (int or sequence of ints) into one int, 32 bits per element."""
    if isinstance(key, (int, np.integer)):
        key = [key]
    return sum((int(v) & 0xFFFFFFFF) << (32 * i) for i, v in enumerate(key))


class _Draws:
    """Uniforms/normals drawn in one batch and handed out as Python floats. A key (int or
    list of ints) seeds Python's Mersenne Twister, 3x cheaper to set up than a numpy
    Generator from a SeedSequence, and a face needs several independent streams."""

    def __init__(self, src, n: int = 96, n_normal: int = 12):
        if isinstance(src, np.random.Generator):
            self.uni, self.nor = src.random(n).tolist(), src.standard_normal(n_normal).tolist()
        else:
            r = random.Random(_key_int(src))
            self.uni = [r.random() for _ in range(n)]
            self.nor = [r.gauss(0.0, 1.0) for _ in range(n_normal)]
        self.i = self.j = 0

    def u(self, lo: float = 0.0, hi: float = 1.0) -> float:
        self.i += 1
        return lo + (hi - lo) * self.uni[self.i - 1]

    def n(self, mu: float = 0.0, sd: float = 1.0) -> float:
        self.j += 1
        return mu + sd * self.nor[self.j - 1]

    def choice(self, p) -> int:
        x, acc = self.u(), 0.0
        for k, pk in enumerate(p):
            acc += pk
            if x < acc:
                return k
        return len(p) - 1


_HAIR = ((45, 35, 30), (95, 65, 40), (190, 160, 110), (165, 160, 155), (25, 22, 20))


def _sample_identity(seed: int, identity_id: int) -> dict:
    """All the things that make a person look like themselves, from their own RNG."""
    d = _Draws([int(seed), int(identity_id), 0x1D], 72, 3)
    u = d.u
    tone, bright = u(), u(0.93, 1.05)
    skin = [min(250.0, max(40.0, (hi * (1 - tone) + lo * tone) * bright + d.n(0, 6)))
            for hi, lo in ((238, 110), (205, 75), (180, 55))]
    hf = u(0.8, 1.2)
    hair = [min(240.0, max(10.0, c * hf)) for c in _HAIR[d.choice((.3, .25, .15, .1, .2))]]
    lf, bf = u(0.72, 0.95), u(0.7, 1.0)
    return {
        "wc": u(0.86, 0.98), "htop": u(1.05, 1.22), "ych": u(0.80, 0.92), "chin_w": u(0.08, 0.22),
        "jaw_p": u(1.6, 2.8), "skin": _r(skin, 1), "lip": _r([c * f * lf for c, f in zip(skin, (0.75, 0.52, 0.52))], 1),
        "hair": _r(hair, 1), "brow_col": _r([min(h, 0.55 * s) * bf for h, s in zip(hair, skin)], 1),
        "eye_y": u(-0.34, -0.26), "eye_x": u(0.35, 0.43), "eye_w": u(0.14, 0.18),
        "eye_h": u(0.06, 0.085), "eye_lo": u(0.03, 0.045), "eye_tilt": u(-0.02, 0.035),
        "iris_r": u(0.062, 0.075), "iris": u(25, 110), "sclera": u(195, 235),
        "brow_dy": u(0.12, 0.17), "brow_th": u(0.03, 0.065), "brow_arch": u(0.01, 0.06),
        "brow_in": u(0.08, 0.14), "brow_tilt": u(-0.03, 0.03),
        "nose_y": u(0.04, 0.13), "nose_w": u(0.11, 0.16),
        "mouth_y": u(0.42, 0.5), "mouth_w": u(0.25, 0.32), "lip_u": u(0.04, 0.065),
        "lip_l": u(0.055, 0.085), "mouth_rest": u(-0.02, 0.025), "cupid": u(0.0, 0.02),
        "hair_style": d.choice((.1, .35, .25, .2, .1)), "hairline": u(-0.9, -0.62),
        "hairline_k": u(0.05, 0.35), "hair_vol": u(0.05, 0.2), "hair_seed": int(u() * 1e6),
        "glasses": u() < 0.15, "glasses_dark": u(20, 70),
        "beard": d.choice((.8, .1, .1)),  # 0 none, 1 full beard, 2 moustache only
        "age": u() ** 2, "ears": u(0.6, 1.0),
    }


def _sample_aus(d: _Draws, expression: str, intensity) -> tuple[dict, float, float]:
    """Prototype AUs at a random intensity, each jittered, plus weak leaks of the others."""
    level = d.u(float(intensity[0]), float(intensity[1]))
    proto = dict(PROTOTYPES[expression])
    if expression == "happy" and d.u() < 0.7:   # most real smiles part the lips
        proto["AU25"] = d.u(0.5, 1.2)
    aus = {}
    for au in AUS:
        leak, gate, jit = d.u(0, 0.16), d.u(), d.u(0.8, 1.2)
        w = proto.get(au, 0.0)
        aus[au] = round(min(1.0, max(w * level * jit, leak if gate < 0.25 else 0.0)), 3)
    # sided AUs: contempt acts on one side; everyone else is only slightly asymmetric
    asym = (1.0 if d.u() < 0.5 else -1.0) if expression == "contempt" else max(-1.0, min(1.0, d.n(0, 0.12)))
    return aus, level, asym


def sample_face_params(rng, expression: str, identity_id: int, seed: int = 0,
                       intensity=(0.5, 1.0), occluders: bool = False) -> dict:
    """Draw one face's parameters (a JSON-serialisable dict that `render_face` renders).

    ``rng`` (a ``np.random.Generator``, an int, or a list of ints) drives the per-face draws:
    expression intensity, AU jitter and leaks, pose, lighting, camera, background. The identity
    comes from ``(seed, identity_id)`` alone, so the same identity looks the same in every face.
    """
    expression = parse_classes([expression])[0]
    d = _Draws(rng)
    aus, level, asym = _sample_aus(d, expression, intensity)
    u, n = d.u, d.n
    return {
        "version": _PARAMS_VERSION, "expression": expression, "identity": int(identity_id),
        "seed": int(seed), "intensity": round(level, 3), "aus": aus, "asym": round(asym, 3),
        "identity_params": {k: (round(v, 4) if isinstance(v, float) else v)
                            for k, v in _sample_identity(seed, identity_id).items()},
        "pose": {"roll": round(n(0, 5), 2), "yaw": round(u(-0.2, 0.2), 3),
                 "scale": round(u(0.98, 1.12), 3), "tx": round(n(0, 0.025), 3),
                 "ty": round(n(0.0, 0.02), 3), "gaze": [round(n(0, 0.2), 3), round(n(0, 0.15), 3)]},
        "light": {"azimuth": round(u(0, 360), 1), "elevation": round(u(0.45, 0.9), 3),
                  "ambient": round(u(0.35, 0.6), 3), "gradient": round(u(0, 0.25), 3),
                  "contrast": round(u(0.75, 1.25), 3), "brightness": round(n(0, 12), 1),
                  "gamma": round(u(0.8, 1.25), 3)},
        "camera": {"blur": round(u(0, 0.8), 3), "noise": round(u(0, 6), 2),
                   "jpeg": int(u(25, 96)) if u() < 0.7 else 0, "noise_seed": int(u() * 2**31)},
        "background": {"kind": int(u(0, 4)), "seed": int(u() * 2**31)},
        "occluder": _sample_occluder(d) if occluders and u() < 0.3 else None,
    }


def _sample_occluder(d: _Draws) -> dict:
    """A hand-, microphone- or bar-like blob over part of the face (off by default)."""
    return {"kind": int(d.u(0, 3)), "x": round(d.u(-0.9, 0.9), 4), "y": round(d.u(-0.2, 0.9), 4),
            "r": round(d.u(0.18, 0.4), 4), "angle": round(d.u(0, 180), 1), "grey": round(d.u(30, 230), 1)}


# ----------------------------------------------------------------------------- drawing kit
_BEZ_W: dict[int, np.ndarray] = {}
_LIN: dict[tuple, np.ndarray] = {}


def _lin(a: float, b: float, n: int) -> np.ndarray:
    """Cached np.linspace (read-only): linspace alone was ~5% of render time."""
    key = (a, b, n)
    if key not in _LIN:
        _LIN[key] = np.linspace(a, b, n)
        _LIN[key].flags.writeable = False
    return _LIN[key]
_CIRC: dict[tuple, np.ndarray] = {}


def _bez(p0, p1, p2, n: int = 10) -> np.ndarray:
    """Quadratic Bezier through control point p1 (the workhorse for lids, lips and brows)."""
    w = _BEZ_W.get(n)
    if w is None:  # cached Bernstein weights: numpy calls cost microseconds each, so few of them
        t = np.linspace(0.0, 1.0, n)[:, None]
        w = _BEZ_W[n] = np.concatenate([(1 - t) ** 2, 2 * (1 - t) * t, t * t], 1)
    return w @ np.array([p0, p1, p2], dtype=np.float64)


def _ell(cx, cy, rx, ry, n: int = 20, a0: float = 0.0, a1: float = 2 * math.pi) -> np.ndarray:
    key = (n, a0, a1)
    u = _CIRC.get(key)
    if u is None:
        t = np.linspace(a0, a1, n)
        u = _CIRC[key] = np.stack([np.cos(t), np.sin(t)], 1)
    return u * (rx, ry) + (cx, cy)


class _Canvas:
    """Maps face units (x right, y down; cheeks at about x = +-0.9, chin at y ~ 0.85) to
    pixels through yaw, roll, scale and shift, and draws anti-aliased primitives with it.

    Drawing is deferred: calls queue (points in face units) and `flush` transforms every point
    of the face in one vectorised pass, then draws in call order. Per-call numpy work was
    most of the render time.
    """

    def __init__(self, S: int, pose: dict, color: bool):
        self.S, self.color = S, color
        self.k = S / 2 * pose["scale"]
        rad = math.radians(pose["roll"])
        self.c, self.s = math.cos(rad), math.sin(rad)
        self.cy, self.sy = math.cos(pose["yaw"]), math.sin(pose["yaw"])
        self.ox, self.oy = S / 2 + pose["tx"] * S, S / 2 + pose["ty"] * S
        self.ops: list = []

    def px(self, pts, depth=0.0) -> np.ndarray:
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

    def poly(self, img, pts, value, depth=0.0, aa=True):
        self.ops.append((0, img, pts, value, depth, aa))

    def line(self, img, pts, value, width, depth=0.0, closed=False):
        self.ops.append((1, img, pts, value, depth, (width, closed)))

    def lines(self, img, parts, value, width, depth=0.0):
        """Several open polylines with one colour and width in one cv2 call."""
        if parts:
            self.ops.append((3, img, np.concatenate(parts), value, depth, (width, [len(q) for q in parts])))

    def circle(self, img, cx, cy, r, value, depth=0.0):
        self.ops.append((2, img, ((cx, cy),), value, depth, r))

    def flush(self) -> None:
        arrs = [np.asarray(op[2], dtype=np.float64).reshape(-1, 2) for op in self.ops]
        counts = [len(a) for a in arrs]
        depth = np.repeat([op[4] for op in self.ops], counts)
        allp = np.round(self.px(np.concatenate(arrs), depth) * 8).astype(np.int32)  # shift=3
        start = 0
        for (kind, img, _, value, _, extra), n in zip(self.ops, counts):
            q = allp[start:start + n]
            start += n
            v = self.col(value) if img.dtype == np.uint8 else float(value)
            if kind == 0:
                cv2.fillPoly(img, [q], v, cv2.LINE_AA if extra else cv2.LINE_8, 3)
            elif kind == 1:
                cv2.polylines(img, [q], extra[1], v, max(1, int(round(extra[0] * self.k))), cv2.LINE_AA, 3)
            elif kind == 3:
                parts, i = [], 0
                for m in extra[1]:
                    parts.append(q[i:i + m])
                    i += m
                cv2.polylines(img, parts, False, v, max(1, int(round(extra[0] * self.k))), cv2.LINE_AA, 3)
            else:
                cv2.circle(img, (int(q[0, 0]), int(q[0, 1])), max(1, int(round(extra * self.k * 8))),
                           v, -1, cv2.LINE_AA, 3)
        self.ops = []


def _shade(rgb, f: float) -> tuple:
    return (rgb[0] * f, rgb[1] * f, rgb[2] * f)  # cv2 saturates out-of-range values itself


def _sided(aus: dict, asym: float) -> tuple[dict, dict]:
    """AU intensities per side (index 0: image-left, 1: image-right); asym=+1 silences the
    left side of the sided (lip-corner) AUs, -1 the right side."""
    left = {k: (v * (1 - max(0.0, asym)) if k in _SIDED else v) for k, v in aus.items()}
    right = {k: (v * (1 - max(0.0, -asym)) if k in _SIDED else v) for k, v in aus.items()}
    return left, right


# ----------------------------------------------------------------------------- face parts
def _outline(p: dict, chin_drop: float, n: int = 14) -> np.ndarray:
    """Head silhouette: a cranium half-ellipse over a jaw whose squareness is ``jaw_p``."""
    wc, htop, cy = p["wc"], p["htop"], -0.1
    top = _ell(0, cy, wc, htop, 2 * n, math.pi, 2 * math.pi)
    s = _lin(0.0, 1.0, n)[1:]
    ych, cw, q = p["ych"] + chin_drop, p["chin_w"], p["jaw_p"]
    xr = cw + (wc - cw) * (1 - s ** q) ** (1 / q)
    yr = cy + s * (ych - cy)
    right = np.stack([xr, yr], 1)
    chin = _bez((cw, ych), (0, ych + 0.06), (-cw, ych), 7)[1:-1]
    left = right[::-1] * [-1, 1]
    return np.concatenate([top, right, chin, left])


def _draw_background(cv: _Canvas, img: np.ndarray, bg: dict) -> None:
    """Cluttered, out-of-focus backgrounds so a net cannot key on a clean silhouette. Drawn
    at 1/4 resolution and upsampled: that is both the defocus blur and 10x cheaper."""
    d = _Draws(bg["seed"], 96, 0)
    b = max(8, cv.S // 4)
    dark = 0.3 if bg["kind"] == 2 else 1.0
    ca = np.asarray(cv.col(tuple(d.u(20, 235) * dark for _ in range(3))), np.float32)
    cb = np.asarray(cv.col(tuple(d.u(20, 235) * dark for _ in range(3))), np.float32)
    ang = d.u(0, 2 * math.pi)
    t = np.linspace(-0.5, 0.5, b, dtype=np.float32)
    ramp = np.clip(0.5 + t[None, :] * math.cos(ang) + t[:, None] * math.sin(ang), 0, 1)
    small = (ca + (cb - ca) * (ramp[..., None] if cv.color else ramp)).astype(np.uint8)
    if bg["kind"] in (1, 3):
        for _ in range(int(d.u(3, 10))):
            c = cv.col((d.u(0, 255), d.u(0, 255), d.u(0, 255)))
            x, y, w, h = d.u(0, b), d.u(0, b), d.u(b * 0.05, b * 0.6), d.u(b * 0.05, b * 0.6)
            kind = int(d.u(0, 3))
            if kind == 0:
                cv2.rectangle(small, (int(x), int(y)), (int(x + w), int(y + h)), c, -1)
            elif kind == 1:
                cv2.circle(small, (int(x), int(y)), int(w / 2), c, -1, cv2.LINE_AA)
            else:
                cv2.line(small, (int(x), int(y)), (int(x + w), int(y - h)), c, 1, cv2.LINE_AA)
    cv2.resize(small, (cv.S, cv.S), dst=img, interpolation=cv2.INTER_LINEAR)


def _draw_hair(cv: _Canvas, A, H, p: dict, back: bool) -> None:
    """Back hair (long styles) before the head; the cap and hairline after the skin."""
    st, wc, vol, cy = p["hair_style"], p["wc"], p["hair_vol"], -0.1
    if st == 0:
        return
    hair = tuple(p["hair"])
    if back:
        if st == 3:
            cv.poly(A, np.concatenate([_ell(0, cy, wc + vol + 0.1, p["htop"] + vol, 16, math.pi, 2 * math.pi),
                                       [[wc + vol + 0.25, 1.9], [-wc - vol - 0.25, 1.9]]]), hair)
        return
    side_y = {1: -0.28, 2: 0.25, 3: 0.6, 4: 0.1}[st]
    hl = -0.56 if st == 4 else p["hairline"]
    k = 0.04 if st == 4 else p["hairline_k"]
    inset = {1: 0.02, 2: 0.05, 3: 0.1, 4: 0.06}[st]
    xi = wc - inset
    arc = _ell(0, cy, wc + vol, p["htop"] + vol, 18, math.pi, 2 * math.pi)
    hx = _lin(1.0, -1.0, 13) * xi
    hline = np.stack([hx, hl + k * hx * hx], 1)
    pts = np.concatenate([[[-wc - vol * 0.8, side_y]], arc, [[wc + vol * 0.8, side_y], [xi, side_y]],
                          hline, [[-xi, side_y]]])
    cv.poly(A, pts, hair)
    cv.poly(H, pts, 0.9, aa=False)
    h, strands = p["hair_seed"], ([], [])
    for i in range(7):  # a few strands so hair has texture, not a flat cap (cheap hash, no RNG)
        x0 = xi * (2 * ((h * 0.618034 + i * 0.7548777) % 1.0) - 1)
        strands[(h >> i) & 1].append(_bez((x0 * 0.3, -1.3), (x0 * 0.9, hl - 0.25), (x0, hl + k * x0 * x0 - 0.01), 6))
    cv.lines(A, strands[0], _shade(hair, 1.35), 0.012)
    cv.lines(A, strands[1], _shade(hair, 0.7), 0.012)


def _draw_head(cv: _Canvas, A, H, O, p: dict, chin_drop: float) -> np.ndarray:
    skin = tuple(p["skin"])
    wc, ey = p["wc"], p["eye_y"]
    _draw_hair(cv, A, H, p, back=True)
    neck = [[-0.45 * wc, 0.1], [0.45 * wc, 0.1], [0.55 * wc, 2.0], [-0.55 * wc, 2.0]]
    cv.poly(A, neck, _shade(skin, 0.8))
    for sd in (-1, 1):  # ears, half hidden behind the cheek
        cv.poly(A, _ell(sd * (wc - 0.03), ey + 0.12, 0.1 * p["ears"], 0.19, 12), _shade(skin, 0.9))
    out = _outline(p, chin_drop)
    cv.poly(A, out, skin)
    cv.poly(H, out, 1.0, aa=False)
    cv.poly(O, _ell(0, p["ych"] + chin_drop + 0.1, 0.55, 0.14, 12), 0.55, aa=False)  # under-chin
    return out


def _draw_eye(cv: _Canvas, A, O, p: dict, a: dict, sd: int, gaze) -> None:
    """AU5 raises the upper lid (sclera above the iris), AU7 tightens both lids, AU6 pushes
    the lower lid up from below with a cheek bulge and crow's feet."""
    skin, ew, ey, cx = tuple(p["skin"]), p["eye_w"], p["eye_y"], sd * p["eye_x"]
    uh = max(0.012, p["eye_h"] * (1 + 1.2 * a["AU5"] - 0.5 * a["AU7"] - 0.35 * a["AU6"] - 0.2 * a["AU9"])
             - 0.012 * a["AU4"])
    lh = max(0.004, p["eye_lo"] * (1 + 0.5 * a["AU5"] - 0.75 * a["AU7"] - 0.9 * a["AU6"] - 0.3 * a["AU9"]))
    lift = 0.025 * a["AU6"] + 0.012 * a["AU7"]  # lower lid and eye bottom rise with the cheek
    tilt = p["eye_tilt"]
    pin, pout = (cx - sd * ew, ey + tilt / 2), (cx + sd * ew, ey - tilt / 2 - 0.01 * a["AU6"])
    up = _bez(pin, (cx, ey - 2 * uh), pout, 12)
    lo = _bez(pout, (cx, ey + 2 * lh - 2 * lift), pin, 10)
    cv.poly(O, _ell(cx, ey - 0.03, ew * 1.35, 0.13, 14), 0.22 + 0.12 * a["AU4"], aa=False)
    cv.poly(A, np.concatenate([up, lo]), p["sclera"])
    ix, iy = cx + gaze[0] * ew * 0.45, ey + 0.004 + gaze[1] * 0.02
    # iris and pupil are circles clamped into the lid opening (no mask, no cover-up patches)
    ux, uy = (up[::-1, 0], up[::-1, 1]) if sd < 0 else (up[:, 0], up[:, 1])  # np.interp wants x rising
    lx, ly = (lo[:, 0], lo[:, 1]) if sd < 0 else (lo[::-1, 0], lo[::-1, 1])
    for r, val in ((p["iris_r"], p["iris"]), (p["iris_r"] * 0.45, 15)):
        c = _ell(ix, iy, r, r, 18)
        x = np.clip(c[:, 0], ux[0], ux[-1])
        y = np.clip(c[:, 1], np.interp(x, ux, uy), np.interp(x, lx, ly))
        cv.poly(A, np.stack([x, y], 1), val)
    if iy - p["iris_r"] * 0.4 > ey - uh:  # catch light, when the lid does not cover it
        cv.circle(A, ix + 0.02, iy - 0.025, 0.013, 235)
    crease = _bez(pin, (cx, ey - 2 * (uh + 0.05 + 0.02 * a["AU5"])), (pout[0], pout[1] - 0.01), 10)
    cv.line(A, crease, _shade(skin, 0.78 + 0.15 * a["AU5"]), 0.014)
    cv.line(A, up, 25, 0.03)
    cv.line(A, lo, _shade(skin, 0.7), 0.012)
    if a["AU6"] + p["age"] > 0.15:  # infraorbital bulge and crow's feet
        f = 1 - 0.25 * min(1.0, a["AU6"] + 0.4 * p["age"])
        cv.line(A, _bez((cx - sd * ew * 0.8, ey + lh + 0.06 - lift), (cx, ey + lh + 0.12 - 2 * lift),
                        (cx + sd * ew * 0.9, ey + 0.03 - lift), 8), _shade(skin, f), 0.015)
        x0 = pout[0] + sd * 0.04
        cv.lines(A, [np.array([[x0, pout[1] + 0.03 * k], [x0 + sd * 0.09, pout[1] + 0.06 * k]]) for k in (-1, 0, 1)],
                 _shade(skin, f), 0.012)


def _draw_brow(cv: _Canvas, A, p: dict, a: dict, sd: int) -> None:
    """AU1 lifts the inner end, AU2 the outer end, AU4 pulls the brow down and inwards."""
    base = p["eye_y"] - p["brow_dy"]
    xi = sd * (p["brow_in"] - 0.045 * a["AU4"] - 0.02 * a["AU9"])
    xo = sd * (p["eye_x"] + p["eye_w"] + 0.05)
    yi = base - 0.17 * a["AU1"] + 0.13 * a["AU4"] + 0.06 * a["AU9"]
    yo = base + 0.02 + p["brow_tilt"] - 0.13 * a["AU2"] + 0.03 * a["AU4"] - 0.02 * a["AU1"]
    ym = base - p["brow_arch"] - 0.07 * a["AU1"] - 0.1 * a["AU2"] + 0.07 * a["AU4"] + 0.03 * a["AU9"]
    xm = xi + (xo - xi) * 0.55
    mid = _bez((xi, yi), (2 * xm - (xi + xo) / 2, 2 * ym - (yi + yo) / 2), (xo, yo), 11)
    w = p["brow_th"] * _lin(0.5, 0.225, 11)[:, None]
    cv.poly(A, np.concatenate([mid - [0, 1] * w, (mid + [0, 1] * w)[::-1]]), tuple(p["brow_col"]))


def _draw_wrinkles(cv: _Canvas, A, p: dict, a: dict) -> None:
    """Forehead lines (AU1 centre, AU2 sides, age), glabella lines (AU4), nose wrinkles (AU9)."""
    skin, age = tuple(p["skin"]), p["age"]
    top = p["eye_y"] - p["brow_dy"] - 0.13
    mid, side = min(1.0, a["AU1"] + 0.35 * age), min(1.0, a["AU2"] + 0.35 * age)
    parts = []
    for i in range(3):
        y = top - 0.075 * i
        if mid > 0.1:  # AU1 bows the central lines upwards
            parts.append(_bez((-0.13, y), (0.0, y - 0.03 * a["AU1"]), (0.13, y), 5))
        if side > 0.1:
            parts += [_bez((0.12, y), (0.25, y), (0.38, y), 4), _bez((-0.38, y), (-0.25, y), (-0.12, y), 4)]
    cv.lines(A, parts, _shade(skin, 1 - 0.22 * max(mid, side)), 0.013)
    if a["AU4"] > 0.1:
        y0 = p["eye_y"] - p["brow_dy"] + 0.02
        cv.lines(A, [np.array([[sd * 0.035, y0 - 0.1], [sd * 0.05, y0 + 0.04]]) for sd in (-1, 1)],
                 _shade(skin, 1 - 0.35 * a["AU4"]), 0.016)
    if a["AU9"] > 0.1:
        ys = [p["eye_y"] + 0.05 + 0.04 * i for i in range(3)]
        cv.lines(A, [_bez((-0.07, y), (0, y - 0.025), (0.07, y), 5) for y in ys], _shade(skin, 1 - 0.35 * a["AU9"]),
                 0.013)


def _draw_nose(cv: _Canvas, A, H, O, p: dict, a: dict) -> None:
    """Mostly shape in the height map (lit by the light); AU9 lifts and flares the nostrils."""
    skin, ny, nw, ey = tuple(p["skin"]), p["nose_y"], p["nose_w"], p["eye_y"]
    lift = 0.045 * a["AU9"]
    cv.poly(H, [[-0.04, ey], [0.04, ey], [0.07, ny - 0.03], [-0.07, ny - 0.03]], 1.5, depth=0.06, aa=False)
    cv.poly(H, _ell(0, ny - 0.035, 0.08, 0.07, 12), 1.75, depth=0.12, aa=False)
    cv.poly(O, _ell(0, ny + 0.045 - lift, 0.13, 0.035, 12), 0.3, depth=0.1, aa=False)
    for sd in (-1, 1):
        flare = 1 + 0.3 * a["AU9"]
        cv.poly(H, _ell(sd * nw * 0.75 * flare, ny - lift, 0.06, 0.05, 10), 1.45, depth=0.08, aa=False)
        cv.poly(A, _ell(sd * 0.055 * flare, ny + 0.012 - lift, 0.036, 0.018, 10), _shade(skin, 0.35), depth=0.1)
        cv.line(A, _bez((sd * nw * flare, ny - 0.08 - lift), (sd * (nw + 0.03) * flare, ny - lift),
                        (sd * 0.075, ny + 0.025 - lift), 8), _shade(skin, 0.72), 0.014, depth=0.08)
        cv.line(O, [[sd * 0.05, ey + 0.02], [sd * 0.08, ny - 0.06]], 0.18, 0.03)


def _mouth_curves(p: dict, aL: dict, aR: dict, n: int = 17) -> dict:
    """Inner/outer lip curves. AU12 pulls corners up and out, AU15 down, AU20 stretches them
    sideways, AU23 thins the lips, AU14 tucks the corner, AU16 drops the lower lip,
    AU25/AU26 part the lips and drop the jaw."""
    a = aL
    opening = 0.24 * a["AU26"] + 0.09 * a["AU25"] + 0.035 * a["AU16"]
    up = 0.25 * opening + 0.035 * a["AU9"]
    dn = 0.75 * opening + 0.05 * a["AU16"]
    corner = []
    for s in (aL, aR):
        cx = p["mouth_w"] * (1 + 0.28 * s["AU12"] + 0.4 * s["AU20"] - 0.22 * a["AU23"] + 0.1 * s["AU14"]
                             - 0.15 * a["AU26"] * (1 - s["AU20"]))
        cy = (p["mouth_rest"] - 0.17 * s["AU12"] + 0.14 * s["AU15"] + 0.03 * s["AU20"] - 0.015 * s["AU14"]
              + 0.45 * opening)
        corner.append((cx, cy))
    t = _lin(-1.0, 1.0, n)
    x = t * np.where(t < 0, corner[0][0], corner[1][0])
    c = np.where(t < 0, corner[0][1], corner[1][1]) * np.abs(t) ** 2.2
    bell = 1 - t * t
    my = p["mouth_y"]
    lu = p["lip_u"] * max(0.12, 1 - 0.75 * a["AU23"] - 0.15 * max(aL["AU12"], aR["AU12"]) - 0.25 * a["AU20"])
    ll = p["lip_l"] * max(0.12, 1 - 0.7 * a["AU23"] - 0.3 * a["AU20"] - 0.2 * max(aL["AU12"], aR["AU12"])) \
        + 0.02 * a["AU16"]
    yu = my + c - up * bell
    yl = my + c + dn * bell ** 0.8
    return {"x": x, "yu": yu, "yl": yl, "t": t, "corners": corner, "gap": up + dn, "dn": dn,
            "yuo": yu - lu * bell ** 0.5 + p["cupid"] * np.exp(-(t / 0.15) ** 2),
            "ylo": yl + ll * bell ** 0.6, "drop": 0.8 * dn}


def _draw_mouth(cv: _Canvas, A, H, O, p: dict, aL: dict, aR: dict, m: dict) -> None:
    skin, lip = tuple(p["skin"]), tuple(p["lip"])
    x, yu, yl, my = m["x"], m["yu"], m["yl"], p["mouth_y"]
    P = lambda ys: np.stack([x, ys], 1)  # noqa: E731 - tiny local helper
    cv.poly(H, _ell(0, my + 0.01, p["mouth_w"] * 1.1, 0.1, 12), 1.22, aa=False)
    cv.poly(O, _ell(0, m["ylo"][len(x) // 2] + 0.04, 0.13, 0.03, 10), 0.3, aa=False)
    if m["gap"] > 0.012:
        cv.poly(A, np.concatenate([P(yu), P(yl)[::-1]]), 30)
        inner = np.abs(m["t"]) < 0.8
        xt = x[inner]
        teeth = (205, 200, 190)
        top = np.minimum(yu + 0.065, yl)[inner]
        cv.poly(A, np.concatenate([np.stack([xt, yu[inner]], 1), np.stack([xt, top], 1)[::-1]]), teeth)
        low = 0.7 * (aL["AU16"] + 0.6 * aL["AU20"]) * m["dn"]
        if low > 0.008:
            bot = np.maximum(yl - min(low, 0.05), yu)[inner]
            cv.poly(A, np.concatenate([np.stack([xt, bot], 1), np.stack([xt, yl[inner]], 1)[::-1]]),
                    _shade(teeth, 0.85))
    if p["beard"]:  # moustache: a band riding on the upper lip, so it follows the corners
        xs = x * 1.1
        band = np.stack([xs, m["yuo"] - 0.005], 1)
        top = np.stack([xs, m["yuo"] - 0.075 * (1 - 0.6 * m["t"] ** 2)], 1)
        cv.poly(A, np.concatenate([top, band[::-1]]), _beard_col(p))
    cv.poly(A, np.concatenate([P(m["yuo"]), P(yu)[::-1]]), lip)
    cv.poly(A, np.concatenate([P(yl), P(m["ylo"])[::-1]]), _shade(lip, 1.08))
    cv.line(A, P(yu if m["gap"] <= 0.012 else yl), _shade(lip, 0.3 - 0.1 * aL["AU23"]), 0.018 + 0.01 * aL["AU23"])
    for i, (sd, s) in enumerate(((-1, aL), (1, aR))):
        cx, cy = sd * m["corners"][i][0], my + m["corners"][i][1]
        dark = _shade(skin, 1 - 0.3 * max(s["AU12"], s["AU15"], s["AU14"], 0.3))
        cv.line(A, [[cx, cy], [cx + sd * 0.035, cy - 0.035 * s["AU12"] + 0.02 * s["AU15"]]], dark, 0.014)
        if s["AU15"] > 0.15:
            cv.line(A, [[cx + sd * 0.01, cy + 0.02], [cx + sd * 0.03, cy + 0.1 * s["AU15"]]],
                    _shade(skin, 1 - 0.25 * s["AU15"]), 0.014)
        if s["AU14"] > 0.15:
            cv.line(A, _bez((cx + sd * 0.04, cy - 0.06), (cx + sd * 0.08, cy), (cx + sd * 0.04, cy + 0.06), 6),
                    _shade(skin, 1 - 0.5 * s["AU14"]), 0.022)


def _draw_cheeks(cv: _Canvas, A, H, O, p: dict, aL: dict, aR: dict, m: dict) -> None:
    """AU6/AU12 raise the cheeks (a lit bulge) and deepen the nasolabial folds."""
    skin, ny, nw, my = tuple(p["skin"]), p["nose_y"], p["nose_w"], p["mouth_y"]
    for i, (sd, s) in enumerate(((-1, aL), (1, aR))):
        rise = 0.08 * s["AU6"] + 0.05 * s["AU12"]
        cv.poly(H, _ell(sd * 0.5, p["eye_y"] + 0.28 - rise, 0.22, 0.16, 12), 1.08 + 0.3 * s["AU6"] + 0.15 * s["AU12"],
                aa=False)
        cx, cy = m["corners"][i]
        st = min(1.0, 0.12 + 0.6 * s["AU12"] + 0.45 * s["AU9"] + 0.25 * s["AU6"] + 0.35 * p["age"] + 0.2 * s["AU20"])
        fold = _bez((sd * (nw + 0.03), ny - 0.04 - 0.04 * s["AU9"]),
                    (sd * (cx + 0.08 + 0.06 * s["AU12"]), (ny + my + cy) / 2),
                    (sd * (cx + 0.05), my + cy + 0.07), 9)
        cv.line(A, fold, _shade(skin, 1 - 0.3 * st), 0.016)
        cv.line(O, fold, 0.3 * st, 0.05)


def _draw_extras(cv: _Canvas, A, p: dict, occ: dict | None) -> None:
    """Glasses and occluders go on top of everything (they are in front of the face)."""
    if p["glasses"]:
        ey, ex, ew, dark = p["eye_y"] + 0.01, p["eye_x"], p["eye_w"], p["glasses_dark"]
        for sd in (-1, 1):
            cv.line(A, _ell(sd * ex, ey, ew + 0.08, 0.12, 20), dark, 0.03, closed=True)
            cv.line(A, [[sd * (ex + ew + 0.08), ey - 0.02], [sd * p["wc"], ey - 0.04]], dark, 0.03)
        cv.line(A, _bez((-(ex - ew - 0.08), ey - 0.02), (0, ey - 0.06), (ex - ew - 0.08, ey - 0.02), 5), dark, 0.03)
    if occ:
        x, y, r, grey = occ["x"], occ["y"], occ["r"], occ["grey"]
        if occ["kind"] == 0:  # hand-ish: skin blob with finger gaps
            cv.poly(A, _ell(x, y + r, r, r * 1.3, 16), _shade(tuple(p["skin"]), 0.95))
            for k in (-1, 0, 1):
                cv.line(A, [[x + k * r * 0.35, y + 0.2 * r], [x + k * r * 0.4, y + r]], _shade(tuple(p["skin"]), 0.7),
                        0.012)
        elif occ["kind"] == 1:
            a = math.radians(occ["angle"])
            d = np.array([math.cos(a), math.sin(a)]) * 1.6
            nrm = np.array([-d[1], d[0]]) / 1.6 * r * 0.35
            c = np.array([x, y])
            cv.poly(A, [c - d - nrm, c + d - nrm, c + d + nrm, c - d + nrm], grey)
        else:
            cv.poly(A, _ell(x, y, r, r, 18), grey)


def _beard_col(p: dict) -> tuple:
    return tuple(np.asarray(p["skin"]) * 0.45 + np.asarray(p["hair"]) * 0.55)


def _draw_beard(cv: _Canvas, A, p: dict, outline: np.ndarray) -> None:
    """Full beard (beard == 1): jaw and chin below the mouth line; 2 is a moustache only."""
    if p["beard"] != 1:
        return
    top = p["eye_y"] + 0.22
    pts = outline[outline[:, 1] >= top]  # right jaw, chin, left jaw; then back along the cheeks
    ny = p["nose_y"] + 0.06
    cheek = [[-0.6, ny], [-0.14, ny + 0.02], [0.14, ny + 0.02], [0.6, ny]]
    cv.poly(A, np.concatenate([pts, [[pts[-1, 0] + 0.05, top]], cheek, [[pts[0, 0] - 0.05, top]]]), _beard_col(p))


def _lighting(H: np.ndarray, O: np.ndarray, light: dict, k: float) -> np.ndarray:
    """Lambert shading from the blurred height map, times soft occlusion; 1.0 on flat areas.
    Works at output resolution (``k`` = pixels per face unit there): shading is smooth."""
    H = cv2.GaussianBlur(H, (0, 0), 0.09 * k)
    O = cv2.GaussianBlur(O, (0, 0), 0.035 * k)
    gx = cv2.Sobel(H, cv2.CV_32F, 1, 0, ksize=3) * (k * 0.1)
    gy = cv2.Sobel(H, cv2.CV_32F, 0, 1, ksize=3) * (k * 0.1)
    az, el, amb = math.radians(light["azimuth"]), light["elevation"], light["ambient"]
    lx, ly = math.cos(az) * math.sqrt(1 - el * el), math.sin(az) * math.sqrt(1 - el * el)
    inv = 1 / np.sqrt(1 + gx * gx + gy * gy)
    ndotl = (el - gx * lx - gy * ly) * inv
    shade = (amb + (1 - amb) * np.maximum(ndotl, 0)) * (1 / (amb + (1 - amb) * el))
    # faces are darker towards their rim whatever the light: keep a little ambient occlusion
    return shade * (0.8 + 0.2 * inv) * (1 - np.clip(O, 0, 0.9))


_GRID: dict[int, tuple[np.ndarray, np.ndarray]] = {}
_NOISE: dict[int, np.ndarray] = {}


def _camera(img: np.ndarray, params: dict, size: int) -> np.ndarray:
    """Global light gradient, contrast/gamma, blur, sensor noise, then JPEG round trip."""
    light, cam = params["light"], params["camera"]
    if size not in _GRID:
        t = np.linspace(-1, 1, size, dtype=np.float32)
        _GRID[size] = (np.broadcast_to(t[None, :], (size, size)), np.broadcast_to(t[:, None], (size, size)))
    gxx, gyy = _GRID[size]
    az = math.radians(light["azimuth"])
    grad = 1 + light["gradient"] * (gxx * math.cos(az) + gyy * math.sin(az))
    img = img * (grad[..., None] if img.ndim == 3 else grad)
    if cam["blur"] > 0.3:
        img = cv2.GaussianBlur(img, (0, 0), cam["blur"] * size / 64)
    img = (img - 128) * light["contrast"] + 128 + light["brightness"]
    img = 255 * (np.clip(img, 0, 255) / 255) ** light["gamma"]
    if cam["noise"] > 0:  # a window of a fixed noise field, chosen by noise_seed: no RNG set-up per face
        if size not in _NOISE:
            _NOISE[size] = np.random.default_rng(size).standard_normal((2 * size, 2 * size, 3)).astype(np.float32)
        ns = cam["noise_seed"]
        y0, x0 = ns % size, (ns // size) % size
        win = _NOISE[size][y0:y0 + size, x0:x0 + size]
        img = img + (win if img.ndim == 3 else win[..., (ns // size // size) % 3]) * cam["noise"]
    out = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    if cam["jpeg"]:
        ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(cam["jpeg"])])
        out = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    return out


def render_face(params: dict, size: int = 64, color: bool = False) -> np.ndarray:
    """Render a face from `sample_face_params` output: uint8 HxW grey, or HxWx3 RGB if color.

    Deterministic: the same params, size and color give the same pixels, on any machine with
    the same OpenCV build.
    """
    if size < 16:
        raise FerkitError(f"size must be at least 16 pixels, got {size}")
    p, S = params["identity_params"], size * _SS
    aL, aR = _sided(params["aus"], params["asym"])
    cv = _Canvas(S, params["pose"], color)
    A = np.empty((S, S, 3) if color else (S, S), np.uint8)
    H = np.zeros((S, S), np.float32)
    O = np.zeros((S, S), np.float32)
    _draw_background(cv, A, params["background"])
    m = _mouth_curves(p, aL, aR)
    outline = _draw_head(cv, A, H, O, p, m["drop"])
    _draw_beard(cv, A, p, outline)
    _draw_cheeks(cv, A, H, O, p, aL, aR, m)
    for i, sd in enumerate((-1, 1)):
        _draw_eye(cv, A, O, p, (aL, aR)[i], sd, params["pose"]["gaze"])
    _draw_wrinkles(cv, A, p, aL)
    for i, sd in enumerate((-1, 1)):
        _draw_brow(cv, A, p, (aL, aR)[i], sd)
    _draw_nose(cv, A, H, O, p, aL)
    _draw_mouth(cv, A, H, O, p, aL, aR, m)
    _draw_hair(cv, A, H, p, back=False)
    _draw_extras(cv, A, p, params.get("occluder"))
    cv.flush()
    down = (size, size)
    shade = _lighting(cv2.resize(H, down, interpolation=cv2.INTER_AREA),
                      cv2.resize(O, down, interpolation=cv2.INTER_AREA), params["light"], cv.k / _SS)
    img = cv2.resize(A, down, interpolation=cv2.INTER_AREA).astype(np.float32)
    img *= shade[..., None] if color else shade
    out = _camera(img, params, size)
    return np.ascontiguousarray(out[..., ::-1]) if color else out


# ----------------------------------------------------------------------------- datasets
_META_FIXED = ("file", "class", "identity", "index", "seed", "size", "color", "intensity")
_META_POSE = ("roll", "yaw", "scale", "tx", "ty")
_META_LIGHT = ("azimuth", "elevation", "ambient", "gradient", "contrast", "brightness", "gamma")
_META_CAM = ("blur", "noise", "jpeg")
#: metadata.csv columns: readable AU/pose/lighting/camera values, then the full params JSON.
META_COLUMNS: tuple[str, ...] = (_META_FIXED + AUS + ("asym",) + _META_POSE
                                 + tuple("light_" + k for k in _META_LIGHT)
                                 + tuple("cam_" + k for k in _META_CAM) + ("occluder", "params"))


def _face_rng_key(seed: int, cls: str, index: int, identity_offset: int) -> list[int]:
    """Per-face RNG key: independent of worker count and of the other classes' sizes."""
    return [int(seed) & 0xFFFFFFFF, 0xFACE, EXPRESSIONS.index(cls), int(index), int(identity_offset)]


def _meta_row(rel: str, params: dict, index: int, size: int, color: bool) -> dict:
    row = {"file": rel, "class": params["expression"], "identity": params["identity"], "index": index,
           "seed": params["seed"], "size": size, "color": int(color), "intensity": params["intensity"]}
    row.update(params["aus"])
    row["asym"] = params["asym"]
    row.update({k: params["pose"][k] for k in _META_POSE})
    row.update({"light_" + k: params["light"][k] for k in _META_LIGHT})
    row.update({"cam_" + k: params["camera"][k] for k in _META_CAM})
    row["occluder"] = int(params["occluder"] is not None)
    row["params"] = json.dumps(params, separators=(",", ":"))
    return row


def _render_task(task: tuple) -> dict:
    """One face: sample, render, write. Top-level so multiprocessing (fork or spawn) can pickle it."""
    root, cls, index, ident, seed, offset, intensity, size, color, occluders = task
    params = sample_face_params(_face_rng_key(seed, cls, index, offset), cls, ident, seed,
                                intensity, occluders)
    img = render_face(params, size, color)
    rel = f"{cls}/{cls}_{index:06d}.png"
    write_png(Path(root) / rel, img[..., ::-1] if color else img)
    return _meta_row(rel, params, index, size, color)


class _QuietOrphanStderr:
    """A worker's stderr that says nothing once its parent is gone: a parent killed with SIGKILL
    left each worker printing a BrokenPipeError traceback (~30 lines each) onto the terminal."""

    def __init__(self, stream, parent: int):
        self._stream, self._parent = stream, parent

    def write(self, text):
        return self._stream.write(text) if os.getppid() == self._parent else len(text)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _init_worker() -> None:
    import signal
    import sys

    cv2.setNumThreads(1)  # one process per core already; OpenCV's own threads only contend
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C is the parent's to handle: it stops the pool
    sys.stderr = _QuietOrphanStderr(sys.stderr, os.getppid())
    if sys.platform.startswith("linux"):   # and die with the parent (PR_SET_PDEATHSIG = 1)
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass


def _check_args(per_class: int, size: int, intensity) -> None:
    if not isinstance(per_class, (int, np.integer)) or per_class <= 0:
        raise FerkitError(f"per_class must be a positive integer, got {per_class!r}")
    if size < 16:
        raise FerkitError(f"size must be at least 16 pixels, got {size}")
    try:
        lo, hi = (float(v) for v in intensity)
    except (TypeError, ValueError):
        raise FerkitError(f"intensity must be a pair (lo, hi), got {intensity!r}") from None
    if not 0 <= lo <= hi <= 1:
        raise FerkitError(f"intensity must be (lo, hi) with 0 <= lo <= hi <= 1, got {intensity!r}")


def _run_tasks(tasks: list[tuple], workers: int | None, progress: bool, desc: str) -> list[dict]:
    from ..console import progress_bar

    workers = (os.cpu_count() or 1) if workers is None else max(1, int(workers))
    bar = progress_bar(total=len(tasks), desc=desc, unit="face", enabled=progress)
    rows: list[dict] = []
    try:
        if workers == 1 or len(tasks) < 64:  # a pool costs more than it saves on tiny jobs
            for t in tasks:
                rows.append(_render_task(t))
                bar.update()
        else:
            import multiprocessing as mp
            import sys

            # the resource tracker (started with the pool, with these -W options) would warn about
            # "leaked semaphore objects" on the terminal after a parent killed with SIGKILL
            quiet = "ignore:resource_tracker:UserWarning"
            if quiet not in sys.warnoptions:
                sys.warnoptions.append(quiet)
            # spawn, not fork: forking a process that already runs torch/OpenMP or OpenCV threads
            # can deadlock the children (seen under pytest after a training test).
            with mp.get_context("spawn").Pool(workers, initializer=_init_worker) as pool:
                for row in pool.imap(_render_task, tasks, chunksize=max(1, min(64, len(tasks) // (workers * 8)))):
                    rows.append(row)
                    bar.update()
    finally:
        bar.close()
    return rows


def _face_tasks(root: Path, classes, per_class: int, seed: int, identities: int | None,
                identity_offset: int, intensity, size: int, color: bool, occluders: bool) -> list[tuple]:
    tasks = []
    for ci, cls in enumerate(classes):
        (root / cls).mkdir()
        for i in range(per_class):
            # a pool of K identities: face i of every class is identity i mod K, so each
            # identity is seen making every expression; None: everyone is new
            ident = identity_offset + (i % identities if identities else ci * per_class + i)
            tasks.append((str(root), cls, i, ident, seed, identity_offset, tuple(intensity), size,
                          bool(color), bool(occluders)))
    return tasks


def generate_faces(out_dir, per_class: int, classes=None, size: int = 64, seed: int = 0,
                   color: bool = False, identities: int | None = None, identity_offset: int = 0,
                   intensity=(0.5, 1.0), workers: int | None = None, overwrite: bool = False,
                   progress: bool = True, occluders: bool = False) -> Path:
    """Write ``out_dir/<class>/<class>_<index:06d>.png`` plus ``out_dir/metadata.csv``.

    ``classes`` defaults to `DEFAULT_CLASSES` (six basic + neutral). ``identities=K`` draws
    faces from identities ``identity_offset .. identity_offset+K-1`` (each shows several
    expressions); ``None`` gives every face its own identity. Output is identical for any
    ``workers`` (per-face RNG from seed, class, index). ``occluders=True`` puts a hand, bar or
    blob over ~30% of faces. Raises FerkitError on bad arguments or an unusable ``out_dir``.
    """
    classes = parse_classes(list(DEFAULT_CLASSES) if classes is None else classes)
    _check_args(per_class, size, intensity)
    if identities is not None and identities <= 0:
        raise FerkitError(f"identities must be a positive integer or None, got {identities!r}")
    out_dir = Path(out_dir)
    check_out_dir(out_dir, overwrite)
    with AtomicDataset(out_dir) as tmp:
        tasks = _face_tasks(tmp, classes, per_class, seed, identities, identity_offset, intensity,
                            size, color, occluders)
        rows = _run_tasks(tasks, workers, progress, f"synth {out_dir.name}")
        write_metadata(tmp / "metadata.csv", rows, META_COLUMNS)
    return out_dir


def generate_splits(out_dir, per_class: dict, classes=None, size: int = 64, seed: int = 0,
                    identities_per_split: dict | None = None, **kw) -> Path:
    """Write ``out_dir/<split>/<class>/...`` (one metadata.csv per split) with identity-disjoint
    splits: each split draws from its own identity id range, so no person is in two splits.

    ``per_class`` maps split name to faces per class, e.g. ``{"train": 150, "test": 60}``;
    ``identities_per_split`` optionally maps split name to its identity pool size.
    Other keywords go to `generate_faces` (color, intensity, workers, overwrite, progress...).
    """
    if not isinstance(per_class, dict) or not per_class:
        raise FerkitError("per_class must be a non-empty dict like {'train': 150, 'test': 60}")
    classes = parse_classes(list(DEFAULT_CLASSES) if classes is None else classes)
    ids = dict(identities_per_split or {})
    for split, n in per_class.items():
        _check_args(n, size, kw.get("intensity", (0.5, 1.0)))
        if ids.get(split) is not None and ids[split] <= 0:
            raise FerkitError(f"identities for split {split!r} must be positive, got {ids[split]!r}")
    out_dir = Path(out_dir)
    check_out_dir(out_dir, kw.pop("overwrite", False))
    base = int(kw.pop("identity_offset", 0))
    with AtomicDataset(out_dir) as tmp:
        offset = base
        for split, n in per_class.items():
            k = ids.get(split)
            generate_faces(tmp / split, n, classes, size, seed, identities=k, identity_offset=offset, **kw)
            offset += k if k else n * len(classes)  # next split starts after this one's ids
    return out_dir


PREVIEW_FORMATS = (".png", ".jpg", ".jpeg")


def write_preview(out_png, classes=None, per_class: int = 8, size: int = 64, seed: int = 0,
                  color: bool = False, intensity=(0.5, 1.0)) -> Path:
    """Contact sheet: one row per class, one identity per column, faces shown at 96+ px.
    ``out_png`` must end in .png, .jpg or .jpeg (checked before any work); written atomically."""
    from ..files import atomic_path

    out_png = Path(out_png)
    if out_png.suffix.lower() not in PREVIEW_FORMATS:
        raise FerkitError(f"preview {out_png} must be an image file ending in {', '.join(PREVIEW_FORMATS)}")
    if out_png.is_dir():
        raise FerkitError(f"preview {out_png} is a folder; give a file name such as {out_png / 'preview.png'}")
    classes = parse_classes(list(DEFAULT_CLASSES) if classes is None else classes)
    _check_args(per_class, size, intensity)
    cell, label_w = max(96, size), 120
    sheet = np.full((cell * len(classes), label_w + cell * per_class, 3), 255, np.uint8)
    for r, cls in enumerate(classes):
        cv2.putText(sheet, cls, (6, r * cell + cell // 2 + 6), cv2.FONT_HERSHEY_SIMPLEX, 0.6,
                    (0, 0, 0), 1, cv2.LINE_AA)
        for j in range(per_class):
            params = sample_face_params(_face_rng_key(seed, cls, j, 0), cls, j, seed, intensity)
            img = render_face(params, size, color)
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR) if img.ndim == 2 else img[..., ::-1]
            sheet[r * cell:(r + 1) * cell, label_w + j * cell:label_w + (j + 1) * cell] = cv2.resize(
                img, (cell, cell), interpolation=cv2.INTER_CUBIC if cell < 2 * size else cv2.INTER_NEAREST)
    ok, data = cv2.imencode(out_png.suffix.lower(), sheet)
    if not ok:
        raise FerkitError(f"cannot encode preview {out_png}")
    make_dir(out_png.parent)
    with atomic_path(out_png) as tmp:
        tmp.write_bytes(data.tobytes())
    return out_png
