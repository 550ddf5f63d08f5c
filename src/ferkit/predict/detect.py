"""Finding faces: OpenCV's bundled Haar cascade (offline), square crops, and drawing results.

Limits of the Haar detector (measured, see the project notes): frontal and near-frontal faces
only — profile faces (beyond roughly 30-45 degrees of yaw), strongly tilted heads (beyond
roughly 20 degrees of roll) and faces smaller than ``min_face`` of the image are missed; the
cascade also yields occasional false positives on textured background.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np

from ..errors import FerkitError

if TYPE_CHECKING:
    from .recognizer import FacePrediction

CASCADES = {"default": "haarcascade_frontalface_default.xml", "alt2": "haarcascade_frontalface_alt2.xml",
            "alt": "haarcascade_frontalface_alt.xml"}


def _cv2():
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

    def detect(self, gray: np.ndarray) -> list[tuple[int, int, int, int]]:
        """Face boxes (x, y, w, h) in ``gray``'s pixels, sorted left to right, top to bottom."""
        cv2 = _cv2()
        h, w = gray.shape[:2]
        scale = min(1.0, self.max_side / max(h, w))
        small = gray if scale == 1.0 else cv2.resize(gray, (max(1, round(w * scale)), max(1, round(h * scale))),
                                                     interpolation=cv2.INTER_AREA)
        side = max(24, int(round(self.min_face * min(small.shape[:2]))))
        if min(small.shape[:2]) < side:
            return []
        boxes = self._cc.detectMultiScale(small, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
                                          minSize=(side, side))
        out = [tuple(int(round(v / scale)) for v in b) for b in (boxes if len(boxes) else [])]
        return sorted(out, key=lambda b: (b[0], b[1]))


def crop_face(gray: np.ndarray, box, margin: float = 0.1) -> np.ndarray:
    """Square crop centred on ``box`` with side ``max(w, h) * (1 + 2 * margin)``; edges are replicated
    where the square leaves the image."""
    cv2 = _cv2()
    x, y, w, h = box
    side = max(1, int(round(max(w, h) * (1 + 2 * margin))))
    x0 = int(round(x + w / 2 - side / 2))
    y0 = int(round(y + h / 2 - side / 2))
    H, W = gray.shape[:2]
    top, left = max(0, -y0), max(0, -x0)
    bottom, right = max(0, y0 + side - H), max(0, x0 + side - W)
    crop = gray[max(0, y0):min(H, y0 + side), max(0, x0):min(W, x0 + side)]
    if top or left or bottom or right:
        if crop.size == 0:
            return np.zeros((side, side), np.uint8)
        crop = cv2.copyMakeBorder(crop, top, bottom, left, right, cv2.BORDER_REPLICATE)
    return crop


def draw_faces(image_bgr: np.ndarray, faces: list[FacePrediction]) -> np.ndarray:
    """Boxes and "label 0.87" tags drawn on a BGR (or gray) image; returns a BGR copy."""
    cv2 = _cv2()
    img = cv2.cvtColor(image_bgr, cv2.COLOR_GRAY2BGR) if image_bgr.ndim == 2 else image_bgr.copy()
    thick = max(1, round(min(img.shape[:2]) / 300))
    scale = max(0.4, min(img.shape[:2]) / 800)
    for f in faces:
        x, y, w, h = f.box
        cv2.rectangle(img, (x, y), (x + w, y + h), (0, 255, 0), thick)
        text = f"{f.label} {f.confidence:.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        ty = y - 4 if y - th - base - 4 >= 0 else min(img.shape[0] - 1, y + h + th + 4)
        cv2.rectangle(img, (x, ty - th - base), (x + tw + 4, ty + base), (0, 255, 0), -1)
        cv2.putText(img, text, (x + 2, ty), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick, cv2.LINE_AA)
    return img


