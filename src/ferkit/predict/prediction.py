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
