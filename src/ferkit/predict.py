"""Apply a trained model to photos, folders, videos and a webcam — offline.

Faces are found with OpenCV's bundled Haar cascade (``haarcascade_frontalface_alt2.xml``,
shipped inside opencv-python, nothing is downloaded), cropped as a square around the detected
box with a margin, and converted exactly as in training: the crop of the *gray* image goes
through :func:`ferkit.data.preprocess_gray` and the model's input contract. Image files are
decoded with :func:`ferkit.data.decode_image` (the training decoder: EXIF orientation, 16-bit,
alpha, pixel limit), video frames with :func:`ferkit.data.bgr_to_gray`.

Example::

    from ferkit import Recognizer
    r = Recognizer.load()                             # the bundled FER2013 model; or a run folder, .safetensors, .onnx
    for face in r.predict("group.jpg"):               # path, BGR/gray numpy array, or PIL image
        print(face.box, face.label, face.confidence)
    r.predict_faces([crop1, crop2])                   # already-cropped gray faces, batched

Limits of the Haar detector (measured, see the project notes): frontal and near-frontal faces
only — profile faces (beyond roughly 30-45 degrees of yaw), strongly tilted heads (beyond
roughly 20 degrees of roll) and faces smaller than ``min_face`` of the image are missed; the
cascade also yields occasional false positives on textured background.
"""
from __future__ import annotations

import csv
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from .console import log
from .data import IMAGE_EXTENSIONS, bgr_to_gray, decode_image, preprocess_gray
from .errors import FerkitError
from .files import make_dir

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
CASCADES = {"default": "haarcascade_frontalface_default.xml", "alt2": "haarcascade_frontalface_alt2.xml",
            "alt": "haarcascade_frontalface_alt.xml"}


@dataclass
class FacePrediction:
    """One classified face. ``box`` is the detected face (x, y, w, h) in pixels of the input image
    (the whole image for ``detect=False``); the crop fed to the model is a square ``margin`` larger."""

    box: tuple[int, int, int, int]
    label: str
    confidence: float
    probabilities: dict[str, float]


# ----------------------------------------------------------------------------- detection
def _cv2_quiet():
    """Import cv2 with its own warnings (camera/ffmpeg probing) silenced: ferkit reports problems itself."""
    import cv2

    try:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    except AttributeError:  # pragma: no cover - very old builds
        pass
    return cv2


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
        cv2 = _cv2_quiet()
        path = cascade if cascade not in CASCADES else os.path.join(cv2.data.haarcascades, CASCADES[cascade])
        self._cc = cv2.CascadeClassifier(path)
        if self._cc.empty():
            raise FerkitError(f"cannot load face detector cascade {path}")
        self.scale_factor, self.min_neighbors = scale_factor, min_neighbors
        self.min_face, self.max_side = min_face, max_side

    def detect(self, gray: np.ndarray) -> list[tuple[int, int, int, int]]:
        """Face boxes (x, y, w, h) in ``gray``'s pixels, sorted left to right, top to bottom."""
        cv2 = _cv2_quiet()
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
    cv2 = _cv2_quiet()
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

        from .data import _normalise_mode

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

        from .models import load_checkpoint, resolve_checkpoint
        from .runtime import check_tta, resolve_precision, select_device

        self.tta = check_tta(tta)
        self.path = resolve_checkpoint(path)
        self.device = select_device(device)
        model, record = load_checkpoint(self.path, self.device)
        self.model = model.to(memory_format=torch.channels_last)
        self.record = record
        self.classes = record.classes
        self.image_size = record.image_size
        self.amp = resolve_precision(precision, self.device)

    def logits(self, faces_uint8: np.ndarray, batch_size: int = 256) -> np.ndarray:
        from .runtime import predict_logits

        if len(faces_uint8) == 0:
            return np.zeros((0, len(self.classes)), np.float32)
        return predict_logits(self.model, faces_uint8, self.record.input, self.device, self.amp, batch_size,
                              self.tta).numpy()


class OnnxBackend:
    """An ONNX file written by ``ferkit export``, run with onnxruntime; classes and image size come
    from the file's metadata."""

    name = "onnx"

    def __init__(self, path, threads: int | None = None, tta: str = "none"):
        from .models import CheckpointRecord, InputSpec
        from .runtime import check_tta

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
            raise FerkitError(f"{p} has no ferkit metadata (classes, image size): export it with `ferkit export`") from None
        self.classes = self.record.classes
        self.image_size = self.record.image_size
        self.path = p
        self.input_name = self.session.get_inputs()[0].name
        names = [o.name for o in self.session.get_outputs()]
        self.output_name = "logits" if "logits" in names else names[0]

    def logits(self, faces_uint8: np.ndarray, batch_size: int = 256) -> np.ndarray:
        import torch

        from .runtime import tta_views

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
    from .bundled import resolve_model_path

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

    def __init__(self, backend, detector: FaceDetector | None = None, margin: float = 0.1, batch_size: int = 64):
        self.backend = backend
        self.detector = detector
        self.margin = margin
        self.batch_size = batch_size

    @classmethod
    def load(cls, path=None, backend: str = "auto", device: str = "auto", precision: str = "fp32",
             tta: str = "none", margin: float = 0.1, batch_size: int = 64, **detector_args) -> "Recognizer":
        """Load a model: None (the bundled FER2013 model), a bundled model's name, a run folder or
        ``.safetensors`` checkpoint, or an ``.onnx`` file from ``ferkit export`` (backend "auto"
        picks torch or onnxruntime from the file). ``tta``: none, flip or crops. ``detector_args``
        go to :class:`FaceDetector` (cascade, min_face, ...)."""
        be = open_backend(path, backend, device=device, precision=precision, tta=tta)
        return cls(be, FaceDetector(**detector_args), margin=margin, batch_size=batch_size)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.backend.classes

    @property
    def image_size(self) -> int:
        return self.backend.image_size

    # -- building blocks
    def detect(self, gray: np.ndarray) -> list[tuple[int, int, int, int]]:
        if self.detector is None:
            self.detector = FaceDetector()
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


# ----------------------------------------------------------------------------- inputs
def collect_inputs(inputs: Iterable[str]) -> tuple[list[tuple[Path, str]], list[tuple[str, str]]]:
    """Expand files and folders (recursive) into (path, "image"|"video") items, plus (input, reason) problems."""
    items: list[tuple[Path, str]] = []
    bad: list[tuple[str, str]] = []
    exts = IMAGE_EXTENSIONS + VIDEO_EXTENSIONS
    for text in inputs:
        p = Path(text)
        if p.is_dir():
            found = []
            for dirpath, dirnames, filenames in os.walk(p):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                found += [Path(dirpath) / f for f in sorted(filenames)
                          if f.lower().endswith(exts) and not f.startswith(".")]
            if not found:
                bad.append((str(p), "folder has no image or video files"))
            items += [(f, "video" if f.suffix.lower() in VIDEO_EXTENSIONS else "image") for f in found]
        elif p.is_file():
            items.append((p, "video" if p.suffix.lower() in VIDEO_EXTENSIONS else "image"))
        else:
            bad.append((str(p), "does not exist"))
    return items, bad


# ----------------------------------------------------------------------------- output
class PredictionWriter:
    """Streams one row per face to ``predictions.csv`` (flushed per batch) or ``predictions.json``.

    JSON is written as JSON lines to a hidden ``.predictions.jsonl.partial`` file while running and
    turned into one JSON list (atomically) by :meth:`close`. ``out=None`` writes to stdout.
    """

    def __init__(self, out: Path | None, fmt: str, classes):
        self.fmt, self.classes, self.out = fmt, tuple(classes), out
        self.count = 0
        if out is None:
            self.fh = sys.stdout
            self.path = None
        else:
            self.path = out / f"predictions.{fmt}"
            target = self.path if fmt == "csv" else out / ".predictions.jsonl.partial"
            try:
                self.fh = open(target, "w", newline="" if fmt == "csv" else None, encoding="utf-8")
            except OSError as exc:
                raise FerkitError(f"cannot write {target}: {exc.strerror or exc}") from None
            self._partial = target
        if fmt == "csv":
            self.csv = csv.writer(self.fh)
            self.csv.writerow(["source", "frame", "time_s", "x", "y", "w", "h", "label", "confidence",
                               *[f"p_{c}" for c in self.classes]])
        elif out is None:
            self.fh.write("[")

    def write(self, source: str, frame: int | None, time_s: float | None, face: FacePrediction) -> None:
        if self.fmt == "csv":
            self.csv.writerow([source, "" if frame is None else frame, "" if time_s is None else f"{time_s:.3f}",
                               *face.box, face.label, f"{face.confidence:.6f}",
                               *[f"{face.probabilities[c]:.6f}" for c in self.classes]])
        else:
            obj = {"source": source, "frame": frame, "time_s": None if time_s is None else round(time_s, 3),
                   "box": list(face.box), "label": face.label, "confidence": round(face.confidence, 6),
                   "probabilities": {c: round(face.probabilities[c], 6) for c in self.classes}}
            if self.out is None:
                self.fh.write(("\n" if self.count == 0 else ",\n") + json.dumps(obj))
            else:
                self.fh.write(json.dumps(obj) + "\n")
        self.count += 1

    def flush(self) -> None:
        self.fh.flush()

    def close(self) -> None:
        if self.out is None:
            if self.fmt == "json":
                self.fh.write("\n]\n" if self.count else "]\n")
            self.fh.flush()
            return
        self.fh.close()
        if self.fmt == "json":
            tmp = self.out / ".predictions.json.tmp"
            with open(self._partial, encoding="utf-8") as src, open(tmp, "w", encoding="utf-8") as dst:
                dst.write("[")
                for i, line in enumerate(src):
                    dst.write(("\n" if i == 0 else ",\n") + line.rstrip("\n"))
                dst.write("\n]\n" if self.count else "]\n")
            os.replace(tmp, self.path)
            os.remove(self._partial)


def draw_faces(image_bgr: np.ndarray, faces: list[FacePrediction]) -> np.ndarray:
    """Boxes and "label 0.87" tags drawn on a BGR (or gray) image; returns a BGR copy."""
    cv2 = _cv2_quiet()
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


# ----------------------------------------------------------------------------- batch runs
@dataclass
class RunSummary:
    files: int = 0                  # inputs processed (images + videos + camera)
    images: int = 0
    videos: int = 0
    frames: int = 0                 # video/camera frames classified
    faces: int = 0
    no_face: list[str] = field(default_factory=list)        # images with zero faces
    bad: list[tuple[str, str]] = field(default_factory=list)  # (input, reason)
    seconds: float = 0.0
    output: str | None = None

    def text(self) -> str:
        lines = [f"processed {self.files} file(s): {self.images} image(s), {self.videos} video/camera stream(s) "
                 f"({self.frames} frame(s)); {self.faces} face(s); {len(self.no_face)} image(s) with no face; "
                 f"{len(self.bad)} skipped; {self.seconds:.1f}s"]
        if self.no_face:
            shown = ", ".join(self.no_face[:10])
            lines.append(f"no face found in: {shown}{' ...' if len(self.no_face) > 10 else ''}")
        for src, why in self.bad:
            lines.append(f"skipped {src}: {why}")
        if self.output:
            lines.append(f"predictions: {self.output}")
        return "\n".join(lines)


class _Annotator:
    def __init__(self, folder: Path | None):
        self.folder = folder
        self.used: set[str] = set()
        if folder is not None:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise FerkitError(f"cannot create output folder {folder}: {exc.strerror or exc}") from None

    def name(self, wanted: str) -> Path:
        stem, suffix = os.path.splitext(wanted)
        cand, i = wanted, 1
        while cand in self.used:
            cand, i = f"{stem}-{i}{suffix}", i + 1
        self.used.add(cand)
        return self.folder / cand


def _image_out_name(path: Path) -> str:
    # keep the name where OpenCV can write the format; otherwise write PNG next to the original name
    return path.name if path.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp") \
        else path.name + ".png"


class Predictor:
    """Runs a :class:`Recognizer` over files, folders, videos and a camera, writing rows as it goes."""

    def __init__(self, recognizer: Recognizer, writer: PredictionWriter, annotate_dir: Path | None = None,
                 detect: bool = True, every: int = 1, progress: bool = True, max_pending_images: int = 16):
        self.r, self.w = recognizer, writer
        self.detect, self.every, self.progress = detect, max(1, every), progress
        self.ann = _Annotator(annotate_dir) if annotate_dir is not None else None
        self.max_pending_images = max_pending_images
        self.summary = RunSummary()

    # -- images: faces of several images are classified in one batch
    def run_images(self, paths: list[Path]) -> None:
        from tqdm import tqdm

        pending: list[tuple[Path, list, np.ndarray | None]] = []
        faces: list[np.ndarray] = []
        n_faces = 0
        bar = tqdm(paths, desc="images", unit="img", disable=not self.progress or len(paths) < 2,
                   leave=False, dynamic_ncols=True)
        for path in bar:
            try:
                gray = read_gray(path)
                color = read_color(path) if self.ann is not None else None
            except (ValueError, OSError) as exc:
                why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                self.summary.bad.append((str(path), f"not a readable image ({why})"))
                continue
            boxes, crops = self.r.faces_in(gray, self.detect)
            pending.append((path, boxes, color))
            faces.append(crops)
            n_faces += len(boxes)
            if n_faces >= self.r.batch_size or len(pending) >= self.max_pending_images:
                self._flush_images(pending, faces)
                pending, faces, n_faces = [], [], 0
        if pending:
            self._flush_images(pending, faces)
        bar.close()

    def _flush_images(self, pending, faces) -> None:
        probs = self.r.probabilities(np.concatenate(faces))
        k = 0
        for path, boxes, color in pending:
            results = self.r._results(boxes, probs[k:k + len(boxes)])
            k += len(boxes)
            for f in results:
                self.w.write(str(path), None, None, f)
            self.summary.files += 1
            self.summary.images += 1
            self.summary.faces += len(results)
            if not results:
                self.summary.no_face.append(str(path))
            if self.ann is not None:
                self._write_image(self.ann.name(_image_out_name(path)), draw_faces(color, results), path)
        self.w.flush()

    def _write_image(self, target: Path, img: np.ndarray, source) -> None:
        cv2 = _cv2_quiet()
        try:
            ok = cv2.imwrite(str(target), img)
        except cv2.error:
            ok = False
        if not ok:
            log(f"warning: could not write annotated copy of {source} to {target}")

    # -- video files and cameras
    def run_video(self, path: Path) -> None:
        cv2 = _cv2_quiet()
        cap = cv2.VideoCapture(str(path))
        if not cap.isOpened():
            self.summary.bad.append((str(path), "cannot open video (unsupported codec or not a video)"))
            return
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self._stream(cap, str(path), n if n > 0 else None, path.stem + ".mp4")

    @staticmethod
    def open_camera(index: int):
        """(capture, first frame) of webcam ``index``; FerkitError when there is none."""
        cv2 = _cv2_quiet()
        cap = cv2.VideoCapture(index)
        ok = cap.isOpened()
        first = cap.read() if ok else (False, None)
        if not ok or not first[0]:
            cap.release()
            raise FerkitError(f"camera {index} is not available (no device, or it is in use)")
        return cap, first[1]

    def run_camera(self, index: int, max_frames: int | None = None, opened=None) -> None:
        cap, first = opened or self.open_camera(index)
        log(f"camera {index}: press Ctrl-C to stop")
        self._stream(cap, f"camera:{index}", max_frames, f"camera{index}.mp4", first=first, live=True,
                     max_frames=max_frames)

    def _stream(self, cap, source: str, total: int | None, ann_name: str, first=None, live: bool = False,
                max_frames: int | None = None) -> None:
        cv2 = _cv2_quiet()
        from tqdm import tqdm

        fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
        fps = fps if 0 < fps < 1000 else 0.0
        writer = None
        bar = tqdm(total=total, desc=os.path.basename(source)[:30], unit="frame", disable=not self.progress,
                   leave=False, dynamic_ncols=True)
        buffered: list = []  # (index, time, frame, boxes or None)
        n_faces, last_boxes_results = 0, []
        frames_done = 0
        t0 = time.perf_counter()

        def flush():
            nonlocal buffered, n_faces, writer, last_boxes_results
            chunks = [f[4] for f in buffered if f[3] is not None]
            probs = self.r.probabilities(np.concatenate(chunks)) if chunks else None
            k = 0
            for idx, t, frame, boxes, _ in buffered:
                if boxes is not None:
                    results = self.r._results(boxes, probs[k:k + len(boxes)])
                    k += len(boxes)
                    for f in results:
                        self.w.write(source, idx, t, f)
                    self.summary.faces += len(results)
                    self.summary.frames += 1
                    last_boxes_results = results
                if self.ann is not None:
                    if writer is None:
                        writer = self._open_writer(ann_name, frame, fps or 25.0)
                    if writer is not None:
                        writer.write(draw_faces(frame, last_boxes_results))
            self.w.flush()
            buffered, n_faces = [], 0

        idx = -1
        try:
            while True:
                if first is not None:
                    ok, frame, first = True, first, None
                else:
                    ok, frame = cap.read()
                if not ok or frame is None:
                    break
                idx += 1
                bar.update(1)
                t = idx / fps if fps and not live else (time.perf_counter() - t0 if live else
                                                         cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0)
                if idx % self.every == 0:
                    boxes, crops = self.r.faces_in(bgr_to_gray(frame), self.detect)
                    buffered.append((idx, t, frame if self.ann is not None else None, boxes, crops))
                    n_faces += len(boxes)
                    frames_done += 1
                elif self.ann is not None:
                    buffered.append((idx, t, frame, None, None))
                if n_faces >= self.r.batch_size or len(buffered) >= 32:
                    flush()
                if max_frames is not None and idx + 1 >= max_frames:
                    break
        except KeyboardInterrupt:
            if not live:
                raise
            log("stopped")
        finally:
            if buffered:
                flush()
            bar.close()
            cap.release()
            if writer is not None:
                writer.release()
        if idx < 0:
            self.summary.bad.append((source, "no frames could be read"))
            return
        self.summary.files += 1
        self.summary.videos += 1

    def _open_writer(self, ann_name: str, frame: np.ndarray, fps: float):
        cv2 = _cv2_quiet()
        target = self.ann.name(ann_name)
        h, w = frame.shape[:2]
        vw = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (w, h))
        if not vw.isOpened():
            log(f"warning: cannot write annotated video {target} (no mp4v encoder?)")
            return None
        return vw


def predict_inputs(model, inputs: list[str], out: str | os.PathLike | None = "predictions", fmt: str = "csv",
                   annotate: bool = False, detect: bool = True, every: int = 1, camera: int | None = None,
                   backend: str = "auto", batch_size: int = 64, device: str = "auto", progress: bool = True,
                   max_frames: int | None = None, tta: str = "none", **detector_args) -> RunSummary:
    """The ``ferkit predict`` command as a function (see its --help). ``out=None`` streams to stdout.

    Raises FerkitError when the model or output cannot be used, or nothing could be processed.
    """
    if fmt not in ("csv", "json"):
        raise FerkitError(f"unknown format {fmt!r}; use csv or json")
    if not inputs and camera is None:
        raise FerkitError("nothing to predict on: give image/video files or folders, or --camera IDX")
    if annotate and out is None:
        raise FerkitError("--annotate needs an output folder (--out DIR), not stdout")
    out_dir = None if out is None else Path(out)
    if out_dir is not None:
        make_dir(out_dir)
    items, bad = collect_inputs(inputs)
    if not items and camera is None:
        raise FerkitError("no usable input: " + "; ".join(f"{p}: {why}" for p, why in bad))
    rec = Recognizer.load(model, backend=backend, device=device, batch_size=batch_size, tta=tta, **detector_args)
    camera_opened = Predictor.open_camera(camera) if camera is not None else None  # fail before any work
    writer = PredictionWriter(out_dir, fmt, rec.classes)
    pred = Predictor(rec, writer, (out_dir / "annotated") if annotate else None, detect=detect, every=every,
                     progress=progress)
    pred.summary.bad += bad
    t0 = time.perf_counter()
    try:
        images = [p for p, kind in items if kind == "image"]
        if images:
            pred.run_images(images)
        for p, kind in items:
            if kind == "video":
                pred.run_video(p)
        if camera is not None:
            pred.run_camera(camera, max_frames=max_frames, opened=camera_opened)
    finally:
        writer.close()
    s = pred.summary
    s.seconds = time.perf_counter() - t0
    s.output = None if writer.path is None else str(writer.path)
    if out_dir is not None:
        (out_dir / "summary.json").write_text(json.dumps({**asdict(s), "model": str(rec.backend.path),
                                                          "backend": rec.backend.name,
                                                          "classes": list(rec.classes)}, indent=2) + "\n")
    if s.files == 0:
        first = "; ".join(f"{p}: {why}" for p, why in s.bad[:3])
        raise FerkitError(f"nothing could be processed ({len(s.bad)} bad input(s): {first}"
                          f"{' ...' if len(s.bad) > 3 else ''})")
    return s
