"""``ferkit predict``: files, folders, videos and a webcam through a Recognizer, written as they go.

While it runs, rows go to ``predictions.partial.csv`` (or ``.jsonl``), flushed after every batch;
only a run that finishes renames them to ``predictions.csv`` / ``predictions.json``. An
interrupted run keeps the partial file and writes a ``summary.json`` that says so, so nothing
partial ever looks complete. A bad file is skipped and listed, never stops the batch.
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

from ..console import log, progress_bar
from ..data import IMAGE_EXTENSIONS, bgr_to_gray, find_files
from ..errors import FerkitError, Interrupted
from ..files import atomic_path, make_dir, write_json
from .detect import cv2_silenced, draw_faces
from .recognizer import FacePrediction, Recognizer, read_color, read_gray

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
FORMATS = ("csv", "json")


# ----------------------------------------------------------------------------- inputs
def collect_inputs(inputs: Iterable[str]) -> tuple[list[tuple[Path, str]], list[tuple[str, str]]]:
    """Expand files and folders (recursive) into (path, "image"|"video") items, plus (input, reason) problems."""
    items: list[tuple[Path, str]] = []
    bad: list[tuple[str, str]] = []
    kind = lambda f: "video" if f.suffix.lower() in VIDEO_EXTENSIONS else "image"  # noqa: E731
    for text in inputs:
        p = Path(text)
        if p.is_dir():
            found = find_files(p, IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)
            if not found:
                bad.append((str(p), "folder has no image or video files"))
            items += [(f, kind(f)) for f in found]
        elif p.is_file():
            items.append((p, kind(p)))
        else:
            bad.append((str(p), "does not exist"))
    return items, bad


# ----------------------------------------------------------------------------- output
class PredictionWriter:
    """Streams one row per face to ``<out>/predictions.partial.{csv,jsonl}`` (flushed per batch);
    :meth:`finish` turns it into ``predictions.csv`` / ``predictions.json`` atomically. ``out=None``
    writes to stdout."""

    def __init__(self, out: Path | None, fmt: str, classes):
        self.fmt, self.classes, self.out = fmt, tuple(classes), out
        self.count = 0
        self.path = None if out is None else out / f"predictions.{fmt}"
        self.partial = None if out is None else out / f"predictions.partial.{'csv' if fmt == 'csv' else 'jsonl'}"
        if out is None:
            self.fh = sys.stdout
        else:
            try:
                self.fh = open(self.partial, "w", newline="" if fmt == "csv" else None, encoding="utf-8")
            except OSError as exc:
                raise FerkitError(f"cannot write {self.partial}: {exc.strerror or exc}") from None
        if fmt == "csv":
            self.csv = csv.writer(self.fh)
            self._guard(lambda: self.csv.writerow(["source", "frame", "time_s", "x", "y", "w", "h", "label",
                                                   "confidence", *[f"p_{c}" for c in self.classes]]))
        elif out is None:
            self.fh.write("[")

    def _guard(self, fn) -> None:
        try:
            fn()
        except OSError as exc:
            raise FerkitError(f"cannot write {self.partial or 'stdout'}: {exc.strerror or exc}") from None

    def write(self, source: str, frame: int | None, time_s: float | None, face: FacePrediction) -> None:
        if self.fmt == "csv":
            row = [source, "" if frame is None else frame, "" if time_s is None else f"{time_s:.3f}",
                   *face.box, face.label, f"{face.confidence:.6f}",
                   *[f"{face.probabilities[c]:.6f}" for c in self.classes]]
            self._guard(lambda: self.csv.writerow(row))
        else:
            obj = json.dumps({"source": source, "frame": frame,
                              "time_s": None if time_s is None else round(time_s, 3), "box": list(face.box),
                              "label": face.label, "confidence": round(face.confidence, 6),
                              "probabilities": {c: round(face.probabilities[c], 6) for c in self.classes}})
            text = (("\n" if self.count == 0 else ",\n") + obj) if self.out is None else obj + "\n"
            self._guard(lambda: self.fh.write(text))
        self.count += 1

    def flush(self) -> None:
        self._guard(self.fh.flush)

    def finish(self, complete: bool) -> Path | None:
        """Close the stream. Complete runs get the final file (atomically); an interrupted one keeps
        the partial file. Returns the file that holds the predictions."""
        if self.out is None:
            if self.fmt == "json":
                self.fh.write("\n]\n" if self.count else "]\n")
            self.fh.flush()
            return None
        self.fh.close()
        if not complete:
            return self.partial
        if self.fmt == "csv":
            os.replace(self.partial, self.path)
        else:
            with atomic_path(self.path) as tmp:
                with open(self.partial, encoding="utf-8") as src, open(tmp, "w", encoding="utf-8") as dst:
                    dst.write("[")
                    for i, line in enumerate(src):
                        dst.write(("\n" if i == 0 else ",\n") + line.rstrip("\n"))
                    dst.write("\n]\n" if self.count else "]\n")
            self.partial.unlink()
        return self.path


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
    complete: bool = True           # False: interrupted; the predictions file is partial

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
    """Unique names for annotated copies in one folder; images are written atomically."""

    def __init__(self, folder: Path):
        self.folder = make_dir(folder)
        self.used: set[str] = set()

    def name(self, wanted: str) -> Path:
        stem, suffix = os.path.splitext(wanted)
        cand, i = wanted, 1
        while cand in self.used:
            cand, i = f"{stem}-{i}{suffix}", i + 1
        self.used.add(cand)
        return self.folder / cand

    def write_image(self, source: Path, img: np.ndarray) -> None:
        # keep the name where OpenCV can write the format; otherwise write PNG next to the original name
        name = source.name if source.suffix.lower() in IMAGE_EXTENSIONS else source.name + ".png"
        target = self.name(name)
        with cv2_silenced() as cv2:
            ok, data = cv2.imencode(target.suffix or ".png", img)
        if not ok:
            log(f"warning: could not encode the annotated copy of {source}")
            return
        try:
            with atomic_path(target) as tmp:
                tmp.write_bytes(data.tobytes())
        except OSError as exc:
            raise FerkitError(f"cannot write {target}: {exc.strerror or exc}") from None


@dataclass
class _Frame:
    """A video/camera frame waiting for its batch: classified frames carry their face crops."""

    index: int
    time_s: float
    image: np.ndarray | None        # kept only when annotating
    boxes: list | None = None       # None: not classified (``--every``), drawn with the last results
    crops: np.ndarray | None = None


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
        pending: list[tuple[Path, list, np.ndarray | None]] = []
        faces: list[np.ndarray] = []
        n_faces = 0
        for path in progress_bar(paths, enabled=self.progress and len(paths) > 1, desc="images", unit="img",
                                 leave=False):
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
                self.ann.write_image(path, draw_faces(color, results))
        self.w.flush()

    # -- video files and cameras
    def run_video(self, path: Path) -> None:
        with cv2_silenced() as cv2:
            cap = cv2.VideoCapture(str(path))
            if not cap.isOpened():
                self.summary.bad.append((str(path), "cannot open video (unsupported codec or not a video)"))
                return
            n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self._stream(_VideoStream(self, cap, str(path), path.stem + ".mp4", live=False), n if n > 0 else None)

    @staticmethod
    def open_camera(index: int):
        """(capture, first frame) of webcam ``index``; FerkitError when there is none."""
        with cv2_silenced() as cv2:
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
        self._stream(_VideoStream(self, cap, f"camera:{index}", f"camera{index}.mp4", live=True, first=first),
                     max_frames, max_frames=max_frames)

    def _stream(self, stream: "_VideoStream", total: int | None, max_frames: int | None = None) -> None:
        bar = progress_bar(total=total, enabled=self.progress, desc=os.path.basename(stream.source)[:30],
                           unit="frame", leave=False)
        try:
            for frame in stream.frames():
                bar.update(1)
                stream.add(frame)
                if max_frames is not None and frame.index + 1 >= max_frames:
                    break
        except KeyboardInterrupt:
            if not stream.live:
                raise
            log("stopped")
        finally:
            stream.close()
            bar.close()
        if stream.last_index < 0:
            self.summary.bad.append((stream.source, "no frames could be read"))
            return
        self.summary.files += 1
        self.summary.videos += 1


class _VideoStream:
    """One video or camera: reads frames, batches their faces, writes rows and the annotated video."""

    def __init__(self, p: Predictor, cap, source: str, ann_name: str, live: bool, first=None):
        self.p, self.cap, self.source, self.ann_name, self.live, self.first = p, cap, source, ann_name, live, first
        fps = cap.get(5) or 0.0   # cv2.CAP_PROP_FPS
        self.fps = fps if 0 < fps < 1000 else 0.0
        self.t0 = time.perf_counter()
        self.buffer: list[_Frame] = []
        self.n_faces, self.last_index = 0, -1
        self.last_results: list[FacePrediction] = []
        self.writer = None

    def frames(self):
        while True:
            if self.first is not None:
                ok, image, self.first = True, self.first, None
            else:
                ok, image = self.cap.read()
            if not ok or image is None:
                return
            self.last_index += 1
            i = self.last_index
            if self.live or not self.fps:
                t = time.perf_counter() - self.t0 if self.live else self.cap.get(0) / 1000.0  # CAP_PROP_POS_MSEC
            else:
                t = i / self.fps
            yield _Frame(i, t, image)

    def add(self, frame: _Frame) -> None:
        p = self.p
        keep = frame.image if p.ann is not None else None
        if frame.index % p.every == 0:
            boxes, crops = p.r.faces_in(bgr_to_gray(frame.image), p.detect)
            self.buffer.append(_Frame(frame.index, frame.time_s, keep, boxes, crops))
            self.n_faces += len(boxes)
        elif p.ann is not None:
            self.buffer.append(_Frame(frame.index, frame.time_s, keep))
        if self.n_faces >= p.r.batch_size or len(self.buffer) >= 32:
            self.flush()

    def flush(self) -> None:
        p = self.p
        chunks = [f.crops for f in self.buffer if f.boxes is not None]
        probs = p.r.probabilities(np.concatenate(chunks)) if chunks else None
        k = 0
        for f in self.buffer:
            if f.boxes is not None:
                results = p.r._results(f.boxes, probs[k:k + len(f.boxes)])
                k += len(f.boxes)
                for face in results:
                    p.w.write(self.source, f.index, f.time_s, face)
                p.summary.faces += len(results)
                p.summary.frames += 1
                self.last_results = results
            if p.ann is not None:
                if self.writer is None:
                    self.writer = self._open_writer(f.image)
                if self.writer is not None:
                    self.writer.write(draw_faces(f.image, self.last_results))
        p.w.flush()
        self.buffer, self.n_faces = [], 0

    def _open_writer(self, frame: np.ndarray):
        target = self.p.ann.name(self.ann_name)
        h, w = frame.shape[:2]
        with cv2_silenced() as cv2:
            vw = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*"mp4v"), float(self.fps or 25.0), (w, h))
        if not vw.isOpened():
            log(f"warning: cannot write annotated video {target} (no mp4v encoder?)")
            return None
        return vw

    def close(self) -> None:
        if self.buffer:
            self.flush()
        self.cap.release()
        if self.writer is not None:
            self.writer.release()


def predict_inputs(model, inputs: list[str], out: str | os.PathLike | None = "predictions", fmt: str = "csv",
                   annotate: bool = False, detect: bool = True, every: int = 1, camera: int | None = None,
                   backend: str = "auto", batch_size: int = 64, device: str = "auto", progress: bool = True,
                   max_frames: int | None = None, tta: str = "none", **detector_args) -> RunSummary:
    """The ``ferkit predict`` command as a function (see its --help). ``out=None`` streams to stdout.

    Args:
        model: None (the bundled model), a bundled model's name, a run folder, ``.safetensors`` or ``.onnx``.
    Raises FerkitError when the model or output cannot be used, or nothing could be processed;
    :class:`ferkit.errors.Interrupted` on Ctrl-C, after writing what was done and a summary saying so.
    """
    if fmt not in FORMATS:
        raise FerkitError(f"unknown format {fmt!r}; accepted: {', '.join(FORMATS)}")
    if not inputs and camera is None:
        raise FerkitError("nothing to predict on: give image/video files or folders, or --camera IDX")
    if annotate and out is None:
        raise FerkitError("--annotate needs an output folder (--out DIR), not stdout")
    out_dir = None if out is None else make_dir(out)
    items, bad = collect_inputs(inputs)
    if not items and camera is None:
        raise FerkitError("no usable input: " + "; ".join(f"{p}: {why}" for p, why in bad))
    rec = Recognizer.load(model, backend=backend, device=device, batch_size=batch_size, tta=tta, detect=detect,
                          **detector_args)
    camera_opened = Predictor.open_camera(camera) if camera is not None else None  # fail before any work
    writer = PredictionWriter(out_dir, fmt, rec.classes)
    pred = Predictor(rec, writer, (out_dir / "annotated") if annotate else None, detect=detect, every=every,
                     progress=progress)
    pred.summary.bad += bad
    t0 = time.perf_counter()
    s = pred.summary
    try:
        images = [p for p, kind in items if kind == "image"]
        if images:
            pred.run_images(images)
        for p, kind in items:
            if kind == "video":
                pred.run_video(p)
        if camera is not None:
            pred.run_camera(camera, max_frames=max_frames, opened=camera_opened)
    except KeyboardInterrupt:
        s.complete = False
    finally:
        output = writer.finish(complete=s.complete)
        s.seconds = time.perf_counter() - t0
        s.output = None if output is None else str(output)
        if out_dir is not None:
            write_json(out_dir / "summary.json", {**asdict(s), "model": str(rec.backend.path),
                                                  "backend": rec.backend.name, "tta": tta,
                                                  "classes": list(rec.classes), "inputs": len(items)})
    if not s.complete:
        where = f"; partial predictions in {s.output} and summary.json says complete: false" if s.output else ""
        raise Interrupted(f"stopped after {s.files} of {len(items)} input(s){where}; re-running starts over")
    if s.files == 0:
        first = "; ".join(f"{p}: {why}" for p, why in s.bad[:3])
        raise FerkitError(f"nothing could be processed ({len(s.bad)} bad input(s): {first}"
                          f"{' ...' if len(s.bad) > 3 else ''})")
    return s
