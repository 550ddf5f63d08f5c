"""``ferkit serve``: a local web page and HTTP API over a :class:`ferkit.predict.Recognizer`.

Needs the optional web stack: ``pip install 'ferkit[serve]'`` (FastAPI, uvicorn). Nothing here
imports it until used, so ``import ferkit.serve`` works without it.

Example::

    from ferkit.serve import ServeConfig, serve
    serve(None, port=8000, config=ServeConfig(token="s3cret"))     # blocks; Ctrl-C stops it

    from ferkit import Recognizer
    from ferkit.serve import create_app                             # or run the app yourself
    app = create_app(Recognizer.load(), max_mb=5)
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from .app import ServeConfig

#: Names loaded on first use (``from ferkit.serve import ServeConfig`` works as before), so that
#: ``ferkit.serve.schemas`` and ``ferkit.serve.limits`` import without torch (``ferkit.client``).
_LAZY = {"Problem": "app", "ServeConfig": "app", "Service": "app", "create_app": "app", "model_name_of": "app",
         "MicroBatcher": "batcher", "QueueFull": "batcher", "LIMITS": "limits", "Limits": "limits",
         "bind_socket": "server", "is_loopback": "server", "require_serve_dependencies": "server",
         "url_of": "server", "uvicorn_server": "server"}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def serve(model=None, host: str = "127.0.0.1", port: int = 8000, config: "ServeConfig | None" = None,
          backend: str = "auto", device: str = "auto", cascade: str = "alt2", log_level: str = "info",
          on_ready: Callable[[str], None] | None = None, detector: str = "haar", align: bool = True,
          fallback: str = "none") -> None:
    """Load ``model`` (None: the bundled default), bind ``host:port`` and serve until Ctrl-C.
    ``detector``, ``align`` and ``fallback`` are :meth:`ferkit.predict.Recognizer.load`'s.

    The port is bound before the model loads, so a port in use fails at once; both failures are a
    :class:`ferkit.errors.FerkitError` with one line. ``on_ready(url)`` is called once listening.
    """
    from ..predict import Recognizer
    from .app import ServeConfig, create_app
    from .server import bind_socket, require_serve_dependencies, url_of, uvicorn_server

    require_serve_dependencies()
    config = config or ServeConfig()
    sock = bind_socket(host, port)
    try:
        recognizer = Recognizer.load(model, backend=backend, device=device, tta="none", align=align,
                                     fallback=fallback, detector=detector, cascade=cascade,
                                     min_face=config.min_face)
        app = create_app(recognizer, config)
        server = uvicorn_server(app, config.max_bytes, log_level)
        sock.listen(2048)       # connections wait in the backlog from now on, uvicorn accepts them
        if on_ready is not None:
            on_ready(url_of(sock))
        server.run(sockets=[sock])
    finally:
        sock.close()


__all__ = ["LIMITS", "Limits", "MicroBatcher", "Problem", "QueueFull", "ServeConfig", "Service", "bind_socket",
           "create_app",
           "is_loopback", "model_name_of", "require_serve_dependencies", "serve", "url_of", "uvicorn_server"]
