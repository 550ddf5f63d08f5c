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
from ..data import decode_image
from ..errors import FerkitError
from ..predict import Recognizer
from ..predict.track import DEFAULT_SMOOTH_S, IouTracker, Smoother
from .batcher import MicroBatcher, QueueFull

STATIC_DIR = Path(__file__).resolve().parent / "static"
#: The page's Content-Security-Policy: its own files only (no CDN), images from blobs, the API over
#: fetch and WebSocket on the same host.
PAGE_CSP = ("default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob: mediastream:; "
            "connect-src 'self' ws: wss:; style-src 'self'; script-src 'self'; object-src 'none'; "
            "base-uri 'none'; frame-ancestors 'none'")


@dataclass
class ServeConfig:
    """What ``ferkit serve`` options set. ``tta``/``min_face`` are the defaults of requests that do
    not say; ``workers`` decode images and find faces in parallel (the model runs in one thread)."""

    model_name: str | None = None
    token: str | None = None
    cors: tuple[str, ...] = ()
    max_mb: float = 10.0
    max_queue: int = 64
    timeout_s: float = 30.0
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
        for name, flag in (("max_mb", "max-mb"), ("timeout_s", "timeout")):
            if not getattr(self, name) > 0:
                raise FerkitError(f"{flag} must be above 0, got {getattr(self, name)}")
        if self.max_queue < 1 or self.max_batch < 1:
            raise FerkitError("max-queue and max-batch must be at least 1")
        if self.token is not None and not self.token.strip():
            raise FerkitError("the token is empty")
        self.cors = tuple(self.cors or ())
        if "*" in self.cors and self.token:
            raise FerkitError("--cors '*' with a token would let any web site use it: name the origins")

    @property
    def max_bytes(self) -> int:
        return int(self.max_mb * 1024 * 1024)

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
        if m.path == path:
            return m.name
    return path.parent.name if path.name in ("best.safetensors", "last.safetensors") else path.name


def _decode(data: bytes) -> np.ndarray:
    """Bytes -> gray image through the one decoder; its refusals become 415/413/400."""
    if not data:
        raise Problem(400, "empty body: send an image (multipart field 'file', or the raw bytes)")
    try:
        return decode_image(data)
    except ValueError as exc:
        why = str(exc)
        if why.startswith("image too large"):
            raise Problem(413, why) from None
        if why.startswith("cannot identify image file"):
            raise Problem(415, "not an image file ferkit can read (JPEG, PNG, WebP, BMP, TIFF, GIF ...)") from None
        raise Problem(400, f"cannot decode the image: {why}") from None


class Service:
    """The work behind the endpoints, without HTTP: decode, detect (thread pool), classify (batched)."""

    def __init__(self, recognizer: Recognizer, config: ServeConfig):
        self.recognizer = recognizer
        self.config = config
        self.model_name = config.model_name or model_name_of(recognizer)
        self.in_flight = 0
        self.detecting = 0      # images in the thread pool, also those of requests that timed out
        self.served = 0
        self.started = time.time()
        self._local = threading.local()
        self._lock = threading.Lock()
        self.pool = ThreadPoolExecutor(max_workers=config.threads, thread_name_prefix="ferkit-detect")
        self.batcher = MicroBatcher(self._classify, config.max_batch, config.max_wait_ms, config.max_queue)

    def close(self) -> None:
        self.batcher.close()
        self.pool.shutdown(wait=False, cancel_futures=True)

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

    def _faces(self, data: bytes, detect: bool, min_face: float, retry: bool):
        t0 = time.perf_counter()
        gray = _decode(data)
        t1 = time.perf_counter()
        prepared = self._view(min_face).prepare(gray, detect, retry)
        return gray.shape, prepared, (t1 - t0) * 1000, (time.perf_counter() - t1) * 1000

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
        detection tries (padding, upscaling) are skipped."""
        tta = tta or self.config.tta
        if tta not in TTA_MODES:
            raise Problem(400, f"unknown tta {tta!r}; accepted: {', '.join(TTA_MODES)}")
        min_face = self.config.min_face if min_face is None else float(min_face)
        if not 0 < min_face < 1:
            raise Problem(400, f"min_face must be between 0 and 1, got {min_face}")
        self.admit()
        try:
            return await asyncio.wait_for(self._predict(data, tta, detect, min_face, stream), self.config.timeout_s)
        except asyncio.TimeoutError:
            raise Problem(504, f"timed out after {self.config.timeout_s:g} s") from None
        finally:
            self.in_flight -= 1

    async def _predict(self, data: bytes, tta: str, detect: bool, min_face: float, stream: "Stream | None") -> dict:
        t0 = time.perf_counter()
        with self._lock:        # counted until the thread is done: a timed-out request's image still holds it
            self.detecting += 1
        job = self.pool.submit(self._faces, data, detect, min_face, stream is None)
        job.add_done_callback(self._detected)
        (h, w), prepared, decode_ms, detect_ms = await asyncio.wrap_future(job)
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
            face = {"box": [int(v) for v in b]}
            if tracks is not None:
                face["track"], smoothed = tracks[i]
                face["raw"] = {c: round(float(v), 6) for c, v in zip(classes, p)}
                p = smoothed
            k = int(np.argmax(p))
            face.update({"label": classes[k], "confidence": round(float(p[k]), 6),
                         "probabilities": {c: round(float(v), 6) for c, v in zip(classes, p)},
                         "roll": round(float(prepared.rolls[i]), 1)})
            extras = prepared.extras(i)   # the face record's detector and pose fields (FACE_FIELDS)
            if extras["roll"] is None:
                extras["roll"] = face["roll"]
            face.update(extras)
            out.append(face)
        self.served += 1
        return {"model": self.model_name, "width": int(w), "height": int(h), "tta": tta, "detect": detect,
                "whole_image": bool(prepared.whole), "faces": out,
                "timing_ms": {"decode": round(decode_ms, 2), "detect": round(detect_ms, 2),
                              "classify": round((time.perf_counter() - t1) * 1000, 2),
                              "total": round((time.perf_counter() - t0) * 1000, 2)}}

    def models(self) -> list[dict]:
        be = self.recognizer.backend
        rec = getattr(be, "record", None)
        return [{"name": self.model_name, "classes": list(self.recognizer.classes),
                 "image_size": int(self.recognizer.image_size), "arch": getattr(rec, "arch", None),
                 "backend": getattr(be, "name", type(be).__name__), "default": True}]


# ----------------------------------------------------------------------------- the app
def create_app(recognizer: Recognizer, config: ServeConfig | None = None, **options):
    """The FastAPI app serving ``recognizer`` (load it with ``tta="none"``: the server applies each
    request's ``tta``). ``options`` override fields of ``config``."""
    try:
        from fastapi import FastAPI, Query, Request, WebSocket
        from fastapi.exceptions import RequestValidationError
        from fastapi.responses import FileResponse, JSONResponse
        from starlette.exceptions import HTTPException as StarletteHTTPException
        from starlette.staticfiles import StaticFiles
        from starlette.websockets import WebSocketDisconnect
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
                              "face's box, expression and probabilities. No request reads a file path or URL.")
    app.state.service = service

    if config.cors:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"], max_age=600)

    # -- errors: always JSON {"error", "status"}
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

    def authorise(headers) -> None:
        if config.token is None:
            return
        scheme, _, given = (headers.get("authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), config.token.encode()):
            raise Problem(401, "missing or wrong bearer token (Authorization: Bearer TOKEN)",
                          {"WWW-Authenticate": "Bearer"})

    # -- the API
    min_face_help = f"smallest face side as a fraction of the image's shorter side (default {config.min_face})"

    @app.post("/v1/predict", tags=["api"], summary="Find faces in an image and classify their expression",
              responses={200: {"description": "faces (box [x, y, w, h], label, confidence, probabilities)"},
                         400: {"description": "broken image or bad option"}, 401: {"description": "token"},
                         413: {"description": "body above the size limit, or too many pixels"},
                         415: {"description": "not an image"}, 503: {"description": "queue full"},
                         504: {"description": "timed out"}},
              openapi_extra={"requestBody": {"required": True, "content": {
                  "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
                      "file": {"type": "string", "format": "binary"}}}},
                  "image/*": {"schema": {"type": "string", "format": "binary"}},
                  "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
    async def predict(request: Request,
                      tta: str | None = Query(None, description=f"test-time augmentation: {', '.join(TTA_MODES)}"
                                                                f" (default: the server's, {config.tta})"),
                      detect: bool = Query(True, description="find faces; false = the image is one cropped face"),
                      min_face: float | None = Query(None, gt=0, lt=1, description=min_face_help)):
        """The image is the multipart field ``file`` or the raw request body (``Content-Type:
        image/...`` or ``application/octet-stream``)."""
        authorise(request.headers)
        data = await _image_bytes(request, config.max_bytes)
        return await service.predict(data, tta=tta, detect=detect, min_face=min_face)

    @app.get("/v1/models", tags=["api"], summary="The model this server runs")
    async def models(request: Request):
        authorise(request.headers)
        return {"models": service.models()}

    @app.get("/healthz", tags=["api"], summary="Liveness (no token needed)")
    async def healthz():
        return {"status": "ok", "in_flight": service.in_flight, "queued": service.batcher.pending}

    @app.websocket("/v1/stream")
    async def stream(ws: WebSocket):
        """Webcam frames: send binary messages (JPEG/PNG), get one JSON text message per frame with
        each face's ``track`` id, probabilities smoothed over the track (``raw``: this frame's own).
        A text message ``{"token", "tta", "min_face", "detect", "smooth"}`` (any of them; the token
        first when the server has one) sets options; errors come back as ``{"error", "status"}``."""
        await ws.accept()
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
        try:
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
                        problem = exc
                errors += 1
                await ws.send_json({"type": "error", **problem.body()})
                if problem.status == 401 or errors >= config.ws_max_errors:
                    await ws.close(1008)
                    return
        except (WebSocketDisconnect, RuntimeError):   # the client went away mid-stream: nothing to answer
            return

    # -- the page and the docs
    headers = {"Content-Security-Policy": PAGE_CSP, "X-Content-Type-Options": "nosniff",
               "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC_DIR / "index.html", headers=headers)

    @app.get("/docs", include_in_schema=False)
    async def docs():
        return FileResponse(STATIC_DIR / "docs.html", headers=headers)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


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


async def _image_bytes(request, limit: int) -> bytes:
    """The image of a request: the multipart field ``file`` (or its only file), or the raw body;
    never more than ``limit`` bytes are read (413)."""
    kind = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    if kind and not (kind == "multipart/form-data" or kind.startswith("image/") or kind == "application/octet-stream"):
        raise Problem(415, f"unsupported Content-Type {kind}: send an image as multipart field 'file' or as the raw "
                           "body (image/jpeg, image/png, application/octet-stream)")
    too_big = Problem(413, f"request body above the limit of {limit / 1024 / 1024:g} MB")
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise Problem(400, "bad Content-Length")
        if int(declared) > limit:
            raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    body = b"".join(chunks)
    if kind != "multipart/form-data":
        return body
    from starlette.datastructures import UploadFile
    from starlette.requests import Request

    async def replay():
        return {"type": "http.request", "body": body, "more_body": False}

    form = await Request(request.scope, replay).form(max_files=4, max_fields=16)
    try:
        files = [v for v in form.values() if isinstance(v, UploadFile)]
        chosen = form.get("file") if isinstance(form.get("file"), UploadFile) else (files[0] if len(files) == 1
                                                                                   else None)
        if chosen is None:
            raise Problem(400, "no image in the form: send it as the file field 'file'")
        return await chosen.read()
    finally:
        await form.close()


def _version() -> str:
    from .. import __version__

    return __version__
