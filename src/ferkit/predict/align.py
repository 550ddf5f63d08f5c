"""Upright face crops: rotate each face so that its eyes are level before classification.

The expression models are trained on upright faces, so a tilted head is cropped crooked unless
the crop is turned. The eyes are found with OpenCV's bundled eye cascades
(``haarcascade_eye.xml``, then ``haarcascade_eye_tree_eyeglasses.xml``; inside opencv-python,
nothing is downloaded) in the upper part of the face box; the angle of the line between them is
the head's roll. When no plausible pair of eyes is found the crop is today's upright crop, turned
only by the angle at which the face was detected (see :func:`ferkit.predict.detect.find_faces`).

Example::

    from ferkit.predict.align import EyeAligner
    aligner = EyeAligner()
    crop, roll = aligner.crop(gray, (x, y, w, h), margin=0.1)   # roll: degrees the crop was turned

Angles are in degrees, in image coordinates (y grows downwards): a roll of +20 means the line
from the left eye (in the image) to the right eye goes down by 20 degrees, i.e. the head leans
to the image's right; the crop is turned by the opposite amount.
"""
from __future__ import annotations

import math
import os

import numpy as np

from ..errors import FerkitError
from .geometry import face_crop, rotate_points, rotated_crop  # noqa: F401  (their home before geometry.py)

EYE_CASCADES = ("haarcascade_eye.xml", "haarcascade_eye_tree_eyeglasses.xml")
_WORK_WIDTH = 160   # the face box is resized to this width for the eye search: eyes ~20-30 px, constant cost


def pick_eye_pair(eyes, width: float, max_roll: float) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """The most plausible (left, right) pair of eye centres among ``eyes`` (x, y, w, h) boxes found
    in a face region ``width`` pixels wide, or None. Plausible: one each side of the middle, 20-70%
    of the width apart, sizes within 2x (a find may take in the brow or the glasses), and a line
    between them within ``max_roll`` degrees."""
    best, best_score = None, math.inf
    cands = [(x + w / 2.0, y + h / 2.0, float(w)) for x, y, w, h in eyes]
    for i, (x1, y1, s1) in enumerate(cands):
        for x2, y2, s2 in cands[i + 1:]:
            (lx, ly, ls), (rx, ry, rs) = sorted([(x1, y1, s1), (x2, y2, s2)])
            dx, dy = rx - lx, ry - ly
            dist = math.hypot(dx, dy)
            if not (0.2 * width <= dist <= 0.7 * width) or max(ls, rs) > 2.0 * min(ls, rs):
                continue
            if lx > 0.6 * width or rx < 0.4 * width or abs(math.degrees(math.atan2(dy, dx))) > max_roll:
                continue
            score = abs(dist / width - 0.42) + abs(ls - rs) / width + abs((lx + rx) / 2 / width - 0.5)
            if score < best_score:
                best, best_score = ((lx, ly), (rx, ry)), score
    return best


class EyeAligner:
    """Finds the eyes in a face box and returns eye-level square crops.

    Args:
        max_roll: largest roll (degrees) accepted from the eyes, beyond the detection angle; a pair
            tilted more is taken for a false find and ignored.
        min_roll: smaller rolls are left alone, so an upright face keeps exactly today's crop.
    """

    def __init__(self, max_roll: float = 25.0, min_roll: float = 4.0):
        import cv2

        self.max_roll, self.min_roll = max_roll, min_roll
        self._cascades = []
        for name in EYE_CASCADES:
            cc = cv2.CascadeClassifier(os.path.join(cv2.data.haarcascades, name))
            if cc.empty():
                raise FerkitError(f"cannot load OpenCV's eye cascade {name}; pass --no-align")
            self._cascades.append(cc)

    def roll(self, face: np.ndarray) -> float | None:
        """The roll (degrees) of the eyes in an upright-ish gray face box, or None when no plausible
        pair is found. ``face`` is the detected box itself (no margin)."""
        import cv2

        h, w = face.shape[:2]
        if min(h, w) < 24:
            return None
        k = _WORK_WIDTH / w
        small = cv2.resize(face, (_WORK_WIDTH, max(1, round(h * k))),
                           interpolation=cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR)
        # eyes lie in rows 10-62% of a Haar face box and are 12-30% of its width: searching only
        # there, at those sizes, keeps the eye search near a third of a 640x480 face detection
        top, bottom = int(0.10 * small.shape[0]), int(0.62 * small.shape[0])
        band = small[top:bottom]   # (histogram equalisation lost the eyes behind glasses)
        for cc in self._cascades:
            eyes = cc.detectMultiScale(band, scaleFactor=1.1, minNeighbors=2, minSize=(20, 20),
                                       maxSize=(int(0.3 * _WORK_WIDTH),) * 2)
            pair = pick_eye_pair([tuple(e) for e in eyes] if len(eyes) else [], _WORK_WIDTH, self.max_roll)
            if pair is not None:
                (lx, ly), (rx, ry) = pair
                return math.degrees(math.atan2(ry - ly, rx - lx))
        return None

    def crop(self, gray: np.ndarray, box, margin: float = 0.1, angle: float = 0.0) -> tuple[np.ndarray, float]:
        """An eye-level square crop of ``box`` (as :func:`crop_face` with ``margin``) and the angle it
        was turned by. ``angle`` is the roll the face was detected at (0 for an upright detection):
        the eyes are searched in the box turned by it, and refine it."""
        x, y, w, h = box
        upright = face_crop(gray, box, 0.0, angle)
        roll = self.roll(upright)
        total = angle + (roll if roll is not None and abs(roll) >= self.min_roll else 0.0)
        return face_crop(gray, box, margin, total), total
