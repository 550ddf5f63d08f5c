"""One classified face (:class:`FacePrediction`): the record the recognizer returns, the tracker
extends (:class:`ferkit.predict.track.TrackedFace`) and the writers and drawing read."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class FacePrediction:
    """One classified face. ``box`` is the detected face (x, y, w, h) in pixels of the input image
    (the whole image for ``detect=False``); the crop fed to the model is a square ``margin`` larger."""

    box: tuple[int, int, int, int]
    label: str
    confidence: float
    probabilities: dict[str, float]
    #: the detector's score (BlazeFace; None for Haar/dlib and undetected faces)
    detector_score: float | None = None
    #: six keypoints [[x, y], ...] in image pixels: eyes, nose, mouth, ears (BlazeFace), else None
    keypoints: list | None = None
    #: head pose in degrees: yaw and pitch from the face mesh (``landmarks=True``), roll from the mesh,
    #: else the eye line (keypoints or eye cascades); None where not computed
    yaw: float | None = None
    pitch: float | None = None
    roll: float | None = None
    #: the 468-point face mesh [[x, y, z], ...] in image pixels (``landmarks=True``), else None
    landmarks: list | None = None
