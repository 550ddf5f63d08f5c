"""Faces across the frames of a video or webcam: tracks, smoothed probabilities, a per-video summary.

Per-frame results are a stream of :class:`FrameFaces` (frame, time, faces), each face a
:class:`TrackedFace` (track id, box, probabilities). The IoU tracker gives a face the id it had
in the previous frames when their boxes overlap; probabilities are smoothed per track with an
exponential moving average whose time constant is ``smooth`` seconds (frame-rate independent:
a frame ``dt`` seconds after the last one weighs ``1 - exp(-dt / smooth)``). The CSV/JSON
writers, :class:`VideoSummary` (``summary.json``, ``timeline.png``) and the webcam page consume
the same stream.

Example::

    from ferkit import Recognizer
    from ferkit.predict.track import VideoSummary

    r = Recognizer.load()
    summary = VideoSummary(r.classes, source="clip.mp4", smooth_s=0.5)
    for frame in r.track("clip.mp4", smooth=0.5):        # or a camera index, or an iterable of frames
        for face in frame.faces:
            print(frame.frame, frame.time_s, face.track, face.box, face.label)
        summary.add(frame)
    summary.write("clip-summary")                        # summary.json + timeline.png
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

import numpy as np

from ..data import bgr_to_gray
from ..errors import FerkitError
from ..files import make_dir, new_figure, save_figure, write_json
from .detect import cv2_silenced
from .prediction import FacePrediction

if TYPE_CHECKING:   # for annotations only: the Recognizer's track() calls this module
    from .recognizer import Recognizer

DEFAULT_SMOOTH_S = 0.5     # video and webcam; photos are never smoothed
DEFAULT_FPS = 25.0         # time of frames given as arrays, and of videos that do not say their rate


class FrameSizeError(FerkitError):
    """A video whose frames change size part-way (its earlier frames are fine)."""


@dataclass
class TrackedFace(FacePrediction):
    """A face of one frame: :class:`FacePrediction` (label, confidence and probabilities smoothed
    over its track) plus the ``track`` id and the frame's own, unsmoothed, probabilities."""

    track: int = 0
    raw: dict[str, float] = field(default_factory=dict)


@dataclass
class FrameFaces:
    """One frame of the stream. ``faces`` is empty for a frame without a face and None for a frame
    that was not classified (``every`` > 1); ``image`` is the frame itself when it was asked for."""

    frame: int
    time_s: float
    faces: list[TrackedFace] | None
    image: np.ndarray | None = None


# ----------------------------------------------------------------------------- tracking
def iou(a, b) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    iw = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    ih = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = iw * ih
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


class IouTracker:
    """Greedy IoU matching of each frame's boxes to the live tracks.

    Args:
        min_iou: a box continues a track only if they overlap at least this much.
        max_gap_s: a track not seen for longer than this ends; a face seen again later gets a new id.
    """

    def __init__(self, min_iou: float = 0.3, max_gap_s: float = 1.0):
        self.min_iou, self.max_gap_s = min_iou, max_gap_s
        self.live: dict[int, tuple[tuple, float]] = {}     # id -> (last box, last time)
        self.next_id = 1

    def update(self, boxes, time_s: float) -> list[int]:
        """Track ids for ``boxes`` (in their order) seen at ``time_s``."""
        self.live = {k: v for k, v in self.live.items() if time_s - v[1] <= self.max_gap_s}
        pairs = sorted(((iou(b, box), i, k) for i, b in enumerate(boxes) for k, (box, _) in self.live.items()),
                       reverse=True)
        ids: list[int | None] = [None] * len(boxes)
        taken = set()
        for overlap, i, k in pairs:
            if overlap < self.min_iou:
                break
            if ids[i] is None and k not in taken:
                ids[i] = k
                taken.add(k)
        for i, b in enumerate(boxes):
            if ids[i] is None:
                ids[i] = self.next_id
                self.next_id += 1
            self.live[ids[i]] = (tuple(b), time_s)
        return ids


class Smoother:
    """Per-track exponential smoothing of probability vectors over ``seconds`` (0 = none)."""

    def __init__(self, seconds: float = DEFAULT_SMOOTH_S):
        if not (seconds >= 0 and math.isfinite(seconds)):
            raise FerkitError(f"smoothing must be a number of seconds >= 0, got {seconds}")
        self.seconds = float(seconds)
        self.state: dict[int, tuple[np.ndarray, float]] = {}

    def update(self, track: int, probs: np.ndarray, time_s: float) -> np.ndarray:
        probs = np.asarray(probs, np.float64)
        prev = self.state.get(track)
        if self.seconds > 0 and prev is not None:
            dt = max(0.0, time_s - prev[1])
            alpha = 1.0 - math.exp(-dt / self.seconds)
            probs = prev[0] + alpha * (probs - prev[0])
        self.state[track] = (probs, time_s)
        return probs

    def keep(self, tracks) -> None:
        """Forget the tracks not in ``tracks`` (the live ones)."""
        self.state = {k: v for k, v in self.state.items() if k in tracks}


# ----------------------------------------------------------------------------- frames -> stream
class FrameTracker:
    """Detects, batches, classifies, tracks and smooths frames pushed in order.

    :meth:`push` returns the frames whose results are ready (in order; frames wait until a batch
    of faces fills, or ``batch_frames`` frames are pending; ``batch_frames=1`` answers at once, as
    a live camera wants); :meth:`flush` returns the rest. A frame whose size differs from the
    first one's is a FerkitError: the boxes of a track would not mean the same thing.
    """

    def __init__(self, recognizer: Recognizer, smooth: float = DEFAULT_SMOOTH_S, detect: bool = True,
                 source: str = "video", batch_frames: int = 16, keep_images: bool = False,
                 tracker: IouTracker | None = None):
        self.r, self.detect, self.source = recognizer, detect, source
        self.tracker = tracker or IouTracker()
        self.smoother = Smoother(smooth)
        self.batch_frames, self.keep_images = max(1, batch_frames), keep_images
        self.pending: list[tuple[FrameFaces, list | None, np.ndarray | None]] = []
        self.n_faces = 0
        self.shape: tuple[int, int] | None = None

    def push(self, index: int, time_s: float, image: np.ndarray, classify: bool = True) -> list[FrameFaces]:
        if self.shape is None:
            self.shape = image.shape[:2]
        elif image.shape[:2] != self.shape:
            h, w = image.shape[:2]
            raise FrameSizeError(f"{self.source}: frame {index} is {w}x{h} but the frames before it are "
                              f"{self.shape[1]}x{self.shape[0]}; a video whose frames change size is not supported "
                              "(re-encode it at one size, e.g. ffmpeg -vf scale=W:H)")
        frame = FrameFaces(index, float(time_s), None, image if self.keep_images else None)
        if classify:
            prepared = self.r.prepare(bgr_to_gray(image), self.detect, retry=False)
            if prepared.whole:   # --fallback whole is for photos: a frame without a face stays one
                prepared.boxes, prepared.faces = [], prepared.faces[:0]
            self.pending.append((frame, prepared, prepared.faces))
            self.n_faces += len(prepared.boxes)
        else:
            self.pending.append((frame, None, None))
        if self.n_faces >= self.r.batch_size or len(self.pending) >= self.batch_frames:
            return self.flush()
        return []

    def flush(self) -> list[FrameFaces]:
        chunks = [faces for _, prepared, faces in self.pending if prepared is not None and prepared.boxes]
        probs = self.r.probabilities(np.concatenate(chunks)) if chunks else None
        out, k = [], 0
        for frame, prepared, _ in self.pending:
            if prepared is not None:
                boxes = prepared.boxes
                frame.faces = self._faces(frame.time_s, boxes, probs[k:k + len(boxes)] if boxes else [], prepared)
                k += len(boxes)
            out.append(frame)
        self.pending, self.n_faces = [], 0
        return out

    def _faces(self, time_s: float, boxes, probs, prepared=None) -> list[TrackedFace]:
        ids = self.tracker.update(boxes, time_s)
        self.smoother.keep(self.tracker.live)
        classes = self.r.classes
        faces = []
        for i, (box, track, p) in enumerate(zip(boxes, ids, probs)):
            s = self.smoother.update(track, p, time_s)
            k = int(np.argmax(s))
            faces.append(TrackedFace(tuple(int(v) for v in box), classes[k], float(s[k]),
                                     {c: float(v) for c, v in zip(classes, s)},
                                     **(prepared.extras(i) if prepared is not None else {}), track=track,
                                     raw={c: float(v) for c, v in zip(classes, p)}))
        return faces


def open_video(video):
    """(capture, frames per second or 0) for a video file path or a camera index; FerkitError when
    it cannot be opened."""
    with cv2_silenced() as cv2:
        if isinstance(video, int):
            cap = cv2.VideoCapture(video)
            if not cap.isOpened():
                raise FerkitError(f"camera {video} is not available (no device, or it is in use)")
        else:
            if not Path(video).is_file():
                raise FerkitError(f"video {video} does not exist")
            cap = cv2.VideoCapture(str(video))
            if not cap.isOpened():
                raise FerkitError(f"cannot open video {video} (unsupported codec or not a video)")
        fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
    return cap, (fps if 0 < fps < 1000 else 0.0)


def read_frames(cap, fps: float, live: bool, first: np.ndarray | None = None
                ) -> Iterator[tuple[int, float, np.ndarray]]:
    """(index, time in seconds, BGR frame) from an opened capture (``first``: a frame already read
    from it): times from the frame rate, from the container's timestamps when it has none, or from
    the clock for a live camera."""
    t0 = time.perf_counter()
    index = -1
    while True:
        if first is not None:
            ok, image, first = True, first, None
        else:
            ok, image = cap.read()
        if not ok or image is None:
            return
        index += 1
        if live:
            t = time.perf_counter() - t0
        elif fps:
            t = index / fps
        else:
            t = cap.get(0) / 1000.0   # CAP_PROP_POS_MSEC
        yield index, t, image


def track_video(recognizer: Recognizer, video, smooth: float = DEFAULT_SMOOTH_S, every: int = 1,
                max_frames: int | None = None, detect: bool = True, keep_images: bool = False
                ) -> Iterator[FrameFaces]:
    """The tracked stream of a video file, camera index or iterable of frames (BGR/gray arrays,
    timed at :data:`DEFAULT_FPS`). Yields every classified frame (every ``every``-th), including
    frames without a face (``faces == []``). Raises FerkitError for a video that cannot be opened
    or whose frames change size."""
    every = max(1, int(every))
    live = isinstance(video, int)
    if isinstance(video, (str, os.PathLike, int)):
        cap, fps = open_video(video)
        frames: Iterable = read_frames(cap, fps, live)
        source = f"camera:{video}" if live else str(video)
    else:
        cap, source = None, "frames"
        frames = ((i, i / DEFAULT_FPS, np.asarray(img)) for i, img in enumerate(video))
    ft = FrameTracker(recognizer, smooth, detect, source, batch_frames=1 if live else 16, keep_images=keep_images)
    try:
        for index, t, image in frames:
            for f in ft.push(index, t, image, classify=index % every == 0):
                if f.faces is not None:
                    yield f
            if max_frames is not None and index + 1 >= max_frames:
                break
        for f in ft.flush():
            if f.faces is not None:
                yield f
    finally:
        if cap is not None:
            cap.release()


# ----------------------------------------------------------------------------- per-video summary
@dataclass
class _TrackLog:
    first_s: float
    last_s: float
    times: list[float] = field(default_factory=list)
    probs: list[np.ndarray] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    poses: list[list[float]] = field(default_factory=list)   # (yaw, pitch, roll) per frame, NaN where unknown


def _mean_pose(poses: list) -> dict | None:
    """The mean yaw, pitch and roll (degrees) of a track over the frames that have them; None when none has."""
    if not poses:
        return None
    arr = np.asarray(poses, np.float64)
    out = {}
    for k, name in enumerate(("yaw", "pitch", "roll")):
        col = arr[:, k][np.isfinite(arr[:, k])]
        out[name] = round(float(col.mean()), 1) if len(col) else None
    return out


class VideoSummary:
    """Collects a tracked stream into a per-video summary: for each track its first and last time,
    the share of its frames spent in each expression (by the smoothed label), the dominant
    expression, the mean probabilities and the mean head pose (``mean_pose``: yaw, pitch, roll in degrees
    where the frames have them; roll alone without ``landmarks``); :meth:`plot` draws the probabilities over time, one
    panel per track."""

    def __init__(self, classes, source: str = "", smooth_s: float = 0.0, max_panels: int = 8):
        self.classes, self.source, self.smooth_s, self.max_panels = tuple(classes), source, smooth_s, max_panels
        self.tracks: dict[int, _TrackLog] = {}
        self.frames = self.frames_with_faces = 0
        self.first_s: float | None = None
        self.last_s = 0.0

    def add(self, frame: FrameFaces) -> None:
        if frame.faces is None:
            return
        self.frames += 1
        self.frames_with_faces += bool(frame.faces)
        self.first_s = frame.time_s if self.first_s is None else self.first_s
        self.last_s = frame.time_s
        for f in frame.faces:
            log = self.tracks.setdefault(f.track, _TrackLog(frame.time_s, frame.time_s))
            log.last_s = frame.time_s
            p = np.array([f.probabilities[c] for c in self.classes], np.float32)
            log.times.append(frame.time_s)
            log.probs.append(p)
            if f.yaw is not None or f.roll is not None:
                log.poses.append([np.nan if v is None else v for v in (f.yaw, f.pitch, f.roll)])
            log.labels.append(int(p.argmax()))

    def to_dict(self) -> dict:
        tracks = []
        for k, log in sorted(self.tracks.items()):
            counts = np.bincount(log.labels, minlength=len(self.classes))
            share = counts / max(1, counts.sum())
            tracks.append({"track": k, "first_s": round(log.first_s, 3), "last_s": round(log.last_s, 3),
                           "frames": len(log.labels),
                           "share": {c: round(float(v), 4) for c, v in zip(self.classes, share)},
                           "dominant": self.classes[int(counts.argmax())],
                           "mean_probabilities": {c: round(float(v), 4)
                                                  for c, v in zip(self.classes, np.mean(log.probs, 0))},
                           "mean_pose": _mean_pose(log.poses)})
        return {"source": self.source, "classes": list(self.classes), "smooth_s": self.smooth_s,
                "frames": self.frames, "frames_with_faces": self.frames_with_faces,
                "first_s": round(self.first_s or 0.0, 3), "last_s": round(self.last_s, 3),
                "share_note": "share of the frames in which the track was seen, by its (smoothed) label",
                "tracks": tracks}

    def plot(self, path) -> Path:
        """``timeline.png``: probabilities over time, one panel per track (the ``max_panels`` tracks
        seen in the most frames)."""
        shown = sorted(self.tracks.items(), key=lambda kv: -len(kv[1].times))[:self.max_panels]
        shown.sort()
        n = max(1, len(shown))
        fig = new_figure(figsize=(10, 1.2 + 2.0 * n))
        axes = fig.subplots(n, 1, sharex=True, squeeze=False)[:, 0]
        colors = {c: f"C{i}" for i, c in enumerate(self.classes)}
        for ax, (k, log) in zip(axes, shown):
            probs = np.stack(log.probs)
            t = np.asarray(log.times)
            gaps = np.flatnonzero(np.diff(t) > 1.0) + 1     # break the lines where the face was away
            for i, c in enumerate(self.classes):
                for j, (seg_t, seg_p) in enumerate(zip(np.split(t, gaps), np.split(probs[:, i], gaps))):
                    ax.plot(seg_t, seg_p, color=colors[c], lw=1.2, label=c if j == 0 else None)
            ax.set_ylim(0, 1)
            ax.set_ylabel("probability")
            ax.set_title(f"track {k}: {log.first_s:.1f}-{log.last_s:.1f} s, {len(log.times)} frames", fontsize=9)
        if not shown:
            axes[0].text(0.5, 0.5, "no face was found", ha="center", va="center", transform=axes[0].transAxes)
            axes[0].set_yticks([])
        else:
            axes[0].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
        axes[-1].set_xlabel("time (s)")
        more = f" ({len(shown)} of {len(self.tracks)} tracks)" if len(self.tracks) > len(shown) else ""
        smooth = f", smoothed over {self.smooth_s:g} s" if self.smooth_s else ""
        fig.suptitle(f"{os.path.basename(self.source) or 'video'}{smooth}{more}", fontsize=10)
        fig.tight_layout()
        return save_figure(fig, path)

    def write(self, folder) -> Path:
        """``summary.json`` and ``timeline.png`` in ``folder`` (created); returns the folder."""
        folder = make_dir(folder)
        write_json(folder / "summary.json", self.to_dict())
        self.plot(folder / "timeline.png")
        return folder
