"""Classifying faces: backends (PyTorch checkpoint, onnxruntime) and the Recognizer API.

Example::

    from ferkit import Recognizer
    r = Recognizer.load()                             # the bundled FER2013 model; or a run folder, .safetensors, .onnx
    for face in r.predict("group.jpg"):               # path, BGR/gray numpy array, or PIL image
        print(face.box, face.label, face.confidence)
    r.predict_faces([crop1, crop2])                   # already-cropped gray faces, batched
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from ..data import bgr_to_gray, decode_image, preprocess_gray
from ..errors import FerkitError
from .detect import FaceDetector, crop_face


@dataclass
class FacePrediction:
    """One classified face. ``box`` is the detected face (x, y, w, h) in pixels of the input image
    (the whole image for ``detect=False``); the crop fed to the model is a square ``margin`` larger."""

    box: tuple[int, int, int, int]
    label: str
    confidence: float
    probabilities: dict[str, float]


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

        from ..data import _normalise_mode

        return np.asarray(_normalise_mode(ImageOps.exif_transpose(image)).convert("L"), dtype=np.uint8)
    raise FerkitError(f"cannot predict on a {type(image).__name__}: pass a path, a numpy array or a PIL image")


# ----------------------------------------------------------------------------- backends
def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class TorchBackend:
    """A ferkit checkpoint run with PyTorch (the same code path as ``ferkit evaluate``)."""

    name = "torch"

    def __init__(self, path, device: str = "auto", precision: str = "fp32", tta: str = "none"):
        import torch

        from ..models import load_checkpoint, resolve_checkpoint
        from ..runtime import check_tta, fuse_for_inference, resolve_precision, select_device

        self.tta = check_tta(tta)
        self.path = resolve_checkpoint(path)
        self.device = select_device(device)
        model, record = load_checkpoint(self.path, self.device)
        self.model = fuse_for_inference(model).to(memory_format=torch.channels_last)
        self.record = record
        self.classes = record.classes
        self.image_size = record.image_size
        self.amp = resolve_precision(precision, self.device)

    def logits(self, faces_uint8: np.ndarray, batch_size: int = 256) -> np.ndarray:
        from ..runtime import predict_logits

        if len(faces_uint8) == 0:
            return np.zeros((0, len(self.classes)), np.float32)
        return predict_logits(self.model, faces_uint8, self.record.input, self.device, self.amp, batch_size,
                              self.tta).numpy()


class OnnxBackend:
    """An ONNX file written by ``ferkit export``, run with onnxruntime; classes and image size come
    from the file's metadata."""

    name = "onnx"

    def __init__(self, path, threads: int | None = None, tta: str = "none"):
        from ..models import CheckpointRecord, InputSpec
        from ..runtime import check_tta

        try:
            import onnxruntime as ort
        except ImportError:
            raise FerkitError("the onnx backend needs onnxruntime: pip install 'ferkit[onnx]'") from None
        self.tta = check_tta(tta)
        p = Path(path)
        if p.is_dir():
            raise FerkitError(f"{p} is a folder; --backend onnx needs an .onnx file (make one with `ferkit export`)")
        if not p.is_file():
            raise FerkitError(f"ONNX model {p} does not exist")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise FerkitError(f"{p} is not a loadable ONNX model ({str(exc).splitlines()[0][:160]})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        try:
            raw = json.loads(meta["ferkit"])
            if str(raw.get("format", "")).startswith("ferkit-onnx-"):  # ferkit 0.1's export
                self.record = CheckpointRecord(raw["arch"], tuple(raw["classes"]), InputSpec(int(raw["image_size"])),
                                               format_version=1)
            else:
                self.record = CheckpointRecord.from_json(raw, where=str(p))
        except (KeyError, ValueError, TypeError, AttributeError):
            raise FerkitError(f"{p} has no ferkit metadata (classes, image size): export it with "
                              "`ferkit export`") from None
        self.classes = self.record.classes
        self.image_size = self.record.image_size
        self.path = p
        self.input_name = self.session.get_inputs()[0].name
        names = [o.name for o in self.session.get_outputs()]
        self.output_name = "logits" if "logits" in names else names[0]

    def logits(self, faces_uint8: np.ndarray, batch_size: int = 256) -> np.ndarray:
        import torch

        from ..runtime import tta_views

        out = [np.zeros((0, len(self.classes)), np.float32)]
        for s in range(0, len(faces_uint8), batch_size):
            x = torch.from_numpy(faces_uint8[s:s + batch_size].astype(np.float32)[:, None] / np.float32(255.0))
            views = [self.session.run([self.output_name], {self.input_name: v.contiguous().numpy()})[0]
                     for v in tta_views(x, self.tta)]
            out.append(views[0] if len(views) == 1 else np.log(np.mean([_softmax(v) for v in views], 0) + 1e-12))
        return np.concatenate(out).astype(np.float32)


def open_backend(path=None, backend: str = "auto", device: str = "auto", precision: str = "fp32",
                 tta: str = "none"):
    """The backend for ``path``: a run folder or ``.safetensors`` file (torch), an ``.onnx`` file
    (onnxruntime), a bundled model's name, or None for the default bundled model."""
    from ..bundled import resolve_model_path

    path = resolve_model_path(path)
    if backend == "auto":
        backend = "onnx" if str(path).lower().endswith(".onnx") else "torch"
    if backend == "torch":
        if str(path).lower().endswith(".onnx"):
            raise FerkitError(f"{path} is an ONNX file: use backend 'onnx' or 'auto'")
        return TorchBackend(path, device=device, precision=precision, tta=tta)
    if backend == "onnx":
        return OnnxBackend(path, tta=tta)
    raise FerkitError(f"unknown backend {backend!r}; accepted: auto, torch, onnx")


# ----------------------------------------------------------------------------- recognizer
class Recognizer:
    """Face detection + expression classification with a trained ferkit model.

    Build with :meth:`load`. ``predict`` finds faces in an image and classifies them;
    ``predict_faces`` classifies already-cropped faces.
    """

    def __init__(self, backend, detector: FaceDetector | None = None, margin: float = 0.1, batch_size: int = 64,
                 detector_args: dict | None = None):
        self.backend = backend
        self.detector = detector
        self._detector_args = detector_args or {}   # for the detector made on first use, when none is given
        self.margin = margin
        self.batch_size = batch_size

    @classmethod
    def load(cls, path=None, backend: str = "auto", device: str = "auto", precision: str = "fp32",
             tta: str = "none", margin: float = 0.1, batch_size: int = 64, detect: bool = True,
             **detector_args) -> "Recognizer":
        """Load a model: None (the bundled FER2013 model), a bundled model's name, a run folder or
        ``.safetensors`` checkpoint, or an ``.onnx`` file from ``ferkit export`` (backend "auto"
        picks torch or onnxruntime from the file). ``tta``: none, flip or crops. ``detector_args``
        go to :class:`FaceDetector` (cascade, min_face, ...), which is loaded now, so a bad cascade
        fails before any work; ``detect=False`` (cropped faces only) loads it on first use instead."""
        be = open_backend(path, backend, device=device, precision=precision, tta=tta)
        return cls(be, FaceDetector(**detector_args) if detect else None, margin=margin, batch_size=batch_size,
                   detector_args=detector_args)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.backend.classes

    @property
    def image_size(self) -> int:
        return self.backend.image_size

    # -- building blocks
    def detect(self, gray: np.ndarray) -> list[tuple[int, int, int, int]]:
        if self.detector is None:
            self.detector = FaceDetector(**self._detector_args)
        return self.detector.detect(gray)

    def faces_in(self, gray: np.ndarray, detect: bool = True) -> tuple[list[tuple[int, int, int, int]], np.ndarray]:
        """Boxes and preprocessed (N, S, S) uint8 model inputs for one gray image."""
        S = self.image_size
        if not detect:
            h, w = gray.shape[:2]
            return [(0, 0, int(w), int(h))], preprocess_gray(gray, S)[None]
        boxes = self.detect(gray)
        faces = np.zeros((len(boxes), S, S), np.uint8)
        for i, b in enumerate(boxes):
            faces[i] = preprocess_gray(crop_face(gray, b, self.margin), S)
        return boxes, faces

    def probabilities(self, faces_uint8: np.ndarray) -> np.ndarray:
        """(N, S, S) uint8 preprocessed faces -> (N, classes) float32 probabilities."""
        return _softmax(self.backend.logits(np.ascontiguousarray(faces_uint8), self.batch_size).astype(np.float64)
                        ).astype(np.float32)

    def _results(self, boxes, probs) -> list[FacePrediction]:
        out = []
        for b, p in zip(boxes, probs):
            k = int(p.argmax())
            out.append(FacePrediction(tuple(int(v) for v in b), self.classes[k], float(p[k]),
                                      {c: float(v) for c, v in zip(self.classes, p)}))
        return out

    # -- public API
    def predict(self, image, detect: bool = True) -> list[FacePrediction]:
        """Faces in ``image`` (path, numpy BGR/gray array, or PIL image), left to right.

        ``detect=False`` treats the whole image as one already-cropped face. An image without a
        detectable face gives an empty list.
        """
        boxes, faces = self.faces_in(to_gray(image), detect)
        return self._results(boxes, self.probabilities(faces))

    def predict_faces(self, faces: Iterable) -> list[FacePrediction]:
        """Classify already-cropped faces (gray/BGR arrays, paths or PIL images of any size), batched."""
        grays = [to_gray(f) for f in faces]
        if not grays:
            return []
        batch = np.stack([preprocess_gray(g, self.image_size) for g in grays])
        boxes = [(0, 0, g.shape[1], g.shape[0]) for g in grays]
        return self._results(boxes, self.probabilities(batch))


