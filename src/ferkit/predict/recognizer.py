"""Classifying faces: backends (PyTorch checkpoint, onnxruntime) and the Recognizer API.

Example::

    from ferkit import Recognizer
    r = Recognizer.load()                             # the default bundled model; or a run folder, .safetensors, .onnx
    for face in r.predict("group.jpg"):               # path, BGR/gray numpy array, or PIL image
        print(face.box, face.label, face.confidence)
    r.predict_faces([crop1, crop2])                   # already-cropped gray faces, batched
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from ..data import _normalise_mode, bgr_to_gray, decode_image, preprocess_gray
from ..errors import FerkitError
from ..models.opened import OnnxModel as OnnxBackend  # noqa: F401  (the name earlier versions had)
from ..models.opened import TorchModel as TorchBackend  # noqa: F401  (the name earlier versions had)
from ..models.opened import model_file, open_export_beside, open_model, softmax_probabilities, uses_export
from ..runtime import check_tta, tta_logits
from .align import EyeAligner
from .detect import FaceDetector, FoundFace, create_detector, largest, locate_faces
from .geometry import face_crop
from .prediction import FacePrediction
from .track import track_video


@dataclass
class PreparedFaces:
    """The model inputs found in one image: ``boxes`` (x, y, w, h), ``faces`` (N, S, S) uint8 crops
    (eye-level when aligned), ``rolls`` (degrees each crop was turned; 0 = upright crop) and
    ``whole``: True when no face was found and the whole image stands in (``fallback="whole"``)."""

    boxes: list[tuple[int, int, int, int]]
    faces: np.ndarray
    rolls: list[float]
    whole: bool = False
    scores: list | None = None         # detector score per face (None entries for Haar/dlib)
    keypoints: list | None = None      # (6, 2) float arrays per face, or None entries
    poses: list | None = None          # (yaw, pitch, roll) per face from the mesh, or None entries
    landmarks: list | None = None      # (468, 3) float arrays per face (landmarks=True), or None entries

    def extras(self, i: int) -> dict:
        """The face record's detector and pose fields of face ``i`` (for :class:`FacePrediction`)."""
        if self.scores is None or self.whole:   # no detection ran (cropped faces, or the whole image)
            return dict.fromkeys(("detector_score", "keypoints", "yaw", "pitch", "roll", "landmarks"))
        get = lambda lst: None if lst is None or i >= len(lst) else lst[i]  # noqa: E731
        pose, kps, mesh = get(self.poses), get(self.keypoints), get(self.landmarks)
        score = get(self.scores)
        roll = pose[2] if pose is not None else (None if i >= len(self.rolls) else self.rolls[i])
        return {"detector_score": None if score is None else round(float(score), 4),
                "keypoints": None if kps is None else np.round(np.asarray(kps, float), 1).tolist(),
                "yaw": None if pose is None else round(float(pose[0]), 1),
                "pitch": None if pose is None else round(float(pose[1]), 1),
                "roll": None if roll is None else round(float(roll), 1),
                "landmarks": None if mesh is None else np.round(np.asarray(mesh, float), 1).tolist()}


# ----------------------------------------------------------------------------- images
def read_gray(path) -> np.ndarray:
    """Decode an image file exactly as training does (:func:`ferkit.data.decode_image`)."""
    return decode_image(path)


def read_color(path) -> np.ndarray:
    """BGR uint8 copy of an image file (for annotation), decoded like :func:`read_gray`."""
    return decode_image(path, color=True)


def to_gray(image) -> np.ndarray:
    """A path, numpy array (gray, BGR or BGRA as from OpenCV) or PIL image -> uint8 gray."""
    if isinstance(image, (str, os.PathLike)):
        try:
            return read_gray(image)
        except FileNotFoundError:
            raise FerkitError(f"image {image} does not exist") from None
        except ValueError as exc:
            raise FerkitError(f"cannot decode {image}: {exc}") from None
    if isinstance(image, np.ndarray):
        arr = image
        if arr.dtype != np.uint8:
            if np.issubdtype(arr.dtype, np.floating) and arr.size and arr.max() <= 1.0:
                arr = arr * 255.0
            arr = np.clip(arr, 0, 255).astype(np.uint8)
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
            raise FerkitError(f"expected an (H, W), (H, W, 3) or (H, W, 4) image array, got shape {arr.shape}")
        return bgr_to_gray(np.ascontiguousarray(arr))
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        Image = None
    if Image is not None and isinstance(image, Image.Image):
        from PIL import ImageOps

        return np.asarray(_normalise_mode(ImageOps.exif_transpose(image)).convert("L"), dtype=np.uint8)
    raise FerkitError(f"cannot predict on a {type(image).__name__}: pass a path, a numpy array or a PIL image")


# ----------------------------------------------------------------------------- backends
# Models are opened by ferkit.models.open_model (one place: name resolution, kind and record checks,
# the backend); TorchBackend and OnnxBackend (imported above) and the two functions below are the
# names earlier versions had.

def open_backend(path=None, backend: str = "auto", device: str = "auto", precision: str = "fp32",
                 tta: str = "none"):
    """The model for ``path`` (None: the default bundled model), opened by
    :func:`ferkit.models.open_model` (see there for the ``auto`` backend rule). A model no longer
    holds a test-time augmentation: it is chosen per call (``logits(faces, tta=...)``) or by the
    :class:`Recognizer` (``Recognizer(model, tta=...)``), so ``tta`` other than none is refused."""
    _no_tta(tta)
    return open_model(path, device=device, precision=precision, backend=backend)


def _no_tta(tta: str) -> None:
    if check_tta(tta) != "none":
        raise FerkitError(f"a model no longer keeps a test-time augmentation (tta={tta!r}): pass it to "
                          "Recognizer(model, tta=...) or to model.logits(faces, tta=...)")


def exported_backend(path, device: str = "auto", precision: str = "fp32", tta: str = "none",
                     required: bool = False):
    """The ONNX model on the export that stands in for checkpoint ``path`` (``<stem>.onnx`` beside
    it, made by ``ferkit export`` from this very file), or None where ``open_model``'s ``auto`` rule
    would not use it (``required``: FerkitError instead). See :func:`ferkit.models.open_model`."""
    _no_tta(tta)
    if not (required or uses_export(device, precision)):
        return None
    try:
        ckpt = model_file(path)
    except FerkitError:
        if required:
            raise
        return None    # the torch backend says what is wrong with it
    return open_export_beside(ckpt, required=required)


FALLBACKS = ("none", "whole")


def _make_detector(detector_args: dict):
    """The face detector named by ``detector_args["detector"]`` (default: detect.DEFAULT_DETECTOR) with
    the other arguments."""
    args = dict(detector_args)
    return create_detector(args.pop("detector", None), **args)


# ----------------------------------------------------------------------------- recognizer
class Recognizer:
    """Face detection + expression classification with a trained ferkit model.

    Build with :meth:`load`. ``predict`` finds faces in an image and classifies them;
    ``predict_faces`` classifies already-cropped faces.
    """

    def __init__(self, backend, detector: FaceDetector | None = None, margin: float = 0.1, batch_size: int = 64,
                 detector_args: dict | None = None, align: bool = True, fallback: str = "none",
                 largest: bool = False, tta: str = "none", landmarks: bool = False):
        if fallback not in FALLBACKS:
            raise FerkitError(f"unknown fallback {fallback!r}; accepted: {', '.join(FALLBACKS)}")
        self.backend = backend                      # a ferkit.models.OpenedModel (or any object with
        self.tta = check_tta(tta)                   # classes, image_size and logits(faces, batch_size=))
        self.detector = detector
        self._detector_args = detector_args or {}   # for the detector made on first use, when none is given
        self.margin = margin
        self.batch_size = batch_size
        self.align, self.fallback, self.largest = align, fallback, largest
        self.landmarks = landmarks                  # the 468-point mesh and head pose of each face
        self._aligner = None                        # made on first use (one per recognizer: OpenCV cascades)

    @classmethod
    def load(cls, path=None, backend: str = "auto", device: str = "auto", precision: str = "fp32",
             tta: str = "none", margin: float = 0.1, batch_size: int = 64, detect: bool = True,
             align: bool = True, fallback: str = "none", largest: bool = False, landmarks: bool = False,
             **detector_args) -> "Recognizer":
        """Load a model: None (the default bundled model), a bundled model's name, a run folder or
        ``.safetensors`` checkpoint, or an ``.onnx`` file from ``ferkit export`` (backend "auto"
        runs an .onnx file, or a checkpoint's export beside it, on onnxruntime when installed, else
        PyTorch: see :func:`ferkit.models.open_model`). ``tta``: none, flip or crops (the default of
        :meth:`probabilities`). ``detector_args``
        go to the face detector: ``detector`` ("blazeface", the default, "haar" or "dlib"), min_face, ...
        It is loaded now, so a bad cascade fails before any work; ``detect=False`` (cropped faces
        only) loads it on first use instead. ``align``: turn each face crop so its eyes are level
        (:mod:`ferkit.predict.align`); ``fallback="whole"``: an image without a detected face is
        classified whole; ``largest``: keep only the largest face of each image or frame;
        ``landmarks``: the 468-point face mesh and head pose (yaw, pitch, roll) of each face
        (:mod:`ferkit.predict.mesh`)."""
        check_tta(tta)
        model = open_model(path, device=device, precision=precision, backend=backend)
        return cls(model, _make_detector(detector_args) if detect else None, margin=margin, batch_size=batch_size,
                   detector_args=detector_args, align=align, fallback=fallback, largest=largest, tta=tta,
                   landmarks=landmarks)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.backend.classes

    @property
    def image_size(self) -> int:
        return self.backend.image_size

    # -- building blocks
    def with_detector(self, **detector_args) -> "Recognizer":
        """A recognizer sharing this one's model and settings, with a detector of its own: this one's
        detector arguments updated by ``detector_args`` (e.g. ``min_face=0.2``), made on first use.
        For threads (OpenCV's cascade classifier must not be shared between them) and per-call options."""
        import copy

        twin = copy.copy(self)
        twin._detector_args = {**self._detector_args, **detector_args}
        twin.detector = None
        twin._aligner = None
        return twin

    def detect(self, gray: np.ndarray) -> list[tuple[int, int, int, int]]:
        if self.detector is None:
            self.detector = _make_detector(self._detector_args)
        return self.detector.detect(gray)

    def locate(self, gray: np.ndarray, retry: bool = True) -> list[tuple[tuple[int, int, int, int], float]]:
        """(box, roll) of each face: :func:`ferkit.predict.detect.find_faces` (padded, upscaled and
        turned retries when ``retry`` and nothing is found), only the largest with ``largest``."""
        return [(f.box, f.roll if f.keypoints is not None else f.angle) for f in self.locate_faces(gray, retry)]

    def locate_faces(self, gray: np.ndarray, retry: bool = True) -> list[FoundFace]:
        """:meth:`locate` as :class:`ferkit.predict.detect.FoundFace` records (score, keypoints)."""
        if self.detector is None:
            self.detector = _make_detector(self._detector_args)
        found = locate_faces(self.detector, gray, retry)
        return largest(found) if self.largest else found

    def prepare(self, gray: np.ndarray, detect: bool = True, retry: bool = True) -> PreparedFaces:
        """Boxes, preprocessed (N, S, S) uint8 model inputs and crop angles for one gray image.
        ``retry``: try harder on an image where nothing is found (photos; off for video frames)."""
        S = self.image_size
        h, w = gray.shape[:2]
        if not detect:
            return PreparedFaces([(0, 0, int(w), int(h))], preprocess_gray(gray, S)[None], [0.0])
        found = self.locate_faces(gray, retry)
        if not found and self.fallback == "whole":
            return PreparedFaces([(0, 0, int(w), int(h))], preprocess_gray(gray, S)[None], [0.0], whole=True)
        faces = np.zeros((len(found), S, S), np.uint8)
        rolls = []
        if self.align and found and self._aligner is None and any(f.keypoints is None for f in found):
            self._aligner = EyeAligner()
        for i, f in enumerate(found):
            if f.keypoints is not None:   # the eyes are known: level them (no eye cascades)
                roll = f.roll if self.align else f.angle
                crop = face_crop(gray, f.box, self.margin, roll)
            elif self.align:
                crop, roll = self._aligner.crop(gray, f.box, self.margin, f.angle)
            else:
                roll = f.angle
                crop = face_crop(gray, f.box, self.margin, roll)
            faces[i] = preprocess_gray(crop, S)
            rolls.append(float(roll))
        prepared = PreparedFaces([f.box for f in found], faces, rolls, scores=[f.score for f in found],
                                 keypoints=[f.keypoints for f in found])
        if self.landmarks and found:
            from .mesh import face_mesh_and_pose

            prepared.landmarks, prepared.poses = face_mesh_and_pose(gray, found)
        return prepared

    def faces_in(self, gray: np.ndarray, detect: bool = True,
                 retry: bool = True) -> tuple[list[tuple[int, int, int, int]], np.ndarray]:
        """Boxes and preprocessed (N, S, S) uint8 model inputs for one gray image (see :meth:`prepare`)."""
        prepared = self.prepare(gray, detect, retry)
        return prepared.boxes, prepared.faces

    def probabilities(self, faces_uint8: np.ndarray, tta: str | None = None) -> np.ndarray:
        """(N, S, S) uint8 preprocessed faces -> (N, classes) float32 probabilities, averaged over
        the views of ``tta`` (None: this recognizer's); FerkitError when the model's outputs are not
        finite (a damaged model is not reported as a prediction)."""
        faces = np.ascontiguousarray(faces_uint8)
        tta = self.tta if tta is None else tta
        if not len(faces):
            return np.zeros((0, len(self.classes)), np.float32)
        logits = tta_logits(lambda batch: self.backend.logits(batch.numpy(), batch_size=self.batch_size), faces, tta,
                            self.batch_size)
        return softmax_probabilities(logits.numpy(), f"model {getattr(self.backend, 'path', '')}".strip())

    def _results(self, boxes, probs, prepared: PreparedFaces | None = None) -> list[FacePrediction]:
        # numpy does the per-face arithmetic for the whole batch; the loop only builds the objects
        probs = np.asarray(probs)
        if not len(probs):
            return []
        top = probs.argmax(1)
        labels = [self.classes[k] for k in top.tolist()]
        confidence = probs[np.arange(len(probs)), top].tolist()
        classes = self.classes
        return [FacePrediction(tuple(map(int, b)), label, c, dict(zip(classes, row)),
                               **(prepared.extras(i) if prepared is not None else {}))
                for i, (b, label, c, row) in enumerate(zip(boxes, labels, confidence, probs.tolist()))]

    # -- public API
    def predict(self, image, detect: bool = True) -> list[FacePrediction]:
        """Faces in ``image`` (path, numpy BGR/gray array, or PIL image), left to right.

        ``detect=False`` treats the whole image as one already-cropped face. An image without a
        detectable face gives an empty list.
        """
        prepared = self.prepare(to_gray(image), detect)
        return self._results(prepared.boxes, self.probabilities(prepared.faces),
                             prepared if detect else None)

    def track(self, video, smooth: float = 0.5, every: int = 1, max_frames: int | None = None,
              detect: bool = True):
        """Faces of a video, tracked: yields one :class:`ferkit.predict.track.FrameFaces` per
        classified frame (frames without a face too, with no faces), each face with a ``track`` id
        and probabilities smoothed per track over ``smooth`` seconds (0 = raw).

        ``video``: a video file, a camera index, or an iterable of frames (BGR/gray arrays; their
        times are then frame numbers / 25 fps). See :func:`ferkit.predict.track.track_video`.
        """
        return track_video(self, video, smooth=smooth, every=every, max_frames=max_frames, detect=detect)

    def predict_faces(self, faces: Iterable) -> list[FacePrediction]:
        """Classify already-cropped faces, batched: a uint8 array (N, H, W) of gray faces, or an
        iterable of faces (gray/BGR arrays, paths or PIL images of any size). Gray uint8 faces
        already of the model's size (``image_size``) are stacked as they are, with no per-face
        conversion or resizing."""
        S = self.image_size
        if isinstance(faces, np.ndarray) and faces.ndim == 3 and faces.dtype == np.uint8:
            if not len(faces):
                return []
            h, w = faces.shape[1:]
            batch = faces if (h, w) == (S, S) else np.stack([preprocess_gray(f, S) for f in faces])
            return self._results([(0, 0, w, h)] * len(faces), self.probabilities(batch))
        grays = [f if isinstance(f, np.ndarray) and f.ndim == 2 and f.dtype == np.uint8 else to_gray(f)
                 for f in faces]
        if not grays:
            return []
        if all(g.shape == (S, S) for g in grays):
            batch = np.stack(grays)
        else:
            batch = np.stack([preprocess_gray(g, S) for g in grays])
        boxes = [(0, 0, g.shape[1], g.shape[0]) for g in grays]
        return self._results(boxes, self.probabilities(batch))


