"""`ferkit serve`'s limits, each provoked with tiny inputs and small caps: pixels (refused from the
header, or a JPEG decoded at reduced size), the per-client rate, request ids, metrics, a timed-out
request's cancelled work, the WebSocket's busy state, and, against a real uvicorn on 127.0.0.1,
the header timeout (idle connections), header size, a bad Content-Length and a client that leaves
mid-upload (one log line, no traceback)."""
from __future__ import annotations

import argparse
import contextlib
import re
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="needs the serve extra: pip install 'ferkit[serve]'")
import test_serve as _base  # noqa: E402 - its fixtures and helpers
from conftest import running_server  # noqa: E402
from starlette.websockets import WebSocketDisconnect  # noqa: E402

_block, _wait = _base._block, _base._wait
face_jpeg, make_client, recognizer = _base.face_jpeg, _base.make_client, _base.recognizer   # the fixtures

from ferkit.errors import FerkitError  # noqa: E402
from ferkit.serve import LIMITS, Limits, ServeConfig  # noqa: E402
from ferkit.serve.app import Problem  # noqa: E402
from ferkit.serve.limits import RateLimiter, decode_limited, image_size, release_memory  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "docs" / "serve.md"


def _png(w: int, h: int) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", np.full((h, w), 128, np.uint8))
    return buf.tobytes()


# ----------------------------------------------------------------------------- configuration
def test_every_limit_has_a_default_a_flag_and_a_docs_line(capsys):
    from ferkit.cli.serve import add_serve

    parser = argparse.ArgumentParser()
    add_serve(parser.add_subparsers())
    a = parser.parse_args(["serve"])
    docs = DOCS.read_text()
    for lim in LIMITS:
        default = getattr(Limits, lim.field)
        assert getattr(a, lim.field) == default, lim.flag                      # the flag's default is the field's
        assert f"`{lim.flag}`" in docs, f"docs/serve.md does not list {lim.flag}"
        row = next(line for line in docs.splitlines() if f"`{lim.flag}`" in line and line.startswith("|"))
        assert f"{default:g}" in row, (lim.flag, row)                           # with its default
    a = parser.parse_args(["serve", "--max-megapixels", "2", "--rate", "0", "--max-images", "3"])
    from ferkit.cli.options import config_from_args

    cfg = config_from_args(ServeConfig, a, cors=(), max_wait_ms=5)
    assert (cfg.max_pixels, cfg.rate, cfg.max_images) == (2_000_000, 0, 3)
    for bad in (dict(max_megapixels=0), dict(rate=-1), dict(max_images=0), dict(header_timeout_s=float("nan")),
                dict(max_connections=2.5), dict(keep_alive_s=-1), dict(video_seconds=0)):
        with pytest.raises(FerkitError, match="--"):
            ServeConfig(**bad)


# ----------------------------------------------------------------------------- pixels
def test_pixel_cap_refuses_a_png_from_its_header_fast(make_client):
    c = make_client(max_megapixels=0.01)                # 10,000 pixels
    t0 = time.perf_counter()
    r = c.post("/v1/predict", content=_png(200, 100))
    assert r.status_code == 413 and "--max-megapixels" in r.json()["error"], r.text
    assert time.perf_counter() - t0 < 2
    assert c.post("/v1/predict", content=_png(100, 90)).status_code == 200        # under the cap: answered


def test_huge_png_is_refused_without_decoding():
    """A real 100-megapixel PNG (a few hundred KB): refused from its header in milliseconds."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (10000, 10000)).save(buf, "PNG")
    data = buf.getvalue()
    assert image_size(data) == ("PNG", 10000, 10000)
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="too large"):
        decode_limited(data, 24_000_000)
    assert time.perf_counter() - t0 < 0.5


def test_jpeg_above_the_cap_is_decoded_at_reduced_size(make_client, face_jpeg):
    full = make_client().post("/v1/predict", content=face_jpeg).json()
    c = make_client(max_megapixels=0.05)              # the photo is 360x300 = 0.108 MP: decoded at 1/2
    r = c.post("/v1/predict", content=face_jpeg)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["scale"] == pytest.approx(2, abs=0.05) and (body["width"], body["height"]) == (360, 300)
    assert len(body["faces"]) == 1
    small, big = np.array(body["faces"][0]["box"]), np.array(full["faces"][0]["box"])
    assert np.abs(small - big).max() < 25              # boxes in the original's pixels
    gray, scale = decode_limited(face_jpeg, 50_000)
    assert gray.shape == (150, 180) and scale == pytest.approx(2, abs=0.05)
    with pytest.raises(ValueError, match="1/8"):      # even 1/8 is above 1,000 pixels
        decode_limited(face_jpeg, 1000)
    assert release_memory() in (True, False)          # glibc: memory handed back; elsewhere a no-op


# ----------------------------------------------------------------------------- per client, ids, metrics
def test_rate_limit_429_with_retry_after(make_client, face_jpeg):
    c = make_client(rate=0.5, burst=2)
    codes = [c.get("/v1/models").status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    r = c.get("/v1/models")
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1 and "--rate" in r.json()["error"]
    assert c.get("/healthz").status_code == 200 and c.get("/").status_code == 200       # not limited
    bucket = RateLimiter(rate=2, burst=1)
    assert bucket.take("a", now=0.0) == 0 and bucket.take("a", now=0.1) == pytest.approx(0.4)
    assert bucket.take("b", now=0.1) == 0                                               # per client
    assert bucket.take("a", now=0.6) == 0                                               # refilled
    assert RateLimiter(rate=0, burst=1).take("a") == 0                                  # 0: no limit


def test_request_id_echoed_and_made(make_client, face_jpeg):
    c = make_client()
    assert c.get("/healthz", headers={"X-Request-ID": "job-42.a"}).headers["x-request-id"] == "job-42.a"
    made = c.get("/healthz").headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{16}", made)
    evil = c.get("/healthz", headers={"X-Request-ID": "a b\tc" + "x" * 100}).headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{16}", evil)                                        # not echoed as given
    assert "x-request-id" in c.post("/v1/predict", content=b"").headers               # errors too


def test_metrics_prometheus_text(make_client, face_jpeg):
    c = make_client(token="t")
    auth = {"Authorization": "Bearer t"}
    assert c.get("/metrics").status_code == 401
    for _ in range(2):
        assert c.post("/v1/predict", content=face_jpeg, headers=auth).status_code == 200
    c.post("/v1/predict", content=b"junk", headers=auth)
    r = c.get("/metrics", headers=auth)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'ferkit_requests_total{route="/v1/predict",status="200"} 2' in text
    assert 'ferkit_requests_total{route="/v1/predict",status="415"} 1' in text
    assert 'ferkit_request_seconds_count{route="/v1/predict"} 3' in text
    assert re.search(r'ferkit_request_seconds_bucket\{route="/v1/predict",le="\+Inf"\} 3', text)
    assert "ferkit_batch_faces_count 2" in text and "ferkit_batch_faces_sum 2" in text
    for gauge in ("ferkit_queue_depth", "ferkit_in_flight", "ferkit_ws_streams", "ferkit_jobs_pending"):
        assert re.search(rf"^{gauge} \d+$", text, re.M), gauge
    for line in text.splitlines():                                       # the exposition format's shape
        assert line.startswith("#") or re.fullmatch(r'[a-z_]+(\{[^}]*\})? [-+0-9.e]+|[a-z_]+(\{[^}]*\})? \+?Inf',
                                                    line), line


# ----------------------------------------------------------------------------- timeouts cancel work
def test_timed_out_request_skips_its_detection(make_client, face_jpeg):
    c = make_client(timeout_s=0.3, workers=1)
    service = c.app.state.service
    seen = []
    real_view = service._view
    service._view = lambda mf: seen.append(mf) or real_view(mf)
    hold = threading.Event()
    service.pool.submit(hold.wait, 30)               # the only detection thread is busy
    try:
        r = c.post("/v1/predict", content=face_jpeg)
        assert r.status_code == 504 and "--timeout" in r.json()["error"]
    finally:
        hold.set()
    _wait(lambda: service.detecting == 0 and service.in_flight == 0)
    assert seen == []                                # its image was never searched for faces
    service.config.timeout_s = 60
    assert c.post("/v1/predict", content=face_jpeg).status_code == 200 and len(seen) == 1
    assert "timed_out" in c.get("/metrics").text


# ----------------------------------------------------------------------------- WebSocket back-pressure
def test_websocket_busy_is_a_state_never_a_close(make_client, face_jpeg):
    c = make_client(ws_max_errors=3)
    service = c.app.state.service
    real, calls = service.predict, [0]

    async def busy_then_real(*args, **kwargs):
        calls[0] += 1
        if calls[0] <= 10:
            raise Problem(503 if calls[0] % 2 else 504, "busy: 2 requests in progress; retry shortly",
                          {"Retry-After": "1"})
        return await real(*args, **kwargs)

    service.predict = busy_then_real
    with c.websocket_connect("/v1/stream") as ws:
        for _ in range(10):                          # more than ws_max_errors: still open
            ws.send_bytes(face_jpeg)
            m = ws.receive_json()
            assert m["type"] == "busy" and m["status"] in (503, 504) and m["retry_after"] == 1
        ws.send_bytes(face_jpeg)
        m = ws.receive_json()
        assert m["type"] == "faces" and m["frame"] == 1 and len(m["faces"]) == 1
        for _ in range(3):                           # bad messages still count, and close at 3
            ws.send_text("nope")
            assert ws.receive_json()["type"] == "error"
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == 1008


def test_websocket_really_busy_queue(make_client, face_jpeg):
    """A real full queue (max_queue=1, the model held): the second stream hears 'busy' and goes on."""
    c = make_client(max_queue=1)
    entered, release = _block(c.app)
    with c.websocket_connect("/v1/stream") as first, c.websocket_connect("/v1/stream") as second:
        first.send_bytes(face_jpeg)
        assert entered.wait(60)
        for _ in range(3):
            second.send_bytes(face_jpeg)
            assert second.receive_json()["type"] == "busy"
        release.set()
        assert first.receive_json()["type"] == "faces"
        second.send_bytes(face_jpeg)
        assert second.receive_json()["type"] == "faces"


# ----------------------------------------------------------------------------- a real server
@pytest.fixture
def live_server(recognizer):
    """make(**options) -> (host, port) of a uvicorn server in a thread; stopped after the test."""
    from ferkit.serve import create_app

    with contextlib.ExitStack() as servers:
        yield lambda **options: servers.enter_context(
            running_server(create_app(recognizer, **options), log_level="info")).getsockname()[:2]


def _recv_all(s: socket.socket, seconds: float = 10) -> bytes:
    s.settimeout(seconds)
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except (TimeoutError, socket.timeout, ConnectionResetError):
        pass
    return data


def test_idle_and_slow_connections_are_closed(live_server):
    host, port = live_server(header_timeout_s=0.5, keep_alive_s=0.5, max_connections=30)
    idle = [socket.create_connection((host, port)) for _ in range(10)]
    slow = socket.create_connection((host, port))
    slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")          # headers never finished
    t0 = time.monotonic()
    for s in [*idle, slow]:
        assert _recv_all(s, 10) == b""                              # closed by the server, nothing sent
        s.close()
    assert time.monotonic() - t0 < 5
    # a kept-alive connection: answered, then closed when idle
    s = socket.create_connection((host, port))
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    data = _recv_all(s, 10)
    assert data.startswith(b"HTTP/1.1 200") and b'"status":"ok"' in data.replace(b" ", b"")
    s.close()


def test_connection_cap(live_server):
    host, port = live_server(max_connections=3, header_timeout_s=30)
    held = [socket.create_connection((host, port)) for _ in range(3)]
    time.sleep(0.3)
    extra = socket.create_connection((host, port))
    assert _recv_all(extra, 5) == b""                               # closed at once
    for s in [*held, extra]:
        s.close()


def test_malformed_requests_are_json(live_server):
    host, port = live_server(max_header_kb=1)
    cases = [(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400),
             (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 4000 + b"\r\n\r\n", 431),
             (b"NOT HTTP AT ALL\r\n\r\n", 400)]
    import json

    for raw, status in cases:
        s = socket.create_connection((host, port))
        s.sendall(raw)
        head, _, body = _recv_all(s).partition(b"\r\n\r\n")
        s.close()
        assert head.startswith(b"HTTP/1.1 %d" % status) and b"application/json" in head, head
        assert json.loads(body)["status"] == status


def test_client_leaving_mid_upload_is_one_log_line(live_server, capfd):
    host, port = live_server()
    for _ in range(5):
        s = socket.create_connection((host, port))
        s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\n"
                  + b"\xff" * 5000)
        time.sleep(0.05)
        s.close()
    time.sleep(1.0)
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if "disconnected mid-request" in line]
    assert len(lines) == 5 and all(re.search(r"id=[0-9a-f]{16}", line) for line in lines), err[-2000:]
