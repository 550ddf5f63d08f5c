"""Running the app: bind the socket ourselves (so a port in use or an unknown host is one clear
line, not a traceback from the server), then hand it to uvicorn."""
from __future__ import annotations

import errno
import ipaddress
import socket

from ..errors import FerkitError


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


def uvicorn_server(app, max_bytes: int = 10 * 1024 * 1024, log_level: str = "info"):
    """A uvicorn Server for ``app``; run it with ``server.run(sockets=[sock])`` and stop it with
    ``server.should_exit = True``. WebSocket messages above ``max_bytes`` close the connection."""
    import uvicorn

    config = uvicorn.Config(app, log_level=log_level, ws_max_size=max_bytes + 4096, lifespan="on",
                            proxy_headers=False, server_header=False, timeout_graceful_shutdown=5,
                            ws_per_message_deflate=False)
    return uvicorn.Server(config)
