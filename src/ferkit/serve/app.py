"""The HTTP API and the page: a FastAPI app over a :class:`ferkit.predict.Recognizer`.

Example::

    from ferkit import Recognizer
    from ferkit.serve import ServeConfig, create_app
    app = create_app(Recognizer.load(), ServeConfig(token="s3cret"))   # any ASGI server runs it

Endpoints: ``POST /v1/predict`` (an image: multipart field ``file`` or the raw body), ``GET
/v1/models``, ``GET /healthz``, ``WS /v1/stream`` (webcam frames), ``GET /`` (the page), ``GET
/docs`` (the API described from ``/openapi.json``, offline). Errors are JSON ``{"error": ...,
"status": ...}`` with the matching status code.

How a request runs: its body is read up to ``max_mb`` (413 beyond), decoded by
:func:`ferkit.data.decode_image` (the one decoder: 415 when it is not an image, 400 when broken,
413 for a decompression bomb) and searched for faces in a small thread pool; the faces then wait
a few milliseconds in the :class:`~ferkit.serve.batcher.MicroBatcher` so that concurrent requests
share one model call. At most ``max_queue`` requests are in flight (503 with ``Retry-After``
beyond), each for at most ``timeout_s`` (504). No endpoint reads a path or a URL from the client.
"""
import asyncio
import hmac
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..choices import TTA_MODES
from ..errors import FerkitError
from ..predict import Recognizer
from ..predict.track import DEFAULT_SMOOTH_S, IouTracker, Smoother
from .batcher import MicroBatcher, QueueFull
from .guard import ClientGone, Guard
from .jobs import JobQueue
from .limits import Limits, RateLimiter, TooLarge, decode_limited, release_memory
from .metrics import Metrics

STATIC_DIR = Path(__file__).resolve().parent / "static"
#: The page's Content-Security-Policy: its own files only (no CDN), images from blobs, the API over
#: fetch and WebSocket on the same host.
PAGE_CSP = ("default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob: mediastream:; "
            "connect-src 'self' ws: wss:; style-src 'self'; script-src 'self'; object-src 'none'; "
            "base-uri 'none'; frame-ancestors 'none'")


@dataclass
class ServeConfig(Limits):
    """What ``ferkit serve`` options set: the limits (:class:`~ferkit.serve.limits.Limits`, each with
    its flag) and the rest. ``tta``/``min_face`` are the defaults of requests that do not say;
    ``workers`` decode images and find faces in parallel (the model runs in one thread)."""

    model_name: str | None = None
    token: str | None = None
    cors: tuple[str, ...] = ()
    max_batch: int = 64
    max_wait_ms: float = 5.0
    workers: int = 0            # 0: one per CPU core, at most 4
    tta: str = "none"
    min_face: float = 0.1
    ws_max_errors: int = 20     # consecutive bad WebSocket messages before the server closes it

    def __post_init__(self):
        if self.tta not in TTA_MODES:
            raise FerkitError(f"unknown tta {self.tta!r}; accepted: {', '.join(TTA_MODES)}")
        if not 0 < self.min_face < 1:
            raise FerkitError(f"min_face must be between 0 and 1, got {self.min_face}")
        self.check_limits()
        if self.max_batch < 1:
            raise FerkitError("max-batch must be at least 1")
        if self.token is not None and not self.token.strip():
            raise FerkitError("the token is empty")
        self.cors = tuple(self.cors or ())
        if "*" in self.cors and self.token:
            raise FerkitError("--cors '*' with a token would let any web site use it: name the origins")

    @property
    def threads(self) -> int:
        return self.workers or max(1, min(4, os.cpu_count() or 1))


class Problem(Exception):
    """An HTTP error answered as JSON ``{"error": message, "status": status}``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}

    def body(self) -> dict:
        return {"error": self.message, "status": self.status}


class Stream:
    """One webcam connection's faces over time: IoU tracks and per-track exponential smoothing over
    ``smooth`` seconds (:mod:`ferkit.predict.track`, the same as for videos), timed by arrival.

    The tracker's clock advances at most ``max_step`` seconds per frame: a face ends its track when
    it is missing for about a second of frames, not because a slow machine (or client) took more
    than a second between two frames that both show it. Smoothing uses the real time."""

    def __init__(self, smooth: float = DEFAULT_SMOOTH_S, max_step: float = 0.25):
        self.tracker = IouTracker()
        self.smoother = Smoother(smooth)
        self.max_step = max_step
        self.last = None            # arrival of the last frame
        self.clock = 0.0            # the tracker's time

    def update(self, boxes, probs) -> list[tuple[int, np.ndarray]]:
        now = time.monotonic()
        if self.last is not None:
            self.clock += min(now - self.last, self.max_step)
        self.last = now
        ids = self.tracker.update(boxes, self.clock)
        out = [(k, self.smoother.update(k, p, now)) for k, p in zip(ids, probs)]
        self.smoother.keep(set(self.tracker.live))
        return out


def model_name_of(recognizer: Recognizer) -> str:
    """A bundled model's name, else the model file's (or run folder's) name."""
    from ..bundled import BUNDLED

    path = Path(str(getattr(recognizer.backend, "path", "model")))
    for m in BUNDLED.values():
        if path in (m.path, m.path.with_suffix(".onnx")):   # its ONNX export runs it when onnxruntime is there
            return m.name
    return path.parent.name if path.name in ("best.safetensors", "last.safetensors") else path.name


def _decode(data: bytes, max_pixels: int) -> tuple[np.ndarray, float]:
    """Bytes -> (gray image, scale) within the pixel limit (:func:`~ferkit.serve.limits.decode_limited`,
    over the one decoder); its refusals become 415/413/400."""
    if not data:
        raise Problem(400, "empty body: send an image (multipart field 'file', or the raw bytes)")
    try:
        return decode_limited(data, max_pixels)
    except TooLarge as exc:
        raise Problem(413, str(exc)) from None
    except ValueError as exc:
        why = str(exc)
        if why.startswith("image too large"):
            raise Problem(413, why) from None
        if why.startswith("cannot identify image file"):
            raise Problem(415, "not an image file ferkit can read (JPEG, PNG, WebP, BMP, TIFF, GIF ...)") from None
        raise Problem(400, f"cannot decode the image: {why}") from None


class _Cancelled(Exception):
    """The request timed out before its image was worked on."""


#: Images above this many pixels hand their memory back to the system once done (malloc_trim).
TRIM_PIXELS = 4_000_000


class Service:
    """The work behind the endpoints, without HTTP: decode, detect (thread pool), classify (batched)."""

    def __init__(self, recognizer: Recognizer, config: ServeConfig):
        self.recognizer = recognizer
        self.config = config
        self.model_name = config.model_name or model_name_of(recognizer)
        self.in_flight = 0
        self.detecting = 0      # images in the thread pool, also those of requests that timed out
        self.served = 0
        self.streams = 0        # open WebSocket streams
        self.started = time.time()
        self.metrics = Metrics()
        self.jobs = JobQueue(recognizer, config)
        self._local = threading.local()
        self._lock = threading.Lock()
        self.pool = ThreadPoolExecutor(max_workers=config.threads, thread_name_prefix="ferkit-detect")
        self.batcher = MicroBatcher(self._classify, config.max_batch, config.max_wait_ms, config.max_queue,
                                    on_batch=self.metrics.batch_size)

    def close(self) -> None:
        self.batcher.close()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.jobs.close()

    # -- model side (the batcher's thread)
    def _classify(self, faces: np.ndarray, tta: str) -> np.ndarray:
        """Probabilities of ``faces``; ``flip``/``crops`` average over ferkit's TTA views
        (:func:`ferkit.runtime.tta_logits`: the views of a batch go through the model together)."""
        return self.recognizer.probabilities(faces, tta=tta)

    # -- image side (pool threads)
    def _view(self, min_face: float) -> Recognizer:
        """This thread's Recognizer for ``min_face``: OpenCV's cascade classifier is not safe to share
        between threads, so each pool thread gets a twin with its own detector (the model, margin
        and everything else are the shared recognizer's)."""
        views = getattr(self._local, "views", None)
        if views is None:
            views = self._local.views = {}
        key = round(float(min_face), 3)
        view = views.get(key)
        if view is None:
            if len(views) >= 8:
                views.clear()
            view = views[key] = self.recognizer.with_detector(min_face=key)
        return view

    def _faces(self, data: bytes, detect: bool, min_face: float, retry: bool, cancelled: threading.Event):
        big = False
        try:
            if cancelled.is_set():          # its request timed out while it waited for a thread
                raise _Cancelled
            t0 = time.perf_counter()
            gray, scale = _decode(data, self.config.max_pixels)
            big = gray.size > TRIM_PIXELS
            t1 = time.perf_counter()
            if cancelled.is_set():
                raise _Cancelled
            prepared = self._view(min_face).prepare(gray, detect, retry)
            return gray.shape, scale, prepared, (t1 - t0) * 1000, (time.perf_counter() - t1) * 1000
        finally:
            gray = None
            if big:
                release_memory()

    def _detected(self, _job) -> None:
        with self._lock:
            self.detecting -= 1

    # -- one request
    def admit(self) -> None:
        if self.in_flight >= self.config.max_queue or self.detecting >= self.config.max_queue:
            raise Problem(503, f"busy: {self.in_flight} requests in progress; retry shortly",
                          {"Retry-After": "1"})
        self.in_flight += 1

    async def predict(self, data: bytes, tta: str | None = None, detect: bool = True,
                      min_face: float | None = None, stream: "Stream | None" = None) -> dict:
        """One image -> the JSON answer. Raises :class:`Problem`. With ``stream`` (a webcam
        connection) the faces get track ids and smoothed probabilities, and a photo's extra
        detection tries (padding, upscaling) are skipped. A request that times out (504) cancels
        its work: detection not yet started is skipped, faces not yet in the model are dropped."""
        tta = tta or self.config.tta
        if tta not in TTA_MODES:
            raise Problem(400, f"unknown tta {tta!r}; accepted: {', '.join(TTA_MODES)}")
        min_face = self.config.min_face if min_face is None else float(min_face)
        if not 0 < min_face < 1:
            raise Problem(400, f"min_face must be between 0 and 1, got {min_face}")
        self.admit()
        cancelled = threading.Event()
        try:
            return await asyncio.wait_for(self._predict(data, tta, detect, min_face, stream, cancelled),
                                          self.config.timeout_s)
        except asyncio.TimeoutError:
            cancelled.set()
            self.metrics.count("timed_out")
            raise Problem(504, f"timed out after {self.config.timeout_s:g} s (--timeout)") from None
        finally:
            self.in_flight -= 1

    async def _predict(self, data: bytes, tta: str, detect: bool, min_face: float, stream: "Stream | None",
                       cancelled: threading.Event) -> dict:
        t0 = time.perf_counter()
        with self._lock:        # counted until the thread is done: a timed-out request's image still holds it
            self.detecting += 1
        job = self.pool.submit(self._faces, data, detect, min_face, stream is None, cancelled)
        job.add_done_callback(self._detected)
        (h, w), scale, prepared, decode_ms, detect_ms = await asyncio.wrap_future(job)
        t1 = time.perf_counter()
        faces = prepared.faces
        try:
            probs = await asyncio.wrap_future(self.batcher.submit(faces, tta)) if len(faces) else faces[:0]
        except QueueFull as exc:
            raise Problem(503, f"busy: {exc}; retry shortly", {"Retry-After": "1"}) from None
        classes = self.recognizer.classes
        tracks = stream.update(prepared.boxes, probs) if stream is not None else None
        out = []
        for i, (b, p) in enumerate(zip(prepared.boxes, probs)):
            face = {"box": [int(round(v * scale)) for v in b]}
            if tracks is not None:
                face["track"], smoothed = tracks[i]
                face["raw"] = {c: round(float(v), 6) for c, v in zip(classes, p)}
                p = smoothed
            k = int(np.argmax(p))
            face.update({"label": classes[k], "confidence": round(float(p[k]), 6),
                         "probabilities": {c: round(float(v), 6) for c, v in zip(classes, p)},
                         "roll": round(float(prepared.rolls[i]), 1)})
            face.update(_detector_fields(prepared.extras(i), face["roll"], scale))
            out.append(face)
        self.served += 1
        return {"model": self.model_name, "width": int(round(w * scale)), "height": int(round(h * scale)),
                "scale": round(float(scale), 4), "tta": tta, "detect": detect,
                "whole_image": bool(prepared.whole), "faces": out,
                "timing_ms": {"decode": round(decode_ms, 2), "detect": round(detect_ms, 2),
                              "classify": round((time.perf_counter() - t1) * 1000, 2),
                              "total": round((time.perf_counter() - t0) * 1000, 2)}}

    async def predict_many(self, images: list[tuple[str | None, bytes]], **options) -> dict:
        """Several images of one request, concurrently: each answered with its result or its own error."""

        async def one(index: int, name: str | None, data: bytes) -> dict:
            try:
                return {"index": index, "filename": name, "status": 200, "error": None,
                        "result": await self.predict(data, **options)}
            except Problem as exc:
                return {"index": index, "filename": name, "status": exc.status, "error": exc.message, "result": None}

        results = await asyncio.gather(*(one(i, n, d) for i, (n, d) in enumerate(images)))
        return {"model": self.model_name, "images": len(results),
                "failed": sum(r["status"] != 200 for r in results), "results": list(results)}

    def models(self) -> list[dict]:
        be = self.recognizer.backend
        rec = getattr(be, "record", None)
        return [{"name": self.model_name, "classes": list(self.recognizer.classes),
                 "image_size": int(self.recognizer.image_size), "arch": getattr(rec, "arch", None),
                 "backend": getattr(be, "name", type(be).__name__), "default": True}]

    def metrics_text(self) -> str:
        return self.metrics.text({
            "ferkit_in_flight": ("requests in progress", self.in_flight),
            "ferkit_detecting": ("images being decoded or searched for faces (also of timed-out requests)",
                                 self.detecting),
            "ferkit_queue_depth": ("requests waiting for the model (the micro-batcher's queue)", self.batcher.pending),
            "ferkit_ws_streams": ("open WebSocket streams", self.streams),
            "ferkit_jobs_pending": ("video jobs queued or running", self.jobs.pending),
            "ferkit_served_total": ("images answered since the start", self.served),
            "ferkit_model_calls_total": ("model calls made by the micro-batcher", self.batcher.calls),
            "ferkit_uptime_seconds": ("seconds since the server started", round(time.time() - self.started, 1)),
        })


#: The face record's optional fields -> the per-face lists of :class:`~ferkit.predict.recognizer.PreparedFaces`
#: that may carry them (the first present wins); points are scaled like the boxes.
def _detector_fields(extras: dict, roll: float, scale: float) -> dict:
    """The face record's detector and pose fields (``PreparedFaces.extras``) in the answer's pixels:
    keypoints and landmarks scaled like the boxes (a large JPEG is decoded at reduced size); the
    roll the crop was levelled by where no pose was computed."""
    out = dict(extras)
    if out["roll"] is None:
        out["roll"] = roll
    for name in ("keypoints", "landmarks"):
        if out[name] is not None and scale != 1:
            out[name] = [[round(v * scale, 1) for v in pt[:2]] + list(pt[2:]) for pt in out[name]]
    return out


# ----------------------------------------------------------------------------- the app
_ERRORS = {400: "broken image, bad option or malformed request",
           401: "missing or wrong token (when the server has one)",
           404: "no such job or file", 408: "the body did not arrive within --timeout",
           413: "body above --max-mb, image above --max-megapixels, or too many images",
           415: "not an image (or not a video), or an unsupported Content-Type",
           429: "above --rate requests per second from this client (Retry-After)",
           503: "busy: --max-queue requests in progress, or --max-jobs jobs (Retry-After)",
           504: "the request took longer than --timeout"}


def _errors(*codes: int) -> dict:
    from .schemas import Error

    return {c: {"model": Error, "description": _ERRORS[c]} for c in codes}


def create_app(recognizer: Recognizer, config: ServeConfig | None = None, **options):
    """The FastAPI app serving ``recognizer`` (load it with ``tta="none"``: the server applies each
    request's ``tta``). ``options`` override fields of ``config``."""
    try:
        from fastapi import FastAPI
    except ImportError:
        raise FerkitError("ferkit serve needs FastAPI and uvicorn: pip install 'ferkit[serve]'") from None

    from dataclasses import replace

    config = replace(config or ServeConfig(), **options)
    service = Service(recognizer, config)

    @asynccontextmanager
    async def lifespan(_app):
        yield
        service.close()

    app = FastAPI(title="ferkit", version=_version(), lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Facial expression recognition on your own machine. Send an image, get each "
                              "face's box, expression and probabilities. No request reads a file path or URL. "
                              "Every error is JSON `{\"error\", \"status\"}`; every answer carries an "
                              "`X-Request-ID` header (yours when you send one).")
    app.state.service = service
    if config.cors:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
                           expose_headers=["X-Request-ID", "Retry-After"], max_age=600)
    app.add_middleware(Guard, metrics=service.metrics, limiter=RateLimiter(config.rate, config.burst))
    _add_error_handlers(app)
    authorise = _authoriser(config.token)
    _add_api(app, service, config, authorise)
    _add_stream(app, service, config, authorise)
    _add_jobs(app, service, config, authorise)
    _add_page(app)
    app.openapi = _clean_openapi(app)
    return app


def _add_error_handlers(app) -> None:
    """Errors are always JSON ``{"error", "status"}``."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(Problem)
    async def _problem(_request, exc: Problem):
        return JSONResponse(exc.body(), exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request, exc):
        return JSONResponse({"error": str(exc.detail), "status": exc.status_code}, exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request, exc):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or "request"
        return JSONResponse({"error": f"{where}: {first.get('msg', 'invalid')}", "status": 400}, 400)


def _authoriser(token: str | None):
    def authorise(headers) -> None:
        if token is None:
            return
        scheme, _, given = (headers.get("authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise Problem(401, "missing or wrong bearer token (Authorization: Bearer TOKEN)",
                          {"WWW-Authenticate": "Bearer"})
    return authorise


def _add_api(app, service: Service, config: ServeConfig, authorise) -> None:
    from fastapi import Query, Request
    from fastapi.responses import PlainTextResponse

    from .schemas import BatchResponse, Health, ModelsResponse, PredictResponse

    min_face_help = f"smallest face side as a fraction of the image's shorter side (default {config.min_face})"
    binary = {"type": "string", "format": "binary"}

    @app.post("/v1/predict", tags=["api"], summary="Find faces in images and classify their expression",
              response_model=PredictResponse | BatchResponse,
              responses={200: {"description": "one image: its faces (`PredictResponse`); several `file` parts: "
                                              "one entry per image (`BatchResponse`)"},
                         **_errors(400, 401, 408, 413, 415, 429, 503, 504)},
              openapi_extra={"requestBody": {"required": True, "content": {
                  "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
                      "file": {"type": "array", "items": binary, "maxItems": config.max_images,
                               "description": "one image, or several (repeat the part)"}}}},
                  "image/*": {"schema": binary}, "application/octet-stream": {"schema": binary}}}})
    async def predict(request: Request,
                      tta: str | None = Query(None, description=f"test-time augmentation: {', '.join(TTA_MODES)}"
                                                                f" (default: the server's, {config.tta})"),
                      detect: bool = Query(True, description="find faces; false = the image is one cropped face"),
                      min_face: float | None = Query(None, gt=0, lt=1, description=min_face_help)):
        """The image is the multipart field `file` or the raw request body (`Content-Type: image/...` or
        `application/octet-stream`). Several images: repeat the multipart field `file` (at most
        `--max-images`); each image then gets its own entry, with its result or its own error."""
        authorise(request.headers)
        images, several = await _request_images(request, config)
        if several:
            return await service.predict_many(images, tta=tta, detect=detect, min_face=min_face)
        return await service.predict(images[0][1], tta=tta, detect=detect, min_face=min_face)

    @app.get("/v1/models", tags=["api"], summary="The model this server runs", response_model=ModelsResponse,
             responses=_errors(401, 429))
    async def models(request: Request):
        """Its name, classes (in the order of `probabilities`), input size, architecture and backend."""
        authorise(request.headers)
        return {"models": service.models()}

    @app.get("/healthz", tags=["api"], summary="Liveness (no token needed)", response_model=Health)
    async def healthz():
        """Answers while the server runs; `in_flight` and `queued` say how busy it is."""
        return {"status": "ok", "in_flight": service.in_flight, "queued": service.batcher.pending}

    @app.get("/metrics", tags=["api"], summary="Counters in Prometheus' text format",
             response_class=PlainTextResponse, responses={
                 200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                       "description": "requests by route and status, latency histograms, queue depth, "
                                      "batch sizes (Prometheus text format 0.0.4)"}, **_errors(401, 429)})
    async def metrics(request: Request):
        """Needs the token when the server has one (a scraper sends `Authorization: Bearer TOKEN`)."""
        authorise(request.headers)
        return PlainTextResponse(service.metrics_text(), media_type="text/plain; version=0.0.4; charset=utf-8")


def _add_stream(app, service: Service, config: ServeConfig, authorise) -> None:
    from fastapi import WebSocket
    from starlette.websockets import WebSocketDisconnect

    @app.websocket("/v1/stream")
    async def stream(ws: WebSocket):
        """Webcam frames: docs/serve.md describes the protocol message by message."""
        await ws.accept()
        service.streams += 1
        try:
            await _serve_stream(ws, service, config, authorise)
        except (WebSocketDisconnect, RuntimeError, OSError):   # the client went away mid-stream: nothing to answer
            return
        finally:
            service.streams -= 1


async def _serve_stream(ws, service: Service, config: ServeConfig, authorise) -> None:
    """The WebSocket loop. A busy server (503) or a slow frame (504) is a state the client is told
    about (``{"type": "busy"}``), never a reason to close: only bad messages count towards
    ``ws_max_errors``."""
    opts = {"tta": ws.query_params.get("tta"), "detect": True, "min_face": None}
    live = Stream()
    authed = config.token is None
    if not authed:
        try:
            authorise(ws.headers)
            authed = True
        except Problem:
            pass
    frame = errors = 0
    while True:
        msg = await ws.receive()
        if msg["type"] == "websocket.disconnect":
            return
        problem = None
        if msg.get("text") is not None:
            try:
                authed = _ws_options(msg["text"], opts, config.token) or authed
                live.smoother.seconds = float(opts.pop("smooth", live.smoother.seconds))
                await ws.send_json({"type": "options", "authorised": authed, "smooth": live.smoother.seconds,
                                    **{k: v for k, v in opts.items() if v is not None}})
                errors = 0
                continue
            except Problem as exc:
                problem = exc
        elif not authed:
            problem = Problem(401, "send {\"token\": ...} first (the server has a token)")
        elif len(msg.get("bytes") or b"") > config.max_bytes:
            await ws.send_json({"type": "error", **Problem(413, f"frame above {config.max_mb:g} MB").body()})
            await ws.close(1009)
            return
        else:
            try:
                result = await service.predict(msg.get("bytes") or b"", **opts, stream=live)
                frame += 1
                errors = 0
                await ws.send_json({"type": "faces", "frame": frame, **result})
                continue
            except Problem as exc:
                if exc.status in (503, 504):       # the server's state, not the client's fault
                    service.metrics.count("ws_busy")
                    await ws.send_json({"type": "busy", "retry_after": 1, **exc.body()})
                    continue
                problem = exc
        errors += 1
        await ws.send_json({"type": "error", **problem.body()})
        if problem.status == 401 or errors >= config.ws_max_errors:
            await ws.close(1008)
            return


async def _submit_job(request, service: Service, config: ServeConfig, kind: str, smooth: float, every: int):
    """Store an uploaded video (raw body or multipart field ``file``) as a new job and queue it; the
    job, or a Problem (503 when no job can start or the disk fails, 413 too long, 415 not a video)."""
    from starlette.concurrency import run_in_threadpool

    from .jobs import VideoTooLong

    name = None
    try:
        job = service.jobs.new(None, ".video")
    except FerkitError as exc:
        raise Problem(503, str(exc), {"Retry-After": "10"}) from None
    try:
        if kind == "multipart/form-data":
            name = await _store_form_file(request, job.video, config.video_bytes, config.timeout_s * 10)
        else:
            with open(job.video, "wb") as fh:
                await read_body(request, config.video_bytes, config.timeout_s * 10, sink=fh.write)
        job.filename = name
        job.smooth, job.every = smooth, every
        await run_in_threadpool(service.jobs.submit, job)
    except VideoTooLong as exc:
        raise Problem(413, str(exc)) from None
    except OSError as exc:                 # this machine's disk, not the client's fault; said in one line
        service.jobs.discard(job)
        raise Problem(503, f"cannot store the video: {exc.strerror or exc}", {"Retry-After": "60"}) from None
    except FerkitError as exc:
        raise Problem(415, str(exc)) from None
    except BaseException:
        service.jobs.discard(job)
        raise
    return job


def _add_jobs(app, service: Service, config: ServeConfig, authorise) -> None:
    import re

    from fastapi import Path as PathParam
    from fastapi import Query, Request
    from fastapi.responses import FileResponse, JSONResponse

    from .jobs import JOB_FILES
    from .schemas import Job

    good_id = re.compile(r"[0-9a-f]{16}")
    binary = {"type": "string", "format": "binary"}

    def find(job_id: str):
        job = service.jobs.get(job_id) if good_id.fullmatch(job_id) else None
        if job is None:
            raise Problem(404, f"no job {job_id!r} (jobs are deleted --job-ttl seconds after they finish)")
        return job

    @app.post("/v1/jobs", tags=["jobs"], summary="Upload a video: a job that tracks and classifies its faces",
              status_code=202, response_model=Job, responses={
                  202: {"description": "the job, queued: poll `GET /v1/jobs/{id}`"},
                  **_errors(400, 401, 408, 413, 415, 429, 503)},
              openapi_extra={"requestBody": {"required": True, "content": {
                  "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                                     "properties": {"file": binary}}},
                  "video/*": {"schema": binary}, "application/octet-stream": {"schema": binary}}}})
    async def new_job(request: Request,
                      smooth: float = Query(0.5, ge=0, le=60, description="seconds of per-track smoothing (0: raw)"),
                      every: int = Query(1, ge=1, le=100, description="classify every N-th frame")):
        """The video is the raw body (`Content-Type: video/...` or `application/octet-stream`) or the
        multipart field `file`: at most `--video-mb` MB and `--video-seconds` seconds. It is tracked and
        classified as `ferkit predict` does; when done, `predictions.csv`, `summary.json` (per track) and
        `timeline.png` can be downloaded until the job expires (`--job-ttl` seconds later)."""
        authorise(request.headers)
        kind = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
        if kind and not (kind in ("multipart/form-data", "application/octet-stream") or kind.startswith("video/")):
            raise Problem(415, f"unsupported Content-Type {kind}: send the video as the raw body (video/mp4, "
                               "application/octet-stream) or as multipart field 'file'")
        job = await _submit_job(request, service, config, kind, smooth, every)
        return JSONResponse(service.jobs.describe(job), 202)

    @app.get("/v1/jobs/{job_id}", tags=["jobs"], summary="A video job's state (and its files' URLs when done)",
             response_model=Job, responses=_errors(401, 404, 429))
    async def job_state(request: Request, job_id: str = PathParam(description="the id `POST /v1/jobs` gave")):
        """`state` is queued, running, done or failed; when done, `files` has the download URLs."""
        authorise(request.headers)
        return service.jobs.describe(find(job_id))

    @app.get("/v1/jobs/{job_id}/{name}", tags=["jobs"], summary="Download a done job's file",
             response_class=FileResponse, responses={
                 200: {"description": "the file", "content": {kind: {"schema": binary} for kind in JOB_FILES.values()}},
                 **_errors(401, 404, 429)})
    async def job_file(request: Request, job_id: str = PathParam(description="the job's id"),
                       name: str = PathParam(description=", ".join(JOB_FILES))):
        """`predictions.csv` (one row per face and frame, as `ferkit predict` writes), `summary.json`
        (per track: first and last time, share of each expression, mean probabilities) or
        `timeline.png` (probabilities over time, one panel per track)."""
        authorise(request.headers)
        job = find(job_id)
        if name not in JOB_FILES:
            raise Problem(404, f"no file {name!r}; a job has {', '.join(JOB_FILES)}")
        path = job.files.get(name)
        if job.state != "done" or path is None or not path.is_file():
            raise Problem(404, f"job {job_id} is {job.state}: its files are there when it is done")
        stem = Path(job.filename or "video").stem or "video"
        return FileResponse(path, media_type=JOB_FILES[name], filename=f"{stem}-{name}")


async def _store_form_file(request, target: Path, limit: int, seconds: float) -> str | None:
    """Stream a multipart upload's ``file`` part to ``target``, counting bytes (413) within ``seconds``
    (408); returns the file name the client gave."""
    import shutil

    from starlette.concurrency import run_in_threadpool
    from starlette.datastructures import UploadFile
    from starlette.requests import ClientDisconnect, Request

    declared = request.headers.get("content-length")
    if declared is not None and (not declared.strip().isdigit() or int(declared) > limit):
        raise Problem(400 if not declared.strip().isdigit() else 413,
                      "bad Content-Length" if not declared.strip().isdigit()
                      else f"video above the limit of {limit / 1024 / 1024:g} MB (--video-mb)")
    seen = [0]

    async def receive():
        msg = await request.receive()
        if msg["type"] == "http.request":
            seen[0] += len(msg.get("body", b""))
            if seen[0] > limit:
                raise Problem(413, f"video above the limit of {limit / 1024 / 1024:g} MB (--video-mb)")
        return msg

    async def parse():
        return await Request(request.scope, receive).form(max_files=1, max_fields=8)

    try:
        form = await asyncio.wait_for(parse(), seconds)
    except asyncio.TimeoutError:
        raise Problem(408, f"the upload did not arrive within {seconds:g} s") from None
    except ClientDisconnect:
        raise ClientGone("the client disconnected during the upload") from None
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise Problem(400, "no video in the form: send it as the file field 'file'")

        def copy():
            with open(target, "wb") as fh:
                shutil.copyfileobj(upload.file, fh, 1 << 20)
        await run_in_threadpool(copy)
        return upload.filename
    finally:
        await form.close()


def _add_page(app) -> None:
    from fastapi.responses import FileResponse
    from starlette.staticfiles import StaticFiles

    headers = {"Content-Security-Policy": PAGE_CSP, "X-Content-Type-Options": "nosniff",
               "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC_DIR / "index.html", headers=headers)

    @app.get("/docs", include_in_schema=False)
    async def docs():
        return FileResponse(STATIC_DIR / "docs.html", headers=headers)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


def _clean_openapi(app):
    """``app.openapi`` without FastAPI's 422 (this server answers bad input with 400) and its
    validation-error schemas; every error is the JSON ``Error`` (also of routes that answer text or files)."""
    from fastapi.openapi.utils import get_openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            for item in schema.get("paths", {}).values():
                for op in item.values():
                    op.get("responses", {}).pop("422", None)
                    for code, resp in op.get("responses", {}).items():
                        if code.startswith(("4", "5")):
                            resp["content"] = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    return openapi


def _ws_options(text: str, opts: dict, token: str | None) -> bool:
    """Apply a WebSocket options message; True when it carried the right token."""
    try:
        given = json.loads(text)
    except ValueError:
        raise Problem(400, "text messages must be JSON options such as {\"tta\": \"flip\"}; send frames as "
                           "binary messages") from None
    if not isinstance(given, dict):
        raise Problem(400, "options must be a JSON object")
    unknown = set(given) - {"token", "tta", "detect", "min_face", "smooth"}
    if unknown:
        raise Problem(400, f"unknown option(s) {', '.join(sorted(unknown))}; accepted: token, tta, detect, min_face, "
                           "smooth")
    if "tta" in given and given["tta"] not in TTA_MODES:
        raise Problem(400, f"unknown tta {given['tta']!r}; accepted: {', '.join(TTA_MODES)}")
    if "detect" in given and not isinstance(given["detect"], bool):
        raise Problem(400, "detect must be true or false")
    if "min_face" in given:
        mf = given["min_face"]
        if isinstance(mf, bool) or not isinstance(mf, (int, float)) or not 0 < mf < 1:
            raise Problem(400, "min_face must be a number between 0 and 1")
    if "smooth" in given:
        sm = given["smooth"]
        if isinstance(sm, bool) or not isinstance(sm, (int, float)) or not 0 <= sm <= 60:
            raise Problem(400, "smooth must be a number of seconds between 0 and 60")
    authed = False
    if "token" in given:
        if token is None or not isinstance(given["token"], str) or \
                not hmac.compare_digest(given["token"].encode(), token.encode()):
            raise Problem(401, "wrong token")
        authed = True
    opts.update({k: v for k, v in given.items() if k != "token"})
    return authed


# ----------------------------------------------------------------------------- request bodies
async def read_body(request, limit: int, seconds: float, sink=None) -> bytes:
    """The request body, never more than ``limit`` bytes (413: a larger Content-Length is refused
    before reading, a chunked body counted as it arrives), within ``seconds`` (408). With ``sink``
    (a callable), chunks go there instead of into memory. A client that leaves mid-upload raises
    :class:`~ferkit.serve.guard.ClientGone` (one log line, no traceback)."""
    from starlette.requests import ClientDisconnect

    too_big = Problem(413, f"request body above the limit of {limit / 1024 / 1024:g} MB")
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise Problem(400, "bad Content-Length")
        if int(declared) > limit:
            raise too_big

    async def read() -> bytes:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_big
            if sink is not None:
                sink(chunk)
            else:
                chunks.append(chunk)
        return b"".join(chunks)

    try:
        return await asyncio.wait_for(read(), seconds)
    except asyncio.TimeoutError:
        raise Problem(408, f"the request body did not arrive within {seconds:g} s (--timeout)") from None
    except ClientDisconnect:
        raise ClientGone("the client disconnected during the upload") from None


async def _form(request, body: bytes, max_files: int):
    """The multipart form of an already read ``body``."""
    from starlette.requests import Request

    async def replay():
        return {"type": "http.request", "body": body, "more_body": False}

    return await Request(request.scope, replay).form(max_files=max_files, max_fields=max_files + 16)


async def _request_images(request, config: ServeConfig) -> tuple[list[tuple[str | None, bytes]], bool]:
    """The images of a request and whether it asked for several: the multipart parts named ``file``
    (or its only file part), or the raw body."""
    kind = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    if kind and not (kind == "multipart/form-data" or kind.startswith("image/") or kind == "application/octet-stream"):
        raise Problem(415, f"unsupported Content-Type {kind}: send an image as multipart field 'file' or as the raw "
                           "body (image/jpeg, image/png, application/octet-stream)")
    body = await read_body(request, config.max_bytes, config.timeout_s)
    if kind != "multipart/form-data":
        return [(None, body)], False
    from starlette.datastructures import UploadFile

    form = await _form(request, body, config.max_images)
    try:
        named = [v for v in form.getlist("file") if isinstance(v, UploadFile)]
        files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        chosen = named or (files if len(files) == 1 else [])
        if not chosen:
            raise Problem(400, "no image in the form: send it as the file field 'file' (repeat it for several)")
        return [(f.filename, await f.read()) for f in chosen], len(chosen) > 1
    finally:
        await form.close()


def _version() -> str:
    from .. import __version__

    return __version__
