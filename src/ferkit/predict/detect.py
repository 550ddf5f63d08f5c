"""Finding faces: the detectors by name (the bundled BlazeFace, the default, in :mod:`.blazeface`;
OpenCV's bundled Haar cascade; dlib's HOG), their retries, square crops, and drawing results.

Limits of the Haar detector (measured, see the project notes): frontal and near-frontal faces
only — profile faces (beyond roughly 30-45 degrees of yaw), strongly tilted heads (beyond
roughly 20 degrees of roll) and faces smaller than ``min_face`` of the image are missed; the
cascade also yields occasional false positives on textured background.
"""
from __future__ import annotations

import math
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..errors import FerkitError
from .geometry import crop_face, rotate_points  # noqa: F401  (crop_face: its home before geometry.py)

if TYPE_CHECKING:
    from .prediction import FacePrediction

CASCADES = {"default": "haarcascade_frontalface_default.xml", "alt2": "haarcascade_frontalface_alt2.xml",
            "alt": "haarcascade_frontalface_alt.xml"}


def _cv2():
    # FFmpeg (inside OpenCV's video backend) prints its own errors ("moov atom not found", "error
    # while decoding MB ...") straight to stderr; ferkit says in one line what could not be read.
    # Quiet unless the user set a level; read when the first video is opened, so set here.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    import cv2

    return cv2


@contextmanager
def cv2_silenced():
    """OpenCV's own log lines (camera/ffmpeg probing) off for the block, then back as they were:
    ferkit reports those problems itself, and the caller's process keeps its logging."""
    cv2 = _cv2()
    log = getattr(getattr(cv2, "utils", None), "logging", None)
    if log is None:  # pragma: no cover - very old builds
        yield cv2
        return
    before = log.getLogLevel()
    log.setLogLevel(log.LOG_LEVEL_SILENT)
    try:
        yield cv2
    finally:
        log.setLogLevel(before)


class FaceDetector:
    """OpenCV Haar-cascade frontal face detector (bundled with opencv-python, works offline).

    Args:
        cascade: "default", "alt2", "alt" or a path to a cascade XML file.
        scale_factor, min_neighbors: passed to ``detectMultiScale``.
        min_face: smallest face side as a fraction of the image's shorter side (never below 24 px).
        max_side: images larger than this (longest side, px) are downscaled for detection only;
            crops are taken from the full-resolution image.
    """

    def __init__(self, cascade: str = "alt2", scale_factor: float = 1.1, min_neighbors: int = 5,
                 min_face: float = 0.1, max_side: int = 640):
        cv2 = _cv2()
        if not hasattr(cv2, "CascadeClassifier"):   # OpenCV 5 dropped the Haar detector
            raise FerkitError(f"this OpenCV ({getattr(cv2, '__version__', '?')}) has no Haar face detector: "
                              "install opencv-python-headless<5, or give cropped faces with --no-detect")
        path = cascade if cascade not in CASCADES else os.path.join(cv2.data.haarcascades, CASCADES[cascade])
        self._cc = cv2.CascadeClassifier(path)
        if self._cc.empty():
            raise FerkitError(f"cannot load face detector cascade {path}")
        self.scale_factor, self.min_neighbors = scale_factor, min_neighbors
        self.min_face, self.max_side = min_face, max_side

    def detect(self, gray: np.ndarray, min_size: int | None = None,
               thorough: bool = False) -> list[tuple[int, int, int, int]]:
        """Face boxes (x, y, w, h) in ``gray``'s pixels, sorted left to right, top to bottom.
        ``min_size``: smallest face side in ``gray``'s pixels (default: ``min_face`` of its shorter side).
        ``thorough`` (the retries of :func:`find_faces`): up to twice ``max_side`` and one neighbour
        fewer, which finds more of the faces a padded, turned copy holds, at about twice the cost."""
        cv2 = _cv2()
        h, w = gray.shape[:2]
        scale = min(1.0, (2 if thorough else 1) * self.max_side / max(h, w))
        small = gray if scale == 1.0 else cv2.resize(gray, (max(1, round(w * scale)), max(1, round(h * scale))),
                                                     interpolation=cv2.INTER_AREA)
        side = max(24, int(round(self.min_face * min(small.shape[:2]) if min_size is None else min_size * scale)))
        if min(small.shape[:2]) < side:
            return []
        neighbours = max(1, self.min_neighbors - 1) if thorough else self.min_neighbors
        boxes = self._cc.detectMultiScale(small, scaleFactor=self.scale_factor, minNeighbors=neighbours,
                                          minSize=(side, side))
        out = [tuple(int(round(v / scale)) for v in b) for b in (boxes if len(boxes) else [])]
        return sorted(out, key=lambda b: (b[0], b[1]))


# dlib's HOG boxes are tighter than Haar's and sit lower: scaled and moved to Haar's framing, which
# the crop margin and the models were tuned on (median over 53 faces of benchmarks/bench_detect.py's
# scenes that both found: Haar side = 1.13 x dlib side, Haar centre 0.10 x side higher)
_DLIB_TO_HAAR = (1.13, -0.10)


class DlibDetector:
    """dlib's HOG + linear SVM frontal face detector (its weights are inside the dlib wheel;
    ``pip install 'ferkit[dlib]'``). Same interface and arguments as :class:`FaceDetector`; boxes are
    rescaled to Haar's framing so crops look the same to the model.

    dlib's smallest face is about 80 px: where ``min_face`` asks for smaller faces the image is
    upscaled (at most 2x) for detection, which costs time.
    """

    def __init__(self, min_face: float = 0.1, max_side: int = 640):
        try:
            import dlib
        except ImportError:
            raise FerkitError("--detector dlib needs dlib: pip install 'ferkit[dlib]' (or dlib-bin)") from None
        self._det = dlib.get_frontal_face_detector()
        self.min_face, self.max_side = min_face, max_side

    def detect(self, gray: np.ndarray, min_size: int | None = None,
               thorough: bool = False) -> list[tuple[int, int, int, int]]:
        cv2 = _cv2()   # ``thorough`` changes nothing: HOG's rotated filters already cover turned copies
        h, w = gray.shape[:2]
        want = max(24.0, self.min_face * min(h, w) if min_size is None else float(min_size))
        scale = min(self.max_side / max(h, w), 80.0 / want)   # bring the smallest wanted face to ~80 px
        scale = min(scale, 2.0)
        img = gray if abs(scale - 1) < 1e-3 else cv2.resize(gray, (max(1, round(w * scale)), max(1, round(h * scale))),
                                                            interpolation=cv2.INTER_AREA if scale < 1 else
                                                            cv2.INTER_LINEAR)
        grow, shift = _DLIB_TO_HAAR
        out = []
        for r in self._det(np.ascontiguousarray(img), 0):
            side = (r.right() - r.left()) / scale
            if side < want * 0.8:
                continue
            cx, cy = (r.left() + r.right()) / 2 / scale, (r.top() + r.bottom()) / 2 / scale + shift * side
            s = side * grow
            out.append((int(round(cx - s / 2)), int(round(cy - s / 2)), int(round(s)), int(round(s))))
        return sorted(out, key=lambda b: (b[0], b[1]))


def _blazeface(**args):
    from .blazeface import BlazeFaceDetector

    return BlazeFaceDetector(**args)


DETECTORS = {"haar": FaceDetector, "dlib": DlibDetector, "blazeface": _blazeface}
# BlazeFace since it found 0.977 of SFEW train's film crops (Haar 0.741), no false positive on 52
# face-free photos (Haar 0.096 per photo), less CPU per photo and per video frame (docs/predict.md)
DEFAULT_DETECTOR = "blazeface"
_OWN_ARGS = {"dlib": ("min_face", "max_side"), "blazeface": ("min_face", "max_side", "model", "min_score")}


def create_detector(kind: str | None = None, **args):
    """A face detector by name: ``blazeface`` (MediaPipe's detectors, bundled: boxes, scores and six
    keypoints), ``haar`` (OpenCV's cascade) or ``dlib`` (HOG); None: :data:`DEFAULT_DETECTOR` (blazeface).
    Haar takes ``cascade``, ``scale_factor`` and ``min_neighbors`` as well; BlazeFace ``model`` (auto,
    short, full) and ``min_score``; all take ``min_face`` and ``max_side``."""
    kind = kind or DEFAULT_DETECTOR
    if kind not in DETECTORS:
        raise FerkitError(f"unknown detector {kind!r}; accepted: {', '.join(DETECTORS)}")
    if kind in _OWN_ARGS:
        extra = [k for k in args if k not in _OWN_ARGS[kind]]
        if extra and not (extra == ["cascade"] and args["cascade"] in (None, "alt2")):
            raise FerkitError(f"the {kind} detector does not take {', '.join(extra)} (Haar options)")
        args = {k: v for k, v in args.items() if k in _OWN_ARGS[kind]}
    return DETECTORS[kind](**args)


#: Retries for an image where nothing is found: pad + upscale, then turned by these angles (degrees)
RETRY_ANGLES = (20.0, -20.0, 40.0, -40.0)
#: No retry for an image whose shorter side is below this (no face fits) or that is more than
#: RETRY_MAX_ASPECT times longer than wide (a strip, not a photo); the padded copy of a retry
#: holds at most RETRY_MAX_PIXELS (a 4000x3000 photo's is 35 MP)
RETRY_MIN_SIDE, RETRY_MAX_ASPECT, RETRY_MAX_PIXELS = 16, 10.0, 40e6


def _turned_copies(work: np.ndarray, angles):
    """(angle, centre, ``work`` turned by angle about its centre, borders replicated) for the upright
    image and then each of ``angles``: the retries of both kinds of detector."""
    cv2 = _cv2()
    H, W = work.shape[:2]
    centre = (W / 2.0, H / 2.0)
    for angle in (0.0, *angles):
        yield angle, centre, (work if not angle else cv2.warpAffine(
            work, cv2.getRotationMatrix2D(centre, angle, 1.0), (W, H), flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REPLICATE))


def _worth_a_retry(h: int, w: int) -> bool:
    """Can a face fit in an h x w image at all? (A 100000x1 strip cannot: its padded, upscaled copy
    once asked OpenCV for 153 GB.)"""
    return min(h, w) >= RETRY_MIN_SIDE and max(h, w) <= RETRY_MAX_ASPECT * min(h, w)


def find_faces(detector, gray: np.ndarray, retry: bool = True) -> list[tuple[tuple[int, int, int, int], float]]:
    """(box, roll) of each face in ``gray``: roll is 0 for a face found upright, else the angle
    (degrees, see :mod:`ferkit.predict.align`) at which a turned copy of the image showed it.

    With ``retry``, an image where nothing is found is tried again before giving up: padded
    (edges replicated, for tightly cropped faces that leave the detector no context) and upscaled
    (small photos: the shorter side to at least 240 px), then that copy turned by
    :data:`RETRY_ANGLES` (tilted heads, which frontal detectors miss), each searched ``thorough``ly
    (Haar: at up to twice the usual resolution, one neighbour fewer). The smallest face size asked
    for stays what it was in the original's pixels.
    """
    boxes = detector.detect(gray)
    if boxes or not retry or gray.size == 0:
        return [(b, 0.0) for b in boxes]
    cv2 = _cv2()
    h, w = gray.shape[:2]
    if not _worth_a_retry(h, w):
        return []
    scale = min(4.0, max(1.0, 240.0 / min(h, w)))
    # the padded copy is (h + 0.6 max) x (w + 0.6 max) times scale^2: kept under RETRY_MAX_PIXELS
    scale = min(scale, (RETRY_MAX_PIXELS / ((h + 0.6 * max(h, w)) * (w + 0.6 * max(h, w)))) ** 0.5)
    min_size = max(24, round(getattr(detector, "min_face", 0.1) * min(h, w) * scale))
    pad = int(round(0.3 * max(h, w) * scale))
    work = gray if scale == 1 else cv2.resize(gray, (round(w * scale), round(h * scale)),
                                              interpolation=cv2.INTER_LINEAR)
    work = cv2.copyMakeBorder(work, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    for angle, centre, turned in _turned_copies(work, RETRY_ANGLES):
        found = detector.detect(turned, min_size=min_size, thorough=True)
        if not found:
            continue
        centres = rotate_points([(x + bw / 2, y + bh / 2) for x, y, bw, bh in found], centre, angle)
        out = []
        for (cx, cy), (_, _, bw, bh) in zip(centres, found):
            cx, cy, side = (cx - pad) / scale, (cy - pad) / scale, max(bw, bh) / scale
            if 0 <= cx < w and 0 <= cy < h:   # else a "face" in the replicated border
                out.append(((int(round(cx - side / 2)), int(round(cy - side / 2)), int(round(side)),
                             int(round(side))), angle))
        if out:
            return sorted(out, key=lambda f: (f[0][0], f[0][1]))
    return []


@dataclass
class FoundFace:
    """A face as a detector found it: ``box`` (x, y, w, h; Haar's framing), ``angle`` (degrees) the
    image was turned by when it was found (0: upright), and from detectors that give them the
    ``score`` and six ``keypoints`` (6, 2; image pixels; eyes, nose, mouth, ears as in
    :data:`ferkit.predict.blazeface.KEYPOINT_NAMES`)."""

    box: tuple[int, int, int, int]
    angle: float = 0.0
    score: float | None = None
    keypoints: np.ndarray | None = field(default=None, repr=False)

    @property
    def roll(self) -> float:
        """The head's roll (degrees, image coordinates): the eye line's angle when there are
        keypoints, else the angle the face was found at."""
        if self.keypoints is None:
            return self.angle
        (rx, ry), (lx, ly) = self.keypoints[0], self.keypoints[1]
        return math.degrees(math.atan2(ly - ry, lx - rx))


#: Retries of a keypoint detector (BlazeFace) where nothing is found: padded, then turned by these
BLAZE_RETRY_ANGLES = (35.0, -35.0, 65.0, -65.0)


def locate_faces(detector, gray: np.ndarray, retry: bool = True) -> list[FoundFace]:
    """The faces in ``gray`` as :class:`FoundFace` records. Detectors with keypoints (``detect_faces``)
    retry, when nothing is found, on a padded copy searched thoroughly (full and short range, a higher
    score asked for), then that copy turned by :data:`BLAZE_RETRY_ANGLES`; keypoints are
    mapped back to ``gray``. Without ``retry`` (video frames) they take their quick look (no tiles).
    Others: :func:`find_faces`."""
    if not hasattr(detector, "detect_faces"):
        return [FoundFace(b, a) for b, a in find_faces(detector, gray, retry)]
    found = [FoundFace(d.box, 0.0, d.score, d.keypoints) for d in detector.detect_faces(gray, quick=not retry)]
    if found or not retry or gray.size == 0:
        return found
    from .align import rotate_points
    from .blazeface import keypoint_box

    cv2 = _cv2()
    h, w = gray.shape[:2]
    if not _worth_a_retry(h, w) or (h + 0.5 * max(h, w)) * (w + 0.5 * max(h, w)) > RETRY_MAX_PIXELS:
        return found   # Haar's bounds; its padded copy is not scaled down, so a huge one is not made
    min_size = max(24, round(getattr(detector, "min_face", 0.1) * min(h, w)))
    pad = int(round(0.25 * max(h, w)))
    work = cv2.copyMakeBorder(gray, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    for angle, centre, turned in _turned_copies(work, BLAZE_RETRY_ANGLES):
        out = []
        for d in detector.detect_faces(turned, min_size=min_size, thorough=True):
            kps = rotate_points(d.keypoints, centre, angle) - pad
            box = keypoint_box(kps)
            cx, cy = box[0] + box[2] / 2, box[1] + box[3] / 2
            if 0 <= cx < w and 0 <= cy < h:   # else a "face" in the replicated border
                out.append(FoundFace(box, angle, d.score, kps.astype(np.float32)))
        if out:
            return sorted(out, key=lambda f: (f.box[0], f.box[1]))
    return []


def largest(faces: list) -> list:
    """The largest face of a list of boxes, (box, ...) tuples or :class:`FoundFace`, as a list of at most one."""
    if not faces:
        return []
    if isinstance(faces[0], FoundFace):
        return [max(faces, key=lambda f: f.box[2] * f.box[3])]
    area = (lambda f: f[2] * f[3]) if isinstance(faces[0][0], (int, np.integer)) else (lambda f: f[0][2] * f[0][3])
    return [max(faces, key=area)]


def draw_faces(image_bgr: np.ndarray, faces: list[FacePrediction]) -> np.ndarray:
    """Boxes and "label 0.87" tags ("#3 label 0.87" for a tracked face) drawn on a BGR (or gray) image,
    with the keypoints (eyes red) and the face mesh where the faces have them; returns a BGR copy."""
    cv2 = _cv2()
    img = cv2.cvtColor(image_bgr, cv2.COLOR_GRAY2BGR) if image_bgr.ndim == 2 else image_bgr.copy()
    thick = max(1, round(min(img.shape[:2]) / 300))
    scale = max(0.4, min(img.shape[:2]) / 800)
    for f in faces:
        x, y, w, h = f.box
        cv2.rectangle(img, (x, y), (x + w, y + h), (0, 255, 0), thick)
        mesh = getattr(f, "landmarks", None)
        for px, py, *_ in (mesh or ()):          # the face mesh (--landmarks): small dots
            cv2.circle(img, (int(round(px)), int(round(py))), max(1, thick // 2), (255, 200, 0), -1)
        for k, (px, py) in enumerate(getattr(f, "keypoints", None) or ()):   # eyes red, the others yellow
            cv2.circle(img, (int(round(px)), int(round(py))), 2 * thick, (0, 0, 255) if k < 2 else (0, 220, 255), -1)
        track = getattr(f, "track", None)
        text = f"{'' if track is None else f'#{track} '}{f.label} {f.confidence:.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        ty = y - 4 if y - th - base - 4 >= 0 else min(img.shape[0] - 1, y + h + th + 4)
        cv2.rectangle(img, (x, ty - th - base), (x + tw + 4, ty + base), (0, 255, 0), -1)
        cv2.putText(img, text, (x + 2, ty), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick, cv2.LINE_AA)
    return img


