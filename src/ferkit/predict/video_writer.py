"""Annotated video files that a browser plays: H.264 in MP4 when the ``video`` extra is installed.

OpenCV's wheels write MP4 as MPEG-4 Part 2 (``mp4v``), which no browser plays, and carry no
H.264 encoder (licensing). ``imageio-ffmpeg`` ships an ffmpeg binary with libx264 inside its
wheel (``pip install 'ferkit[video]'``); when it is importable, annotated videos are H.264
(yuv420p, the moov atom first so playback starts before the download ends). Otherwise, or if
that encoder cannot start, OpenCV's ``mp4v`` writer is used as before.

Example::

    writer = open_video_writer("out.mp4", 25.0, (640, 480))   # None when nothing can write it
    writer.write(bgr_frame)
    writer.release()
"""
from __future__ import annotations

import os

import numpy as np

from ..console import log
from .detect import cv2_silenced


def h264_encoder():
    """imageio-ffmpeg's module when it and its ffmpeg binary are present, else None."""
    try:
        import imageio_ffmpeg

        imageio_ffmpeg.get_ffmpeg_exe()      # raises when the binary is missing for this platform
        return imageio_ffmpeg
    except (ImportError, RuntimeError, OSError):
        return None


class H264Writer:
    """Frames (BGR uint8, all one size) piped to ffmpeg's libx264; odd sizes are padded to even."""

    codec = "h264"

    def __init__(self, path: str | os.PathLike, fps: float, size: tuple[int, int], encoder=None):
        encoder = encoder or h264_encoder()
        self._gen = encoder.write_frames(
            str(path), size, pix_fmt_in="bgr24", pix_fmt_out="yuv420p", fps=fps, codec="libx264",
            macro_block_size=2, ffmpeg_log_level="error", output_params=["-movflags", "+faststart"])
        self._gen.send(None)                 # starts ffmpeg; raises if it cannot

    def isOpened(self) -> bool:              # noqa: N802 - cv2.VideoWriter's interface
        return self._gen is not None

    def write(self, frame: np.ndarray) -> None:
        self._gen.send(np.ascontiguousarray(frame))

    def release(self) -> None:
        if self._gen is not None:
            gen, self._gen = self._gen, None
            gen.close()                      # waits for ffmpeg to finish the file


def open_video_writer(path: str | os.PathLike, fps: float, size: tuple[int, int]):
    """A writer with ``write(bgr)`` and ``release()`` for an annotated video: H.264 when the
    ``video`` extra is installed, else OpenCV's ``mp4v``; None (after a warning) when neither opens."""
    encoder = h264_encoder()
    if encoder is not None:
        try:
            return H264Writer(path, fps, size, encoder)
        except (OSError, RuntimeError, StopIteration) as exc:
            log(f"note: the H.264 encoder did not start ({str(exc).splitlines()[0][:100] if str(exc) else exc!r}); "
                "writing MPEG-4 Part 2 instead")
    with cv2_silenced() as cv2:
        vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), size)
    if not vw.isOpened():
        log(f"warning: cannot write annotated video {path} (no H.264 or mp4v encoder)")
        return None
    return vw
