"""The API's answers as pydantic models: `/openapi.json` carries them, so a generated client gets
types, and the server's answers are checked against them.

A face is one record (see DESIGN.md): box, label, confidence, probabilities and the eye-levelling
roll, plus the detector's fields where the detector gives them (score, keypoints, landmarks,
head pose); those are `null` otherwise.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class Error(BaseModel):
    """Every error: one line and the HTTP status (also on the WebSocket, with `type`)."""

    error: str = Field(description="what went wrong, in one line")
    status: int = Field(description="the HTTP status code", examples=[413])


class Face(BaseModel):
    box: list[int] = Field(description="[x, y, w, h] in the image's pixels, after its EXIF rotation",
                           min_length=4, max_length=4)
    label: str = Field(description="the most probable class")
    confidence: float = Field(description="the label's probability", ge=0, le=1)
    probabilities: dict[str, float] = Field(description="one probability per class, summing to 1")
    roll: float | None = Field(None, description="degrees the face crop was turned to level the eyes")
    detector_score: float | None = Field(None, description="the detector's confidence, when it gives one")
    keypoints: list[list[float]] | None = Field(None, description="[x, y] keypoints from the detector "
                                                                  "(eyes, nose, mouth ...), when it gives them")
    landmarks: list[list[float]] | None = Field(None, description="dense [x, y] landmarks, when computed")
    yaw: float | None = Field(None, description="head yaw in degrees, when estimated")
    pitch: float | None = Field(None, description="head pitch in degrees, when estimated")


class StreamFace(Face):
    """A face of a WebSocket frame: `probabilities` are smoothed over its track."""

    track: int = Field(description="the face's id across frames (IoU tracking)")
    raw: dict[str, float] = Field(description="this frame's own, unsmoothed probabilities")


class Timing(BaseModel):
    decode: float
    detect: float
    classify: float
    total: float


class PredictResponse(BaseModel):
    """One image's faces."""

    model: str
    width: int = Field(description="the image's width in pixels (after EXIF rotation)")
    height: int
    scale: float = Field(1.0, description="1, or the factor by which a JPEG above --max-megapixels was "
                                          "decoded smaller (boxes are in the original's pixels)")
    tta: str
    detect: bool
    whole_image: bool = Field(description="no face was found and the whole image was classified (--fallback whole)")
    faces: list[Face]
    timing_ms: Timing


class BatchItem(BaseModel):
    """One image of a batch: its result (`status` 200) or its own error."""

    index: int = Field(description="position of the image in the request")
    filename: str | None = None
    status: int = Field(description="200, or the error status this image alone would have got")
    error: str | None = None
    result: PredictResponse | None = None


class BatchResponse(BaseModel):
    """Several images (several `file` parts): one entry per image, in order."""

    model: str
    images: int
    failed: int = Field(description="entries with an error")
    results: list[BatchItem]


class ModelInfo(BaseModel):
    name: str
    classes: list[str]
    image_size: int
    arch: str | None = None
    backend: str
    default: bool


class ModelsResponse(BaseModel):
    models: list[ModelInfo]


class Health(BaseModel):
    status: Literal["ok"]
    in_flight: int = Field(description="requests in progress")
    queued: int = Field(description="requests waiting for the model")


class JobFiles(BaseModel):
    predictions_csv: str | None = Field(None, description="URL of the per-frame CSV (one row per face)")
    summary_json: str | None = Field(None, description="URL of the per-track summary")
    timeline_png: str | None = Field(None, description="URL of the probabilities-over-time figure")


class Job(BaseModel):
    """A video job: queued, running, done (files ready) or failed (`error`)."""

    id: str
    state: Literal["queued", "running", "done", "failed"]
    filename: str | None = None
    created: float = Field(description="Unix time the upload was accepted")
    expires: float | None = Field(None, description="Unix time the job and its files are deleted")
    frames: int | None = Field(None, description="frames classified (when done)")
    faces: int | None = Field(None, description="face rows written (when done)")
    tracks: int | None = Field(None, description="face tracks (when done)")
    error: str | None = None
    files: JobFiles = Field(default_factory=JobFiles)
