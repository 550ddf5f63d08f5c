"""The app's outermost layer (plain ASGI, so it costs microseconds): a request id on every request
(the client's ``X-Request-ID`` when it is a short token, else a new one; echoed in the answer and
in the log), the per-client rate limit (429 with ``Retry-After``), the metrics, one access line per
request, and one line (no traceback) for a client that goes away mid-request."""
from __future__ import annotations

import json
import logging
import math
import re
import secrets
import time

from .limits import RateLimiter
from .metrics import Metrics

log = logging.getLogger("ferkit.serve")
_GOOD_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
#: Status logged for a client that disconnected before its answer (nginx's convention).
DISCONNECTED = 499


class ClientGone(Exception):
    """The client closed the connection before its request was read; nothing can be answered."""


def request_id(scope) -> str:
    return scope.get("ferkit.request_id") or "-"


class Guard:
    def __init__(self, app, metrics: Metrics, limiter: RateLimiter):
        self.app, self.metrics, self.limiter = app, metrics, limiter

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                scope["ferkit.request_id"] = self._id(scope)
            return await self.app(scope, receive, send)
        rid = scope["ferkit.request_id"] = self._id(scope)
        client = (scope.get("client") or ("-",))[0]
        path, method = scope.get("path", ""), scope.get("method", "")
        t0 = time.perf_counter()
        status = [0]
        header = (b"x-request-id", rid.encode())

        async def tagged(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        try:
            wait = self.limiter.take(client) if (path.startswith("/v1/") or path == "/metrics") else 0.0
            if wait > 0:
                self.metrics.count("rate_limited")
                await _refuse(tagged, 429, f"too many requests from {client}: above {self.limiter.rate:g} per second "
                                           f"(--rate); retry after {math.ceil(wait)} s",
                              {"retry-after": str(math.ceil(wait))})
            else:
                await self.app(scope, receive, tagged)
        except ClientGone as exc:
            status[0] = DISCONNECTED
            self.metrics.count("disconnected")
            log.info('%s "%s %s" client disconnected mid-request (%s) id=%s', client, method, path, exc, rid)
            return
        finally:
            seconds = time.perf_counter() - t0
            route = getattr(scope.get("route"), "path", None) or ("/static" if path.startswith("/static/") else "other")
            self.metrics.request(route, status[0] or 500, seconds)
        if status[0] != DISCONNECTED:
            log.info('%s "%s %s" %d %.3fs id=%s', client, method, path, status[0], seconds, rid)

    @staticmethod
    def _id(scope) -> str:
        for name, value in scope.get("headers", ()):
            if name == b"x-request-id":
                text = value.decode("latin-1")
                if _GOOD_ID.fullmatch(text):
                    return text
                break
        return secrets.token_hex(8)


async def _refuse(send, status: int, message: str, headers: dict[str, str]) -> None:
    body = json.dumps({"error": message, "status": status}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *((k.encode(), v.encode()) for k, v in headers.items())]})
    await send({"type": "http.response.body", "body": body})
