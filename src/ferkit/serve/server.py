"""Running the app: bind the socket ourselves (so a port in use or an unknown host is one clear
line, not a traceback from the server), then hand it to uvicorn."""
from __future__ import annotations

import errno
import ipaddress
import logging
import socket

from ..errors import FerkitError

log = logging.getLogger("ferkit.serve")


def require_serve_dependencies() -> None:
    """FerkitError naming the install command when the optional web stack is missing."""
    import importlib.util

    missing = [m for m in ("fastapi", "uvicorn", "multipart") if importlib.util.find_spec(m) is None]
    if missing:
        raise FerkitError(f"ferkit serve needs {', '.join(missing)} (not installed): pip install 'ferkit[serve]'")


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (port 0: any free port), not yet listening."""
    if not 0 <= int(port) <= 65535:
        raise FerkitError(f"port must be 0-65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise FerkitError(f"cannot listen on {host}:{port}: unknown host ({exc.strerror})") from None
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            why = "the port is in use (another server?); choose another with --port"
        elif exc.errno == errno.EADDRNOTAVAIL:
            why = "this machine has no such address"
        elif exc.errno == errno.EACCES:
            why = "permission denied (ports below 1024 need privileges)"
        else:
            why = exc.strerror or str(exc)
        raise FerkitError(f"cannot listen on {host}:{port}: {why}") from None
    sock.set_inheritable(True)
    return sock


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def announce(url: str, host: str, token: str | None) -> None:
    """What ``ferkit serve`` prints once listening: where, and a warning on stderr when the server
    is reachable beyond this machine without a token."""
    import sys

    print(f"ferkit serve: {url}/  (API docs {url}/docs; Ctrl-C stops)", flush=True)
    if not is_loopback(host) and not token:
        print("ferkit serve: warning: listening beyond this machine without --token: anyone who can reach "
              "it can use it", file=sys.stderr, flush=True)


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def uvicorn_server(app, max_bytes: int = 10 * 1024 * 1024, log_level: str = "info", limits=None):
    """A uvicorn Server for ``app``; run it with ``server.run(sockets=[sock])`` and stop it with
    ``server.should_exit = True``. WebSocket messages above ``max_bytes`` close the connection.

    ``limits`` (a :class:`~ferkit.serve.limits.Limits`; default: the app's config) sets uvicorn's
    idle keep-alive timeout, header size and concurrency limit, and this module's header timeout and
    connection cap (:func:`guarded_protocol`). Access lines are the app's own (with request ids)."""
    import copy

    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    service = getattr(getattr(app, "state", None), "service", None)
    if limits is None:
        from .limits import Limits

        limits = service.config if service is not None else Limits()
    log_config = copy.deepcopy(LOGGING_CONFIG)
    log_config["loggers"]["ferkit.serve"] = {"handlers": ["default"], "level": log_level.upper(), "propagate": False}
    metrics = getattr(service, "metrics", None)
    config = uvicorn.Config(app, log_level=log_level, ws_max_size=max_bytes + 4096, lifespan="on",
                            proxy_headers=False, server_header=False, timeout_graceful_shutdown=5,
                            ws_per_message_deflate=False, http=guarded_protocol(limits, metrics),
                            timeout_keep_alive=limits.keep_alive_s, limit_concurrency=limits.max_connections,
                            h11_max_incomplete_event_size=limits.max_header_kb * 1024, access_log=False,
                            log_config=log_config)
    return uvicorn.Server(config)


def _json_error(status: int, message: str) -> bytes:
    import json

    body = json.dumps({"error": message, "status": status}).encode()
    phrase = {400: "Bad Request", 431: "Request Header Fields Too Large"}.get(status, "Error")
    return (f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n").encode() + body


class _HeaderDeadline:
    """The connection-level guard of :func:`guarded_protocol`'s protocol (uvicorn-free, so it can
    live at module level): a deadline for a request's line and headers, refusals as JSON."""

    header_timeout: float = 10.0
    metrics = None
    _deadline = None
    _head = b""

    def count(self, event: str) -> None:
        if self.metrics is not None:
            self.metrics.count(event)

    def _waiting(self) -> bool:          # between requests: no request line and headers yet
        return self.cycle is None or self.cycle.response_complete

    def _arm(self) -> None:
        self._head = b""
        self._deadline = self.loop.call_later(self.header_timeout, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if self._waiting() and not self.transport.is_closing():
            self.count("header_timeout")
            log.debug("closed a connection from %s: no complete request within %g s (--header-timeout)",
                      (self.client or ("?",))[0], self.header_timeout)
            self.transport.close()

    def _refuse(self, status: int, message: str) -> None:
        if not self.transport.is_closing():
            self.transport.write(_json_error(status, message))
            self.transport.close()


def guarded_protocol(limits, metrics=None):
    """uvicorn's h11 protocol with what uvicorn lacks: a deadline for a request's line and headers
    (also for a connection that never sends anything, which uvicorn keeps open for ever), a cap on
    header bytes answered 431, a hard cap on open connections, and malformed requests (a bad
    Content-Length ...) answered as JSON like every other error."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    max_header = int(limits.max_header_kb) * 1024
    max_connections = int(limits.max_connections)

    class GuardedH11Protocol(_HeaderDeadline, H11Protocol):
        header_timeout = float(limits.header_timeout_s)

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                self.count("connection_refused")
                log.warning("closed a connection from %s: %d connections are open (--max-connections)",
                            (self.client or ("?",))[0], len(self.connections) - 1)
                transport.close()
                return
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._deadline is None and self._waiting():
                self._arm()
            if self._deadline is not None and len(self._head) <= max_header:
                self._head += data[:max_header + 4 - len(self._head)]
                if len(self._head) > max_header and b"\r\n\r\n" not in self._head:
                    self._disarm()
                    self.count("header_too_large")
                    self._refuse(431, f"request line and headers above {max_header // 1024} KB (--max-header-kb)")
                    return
            super().data_received(data)
            if self._deadline is not None and not self._waiting():
                self._disarm()

        def handle_websocket_upgrade(self, event) -> None:
            self._disarm()
            super().handle_websocket_upgrade(event)

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def send_400_response(self, msg: str) -> None:
            """h11 refused the request (bad Content-Length, header too large, garbage): JSON, one log line."""
            self._disarm()
            status, why = 400, "malformed HTTP request (bad request line, header or Content-Length)"
            log.debug("refused a malformed request from %s: %s", (self.client or ("?",))[0], why)
            self.count("malformed")
            self._refuse(status, why)

    GuardedH11Protocol.metrics = metrics
    return GuardedH11Protocol
