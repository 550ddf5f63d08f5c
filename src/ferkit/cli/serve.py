"""`ferkit serve`: the local web page and HTTP API."""
from __future__ import annotations

import argparse
import os

from ..choices import DEVICE_HELP, TTA_MODES
from .options import add_face_options, config_from_args, finite_float, nonneg_int, positive_int


def add_serve(sub):
    p = sub.add_parser("serve", help="a local web page and HTTP API (needs ferkit[serve])",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Serve a model over HTTP on this machine: a page at / (drop a photo, or use the "
                                   "webcam), POST /v1/predict (an image -> faces as JSON), GET /v1/models, GET "
                                   "/healthz, GET /metrics, POST /v1/jobs (a video), WebSocket /v1/stream, API docs "
                                   "at /docs. Needs "
                                   "pip install 'ferkit[serve]'.\n\n"
                                   "  ferkit serve                       # the bundled model on http://127.0.0.1:8000\n"
                                   "  ferkit serve runs/exp1 --port 9000\n"
                                   "  ferkit serve --host 0.0.0.0 --token \"$(openssl rand -hex 16)\"",
                       epilog="Safe by default: it listens on 127.0.0.1 only; --host 0.0.0.0 opens it to the "
                              "network (then\nuse --token). Requests above --max-mb get 413, non-images 415, "
                              "broken images 400, a full\nqueue 503 (Retry-After), a slow request 504, a client "
                              "above --rate 429. No request\ncan make the server read a file or URL.")
    p.add_argument("model", nargs="?", default=None,
                   help="run folder, .safetensors, .onnx, or a bundled model's name (default: the bundled model)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=nonneg_int, default=8000, help="port (default 8000; 0 = any free port)")
    p.add_argument("--token", default=os.environ.get("FERKIT_TOKEN") or None,
                   help="require 'Authorization: Bearer TOKEN' on /v1/* (default: $FERKIT_TOKEN, else none)")
    p.add_argument("--cors", action="append", default=None, metavar="ORIGIN",
                   help="allow this web origin (e.g. http://localhost:3000) to call the API from a browser; "
                        "repeatable; default none")
    add_limit_options(p)
    p.add_argument("--max-batch", type=positive_int, default=64, help="faces per model call (default 64)")
    p.add_argument("--batch-wait-ms", type=finite_float, default=5.0,
                   help="how long a request waits for others to share its model call (default 5)")
    p.add_argument("--workers", type=nonneg_int, default=0,
                   help="threads decoding images and finding faces (default 0: one per core, at most 4)")
    p.add_argument("--tta", choices=TTA_MODES, default="none", help="default test-time augmentation (default none)")
    p.add_argument("--min-face", type=float, default=0.1,
                   help="default smallest face side as a fraction of the image's shorter side (default 0.1)")
    p.add_argument("--cascade", default="alt2", help="OpenCV Haar cascade: alt2, default, alt (default alt2)")
    add_face_options(p)
    p.add_argument("--backend", choices=("auto", "torch", "onnx"), default="auto", help="as for `ferkit predict`")
    p.add_argument("--device", default="auto", help=f"torch backend: {DEVICE_HELP}")
    p.add_argument("--log-level", choices=("critical", "error", "warning", "info", "debug"), default="info",
                   help="server log (default info: one line per request)")
    p.set_defaults(func=_cmd_serve)


def add_limit_options(p) -> None:
    """One option per server limit, from :data:`ferkit.serve.limits.LIMITS` (help and default written once)."""
    from ..serve.limits import LIMITS, Limits

    group = p.add_argument_group("limits (docs/serve.md lists them with their defaults)")
    for lim in LIMITS:
        default = getattr(Limits, lim.field)
        kind = positive_int if lim.kind is int else finite_float
        group.add_argument(lim.flag, dest=lim.field, metavar="N", type=kind, default=default,
                           help=f"{lim.help} (default {default:g})")


def _cmd_serve(a) -> int:
    from ..serve.server import announce, require_serve_dependencies

    require_serve_dependencies()
    from ..serve import ServeConfig, serve

    config = config_from_args(ServeConfig, a, cors=tuple(a.cors or ()), max_wait_ms=a.batch_wait_ms)
    serve(a.model, a.host, a.port, config, backend=a.backend, device=a.device, cascade=a.cascade,
          log_level=a.log_level, on_ready=lambda url: announce(url, a.host, a.token), detector=a.detector,
          align=not a.no_align, fallback=a.fallback)
    return 0
