"""``ferkit predict``: files, folders, videos and a webcam through a Recognizer, written as they go.

While it runs, rows go to ``predictions.partial.csv`` (or ``.jsonl``), flushed after every batch;
only a run that finishes renames them to ``predictions.csv`` / ``predictions.json``. An
interrupted run keeps the partial file and writes a ``summary.json`` that says so, so nothing
partial ever looks complete. A bad file is skipped and listed, never stops the batch.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from ..console import log, progress_bar
from ..data import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, find_files
from ..errors import FerkitError, Interrupted
from ..files import atomic_path, csv_writer, make_dir, output_lock, refuse_output_over_input, write_json
from .blazeface import KEYPOINT_NAMES
from .detect import DEFAULT_DETECTOR, cv2_silenced, draw_faces
from .recognizer import FacePrediction, Recognizer, read_color, read_gray
from .track import DEFAULT_SMOOTH_S, FrameSizeError, FrameTracker, VideoSummary, read_frames
from .video_writer import open_video_writer

FORMATS = ("csv", "json")
#: columns of predictions.csv after the probabilities (empty where not computed)
POSE_COLUMNS = ("detector_score", "yaw", "pitch", "roll")
#: the face record's detector and pose fields, in the JSON predictions and the server's answers
FACE_FIELDS = ("detector_score", "keypoints", "yaw", "pitch", "roll", "landmarks")


# ----------------------------------------------------------------------------- inputs
def collect_inputs(inputs: Iterable[str]) -> tuple[list[tuple[Path, str]], list[tuple[str, str]]]:
    """Expand files and folders (recursive) into (path, "image"|"video") items, plus (input, reason) problems."""
    items: list[tuple[Path, str]] = []
    bad: list[tuple[str, str]] = []
    kind = lambda f: "video" if f.suffix.lower() in VIDEO_EXTENSIONS else "image"  # noqa: E731
    for text in inputs:
        p = Path(text)
        if p.is_dir():
            found = find_files(p, IMAGE_EXTENSIONS + VIDEO_EXTENSIONS, skipped=bad)   # FIFOs, devices: listed
            if not found:
                bad.append((str(p), "folder has no image or video files"))
            items += [(f, kind(f)) for f in found]
        elif p.is_file():
            items.append((p, kind(p)))
        elif p.exists():
            bad.append((str(p), "not a regular file (a FIFO, socket or device); not read"))
        else:
            bad.append((str(p), "does not exist"))
    return items, bad


# ----------------------------------------------------------------------------- output
class PredictionWriter:
    """Streams one row per face to ``<out>/predictions.partial.{csv,jsonl}`` (flushed per batch);
    :meth:`finish` turns it into ``predictions.csv`` / ``predictions.json`` atomically. ``out=None``
    writes to stdout."""

    def __init__(self, out: Path | None, fmt: str, classes, keypoints: bool = False):
        self.fmt, self.classes, self.out = fmt, tuple(classes), out
        self.keypoints = keypoints    # CSV: the six keypoints' columns too (``--landmarks``)
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
            self.csv = csv_writer(self.fh)
            kp = [f"kp_{n}_{a}" for n in KEYPOINT_NAMES for a in "xy"] if keypoints else []
            self._guard(lambda: self.csv.writerow(["source", "frame", "time_s", "track", "x", "y", "w", "h", "label",
                                                   "confidence", *[f"p_{c}" for c in self.classes], *POSE_COLUMNS,
                                                   *kp]))
        elif out is None:
            self.fh.write("[")

    def _guard(self, fn) -> None:
        try:
            fn()
        except OSError as exc:
            raise FerkitError(f"cannot write {self.partial or 'stdout'}: {exc.strerror or exc}") from None

    def write(self, source: str, frame: int | None, time_s: float | None, face: FacePrediction | None) -> None:
        """One row: a face (its ``track`` id when it has one), or ``None`` for a video frame without a
        face (empty box, label and probabilities)."""
        track = getattr(face, "track", None)
        if self.fmt == "csv":
            row = [source, "" if frame is None else frame, "" if time_s is None else f"{time_s:.3f}",
                   "" if track is None else track]
            n_kp = 2 * len(KEYPOINT_NAMES) if self.keypoints else 0
            if face is None:
                row += [""] * (6 + len(self.classes) + len(POSE_COLUMNS) + n_kp)
            else:
                blank = lambda v: "" if v is None else v  # noqa: E731
                row += [*face.box, face.label, f"{face.confidence:.6f}",
                        *[f"{face.probabilities[c]:.6f}" for c in self.classes],
                        *[blank(getattr(face, c, None)) for c in POSE_COLUMNS]]
                if n_kp:
                    kps = getattr(face, "keypoints", None)
                    row += [v for pt in kps for v in pt] if kps is not None else [""] * n_kp
            self._guard(lambda: self.csv.writerow(row))
        else:
            obj = json.dumps({"source": source, "frame": frame,
                              "time_s": None if time_s is None else round(time_s, 3), "track": track,
                              "box": None if face is None else list(face.box),
                              "label": None if face is None else face.label,
                              "confidence": None if face is None else round(face.confidence, 6),
                              "probabilities": None if face is None else
                              {c: round(face.probabilities[c], 6) for c in self.classes},
                              **{k: None if face is None else getattr(face, k, None) for k in FACE_FIELDS}})
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
        self._guard(self.fh.close)    # a full disk can surface here, when the last rows are flushed
        if not complete:
            return self.partial
        if self.fmt == "csv":
            self._guard(lambda: os.replace(self.partial, self.path))
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
    whole_image: list[str] = field(default_factory=list)    # of those, classified whole (--fallback whole)
    video_summaries: list[str] = field(default_factory=list)  # per-video folders (summary.json, timeline.png)
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
        if self.whole_image:
            lines.append(f"{len(self.whole_image)} image(s) without a face classified whole (--fallback whole)")
        for src, why in self.bad:
            lines.append(f"skipped {src}: {why}")
        if self.output:
            lines.append(f"predictions: {self.output}")
        if self.video_summaries:
            lines.append(f"per-video summaries (summary.json, timeline.png): {', '.join(self.video_summaries)}")
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


class Predictor:
    """Runs a :class:`Recognizer` over files, folders, videos and a camera, writing rows as it goes."""

    def __init__(self, recognizer: Recognizer, writer: PredictionWriter, annotate_dir: Path | None = None,
                 detect: bool = True, every: int = 1, progress: bool = True, max_pending_images: int = 16,
                 smooth: float = DEFAULT_SMOOTH_S, summaries_dir: Path | None = None):
        self.r, self.w = recognizer, writer
        self.detect, self.every, self.progress = detect, max(1, every), progress
        self.ann = _Annotator(annotate_dir) if annotate_dir is not None else None
        self.max_pending_images = max_pending_images
        self.smooth = smooth                    # seconds of per-track smoothing for video and camera
        self.summaries = summaries_dir          # <out>/videos: one folder per video; None = none written
        self._summary_names: set[str] = set()
        self.summary = RunSummary()

    # -- images: faces of several images are classified in one batch
    def run_images(self, paths: list[Path]) -> None:
        pending: list[tuple[Path, list, np.ndarray | None, bool]] = []
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
            prepared = self.r.prepare(gray, self.detect)
            pending.append((path, prepared, color, prepared.whole))
            faces.append(prepared.faces)
            n_faces += len(prepared.boxes)
            if n_faces >= self.r.batch_size or len(pending) >= self.max_pending_images:
                self._flush_images(pending, faces)
                pending, faces, n_faces = [], [], 0
        if pending:
            self._flush_images(pending, faces)

    def _flush_images(self, pending, faces) -> None:
        probs = self.r.probabilities(np.concatenate(faces))
        k = 0
        for path, prepared, color, whole in pending:
            boxes = prepared.boxes
            results = self.r._results(boxes, probs[k:k + len(boxes)], prepared)
            k += len(boxes)
            for f in results:
                self.w.write(str(path), None, None, f)
            self.summary.files += 1
            self.summary.images += 1
            self.summary.faces += len(results)
            if not results or whole:
                self.summary.no_face.append(str(path))
            if whole:
                self.summary.whole_image.append(str(path))
            if self.ann is not None:
                self.ann.write_image(path, draw_faces(color, results))
        self.w.flush()

    # -- video files and cameras
    def run_video(self, path: Path, max_frames: int | None = None) -> None:
        """One video file; ``max_frames``: stop after that many frames (the server's video jobs)."""
        with cv2_silenced() as cv2:
            cap = cv2.VideoCapture(str(path))
            if not cap.isOpened():
                self.summary.bad.append((str(path), "cannot open video (unsupported codec or not a video)"))
                return
            n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self._stream(_VideoStream(self, cap, str(path), path.stem, live=False), n if n > 0 else None,
                     max_frames=max_frames)

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
        self._stream(_VideoStream(self, cap, f"camera:{index}", f"camera{index}", live=True, first=first),
                     max_frames, max_frames=max_frames)

    def _stream(self, stream: "_VideoStream", total: int | None, max_frames: int | None = None) -> None:
        bar = progress_bar(total=total, enabled=self.progress, desc=os.path.basename(stream.source)[:30],
                           unit="frame", leave=False)
        try:
            for index, time_s, image in stream.frames():
                bar.update(1)
                stream.add(index, time_s, image)
                if max_frames is not None and index + 1 >= max_frames:
                    break
        except KeyboardInterrupt:
            if not stream.live:
                raise
            log("stopped")
        except FrameSizeError as exc:   # the frames before it are fine and written; the video is listed
            stream.failed = f"{exc} (stopped there; the rows of the frames before it are kept)"
        finally:
            stream.close()
            bar.close()
        if stream.failed:
            self.summary.bad.append((stream.source, stream.failed.removeprefix(f"{stream.source}: ")))
            return
        if stream.last_index < 0:
            self.summary.bad.append((stream.source, "no frames could be read"))
            return
        self.summary.files += 1
        self.summary.videos += 1
        if self.summaries is not None:
            name, i = stream.name, 1
            while name in self._summary_names:
                name, i = f"{stream.name}-{i}", i + 1
            self._summary_names.add(name)
            self.summary.video_summaries.append(str(stream.summary.write(self.summaries / name)))


class _VideoStream:
    """One video or camera: frames -> :class:`FrameTracker` -> rows (frames without a face too), the
    annotated video and the per-video summary."""

    def __init__(self, p: Predictor, cap, source: str, name: str, live: bool, first=None):
        self.p, self.cap, self.source, self.name, self.live, self.first = p, cap, source, name, live, first
        fps = cap.get(5) or 0.0   # cv2.CAP_PROP_FPS
        self.fps = fps if 0 < fps < 1000 else 0.0
        self.tracker = FrameTracker(p.r, p.smooth, p.detect, source, batch_frames=8 if live else 16,
                                    keep_images=p.ann is not None)
        self.summary = VideoSummary(p.r.classes, source, p.smooth)
        self.last_index = -1
        self.last_faces: list = []
        self.writer = None
        self.failed: str | None = None

    def frames(self):
        for index, t, image in read_frames(self.cap, self.fps, self.live, first=self.first):
            self.first = None
            self.last_index = index
            yield index, t, image

    def add(self, index: int, time_s: float, image: np.ndarray) -> None:
        self._emit(self.tracker.push(index, time_s, image, classify=index % self.p.every == 0))

    def _emit(self, frames) -> None:
        p = self.p
        for f in frames:
            if f.faces is not None:
                for face in f.faces or [None]:     # a frame without a face is one row with an empty label
                    p.w.write(self.source, f.frame, f.time_s, face)
                p.summary.faces += len(f.faces)
                p.summary.frames += 1
                self.summary.add(f)
                self.last_faces = f.faces
            if p.ann is not None:
                if self.writer is None:
                    self.writer = self._open_writer(f.image)
                if self.writer is not None:
                    self.writer.write(draw_faces(f.image, self.last_faces))
        if frames:
            p.w.flush()

    def _open_writer(self, frame: np.ndarray):
        h, w = frame.shape[:2]   # H.264 with the video extra, else mp4v
        return open_video_writer(self.p.ann.name(self.name + ".mp4"), float(self.fps or 25.0), (w, h))

    def close(self) -> None:
        try:
            self._emit(self.tracker.flush())
        finally:
            self.cap.release()
            if self.writer is not None:
                self.writer.release()


def check_min_face(min_face) -> None:
    """Refuse a smallest-face fraction outside (0, 1) up front, before any model is loaded."""
    if min_face is not None and not 0 < min_face < 1:
        raise FerkitError(f"--min-face must be between 0 and 1, got {min_face}")


def _checked_inputs(inputs: list[str], out, fmt: str, annotate: bool, camera: int | None):
    """predict_inputs' arguments checked before anything is loaded: (items, bad) of the inputs."""
    if fmt not in FORMATS:
        raise FerkitError(f"unknown format {fmt!r}; accepted: {', '.join(FORMATS)}")
    if not inputs and camera is None:
        raise FerkitError("nothing to predict on: give image/video files or folders, or --camera IDX")
    if any(not str(p).strip() for p in inputs):   # Path("") is the current folder: never read it unasked
        raise FerkitError("an input is an empty path (''); give image/video files or folders (. for the current "
                          "folder)")
    if annotate and out is None:
        raise FerkitError("--annotate needs an output folder (--out DIR), not stdout")
    if annotate:   # annotated copies inside an input folder would be read as photos by the next run
        refuse_output_over_input(out, [p for p in inputs if Path(p).is_dir()], input_option="input folder")
    items, bad = collect_inputs(inputs)
    if not items and camera is None:
        raise FerkitError("no usable input: " + "; ".join(f"{p}: {why}" for p, why in bad))
    return items, bad


def predict_inputs(model, inputs: list[str], out: str | os.PathLike | None = "predictions", fmt: str = "csv",
                   annotate: bool = False, detect: bool = True, every: int = 1, camera: int | None = None,
                   backend: str = "auto", batch_size: int = 64, device: str = "auto", progress: bool = True,
                   max_frames: int | None = None, tta: str = "none", smooth: float | None = None,
                   align: bool = True, fallback: str = "none", largest: bool = False, landmarks: bool = False,
                   **detector_args) -> RunSummary:
    """The ``ferkit predict`` command as a function (see its --help). ``out=None`` streams to stdout.

    Args:
        model: None (the bundled model), a bundled model's name, a run folder, ``.safetensors`` or ``.onnx``.
        smooth: seconds of per-track smoothing of video and camera probabilities (None: 0.5; 0: raw).
        align, fallback, largest, landmarks, detector_args: see :meth:`Recognizer.load` (``detector="dlib"``,
            ...).
    Raises FerkitError when the model or output cannot be used, or nothing could be processed;
    :class:`ferkit.errors.Interrupted` on Ctrl-C, after writing what was done and a summary saying so.
    """
    check_min_face(detector_args.get("min_face"))
    items, bad = _checked_inputs(inputs, out, fmt, annotate, camera)
    smooth = DEFAULT_SMOOTH_S if smooth is None else smooth
    if not (smooth >= 0 and smooth < float("inf")):
        raise FerkitError(f"--smooth must be a number of seconds >= 0, got {smooth}")
    rec = Recognizer.load(model, backend=backend, device=device, batch_size=batch_size, tta=tta, detect=detect,
                          align=align, fallback=fallback, largest=largest, landmarks=landmarks, **detector_args)
    camera_opened = Predictor.open_camera(camera) if camera is not None else None  # fail before any work
    out_dir = None if out is None else make_dir(out)   # only once the model and inputs are good
    # one writer per output folder: a second predict on the same --out stops in one line
    # (removed when done: the folder then holds the predictions and summary only)
    lock = None if out_dir is None else output_lock(out_dir, "output folder", tidy=True).acquire()
    writer = PredictionWriter(out_dir, fmt, rec.classes, keypoints=landmarks)
    pred = Predictor(rec, writer, (out_dir / "annotated") if annotate else None, detect=detect, every=every,
                     progress=progress, smooth=smooth, summaries_dir=None if out_dir is None else out_dir / "videos")
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
    except BaseException:             # a full disk, a model with NaN outputs: the rows so far stay partial
        s.complete = False
        raise
    finally:
        output = writer.finish(complete=s.complete)
        s.seconds = time.perf_counter() - t0
        s.output = None if output is None else str(output)
        if out_dir is not None:
            write_json(out_dir / "summary.json", {**asdict(s), "model": str(rec.backend.path),
                                                  "backend": rec.backend.name, "tta": tta,
                                                  "classes": list(rec.classes), "inputs": len(items),
                                                  "detector": detector_args.get("detector") or DEFAULT_DETECTOR,
                                                  "align": align, "fallback": fallback, "largest": largest,
                                                  "landmarks": landmarks,
                                                  "smooth_s": smooth})
        if lock is not None:
            lock.release()
    if not s.complete:
        where = f"; partial predictions in {s.output} and summary.json says complete: false" if s.output else ""
        raise Interrupted(f"stopped after {s.files} of {len(items)} input(s){where}; re-running starts over")
    if s.files == 0:
        first = "; ".join(f"{p}: {why}" for p, why in s.bad[:3])
        raise FerkitError(f"nothing could be processed ({len(s.bad)} bad input(s): {first}"
                          f"{' ...' if len(s.bad) > 3 else ''})")
    return s
