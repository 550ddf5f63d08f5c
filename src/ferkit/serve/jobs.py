"""Video jobs: ``POST /v1/jobs`` stores an uploaded video in ferkit's own temporary folder and runs
``ferkit predict``'s video pipeline on it (:class:`ferkit.predict.runner.Predictor`: tracking,
smoothing, the CSV writer, the per-track summary and timeline) in one worker thread, one job at a
time. A finished job's files are kept for ``job_ttl_s`` seconds, then deleted with its folder;
nothing outside the folder this module made is ever deleted.
"""
from __future__ import annotations

import logging
import math
import queue
import secrets
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import FerkitError

log = logging.getLogger("ferkit.serve")

#: The files a done job offers, by the name used in its URL.
JOB_FILES = {"predictions.csv": "text/csv", "summary.json": "application/json", "timeline.png": "image/png"}
MARKER = ".ferkit-serve-jobs"


class VideoTooLong(FerkitError):
    """A video longer than ``video_seconds``."""


@dataclass
class JobRecord:
    id: str
    folder: Path
    video: Path
    filename: str | None
    created: float = field(default_factory=time.time)
    state: str = "queued"
    finished: float | None = None
    frames: int | None = None
    faces: int | None = None
    tracks: int | None = None
    error: str | None = None
    files: dict[str, Path] = field(default_factory=dict)
    smooth: float | None = None     # seconds of per-track smoothing (None: the queue's default)
    every: int = 1                  # classify every n-th frame


class JobQueue:
    """Jobs of one server. ``recognizer`` is the server's; the worker uses its own detector."""

    def __init__(self, recognizer, limits, smooth: float | None = None):
        from ..predict.track import DEFAULT_SMOOTH_S

        self.recognizer, self.limits = recognizer, limits
        self.smooth = DEFAULT_SMOOTH_S if smooth is None else smooth
        self.root: Path | None = None          # made on the first upload
        self.jobs: dict[str, JobRecord] = {}
        self._lock = threading.Lock()
        self._todo: queue.Queue[JobRecord | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._closed = False

    # -- folders
    def _root(self) -> Path:
        if self.root is None:
            self.root = Path(tempfile.mkdtemp(prefix="ferkit-serve-jobs-"))
            (self.root / MARKER).write_text("made by ferkit serve; deleted when it stops\n")
        return self.root

    def new(self, filename: str | None, suffix: str) -> JobRecord:
        """A job folder for an upload (the caller writes ``video`` and then calls :meth:`submit`).
        Raises FerkitError when ``max_jobs`` are queued or running."""
        self.expire()
        with self._lock:
            busy = sum(j.state in ("queued", "running", "uploading") for j in self.jobs.values())
            if self._closed or busy >= self.limits.max_jobs:
                raise FerkitError(f"{busy} video jobs are queued or running (--max-jobs); retry later")
            job_id = secrets.token_hex(8)
            folder = self._root() / job_id
            folder.mkdir()
            job = JobRecord(job_id, folder, folder / f"upload{suffix}", filename, state="uploading")
            self.jobs[job_id] = job
        return job

    def discard(self, job: JobRecord) -> None:
        """Forget a job whose upload failed, with its folder."""
        with self._lock:
            self.jobs.pop(job.id, None)
        self._remove(job)

    def submit(self, job: JobRecord) -> None:
        """Check the stored video (readable, not longer than ``video_seconds``) and queue it.
        FerkitError (the job is discarded) when it cannot be used."""
        try:
            frames, fps = _probe(job.video)
        except FerkitError:
            self.discard(job)
            raise
        if fps and frames / fps > self.limits.video_seconds:
            self.discard(job)
            raise VideoTooLong(f"video too long: {frames / fps:.0f} s, above the limit of "
                              f"{self.limits.video_seconds:g} s (--video-seconds)")
        job.state = "queued"
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="ferkit-jobs", daemon=True)
            self._thread.start()
        self._todo.put(job)

    def get(self, job_id: str) -> JobRecord | None:
        self.expire()
        with self._lock:
            return self.jobs.get(job_id)

    def expires(self, job: JobRecord) -> float | None:
        return None if job.finished is None else job.finished + self.limits.job_ttl_s

    def expire(self, now: float | None = None) -> int:
        """Delete the jobs finished more than ``job_ttl_s`` ago; returns how many."""
        now = time.time() if now is None else now
        with self._lock:
            ttl = self.limits.job_ttl_s
            old = [j for j in self.jobs.values() if j.finished is not None and now >= j.finished + ttl]
            for j in old:
                del self.jobs[j.id]
        for j in old:
            self._remove(j)
        return len(old)

    def _remove(self, job: JobRecord) -> None:
        # only a folder this queue made: a direct child of its own marked temporary folder
        if self.root is not None and job.folder.parent == self.root and (self.root / MARKER).is_file():
            shutil.rmtree(job.folder, ignore_errors=True)

    def close(self) -> None:
        """Stop the worker (after the job it runs) and delete the temporary folder with every job."""
        self._closed = True
        self._todo.put(None)
        if self._thread is not None:
            self._thread.join(5)
        if self.root is not None and (self.root / MARKER).is_file():
            shutil.rmtree(self.root, ignore_errors=True)

    def describe(self, job: JobRecord) -> dict:
        """The job as the API answers it (:class:`~ferkit.serve.schemas.Job`)."""
        done = job.state == "done"
        return {"id": job.id, "state": job.state if job.state != "uploading" else "queued", "filename": job.filename,
                "created": round(job.created, 3), "expires": None if job.finished is None else
                round(job.finished + self.limits.job_ttl_s, 3), "frames": job.frames, "faces": job.faces,
                "tracks": job.tracks, "error": job.error,
                "files": {name.replace(".", "_"): (f"/v1/jobs/{job.id}/{name}" if done else None)
                          for name in JOB_FILES}}

    @property
    def pending(self) -> int:
        return sum(j.state in ("queued", "running") for j in list(self.jobs.values()))

    # -- the worker
    def _work(self) -> None:
        while True:
            job = self._todo.get()
            if job is None:
                return
            if job.id not in self.jobs:
                continue
            job.state = "running"
            try:
                self._run(job)
                job.state = "done"
            except Exception as exc:  # noqa: BLE001 - any failure is the job's, reported in it; the worker lives on
                job.state, job.error = "failed", str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                log.info("video job %s failed: %s", job.id, job.error)
            finally:
                job.finished = time.time()
                try:
                    job.video.unlink()               # the upload is not offered back; its results are
                except OSError:
                    pass

    def _run(self, job: JobRecord) -> None:
        from ..predict.runner import PredictionWriter, Predictor

        recognizer = self.recognizer.with_detector()          # its own detector: cascades are not shared
        _, fps = _probe(job.video)
        max_frames = math.ceil(self.limits.video_seconds * (fps or 25.0)) + 1
        writer = PredictionWriter(job.folder, "csv", recognizer.classes)
        pred = Predictor(recognizer, writer, None, progress=False, every=job.every,
                         smooth=self.smooth if job.smooth is None else job.smooth,
                         summaries_dir=job.folder / "videos")
        try:
            pred.run_video(job.video, max_frames=max_frames)
        finally:
            writer.finish(complete=not pred.summary.bad)
        if pred.summary.bad:
            raise FerkitError(pred.summary.bad[0][1])
        summary_dir = Path(pred.summary.video_summaries[0])
        job.files = {"predictions.csv": job.folder / "predictions.csv",
                     "summary.json": summary_dir / "summary.json", "timeline.png": summary_dir / "timeline.png"}
        job.frames, job.faces = pred.summary.frames, pred.summary.faces
        import json

        job.tracks = len(json.loads(job.files["summary.json"].read_text())["tracks"])


def _probe(path: Path) -> tuple[int, float]:
    """(frame count, frames per second) of a stored video; FerkitError when it is not a video."""
    from ..predict.detect import cv2_silenced

    with cv2_silenced() as cv2:
        cap = cv2.VideoCapture(str(path))
        try:
            ok = cap.isOpened() and cap.read()[0]
            if not ok:
                raise FerkitError("not a video ferkit can read (MP4, AVI, WebM, MOV ...; unsupported codec?)")
            frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
            fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
        finally:
            cap.release()
    return max(0, frames), (fps if 0 < fps < 1000 else 0.0)
