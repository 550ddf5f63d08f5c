"""The server's limits, declared once: each has a default, a ``ferkit serve`` flag, a help line
(the CLI and docs/serve.md read :data:`LIMITS`), and is enforced here or where named.

- bytes (``max_mb``): the body is counted while read, a larger Content-Length refused before (413).
- pixels (``max_megapixels``): read from the image header before decoding; a JPEG above it is
  decoded at 1/2, 1/4 or 1/8 size when that fits, anything else is 413 (:func:`decode_limited`).
- seconds: ``timeout_s`` for a request's body and work (408/504; detection not yet started is
  skipped), ``header_timeout_s`` for the request line and headers (the connection is closed),
  ``keep_alive_s`` for an idle kept-alive connection (uvicorn's ``timeout_keep_alive``).
- connections (``max_connections``): uvicorn's ``limit_concurrency`` (503) and a hard cap.
- queue (``max_queue``): requests in progress (503 + Retry-After; a WebSocket is told ``busy``).
- per client (``rate``, ``burst``): a token bucket per client address (429 + Retry-After).
- batch (``max_images``): images in one ``POST /v1/predict``.
- video jobs (``video_mb``, ``video_seconds``, ``max_jobs``, ``job_ttl_s``): ``POST /v1/jobs``.
"""
from __future__ import annotations

import ctypes
import io
import math
import threading
import time
from dataclasses import dataclass

import numpy as np

from ..errors import FerkitError


@dataclass(frozen=True)
class Limit:
    """One limit: its config field, CLI flag, type and help (the default is the field's)."""

    field: str
    flag: str
    kind: type
    help: str


#: Every limit, in the order ``ferkit serve --help`` and docs/serve.md list them.
LIMITS: tuple[Limit, ...] = (
    Limit("max_mb", "--max-mb", float, "largest request body in MB; larger get 413"),
    Limit("max_megapixels", "--max-megapixels", float,
          "largest image in megapixels, read from its header before decoding: a larger JPEG is decoded at "
          "1/2, 1/4 or 1/8 size when that fits, anything else gets 413"),
    Limit("max_queue", "--max-queue", int, "requests in progress at once; more get 503 with Retry-After "
                                           "(a WebSocket frame gets a 'busy' message)"),
    Limit("timeout_s", "--timeout", float, "seconds per request before 504; detection not yet started is skipped"),
    Limit("header_timeout_s", "--header-timeout", float,
          "seconds a connection may take to send a request's line and headers (also before the first "
          "request); then it is closed"),
    Limit("keep_alive_s", "--keep-alive", float, "seconds an idle kept-alive connection stays open"),
    Limit("max_header_kb", "--max-header-kb", int, "largest request line + headers in KB; larger get 431"),
    Limit("max_connections", "--max-connections", int,
          "open connections at most: at the cap requests get 503, a connection above it is closed at once"),
    Limit("rate", "--rate", float, "requests per second per client address, on average (0: no limit); "
                                   "more get 429 with Retry-After"),
    Limit("burst", "--burst", int, "requests a client may send at once above --rate"),
    Limit("max_images", "--max-images", int, "images in one POST /v1/predict"),
    Limit("video_mb", "--video-mb", float, "largest video upload for POST /v1/jobs in MB"),
    Limit("video_seconds", "--video-seconds", float, "longest video for a job, in seconds of video"),
    Limit("max_jobs", "--max-jobs", int, "video jobs queued or running at once; more get 503"),
    Limit("job_ttl_s", "--job-ttl", float, "seconds a finished job's files are kept before they are deleted"),
)


@dataclass
class Limits:
    """The defaults of :data:`LIMITS` (``ServeConfig`` inherits them)."""

    max_mb: float = 10.0
    max_megapixels: float = 24.0
    max_queue: int = 64
    timeout_s: float = 30.0
    header_timeout_s: float = 10.0
    keep_alive_s: float = 5.0
    max_header_kb: int = 16
    max_connections: int = 1000
    rate: float = 100.0
    burst: int = 200
    max_images: int = 16
    video_mb: float = 200.0
    video_seconds: float = 600.0
    max_jobs: int = 4
    job_ttl_s: float = 3600.0

    def check_limits(self) -> None:
        """FerkitError naming the flag of a limit out of range: ``rate`` may be 0 (no limit), every
        other number must be above 0 (whole numbers at least 1)."""
        for lim in LIMITS:
            v = getattr(self, lim.field)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise FerkitError(f"{lim.flag} must be a finite number, got {v!r}")
            if lim.kind is int and (v != int(v) or v < 1):
                raise FerkitError(f"{lim.flag} must be a whole number of at least 1, got {v}")
            if lim.field == "rate" and v < 0:
                raise FerkitError(f"{lim.flag} must be 0 (no limit) or above, got {v}")
            if lim.kind is float and lim.field != "rate" and not v > 0:
                raise FerkitError(f"{lim.flag} must be above 0, got {v}")

    @property
    def max_bytes(self) -> int:
        return int(self.max_mb * 1024 * 1024)

    @property
    def max_pixels(self) -> int:
        return int(self.max_megapixels * 1e6)

    @property
    def video_bytes(self) -> int:
        return int(self.video_mb * 1024 * 1024)


# ----------------------------------------------------------------------------- pixels
class TooLarge(ValueError):
    """An image above the pixel limit that cannot be decoded at a reduced size."""


def image_size(data: bytes) -> tuple[str | None, int, int]:
    """(format, width, height) from the image's header only (nothing is decoded); ValueError when
    Pillow cannot identify it."""
    from PIL import Image

    from ..data import open_image

    try:
        with open_image(io.BytesIO(data)) as im:
            return im.format, int(im.size[0]), int(im.size[1])
    except Image.DecompressionBombError as exc:
        import re

        n = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(n.group(1)) / 1e6:.0f} megapixels" if n else "far above the limit"
        raise TooLarge(f"image too large: {size} (--max-megapixels); refused before decoding") from None


def decode_limited(data: bytes, max_pixels: int) -> tuple[np.ndarray, float]:
    """Bytes -> (gray image, scale): ``scale`` times the image's coordinates are the original's.

    An image within ``max_pixels`` goes through :func:`ferkit.data.decode_image` (the one decoder).
    A JPEG above it is decoded at 1/2, 1/4 or 1/8 of its size by libjpeg's DCT scaling (Pillow's
    ``draft``: never decoded at full size) when that brings it under the limit; anything else
    raises :class:`TooLarge` before decoding. ValueError (as ``decode_image``) when it is not a
    usable image."""
    from ..data import decode_image

    try:
        fmt, w, h = image_size(data)
    except TooLarge:
        raise
    except Exception:  # noqa: BLE001 - not identifiable: decode_image gives its one-line reason
        return decode_image(data), 1.0
    if w * h <= max_pixels:
        return decode_image(data), 1.0
    over = f"{w}x{h} = {w * h / 1e6:.0f} megapixels, above the server's limit of {max_pixels / 1e6:g}"
    if fmt != "JPEG":
        raise TooLarge(f"image too large: {over} (--max-megapixels; a JPEG would be decoded at a reduced size)")
    k = next((k for k in (2, 4, 8) if math.ceil(w / k) * math.ceil(h / k) <= max_pixels), None)
    if k is None:
        raise TooLarge(f"image too large: {over} even at 1/8 size (--max-megapixels)")
    return _decode_jpeg_reduced(data, w, h, k)


def _decode_jpeg_reduced(data: bytes, w: int, h: int, k: int) -> tuple[np.ndarray, float]:
    from PIL import ImageOps

    from ..data import open_image

    try:
        with open_image(io.BytesIO(data)) as im:
            im.draft("L", (math.ceil(w / k), math.ceil(h / k)))
            scale = w / im.size[0]
            im.load()
            gray = ImageOps.exif_transpose(im).convert("L")
            return np.asarray(gray, dtype=np.uint8), float(scale)
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ValueError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None


# ----------------------------------------------------------------------------- memory
_libc = None
_trim_lock = threading.Lock()


def release_memory() -> bool:
    """Hand freed heap memory back to the system (glibc's ``malloc_trim``): after a large image the
    process would otherwise keep its peak. False where there is no glibc."""
    global _libc
    with _trim_lock:
        if _libc is None:
            try:
                _libc = ctypes.CDLL("libc.so.6")
                _libc.malloc_trim.argtypes = [ctypes.c_size_t]
            except (OSError, AttributeError):
                _libc = False
        if not _libc:
            return False
        _libc.malloc_trim(0)
        return True


# ----------------------------------------------------------------------------- per client
class RateLimiter:
    """A token bucket per client address: ``rate`` tokens a second up to ``burst``; a request takes
    one. :meth:`take` gives 0 when allowed, else the seconds until a token is there. At most
    ``max_clients`` buckets are kept (the longest idle are dropped; a full bucket is the same as
    none)."""

    def __init__(self, rate: float, burst: int, max_clients: int = 10000):
        self.rate, self.burst, self.max_clients = float(rate), max(1, int(burst)), max_clients
        self._buckets: dict[str, tuple[float, float]] = {}     # client -> (tokens, time)
        self._lock = threading.Lock()

    def take(self, client: str, now: float | None = None) -> float:
        if self.rate <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, then = self._buckets.pop(client, (float(self.burst), now))   # re-inserted: newest last
            tokens = min(float(self.burst), tokens + (now - then) * self.rate)
            wait = 0.0
            if tokens >= 1.0:
                tokens -= 1.0
            else:
                wait = (1.0 - tokens) / self.rate
            self._buckets[client] = (tokens, now)
            while len(self._buckets) > self.max_clients:
                self._buckets.pop(next(iter(self._buckets)))
            return wait
