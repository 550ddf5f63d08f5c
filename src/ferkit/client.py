"""A small typed client of ``ferkit serve`` (standard library HTTP; answers are the server's own
pydantic models from :mod:`ferkit.serve.schemas`, so it needs pydantic, which ``ferkit[serve]``
brings). It imports neither torch nor OpenCV.

Example::

    from ferkit.client import Client

    c = Client("http://127.0.0.1:8000", token=None)
    result = c.predict("photo.jpg")                      # PredictResponse
    for face in result.faces:
        print(face.box, face.label, face.confidence)
    batch = c.predict_many(["a.jpg", "b.png"])           # BatchResponse: one entry per image
    job = c.wait(c.submit_video("clip.mp4").id)          # Job, once done or failed
    open("clip.csv", "wb").write(c.download(job.id, "predictions.csv"))

Errors are :class:`ServerError` (the server's one-line message, status, ``Retry-After`` and the
request id) or :class:`ferkit.errors.FerkitError` when the server cannot be reached.
"""
from __future__ import annotations

import json
import os
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Union

from .errors import FerkitError
from .serve.schemas import BatchResponse, Health, Job, ModelsResponse, PredictResponse

Data = Union[bytes, str, os.PathLike]


class ServerError(FerkitError):
    """An error answer of the server: ``status``, its one-line ``message``, ``retry_after``
    (seconds, when it said) and the ``request_id`` its log shows."""

    def __init__(self, status: int, message: str, retry_after: float | None = None, request_id: str | None = None):
        super().__init__(f"{status}: {message}")
        self.status, self.message, self.retry_after, self.request_id = status, message, retry_after, request_id


def _read(data: Data) -> tuple[bytes, str | None]:
    if isinstance(data, bytes):
        return data, None
    path = Path(data)
    try:
        return path.read_bytes(), path.name
    except OSError as exc:
        raise FerkitError(f"cannot read {path}: {exc.strerror or exc}") from None


class Client:
    """The API of one server. ``token``: its bearer token, if it has one; ``timeout``: seconds per call."""

    def __init__(self, url: str = "http://127.0.0.1:8000", token: str | None = None, timeout: float = 60.0):
        self.url, self.token, self.timeout = url.rstrip("/"), token, timeout
        self.last_request_id: str | None = None

    # -- plumbing
    def _call(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None,
              query: dict | None = None) -> tuple[bytes, dict]:
        q = {k: (str(v).lower() if isinstance(v, bool) else v) for k, v in (query or {}).items() if v is not None}
        url = self.url + path + (f"?{urllib.parse.urlencode(q)}" if q else "")
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(url, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                self.last_request_id = resp.headers.get("x-request-id")
                return resp.read(), dict(resp.headers)
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            self.last_request_id = exc.headers.get("x-request-id")
            try:
                message = json.loads(raw)["error"]
            except (ValueError, KeyError, TypeError):
                message = raw[:200].decode("utf-8", "replace") or exc.reason
            retry = exc.headers.get("retry-after")
            raise ServerError(exc.code, str(message), float(retry) if retry and retry.isdigit() else None,
                              self.last_request_id) from None
        except (urllib.error.URLError, OSError) as exc:
            why = getattr(exc, "reason", exc)
            raise FerkitError(f"cannot reach {self.url}: {why}") from None

    def _json(self, *args, **kwargs) -> dict:
        return json.loads(self._call(*args, **kwargs)[0])

    @staticmethod
    def _multipart(parts: list[tuple[str, str, bytes]]) -> tuple[bytes, str]:
        boundary = "ferkit-" + secrets.token_hex(12)
        out = []
        for field, name, data in parts:
            safe = name.replace('"', "_").replace("\r", "_").replace("\n", "_")
            out += [f"--{boundary}\r\n".encode(),
                    f'Content-Disposition: form-data; name="{field}"; filename="{safe}"\r\n'.encode(),
                    b"Content-Type: application/octet-stream\r\n\r\n", data, b"\r\n"]
        out.append(f"--{boundary}--\r\n".encode())
        return b"".join(out), f"multipart/form-data; boundary={boundary}"

    # -- the API
    def health(self) -> Health:
        return Health.model_validate(self._json("GET", "/healthz"))

    def models(self) -> ModelsResponse:
        return ModelsResponse.model_validate(self._json("GET", "/v1/models"))

    def predict(self, image: Data, tta: str | None = None, detect: bool = True,
                min_face: float | None = None) -> PredictResponse:
        """One image (bytes or a local file) -> its faces."""
        data, _ = _read(image)
        return PredictResponse.model_validate(self._json(
            "POST", "/v1/predict", data, "application/octet-stream",
            {"tta": tta, "detect": detect, "min_face": min_face}))

    def predict_many(self, images: list[Data], tta: str | None = None, detect: bool = True,
                     min_face: float | None = None) -> BatchResponse:
        """Several images in one request -> one entry per image (its result or its own error)."""
        if len(images) < 2:
            raise FerkitError("predict_many needs at least two images; use predict for one")
        parts = []
        for i, image in enumerate(images):
            data, name = _read(image)
            parts.append(("file", name or f"image{i}", data))
        body, kind = self._multipart(parts)
        return BatchResponse.model_validate(self._json("POST", "/v1/predict", body, kind,
                                                       {"tta": tta, "detect": detect, "min_face": min_face}))

    def submit_video(self, video: Data, smooth: float | None = None, every: int | None = None) -> Job:
        data, name = _read(video)
        body, kind = self._multipart([("file", name or "video", data)])
        return Job.model_validate(self._json("POST", "/v1/jobs", body, kind, {"smooth": smooth, "every": every}))

    def job(self, job_id: str) -> Job:
        return Job.model_validate(self._json("GET", f"/v1/jobs/{urllib.parse.quote(job_id, safe='')}"))

    def wait(self, job_id: str, timeout: float = 600.0, poll: float = 0.5) -> Job:
        """The job once done or failed; FerkitError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job.state in ("done", "failed"):
                return job
            if time.monotonic() > deadline:
                raise FerkitError(f"job {job_id} is still {job.state} after {timeout:g} s")
            time.sleep(poll)

    def download(self, job_id: str, name: str) -> bytes:
        """A done job's file: ``predictions.csv``, ``summary.json`` or ``timeline.png``."""
        return self._call("GET", f"/v1/jobs/{urllib.parse.quote(job_id, safe='')}/{urllib.parse.quote(name)}")[0]

    def metrics(self) -> str:
        return self._call("GET", "/metrics")[0].decode()
