"""Square face crops, turned or not, and the rotation of points between an image and a turned copy:
the geometry detection (:mod:`ferkit.predict.detect`) and alignment (:mod:`ferkit.predict.align`)
share. Angles are in degrees, in image coordinates (y grows downwards), as
``cv2.getRotationMatrix2D`` takes them.
"""
from __future__ import annotations

import math

import numpy as np


def crop_face(gray: np.ndarray, box, margin: float = 0.1) -> np.ndarray:
    """Square crop centred on ``box`` with side ``max(w, h) * (1 + 2 * margin)``; edges are replicated
    where the square leaves the image."""
    import cv2  # loaded on first use: `import ferkit.predict` stays cheap for code that never crops

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


def rotated_crop(gray: np.ndarray, center: tuple[float, float], side: int, angle: float) -> np.ndarray:
    """A ``side`` x ``side`` crop centred on ``center`` of ``gray`` turned by ``-angle`` degrees (so
    that something at ``angle`` in the image is level in the crop); edges are replicated where the
    square leaves the image, as in :func:`crop_face`."""
    import cv2  # as in crop_face

    cx, cy = center
    m = cv2.getRotationMatrix2D((float(cx), float(cy)), float(angle), 1.0)
    m[0, 2] += side / 2.0 - cx
    m[1, 2] += side / 2.0 - cy
    return cv2.warpAffine(gray, m, (int(side), int(side)), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def face_crop(gray: np.ndarray, box, margin: float = 0.1, angle: float = 0.0) -> np.ndarray:
    """:func:`crop_face` (a square ``margin`` larger than ``box``), turned by ``angle``
    about the box's centre when that is not 0."""
    if angle == 0:
        return crop_face(gray, box, margin)
    x, y, w, h = box
    return rotated_crop(gray, (x + w / 2.0, y + h / 2.0), max(1, int(round(max(w, h) * (1 + 2 * margin)))), angle)


def rotate_points(points, center: tuple[float, float], angle: float) -> np.ndarray:
    """Where points of an image turned by ``angle`` degrees about ``center`` (cv2.getRotationMatrix2D's
    convention) lie in the original image: the inverse turn, for mapping detections back."""
    a = math.radians(angle)
    c, s = math.cos(a), math.sin(a)
    pts = np.asarray(points, np.float64).reshape(-1, 2) - center
    # getRotationMatrix2D(angle) maps p -> R p with R = [[c, s], [-s, c]]; its inverse is R^T
    return np.stack([c * pts[:, 0] - s * pts[:, 1], s * pts[:, 0] + c * pts[:, 1]], 1) + center
